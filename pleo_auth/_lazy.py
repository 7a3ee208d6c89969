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
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def lazy_attributes(
    package: str, names: Mapping[str, str], public: Iterable[str] = ()
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Build a package's module-level ``__getattr__`` and ``__dir__``.

    Args:
        package: The package's ``__name__``.
        names: Each lazily loaded name, and the module that defines it: relative
            to ``package`` when it starts with a dot.
        public: The package's ``__all__``; ``dir()`` lists them before they load.

    Returns:
        The ``__getattr__`` and ``__dir__`` functions to assign in the package.
    """
    table = dict(names)
    listed = frozenset(public) | frozenset(table)

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        # Later reads find the value in the namespace and never come back here.
        vars(sys.modules[package])[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | listed)

    return __getattr__, __dir__
