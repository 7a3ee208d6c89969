"""The README's editable install type-checks: a user's script sees pleo_auth's types.

setuptools 64+ installs a flat-layout project in editable mode through an import
hook (a ``__editable__..._finder.py`` named by a ``.pth`` file) unless the layout is
one a plain path entry serves. Static type checkers never run import hooks, so mypy
reported "Cannot find implementation or library stub for module named pleo_auth".
``package_dir = =.`` in setup.cfg makes the checkout such a layout: the ``.pth``
file then names the checkout's directory, which mypy, pyright and mkdocstrings read.

The test does what the README says in a fresh virtual environment, with
``--no-deps`` (mypy never imports pleo_auth's dependencies; it only needs to find
the package). pip still fetches the build requirements (setuptools, wheel) from
its configured index; where it cannot, the test is skipped, saying so. It takes
about 8 s (a venv, a build and a mypy run), so it stays in the default suite.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# What the build reads: setup.cfg names README.md and LICENSE.
_BUILD_FILES = ("setup.cfg", "pyproject.toml", "README.md", "LICENSE")

_USER_SCRIPT = """\
import pleo_auth
from pleo_auth import TokenSet

session = pleo_auth.PleoSession("client-id")
reveal_type(session.tokens)
tokens: TokenSet = TokenSet.from_response({"access_token": "a", "refresh_token": "r"})
"""

# Errors of a pip that could not reach an index for the build requirements.
_OFFLINE = ("No matching distribution found", "Could not find a version", "NewConnectionError")


def _checkout(target: Path) -> Path:
    """A copy of the checkout's package and build files, so the real one is untouched."""
    target.mkdir()
    for name in _BUILD_FILES:
        shutil.copy2(ROOT / name, target / name)
    shutil.copytree(
        ROOT / "pleo_auth", target / "pleo_auth", ignore=shutil.ignore_patterns("__pycache__")
    )
    return target


def _run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(arg) for arg in args], cwd=cwd, capture_output=True, text=True, timeout=240
    )


@pytest.mark.slow
def test_a_script_elsewhere_type_checks_against_the_readmes_editable_install(
    tmp_path: Path,
) -> None:
    project = _checkout(tmp_path / "pleo-auth")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"

    installed = _run(python, "-m", "pip", "install", "--no-deps", "-e", ".", cwd=project)
    if installed.returncode != 0 and any(sign in installed.stderr for sign in _OFFLINE):
        pytest.skip("pip cannot fetch the build requirements (setuptools, wheel) here")
    assert installed.returncode == 0, installed.stderr[-2000:]

    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site_packages = Path(_run(python, "-c", purelib, cwd=tmp_path).stdout.strip())
    (pth,) = site_packages.glob("__editable__*pleo_auth*.pth")
    # A path entry, not an import hook: the only kind a static checker can follow.
    assert pth.read_text().strip() == str(project)
    assert not list(site_packages.glob("__editable__*finder*.py"))

    user = tmp_path / "user-project"
    user.mkdir()
    (user / "script.py").write_text(_USER_SCRIPT)
    checked = _run(
        sys.executable,
        "-m",
        "mypy",
        "--strict",
        "--no-incremental",
        "--python-executable",
        python,
        "script.py",
        cwd=user,
    )
    assert "Cannot find implementation or library stub" not in checked.stdout
    assert 'Revealed type is "pleo_auth.tokens.TokenSet | None"' in checked.stdout
    assert checked.returncode == 0, checked.stdout  # reveal_type's line is a note
