"""Helpers the session and coordinator tests share."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

import requests

from pleo_auth import PleoSession, TokenSet
from pleo_auth._clock import FakeClock
from pleo_auth.testing import Emulator

MakeSession = Callable[..., PleoSession]


class TimerlessClock(FakeClock):
    """A FakeClock under which the proactive timer never wakes by itself: it sleeps
    until someone publishes new tokens. Tests of the request path use it so the
    timer cannot race them."""

    def wait(self, event: threading.Event, timeout: float) -> bool:
        return super().wait(event, math.inf)


def issued(emu: Emulator, clock: FakeClock | None = None) -> TokenSet:
    """A new grant from the emulator, issued at the fake clock's time if given."""
    return TokenSet.from_response(emu.issue_tokens(), now=clock.time() if clock else None)


def timer_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "pleo-auth-refresh"}


def bearer(response: requests.Response) -> str:
    return str(response.request.headers.get("Authorization", ""))


def scheduler_threads() -> set[threading.Thread]:
    """The threads of the process's refresh schedulers: their own and their workers."""
    names = ("pleo-auth-scheduler", "pleo-auth-refresh")
    return {t for t in threading.enumerate() if t.name in names and t.is_alive()}


def scheduled(session: PleoSession) -> bool:
    """Whether the session's grant is on its scheduler: due, or ticking now."""
    return not session._coordinator._entry.idle


def stopped(session: PleoSession, timeout: float = 10.0) -> bool:
    """Whether the session's grant is off its scheduler for good, no tick running."""
    entry = session._coordinator._entry
    return entry.closed and entry.settle(timeout)
