"""Package attributes loaded on first use (PEP 562), written once for every package.

A package lists which of its public names live in which module; the module is
imported only when the name is first read, so ``import pleo_auth`` stays cheap
and optional dependencies (redis, pytest) load only for those who use them::

    __getattr__, __dir__ = lazy_attributes(__name__, {"PleoSession": ".session"}, __all__)

After the first read the value is stored in the package's namespace, so later
reads never reach ``__getattr__`` again.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def lazy_attributes(
    package: str,
    names: Mapping[str, str],
    public: Iterable[str] = (),
    *,
    needs: Mapping[str, str] | None = None,
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Build a package's module-level ``__getattr__`` and ``__dir__``.

    A name that needs an optional dependency (``needs``) is kept out of
    ``__all__`` by its package, so ``from package import *`` never imports the
    dependency, and out of ``dir()`` while the dependency is missing, so
    ``inspect.getmembers`` and ``help()`` work without it. Importing it by name
    without the dependency raises an ImportError that says what to install.

    Args:
        package: The package's ``__name__``.
        names: Each lazily loaded name, and the module that defines it: relative
            to ``package`` when it starts with a dot.
        public: The package's ``__all__``; ``dir()`` lists them before they load.
        needs: The top-level module each name needs that is an optional
            dependency (``{"TokenStoreContract": "pytest"}``).

    Returns:
        The ``__getattr__`` and ``__dir__`` functions to assign in the package.
    """
    table = dict(names)
    needed = dict(needs or {})
    listed = frozenset(public) | frozenset(table)

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        requirement = needed.get(name)
        if requirement is not None and not _installed(requirement):
            raise ImportError(
                f"{package}.{name} needs {requirement}, which is not installed: "
                f"pip install {requirement}",
                name=requirement,
            )
        value = getattr(importlib.import_module(module, package), name)
        # Later reads find the value in the namespace and never come back here.
        vars(sys.modules[package])[name] = value
        return value

    def __dir__() -> list[str]:
        missing = {name for name, requirement in needed.items() if not _installed(requirement)}
        return sorted((set(vars(sys.modules[package])) | listed) - missing)

    return __getattr__, __dir__


def _installed(module: str) -> bool:
    """Whether ``module`` (top-level) can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
