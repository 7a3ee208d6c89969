"""The line between public and private names: no module imports another package's
private names, the test helpers users are told to import are public, and the lazy
loader is written once (pleo_auth/_lazy.py)."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: The trees whose imports are checked: the package, and the code shipped beside it.
SCANNED = ("pleo_auth", "benchmarks", "examples")

#: Imports of private names from outside their package that exist today, each
#: (importing file, imported name). Work in progress on issue 11 removes them; the
#: list only shrinks, and test_the_allow_list_names_only_current_offenders fails
#: as soon as an entry is no longer needed, so it is removed.
ALLOWED: frozenset[tuple[str, str]] = frozenset(
    {
        # The workload runner reads the session module's private registry of live
        # sessions (issue 11 item 5 moves the schedule and the runner's needs).
        ("pleo_auth/testing/_workload_worker.py", "pleo_auth.session._LIVE_SESSIONS"),
    }
)


def module_name(path: Path) -> str:
    """``pleo_auth/stores/__init__.py`` -> ``pleo_auth.stores``."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_names(source: str, module: str, is_package: bool) -> Iterator[str]:
    """Every dotted name a module's source imports: modules, and names from them.

    Relative imports are resolved against ``module``; ``importlib.import_module``
    calls with a literal name count too.
    """
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join([*base, node.module] if node.module else base)
            else:
                origin = node.module or ""
            for alias in node.names:
                yield origin if alias.name == "*" else f"{origin}.{alias.name}"
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and not node.args[0].value.startswith(".")
        ):
            yield node.args[0].value


def owner_of_private_part(name: str) -> str | None:
    """The package or module a dotted name is private to, or None if it is public.

    ``pleo_auth.testing._workload.run_workload`` is private to ``pleo_auth.testing``;
    ``pleo_auth.session._LIVE_SESSIONS`` to ``pleo_auth.session``; dunders are public.
    """
    parts = name.split(".")
    for index, part in enumerate(parts):
        if part.startswith("_") and not (part.startswith("__") and part.endswith("__")):
            return ".".join(parts[:index])
    return None


def private_imports(source: str, module: str, is_package: bool) -> set[str]:
    """The names ``module`` imports that are private to a package it is not inside."""
    found = set()
    for name in imported_names(source, module, is_package):
        owner = owner_of_private_part(name)
        if owner is not None and module != owner and not module.startswith(owner + "."):
            found.add(name)
    return found


def scanned_files() -> Iterator[Path]:
    for tree in SCANNED:
        yield from sorted((ROOT / tree).rglob("*.py"))


def current_offenders() -> set[tuple[str, str]]:
    offenders = set()
    for path in scanned_files():
        source = path.read_text(encoding="utf-8")
        for name in private_imports(source, module_name(path), path.name == "__init__.py"):
            offenders.add((path.relative_to(ROOT).as_posix(), name))
    return offenders


def test_no_module_imports_a_private_name_of_a_package_it_is_not_inside() -> None:
    unexpected = current_offenders() - ALLOWED
    assert unexpected == set(), (
        "these modules import names private to a package they are not inside; "
        "use (or add) a public name instead: " + ", ".join(map(str, sorted(unexpected)))
    )


def test_the_allow_list_names_only_current_offenders() -> None:
    stale = ALLOWED - current_offenders()
    assert stale == set(), "no longer imported; remove from ALLOWED: " + ", ".join(
        map(str, sorted(stale))
    )


@pytest.mark.parametrize(
    ("module", "is_package", "source", "expected"),
    [
        (
            "benchmarks.contention",
            False,
            "from pleo_auth._endpoint import X",
            "pleo_auth._endpoint.X",
        ),
        (
            "benchmarks.clients",
            False,
            "import pleo_auth.testing._workload",
            "pleo_auth.testing._workload",
        ),
        ("examples.app", False, "from pleo_auth.session import _LIVE", "pleo_auth.session._LIVE"),
        (
            "pleo_auth.cli",
            False,
            "from .testing._workload import run",
            "pleo_auth.testing._workload.run",
        ),
        ("pleo_auth.contrib", True, "from ..testing import _faulty", "pleo_auth.testing._faulty"),
        ("pleo_auth.x", False, "from pleo_auth.stores._files import *", "pleo_auth.stores._files"),
        (
            "pleo_auth.x",
            False,
            "importlib.import_module('pleo_auth.stores._files')",
            "pleo_auth.stores._files",
        ),
        # Inside the owning package, and dunders: allowed.
        ("pleo_auth.session", False, "from ._coordinator import Coordinator", None),
        ("pleo_auth.stores.file", False, "from .._clock import Clock", None),
        ("pleo_auth.testing", True, "from ._emulator import Emulator", None),
        ("benchmarks.contention", False, "from ._common import fmt", None),
        ("benchmarks.x", False, "from pleo_auth import __version__", None),
        ("benchmarks.x", False, "from pleo_auth.testing import run_workload", None),
    ],
)
def test_the_scan_finds_private_imports_from_outside_their_package_only(
    module: str, is_package: bool, source: str, expected: str | None
) -> None:
    assert private_imports(source, module, is_package) == ({expected} if expected else set())


# -- the public test helpers ---------------------------------------------------------


def test_fake_clock_and_the_store_contract_are_public_in_pleo_auth_testing() -> None:
    """Importable by name; the contract's names, which need pytest, are left out of
    __all__ so that a star import needs no pytest (see the tests below)."""
    import pleo_auth.testing
    from pleo_auth.testing import FakeClock, MakeStore, TokenStoreContract, new_tokens

    assert "FakeClock" in pleo_auth.testing.__all__
    assert not {"TokenStoreContract", "MakeStore", "new_tokens"} & set(pleo_auth.testing.__all__)
    assert {"TokenStoreContract", "MakeStore", "new_tokens"} <= set(dir(pleo_auth.testing))
    assert callable(FakeClock)
    assert callable(new_tokens)
    assert MakeStore is not None
    contract_tests = [name for name in vars(TokenStoreContract) if name.startswith("test_")]
    assert len(contract_tests) >= 20
    # pytest collects the contract only through subclasses named Test...
    assert not TokenStoreContract.__name__.startswith("Test")


def test_every_store_test_module_subclasses_the_public_contract() -> None:
    for name, contract in (
        ("stores/test_stores", "TokenStoreContract"),
        ("stores/test_keyring", "TokenStoreContract"),
        ("stores/test_redis", "TokenStoreContract"),
        ("stores/test_keyring_secret_service", "TokenStoreContract"),
        ("stores/test_family", "TokenStoreFamilyContract"),
        ("testing/test_faulty", "TokenStoreContract"),
    ):
        source = (ROOT / "tests" / f"{name}.py").read_text(encoding="utf-8")
        tree = ast.parse(source)
        bases = {
            base.id
            for node in ast.walk(tree)
            if isinstance(node, ast.ClassDef)
            for base in node.bases
            if isinstance(base, ast.Name)
        }
        imports = {
            (node.module, alias.name)
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
            for alias in node.names
        }
        assert contract in bases, name
        assert ("pleo_auth.testing", contract) in imports, name


def test_importing_pleo_auth_testing_loads_neither_pytest_nor_the_contract() -> None:
    code = textwrap.dedent(
        """
        import sys
        import pleo_auth.testing
        print(sorted(m for m in ("pytest", "pleo_auth.testing._contract") if m in sys.modules))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def _without_pytest(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter in which pytest cannot be imported, as in
    an app's process that uses the emulator without the test extras."""
    return subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['pytest'] = None\n" + code],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_star_import_of_pleo_auth_testing_works_without_pytest() -> None:
    """0.1's ``from pleo_auth.testing import *`` needed no pytest, and still does
    not: the contract's names are out of __all__."""
    run = _without_pytest("from pleo_auth.testing import *\nprint(Emulator.__name__)")

    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "Emulator"


def test_introspecting_pleo_auth_testing_without_pytest_does_not_raise() -> None:
    """inspect.getmembers (pydoc, help()) reads every name dir() lists; without
    pytest, dir() leaves out the names that need it."""
    run = _without_pytest(
        "import inspect, pleo_auth.testing as t\n"
        "names = [name for name, _ in inspect.getmembers(t)]\n"
        "print('Emulator' in names, 'TokenStoreContract' in names)"
    )

    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "True False"


def test_importing_the_contract_by_name_without_pytest_says_to_install_it() -> None:
    run = _without_pytest(
        "try:\n"
        "    from pleo_auth.testing import TokenStoreContract\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )

    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == (
        "pleo_auth.testing.TokenStoreContract needs pytest, which is not installed: "
        "pip install pytest"
    )


# -- the lazy loader ---------------------------------------------------------------


@pytest.mark.parametrize("package", ["pleo_auth", "pleo_auth.stores", "pleo_auth.testing"])
def test_every_public_name_of_a_lazy_package_loads_and_dir_lists_it(package: str) -> None:
    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None, name
        assert name in dir(module), name


@pytest.mark.parametrize("package", ["pleo_auth", "pleo_auth.stores", "pleo_auth.testing"])
def test_an_unknown_name_of_a_lazy_package_is_an_attribute_error_naming_it(package: str) -> None:
    module = importlib.import_module(package)
    with pytest.raises(AttributeError, match=rf"module '{package}' has no attribute 'NoSuchName'"):
        _ = module.NoSuchName


def test_the_lazy_loader_is_written_once() -> None:
    handwritten = sorted(
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "pleo_auth").rglob("*.py")
        for node in ast.parse(path.read_text(encoding="utf-8")).body
        if isinstance(node, ast.FunctionDef) and node.name in {"__getattr__", "__dir__"}
    )
    assert handwritten == []
    for package in ("pleo_auth", "pleo_auth.stores", "pleo_auth.testing"):
        module = importlib.import_module(package)
        for hook in (module.__getattr__, module.__dir__):
            assert hook.__module__ == "pleo_auth._lazy", package
