"""Shared fixtures: real services on loopback, started privately for each run."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from pleo_auth._clock import FakeClock
from pleo_auth.testing import Emulator, redis_server


def _require(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{binary} is not installed; .ci/run should have installed it")
        pytest.skip(f"{binary} is not installed")
    return path


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    """A running emulator with long-lived tokens; tests shorten them as needed."""
    with Emulator(access_token_lifetime=3600) as emu:
        yield emu


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A private redis-server on a free port, for this test run only."""
    _require("redis-server")
    with redis_server() as url:
        yield url


@pytest.fixture
def keyring_backend(tmp_path: Path) -> object:
    """A real keyring backend (keyrings.alt's plaintext file), private to the test."""
    from keyrings.alt.file import PlaintextKeyring

    backend = PlaintextKeyring()
    backend.file_path = str(tmp_path / "keyring.cfg")  # type: ignore[misc]
    return backend
