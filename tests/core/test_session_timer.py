"""PleoSession refreshes ahead of expiry: the proactive timer, and requests inside the
refresh margin or past expiry."""

from __future__ import annotations

import threading

from support.session_doubles import RecordingStore
from support.session_helpers import MakeSession, TimerlessClock, bearer, issued

from pleo_auth._clock import FakeClock
from pleo_auth.testing import Emulator

# -- proactive refresh ------------------------------------------------------------------------


def test_timer_refreshes_before_expiry_when_no_request_was_ever_made(
    clock: FakeClock, fake_emulator: Emulator, make_session: MakeSession
) -> None:
    store = RecordingStore()
    tokens = issued(fake_emulator, clock)
    make_session(fake_emulator, store, tokens=tokens, refresh_margin=10, clock=clock)
    clock.advance(90)  # the refresh is due: refresh_margin before expiry
    assert store.wait_for_saves(2, timeout=5), "no proactive refresh of an idle session"
    assert fake_emulator.counters.refresh_grants == 1
    assert fake_emulator.counters.api_requests == 0


def test_timer_refreshes_refresh_margin_before_expiry_while_idle(
    clock: FakeClock, fake_emulator: Emulator, make_session: MakeSession
) -> None:
    store = RecordingStore()
    tokens = issued(fake_emulator, clock)
    start = clock.time()
    session = make_session(fake_emulator, store, tokens=tokens, refresh_margin=10, clock=clock)
    assert session.get("/v2/employees").status_code == 200
    # The timer may run up to refresh_margin/4 (2.5 s) early, never earlier.
    clock.advance(100 - 10 - 2.5 - 0.5)
    clock.advance(3.0)
    assert store.wait_for_saves(2), "the timer did not refresh"
    refreshed = store.saves[1]
    assert refreshed.issued_at == start + 90  # not at the first step, which was too early
    assert refreshed.issued_at < tokens.expires_at
    assert store.saver_threads[1] == "pleo-auth-refresh"
    assert fake_emulator.counters.refresh_grants == 1
    assert fake_emulator.counters.api_requests == 1


def test_timer_refreshes_again_before_each_new_token_expires(
    clock: FakeClock, fake_emulator: Emulator, make_session: MakeSession
) -> None:
    store = RecordingStore()
    session = make_session(
        fake_emulator, store, tokens=issued(fake_emulator, clock), refresh_margin=10, clock=clock
    )
    session.get("/v2/employees")
    for rotation in range(1, 4):
        current = store.saves[-1]
        clock.advance(current.expires_at - 10 - clock.time())
        assert store.wait_for_saves(rotation + 1), f"rotation {rotation} did not happen"
    counters = fake_emulator.counters
    assert counters.refresh_grants == 3
    assert counters.rejected_refreshes == 0
    assert counters.reuse_detections == 0
    assert store.saver_threads[1:] == ["pleo-auth-refresh"] * 3


def test_request_inside_the_margin_refreshes_before_it_is_sent(
    timerless: TimerlessClock, timerless_emulator: Emulator, make_session: MakeSession
) -> None:
    store = RecordingStore()
    old = issued(timerless_emulator, timerless)
    session = make_session(
        timerless_emulator, store, tokens=old, refresh_margin=10, clock=timerless
    )
    assert timerless.wait_for_sleepers(1), "the timer never went to sleep"
    timerless.advance(95)  # inside the margin, not yet expired
    response = session.get("/v2/employees")
    assert response.status_code == 200
    assert timerless_emulator.counters.refresh_grants == 1
    assert bearer(response) == f"Bearer {store.saves[-1].access_token}"
    assert bearer(response) != f"Bearer {old.access_token}"
    assert store.saver_threads[-1] == threading.current_thread().name


def test_request_before_the_margin_does_not_refresh(
    timerless: TimerlessClock, timerless_emulator: Emulator, make_session: MakeSession
) -> None:
    old = issued(timerless_emulator, timerless)
    session = make_session(timerless_emulator, tokens=old, refresh_margin=10, clock=timerless)
    timerless.advance(87)  # before the margin and before the timer's earliest jitter
    response = session.get("/v2/employees")
    assert response.status_code == 200
    assert bearer(response) == f"Bearer {old.access_token}"
    assert timerless_emulator.counters.refresh_grants == 0


def test_request_after_expiry_refreshes_before_it_is_sent(
    timerless: TimerlessClock, timerless_emulator: Emulator, make_session: MakeSession
) -> None:
    store = RecordingStore()
    session = make_session(
        timerless_emulator,
        store,
        tokens=issued(timerless_emulator, timerless),
        refresh_margin=10,
        clock=timerless,
    )
    timerless.advance(150)
    response = session.get("/v2/employees")
    assert response.status_code == 200
    assert bearer(response) == f"Bearer {store.saves[-1].access_token}"
    counters = timerless_emulator.counters
    assert counters.refresh_grants == 1
    assert counters.unauthorized == 0


def test_refresh_margin_is_at_most_half_the_token_lifetime(
    timerless: TimerlessClock, timerless_emulator: Emulator, make_session: MakeSession
) -> None:
    old = issued(timerless_emulator, timerless)
    session = make_session(timerless_emulator, tokens=old, refresh_margin=80, clock=timerless)
    timerless.advance(34)  # past a literal 80 s margin; before half-life (and its jitter)
    assert bearer(session.get("/v2/employees")) == f"Bearer {old.access_token}"
    assert timerless_emulator.counters.refresh_grants == 0
    timerless.advance(16)  # half-life: due
    assert bearer(session.get("/v2/employees")) != f"Bearer {old.access_token}"
    assert timerless_emulator.counters.refresh_grants == 1
