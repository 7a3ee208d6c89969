"""PleoSession when the token endpoint refuses or fails: a dead grant, other refusals,
and transient failures with their retry budget."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from support.session_doubles import fast_backoff
from support.session_helpers import MakeSession, TimerlessClock, bearer, issued

from pleo_auth import FileStore, MemoryStore, ReauthenticationRequired, RefreshError
from pleo_auth.testing import Emulator, Fault

# -- a dead grant ------------------------------------------------------------------------------


def test_invalid_grant_clears_the_store_without_retrying(
    emulator: Emulator, make_session: MakeSession
) -> None:
    store = MemoryStore()
    session = make_session(emulator, store, tokens=issued(emulator))
    emulator.revoke_all()
    with pytest.raises(ReauthenticationRequired) as caught:
        session.refresh()
    assert caught.value.error == "invalid_grant"
    assert store.load() is None
    assert emulator.counters.token_requests == 1
    assert emulator.counters.rejected_refreshes == 1


def test_invalid_grant_calls_on_reauthentication_required_exactly_once(
    emulator: Emulator, make_session: MakeSession
) -> None:
    calls: list[str] = []
    session = make_session(
        emulator,
        tokens=issued(emulator),
        on_reauthentication_required=lambda: calls.append(threading.current_thread().name),
    )
    emulator.revoke_all()
    for attempt in (session.refresh, lambda: session.get("/v2/employees"), session.refresh):
        with pytest.raises(ReauthenticationRequired):
            attempt()
    assert session.tokens is None
    assert len(calls) == 1


def test_every_later_call_raises_reauthentication_required_saying_how_to_log_in(
    emulator: Emulator, make_session: MakeSession
) -> None:
    session = make_session(emulator, tokens=issued(emulator))
    emulator.revoke_all()
    calls: list[Callable[[], object]] = [
        session.refresh,
        lambda: session.get("/v2/employees"),
        lambda: session.post("/v1/things", json={}),
        session.refresh,
    ]
    for call in calls:
        with pytest.raises(ReauthenticationRequired) as caught:
            call()
        assert "pleo-auth login" in str(caught.value)
    assert emulator.counters.token_requests == 1
    assert emulator.counters.api_requests == 0


def test_reauthentication_message_names_the_file_store_to_log_in_to(
    emulator: Emulator, make_session: MakeSession, tmp_path: Path
) -> None:
    path = tmp_path / "tokens.json"
    session = make_session(emulator, FileStore(path), tokens=issued(emulator))
    emulator.revoke_all()
    with pytest.raises(ReauthenticationRequired) as caught:
        session.refresh()
    message = str(caught.value)
    assert f"pleo-auth login --client-id {emulator.client_id}" in message
    assert f"--store file:{path}" in message
    assert not path.exists()


@pytest.mark.parametrize("error", ["invalid_grant", "invalid_token", "expired_token"])
def test_dead_grant_answers_are_not_retried_and_clear_the_store(
    emulator: Emulator, make_session: MakeSession, error: str
) -> None:
    store = MemoryStore()
    session = make_session(emulator, store, tokens=issued(emulator))
    emulator.inject_fault(Fault(status=400, error=error), count=3)
    with pytest.raises(ReauthenticationRequired):
        session.refresh()
    assert emulator.counters.token_requests == 1
    assert store.load() is None


def test_logging_in_again_after_a_dead_grant_makes_the_session_work_again(
    emulator: Emulator, make_session: MakeSession
) -> None:
    store = MemoryStore()
    session = make_session(emulator, store, tokens=issued(emulator))
    emulator.revoke_all()
    with pytest.raises(ReauthenticationRequired):
        session.refresh()
    fresh = issued(emulator)
    make_session(emulator, store, tokens=fresh)  # what `pleo-auth login` hands over
    response = session.get("/v2/employees")
    assert response.status_code == 200
    assert bearer(response) == f"Bearer {fresh.access_token}"


# -- other refusals ------------------------------------------------------------------------


def test_invalid_client_raises_refresh_error_with_error_and_description_without_retry(
    emulator: Emulator, make_session: MakeSession
) -> None:
    calls: list[int] = []
    tokens = issued(emulator)
    store = MemoryStore()
    session = make_session(
        emulator,
        store,
        client_secret="wrong-secret",
        tokens=tokens,
        on_reauthentication_required=lambda: calls.append(1),
    )
    with pytest.raises(RefreshError) as caught:
        session.refresh()
    error = caught.value
    assert not isinstance(error, ReauthenticationRequired)
    assert error.error == "invalid_client"
    assert error.description == "unknown client or wrong secret"
    assert error.status_code == 401
    assert emulator.counters.token_requests == 1
    assert store.load() == tokens
    assert calls == []


def test_request_with_an_expired_token_raises_the_refresh_error_when_the_refresh_is_refused(
    timerless: TimerlessClock, timerless_emulator: Emulator, make_session: MakeSession
) -> None:
    session = make_session(
        timerless_emulator, tokens=issued(timerless_emulator, timerless), clock=timerless
    )
    timerless.advance(150)
    timerless_emulator.inject_fault(Fault(error="invalid_client"))
    with pytest.raises(RefreshError) as caught:
        session.get("/v2/employees")
    assert caught.value.error == "invalid_client"
    assert timerless_emulator.counters.api_requests == 0


def test_request_inside_the_margin_still_goes_out_when_the_refresh_is_refused(
    timerless: TimerlessClock, timerless_emulator: Emulator, make_session: MakeSession
) -> None:
    old = issued(timerless_emulator, timerless)
    session = make_session(timerless_emulator, tokens=old, refresh_margin=10, clock=timerless)
    timerless.advance(95)
    timerless_emulator.inject_fault(Fault(error="invalid_client"))
    response = session.get("/v2/employees")
    assert response.status_code == 200
    assert bearer(response) == f"Bearer {old.access_token}"
    assert timerless_emulator.counters.token_requests == 1


# -- transient failures ---------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_transient_token_endpoint_statuses_are_retried_until_the_refresh_succeeds(
    emulator: Emulator, make_session: MakeSession, status: int
) -> None:
    session = make_session(emulator, tokens=issued(emulator))
    fast_backoff(session)
    emulator.inject_fault(Fault(status=status), count=2)
    session.refresh()
    counters = emulator.counters
    assert counters.token_requests == 3
    assert counters.faults_served == 2
    assert counters.refresh_grants == 1


def test_dropped_connections_to_the_token_endpoint_are_retried(
    emulator: Emulator, make_session: MakeSession
) -> None:
    session = make_session(emulator, tokens=issued(emulator))
    fast_backoff(session)
    emulator.inject_fault(Fault(drop=True), count=2)
    session.refresh()
    assert emulator.counters.token_requests == 3
    assert emulator.counters.refresh_grants == 1


def test_retry_after_answer_is_retried_until_the_refresh_succeeds(
    emulator: Emulator, make_session: MakeSession
) -> None:
    session = make_session(emulator, tokens=issued(emulator))
    fast_backoff(session)
    emulator.inject_fault(Fault(status=429, retry_after=0.05))
    session.refresh()
    assert emulator.counters.token_requests == 2
    assert emulator.counters.refresh_grants == 1


def test_retry_after_is_honoured_across_refresh_attempts(
    timerless: TimerlessClock, timerless_emulator: Emulator, make_session: MakeSession
) -> None:
    emu = timerless_emulator
    old = issued(emu, timerless)
    session = make_session(emu, tokens=old, refresh_margin=10, clock=timerless)
    fast_backoff(session)
    timerless.advance(91)  # inside the margin: a refresh is due, the token still works
    emu.inject_fault(Fault(status=503, retry_after=3600), count=50)
    assert session.get("/v2/employees").status_code == 200
    timerless.advance(8)  # far less than the hour the server asked for
    assert session.get("/v2/employees").status_code == 200
    assert emu.counters.token_requests == 1  # nothing sent before Retry-After


def test_transient_failures_stop_after_max_refresh_attempts_and_keep_the_tokens(
    emulator: Emulator, make_session: MakeSession
) -> None:
    tokens = issued(emulator)
    store = MemoryStore()
    session = make_session(emulator, store, tokens=tokens, max_refresh_attempts=3)
    fast_backoff(session)
    emulator.inject_fault(Fault(status=503), count=3)
    with pytest.raises(RefreshError) as caught:
        session.refresh()
    assert caught.value.retryable is True
    assert emulator.counters.token_requests == 3
    assert store.load() == tokens
    session.refresh()  # the refresh token was never spent: it still works
    counters = emulator.counters
    assert counters.refresh_grants == 1
    assert counters.rejected_refreshes == 0
    assert counters.reuse_detections == 0


def test_transient_failures_stop_after_max_refresh_time(
    emulator: Emulator, make_session: MakeSession
) -> None:
    session = make_session(
        emulator, tokens=issued(emulator), max_refresh_attempts=1000, max_refresh_time=0.3
    )
    fast_backoff(session, backoff_max=0.05)
    emulator.inject_fault(Fault(status=503, retry_after=0.1), count=1000)
    with pytest.raises(RefreshError) as caught:
        session.refresh()
    assert caught.value.retryable is True
    # Every wait but the last lasts at least Retry-After (0.1 s): at most 5 attempts fit.
    assert 2 <= emulator.counters.token_requests <= 5
