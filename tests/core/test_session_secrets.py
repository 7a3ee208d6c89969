"""PleoSession keeps tokens and the client secret out of its logs and failure messages."""

from __future__ import annotations

import logging

import pytest
from support.session_doubles import RecordingStore, fast_backoff
from support.session_helpers import MakeSession, issued

from pleo_auth import PleoAuthError, ReauthenticationRequired, RefreshError
from pleo_auth._clock import FakeClock
from pleo_auth.testing import Emulator, Fault

# -- secrets ------------------------------------------------------------------------------------


def test_logs_never_contain_a_token_or_the_client_secret(
    clock: FakeClock,
    fake_emulator: Emulator,
    make_session: MakeSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="pleo_auth")
    emu = fake_emulator
    store = RecordingStore()
    first = issued(emu, clock)
    texts: list[str] = []
    session = make_session(emu, store, tokens=first, refresh_margin=10, clock=clock)
    fast_backoff(session)
    session.get("/v2/employees")  # load
    session.refresh()  # forced refresh
    clock.advance(store.saves[-1].expires_at - 10 - clock.time())
    assert store.wait_for_saves(3)  # the timer's refresh
    assert session.tokens == store.saves[-1]  # ...published, so the next refresh is our own
    emu.inject_fault(Fault(status=503))
    emu.inject_fault(Fault(drop=True))
    session.refresh()  # retried
    emu.inject_fault(Fault(error="invalid_client"))
    with pytest.raises(RefreshError) as refused:
        session.refresh()
    emu.revoke_all()
    with pytest.raises(ReauthenticationRequired) as dead:
        session.refresh()
    with pytest.raises(ReauthenticationRequired) as later:
        session.get("/v2/employees")
    for error in (refused.value, dead.value, later.value):
        texts += [str(error), repr(error)]
    texts += [repr(session), repr(store), repr(first), repr(session._coordinator)]
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    records = [r for r in caplog.records if r.name.startswith("pleo_auth")]
    texts += [formatter.format(record) for record in records]
    messages = " | ".join(record.getMessage() for record in records)
    assert "refreshed tokens" in messages
    assert "retry" in messages
    assert "grant is dead" in messages
    secrets = [emu.client_secret or ""]
    for tokens in [first, *store.saves]:
        secrets += [tokens.access_token, tokens.refresh_token]
    assert len(store.saves) == 4
    for secret in secrets:
        for text in texts:
            assert secret not in text


def test_failure_messages_never_contain_a_token_or_the_client_secret(
    emulator: Emulator, make_session: MakeSession
) -> None:
    tokens = issued(emulator)
    session = make_session(emulator, tokens=tokens, max_refresh_attempts=2)
    fast_backoff(session)
    failures: list[PleoAuthError] = []
    emulator.inject_fault(Fault(status=503), count=2)
    emulator.inject_fault(Fault(status=400, error="invalid_request"))
    emulator.inject_fault(Fault(error="invalid_grant"))
    for _ in range(3):
        with pytest.raises(PleoAuthError) as caught:
            session.refresh()
        failures.append(caught.value)
    for failure in failures:
        for text in (str(failure), repr(failure)):
            for secret in (tokens.access_token, tokens.refresh_token, emulator.client_secret):
                assert secret is not None
                assert secret not in text
