"""Fixtures the PleoSession tests (test_session*.py) share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pleo_auth._clock import FakeClock
from pleo_auth.testing import Emulator


@pytest.fixture
def fake_emulator(clock: FakeClock) -> Iterator[Emulator]:
    """An emulator on the test's FakeClock, issuing 100-second access tokens."""
    with Emulator(access_token_lifetime=100, clock=clock) as emu:
        yield emu
