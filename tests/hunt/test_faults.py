"""Faults at the token endpoint, end to end: what a PleoSession does about each.

Every fault is injected through the emulator over real loopback HTTP (or, for
"connection refused", a token URL at a closed loopback port), and driven through
the public API: ``PleoSession(...).refresh()`` and ``session.get(...)``. For each,
a test pins:

* how many attempts reach the server (the emulator's counters), and that the
  refresh stops within the configured budget (``max_refresh_time`` plus one
  ``refresh_timeout``, measured on ``time.monotonic``);
* what the caller sees: a ``RefreshError`` whose ``retryable`` and message name
  the problem, a ``ReauthenticationRequired``, or success after a retry;
* what the store holds afterwards: the last good pair (and, where the server did
  not rotate, a pair the server still honours), or the new pair when the reply
  was usable.

The second half covers a reply lost after the server rotated (the retry is refused
as reuse, the user is asked to log in exactly once, and every token request of
that refresh ran while the refreshing process held the store's lock, with another
process waiting on it), and the Redis lease deadline.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import queue
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest
import redis
from support.session_helpers import MakeSession

from pleo_auth import (
    FileStore,
    MemoryStore,
    PleoSession,
    ReauthenticationRequired,
    RefreshError,
    TokenSet,
    TokenStore,
)
from pleo_auth._clock import FakeClock
from pleo_auth.stores.base import Lease
from pleo_auth.stores.redis import RedisStore
from pleo_auth.testing import Emulator, free_port
from pleo_auth.testing import Fault as EndpointFault
from pleo_auth.tokens import DEFAULT_EXPIRES_IN, MAX_EXPIRES_IN

ATTEMPTS = 3  # max_refresh_attempts
# refresh_timeout: a loopback round trip takes milliseconds, but an attempt meant
# to succeed must not time out on a loaded 2-core machine and skew the counts.
TIMEOUT = 1.5
MAX_TIME = 3.75  # max_refresh_time: timed-out attempts start at 0, 1.5 and 3 s, so ATTEMPTS binds
# What the budget cannot see: thread scheduling on a loaded machine. Smaller than
# TIMEOUT, so one attempt too many would still break the bound.
SLACK = 1.0
BUDGET = MAX_TIME + TIMEOUT + SLACK  # no attempt starts after MAX_TIME; each lasts <= TIMEOUT
SLOW = TIMEOUT * 3  # an injected delay that outlasts every client timeout

needs_proc_locks = pytest.mark.skipif(
    not os.path.exists("/proc/locks"), reason="needs Linux /proc/locks to name a lock's holder"
)


# -- helpers ------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    """The store of the refresh tests: a real file, as a cron job or server keeps it."""
    return FileStore(tmp_path / "tokens.json")


def fast_backoff(session: PleoSession) -> None:
    # No public setting for the backoff curve: the tests need a fast one, not its shape.
    session._coordinator.endpoint.backoff_factor = 0.001
    session._coordinator.endpoint.backoff_max = 0.01


def issued(emu: Emulator) -> TokenSet:
    return TokenSet.from_response(emu.issue_tokens())


def expired(emu: Emulator) -> TokenSet:
    """A pair the server honours but the client takes for expired: the next request refreshes."""
    reply = emu.issue_tokens()
    now = time.time()
    return TokenSet(
        reply["access_token"], reply["refresh_token"], expires_at=now - 1, issued_at=now - 3601
    )


def session_for(
    make_session: MakeSession,
    emu: Emulator,
    store: TokenStore,
    tokens: TokenSet,
    **kwargs: Any,
) -> PleoSession:
    kwargs.setdefault("max_refresh_attempts", ATTEMPTS)
    kwargs.setdefault("max_refresh_time", MAX_TIME)
    kwargs.setdefault("refresh_timeout", TIMEOUT)
    session = make_session(emu, store, tokens=tokens, **kwargs)
    fast_backoff(session)
    return session


def current(emu: Emulator, tokens: TokenSet) -> bool:
    return emu.is_current(tokens.access_token, tokens.refresh_token)


def without(*keys: str) -> Callable[[dict[str, Any]], str]:
    """An after-grant body: the real reply without ``keys``."""
    return lambda reply: json.dumps({k: v for k, v in reply.items() if k not in keys})


def with_expires_in(raw: str) -> Callable[[dict[str, Any]], str]:
    """An after-grant body: the real reply with ``"expires_in": <raw JSON text>``."""

    def edit(reply: dict[str, Any]) -> str:
        rest = json.dumps({k: v for k, v in reply.items() if k != "expires_in"})
        return rest[:-1] + f', "expires_in": {raw}}}'

    return edit


HTML_502 = "<!doctype html><html><body><h1>502 Bad Gateway</h1><hr>nginx</body></html>"
PORTAL = "<!doctype html><html><body>Sign in to continue to the Wi-Fi</body></html>"


@dataclass(frozen=True)
class Fault:
    """One row of the table: a fault, and exactly what it must lead to."""

    inject: dict[str, Any]
    message: str  # in the RefreshError's message
    retryable: bool
    reaches_server: int  # token requests the emulator sees
    rotates: bool = False  # the server rotated before the reply went wrong
    status_code: int | None = None
    refused: bool = False  # the token URL is a closed port
    retry_after: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


TRANSIENT: dict[str, Fault] = {
    "connection-refused": Fault(
        {}, "connection refused", retryable=True, reaches_server=0, refused=True
    ),
    "connection-reset": Fault(
        {"reset": True}, "connection reset before the reply was complete", True, ATTEMPTS
    ),
    "read-timeout": Fault(
        {"delay": SLOW, "status": 503}, "timed out waiting for the reply", True, ATTEMPTS
    ),
    "http-500": Fault({"status": 500}, "HTTP 500", True, ATTEMPTS, status_code=500),
    "http-502": Fault({"status": 502}, "HTTP 502", True, ATTEMPTS, status_code=502),
    "http-503": Fault({"status": 503}, "HTTP 503", True, ATTEMPTS, status_code=503),
    "http-504": Fault({"status": 504}, "HTTP 504", True, ATTEMPTS, status_code=504),
    "http-429-retry-after": Fault(
        {"status": 429, "retry_after": 0.1},
        "HTTP 429",
        True,
        ATTEMPTS,
        status_code=429,
        retry_after=0.1,
    ),
    "html-502-from-a-proxy": Fault(
        {"status": 502, "body": HTML_502, "content_type": "text/html; charset=utf-8"},
        "HTTP 502",
        True,
        ATTEMPTS,
        status_code=502,
    ),
}

UNUSABLE_200: dict[str, Fault] = {
    "html-200-captive-portal": Fault(
        {"body": PORTAL, "content_type": "text/html"},
        "an HTML page (text/html)",
        False,
        1,
        status_code=200,
    ),
    "html-200-after-the-grant": Fault(
        {"after_grant": True, "body": PORTAL, "content_type": "text/html"},
        "an HTML page (text/html)",
        False,
        1,
        rotates=True,
        status_code=200,
    ),
    "truncated-json": Fault(
        {"after_grant": True, "truncate": 40},
        "a body that is not valid JSON (application/json, 40 bytes: truncated?)",
        False,
        1,
        rotates=True,
        status_code=200,
    ),
    "200-without-access-token": Fault(
        {"after_grant": True, "body": without("access_token")},
        "access_token is missing",
        False,
        1,
        rotates=True,
        status_code=200,
    ),
    "200-without-refresh-token": Fault(
        {"after_grant": True, "body": without("refresh_token")},
        "refresh_token is missing",
        False,
        1,
        rotates=True,
        status_code=200,
    ),
    "200-without-either-token": Fault(
        {"after_grant": True, "body": without("access_token", "refresh_token")},
        "access_token is missing; refresh_token is missing",
        False,
        1,
        rotates=True,
        status_code=200,
    ),
}

FAILURES = {**TRANSIENT, **UNUSABLE_200}


def inject(emu: Emulator, fault: Fault, count: int) -> None:
    if not fault.refused:
        emu.inject_fault(EndpointFault(**fault.inject), count=count)


def make_for(
    fault: Fault, make_session: MakeSession, emu: Emulator, store: TokenStore, tokens: TokenSet
) -> PleoSession:
    if fault.refused:
        closed = f"http://127.0.0.1:{free_port()}/oauth/token"
        return session_for(make_session, emu, store, tokens, token_url=closed)
    return session_for(make_session, emu, store, tokens)


# -- every fault, until the refresh gives up ----------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FAILURES))
def test_a_failed_refresh_stops_in_budget_with_a_clear_error_and_keeps_the_last_good_pair(
    emulator: Emulator, make_session: MakeSession, store: TokenStore, name: str
) -> None:
    fault = FAILURES[name]
    before = issued(emulator)
    inject(emulator, fault, count=fault.reaches_server or 1)
    session = make_for(fault, make_session, emulator, store, before)

    started = time.monotonic()
    with pytest.raises(RefreshError) as caught:
        session.refresh()
    elapsed = time.monotonic() - started

    error = caught.value
    assert not isinstance(error, ReauthenticationRequired)
    assert fault.message in str(error)
    assert error.retryable is fault.retryable
    assert error.status_code == fault.status_code
    assert error.retry_after == fault.retry_after
    if fault.retryable:
        assert f"gave up after {ATTEMPTS} attempts" in str(error)
    else:
        assert "the refresh token is spent" in str(error)  # the caller is warned
    counters = emulator.counters
    assert counters.token_requests == fault.reaches_server
    assert counters.faults_served == fault.reaches_server
    assert counters.refresh_grants == (1 if fault.rotates else 0)
    assert elapsed <= BUDGET
    if fault.retry_after is not None:
        assert elapsed >= (ATTEMPTS - 1) * fault.retry_after  # every Retry-After was honoured
    assert store.load() == before
    assert session.tokens == before
    assert current(emulator, before) is not fault.rotates


@pytest.mark.parametrize(
    "name", ["connection-refused", "connection-reset", "http-503", "html-502-from-a-proxy"]
)
def test_after_a_transient_failure_the_old_pair_still_serves_requests(
    emulator: Emulator, make_session: MakeSession, name: str
) -> None:
    fault = TRANSIENT[name]
    before = issued(emulator)
    inject(emulator, fault, count=fault.reaches_server or 1)
    session = make_for(fault, make_session, emulator, MemoryStore(), before)
    with pytest.raises(RefreshError):
        session.refresh()

    assert session.get("/v2/employees").status_code == 200
    assert emulator.counters.unauthorized == 0


@pytest.mark.slow
def test_read_timeouts_stop_at_max_refresh_time_when_attempts_would_go_on(
    emulator: Emulator, make_session: MakeSession
) -> None:
    # Attempts start at about 0 and 1.5 s; a third, at 3 s, would be late. 0.75 s
    # either side absorbs scheduling delays, so the count is exact.
    max_time = 2.25
    before = issued(emulator)
    emulator.inject_fault(EndpointFault(delay=SLOW, status=503), count=100)
    session = session_for(
        make_session,
        emulator,
        MemoryStore(),
        before,
        max_refresh_attempts=100,
        max_refresh_time=max_time,
    )

    started = time.monotonic()
    with pytest.raises(RefreshError, match=r"max_refresh_time of 2\.25s spent") as caught:
        session.refresh()
    elapsed = time.monotonic() - started

    assert caught.value.retryable is True
    assert emulator.counters.token_requests == 2
    assert elapsed <= max_time + TIMEOUT + SLACK


def test_a_stopped_token_endpoint_is_refused_and_a_refresh_after_its_restart_succeeds(
    make_session: MakeSession, tmp_path: Path
) -> None:
    emu = Emulator(port=free_port()).start()
    try:
        store = FileStore(tmp_path / "tokens.json")
        before = issued(emu)
        session = session_for(make_session, emu, store, before)
        emu.stop()

        with pytest.raises(RefreshError, match="connection refused") as caught:
            session.refresh()
        assert caught.value.retryable is True
        assert store.load() == before

        emu.start()  # the same port
        after = session.refresh()
        assert store.load() == after
        assert current(emu, after)
        assert emu.counters.token_requests == 1
    finally:
        emu.stop()


# -- transient faults, then success -----------------------------------------------------------

RECOVERABLE = [name for name, fault in TRANSIENT.items() if not fault.refused]


@pytest.mark.slow
@pytest.mark.parametrize("name", RECOVERABLE)
def test_a_transient_fault_is_retried_and_the_refresh_succeeds(
    emulator: Emulator, make_session: MakeSession, store: TokenStore, name: str
) -> None:
    fault = TRANSIENT[name]
    before = issued(emulator)
    inject(emulator, fault, count=ATTEMPTS - 1)
    session = session_for(make_session, emulator, store, before)

    started = time.monotonic()
    after = session.refresh()
    elapsed = time.monotonic() - started

    counters = emulator.counters
    assert (counters.token_requests, counters.faults_served) == (ATTEMPTS, ATTEMPTS - 1)
    assert (counters.refresh_grants, counters.reuse_detections) == (1, 0)
    assert elapsed <= BUDGET
    assert store.load() == after
    assert current(emulator, after)
    assert not current(emulator, before)


@pytest.mark.slow
@pytest.mark.parametrize("name", RECOVERABLE)
def test_a_request_that_finds_the_token_expired_rides_out_a_transient_fault(
    emulator: Emulator, make_session: MakeSession, name: str
) -> None:
    store = MemoryStore()
    fault = TRANSIENT[name]
    inject(emulator, fault, count=ATTEMPTS - 1)
    session = session_for(make_session, emulator, store, expired(emulator))

    response = session.get("/v2/employees")

    assert response.status_code == 200
    counters = emulator.counters
    assert (counters.token_requests, counters.refresh_grants) == (ATTEMPTS, 1)
    assert (counters.api_requests, counters.unauthorized) == (1, 0)
    stored = store.load()
    assert stored is not None
    assert current(emulator, stored)
    assert response.request.headers["Authorization"] == f"Bearer {stored.access_token}"


def test_a_request_with_an_expired_token_raises_the_retryable_error_when_retries_run_out(
    emulator: Emulator,
    make_session: MakeSession,
) -> None:
    store = MemoryStore()
    before = expired(emulator)
    emulator.inject_fault(EndpointFault(status=503), count=ATTEMPTS)
    session = session_for(make_session, emulator, store, before)

    with pytest.raises(RefreshError, match="HTTP 503") as caught:
        session.get("/v2/employees")

    assert caught.value.retryable is True
    assert emulator.counters.token_requests == ATTEMPTS
    assert emulator.counters.api_requests == 0  # nothing was sent with an expired token
    assert store.load() == before


def test_a_request_inside_the_margin_still_goes_out_when_the_refresh_fails(
    emulator: Emulator,
    make_session: MakeSession,
) -> None:
    store = MemoryStore()
    reply = emulator.issue_tokens()
    now = time.time()
    # Due (inside the 60 s margin) but not expired.
    before = TokenSet(
        reply["access_token"], reply["refresh_token"], expires_at=now + 30, issued_at=now - 3570
    )
    emulator.inject_fault(EndpointFault(status=503), count=ATTEMPTS)
    session = session_for(make_session, emulator, store, before)

    response = session.get("/v2/employees")

    assert response.status_code == 200
    assert response.request.headers["Authorization"] == f"Bearer {before.access_token}"
    assert emulator.counters.token_requests == ATTEMPTS
    assert store.load() == before


# -- odd expires_in: the new pair is kept, its lifetime assumed or clamped ---------------------


@pytest.mark.parametrize(
    ("body", "lifetime", "warning"),
    [
        pytest.param(without("expires_in"), DEFAULT_EXPIRES_IN, "is missing", id="missing"),
        pytest.param(with_expires_in("null"), DEFAULT_EXPIRES_IN, "is missing", id="null"),
        pytest.param(with_expires_in("0"), DEFAULT_EXPIRES_IN, "is zero", id="zero"),
        pytest.param(with_expires_in("-60"), DEFAULT_EXPIRES_IN, "is negative", id="negative"),
        pytest.param(with_expires_in('"3600"'), 3600.0, None, id="string-3600"),
        pytest.param(with_expires_in('"soon"'), DEFAULT_EXPIRES_IN, "not a number", id="soon"),
        pytest.param(with_expires_in("1e12"), MAX_EXPIRES_IN, "out of range", id="1e12"),
        pytest.param(with_expires_in("1e309"), MAX_EXPIRES_IN, "out of range", id="1e309-inf"),
    ],
)
def test_an_odd_expires_in_keeps_the_new_pair_with_a_sane_lifetime(
    emulator: Emulator,
    make_session: MakeSession,
    store: TokenStore,
    caplog: pytest.LogCaptureFixture,
    body: Callable[[dict[str, Any]], str],
    lifetime: float,
    warning: str | None,
) -> None:
    before = issued(emulator)
    emulator.inject_fault(EndpointFault(after_grant=True, body=body))
    session = session_for(make_session, emulator, store, before)

    with caplog.at_level(logging.WARNING, logger="pleo_auth.tokens"):
        after = session.refresh()

    assert after.issued_at is not None
    assert after.expires_at - after.issued_at == lifetime
    assert emulator.counters.token_requests == 1
    assert store.load() == after
    assert current(emulator, after)  # the pair the server rotated to was saved, not lost
    warnings = [r.getMessage() for r in caplog.records if r.name == "pleo_auth.tokens"]
    if warning is None:
        assert warnings == []
    else:
        assert len(warnings) == 1
        assert warning in warnings[0]
    for text in warnings:
        for secret in (after.access_token, after.refresh_token, before.refresh_token):
            assert secret not in text
    # The proactive timer has a finite, sane deadline: it neither spins nor overflows.
    assert 1.0 <= after.expires_in() <= MAX_EXPIRES_IN


# -- an unusable 200 came after the server rotated: the next refresh is reuse ------------------

ROTATED_UNUSABLE = [name for name, fault in UNUSABLE_200.items() if fault.rotates]


@pytest.mark.parametrize("name", ROTATED_UNUSABLE)
def test_after_an_unusable_200_the_next_refresh_presents_the_spent_token_and_is_refused(
    emulator: Emulator, make_session: MakeSession, store: TokenStore, name: str
) -> None:
    fault = UNUSABLE_200[name]
    before = issued(emulator)
    asked: list[int] = []
    emulator.inject_fault(EndpointFault(**fault.inject))
    session = session_for(
        make_session, emulator, store, before, on_reauthentication_required=lambda: asked.append(1)
    )
    with pytest.raises(RefreshError, match="the refresh token is spent"):
        session.refresh()
    assert store.load() == before  # never a new access token beside the old refresh token

    with pytest.raises(ReauthenticationRequired):
        session.refresh()

    counters = emulator.counters
    assert (counters.token_requests, counters.refresh_grants) == (2, 1)
    assert counters.reuse_detections == 1
    assert asked == [1]
    assert store.load() is None


# -- a lost reply ---------------------------------------------------------------------------


def flock_holder(lock_path: Path) -> int | None:
    """The pid holding the flock on ``lock_path``, or None when nobody does.

    Asks from a separate open file description, so it conflicts with every holder,
    this process included; /proc/locks then names the holder."""
    fd = os.open(lock_path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            inode = os.fstat(fd).st_ino
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
    finally:
        os.close(fd)
    with open("/proc/locks") as locks:
        for line in locks:
            fields = line.split()
            if "->" in fields or "FLOCK" not in fields:
                continue
            if fields[5].rsplit(":", 1)[-1] == str(inode):
                return int(fields[4])
    return -1  # held, but the holder is not listed


LOST = {
    "dropped": ({"drop": True}, "connection closed without a reply"),
    "reset": ({"reset": True}, "connection reset before the reply was complete"),
    "timed-out": ({"delay": SLOW}, "timed out waiting for the reply"),
    "gateway-504": ({"status": 504}, "HTTP 504"),
}


@needs_proc_locks
@pytest.mark.parametrize("name", list(LOST))
def test_a_lost_reply_ends_in_one_request_to_log_in_that_says_why(
    emulator: Emulator, make_session: MakeSession, tmp_path: Path, name: str
) -> None:
    fault, reason = LOST[name]
    store = FileStore(tmp_path / "tokens.json")
    before = issued(emulator)
    holders: list[int | None] = []
    asked: list[int] = []
    emulator.set_token_request_hook(
        lambda grant_type: holders.append(flock_holder(store.lock_path))
    )
    emulator.inject_fault(EndpointFault(after_grant=True, **fault))
    session = session_for(
        make_session, emulator, store, before, on_reauthentication_required=lambda: asked.append(1)
    )

    started = time.monotonic()
    with pytest.raises(ReauthenticationRequired) as caught:
        session.refresh()
    elapsed = time.monotonic() - started

    message = str(caught.value)
    assert f"An earlier attempt of this same refresh never got Pleo's reply ({reason})" in message
    assert "the reply carrying the new ones was lost, so the retry counted as reuse" in message
    assert f"--store file:{store.path}" in message  # and how to log in again
    counters = emulator.counters
    assert (counters.token_requests, counters.refresh_grants, counters.reuse_detections) == (
        2,
        1,
        1,
    )
    assert holders == [os.getpid(), os.getpid()]  # both requests ran under this process's lock
    assert elapsed <= BUDGET
    assert asked == [1]
    assert store.load() is None

    # Every later caller is told the same, and nothing more is sent.
    with pytest.raises(ReauthenticationRequired, match="the retry counted as reuse"):
        session.get("/v2/employees")
    with pytest.raises(ReauthenticationRequired, match="the retry counted as reuse"):
        session.refresh()
    assert asked == [1]
    assert emulator.counters.token_requests == 2
    assert emulator.counters.api_requests == 0


def test_threads_waiting_on_a_refresh_whose_reply_was_lost_all_get_the_same_reason(
    emulator: Emulator, make_session: MakeSession
) -> None:
    before = expired(emulator)
    asked: list[int] = []
    emulator.inject_fault(EndpointFault(after_grant=True, drop=True))
    session = session_for(
        make_session,
        emulator,
        MemoryStore(),
        before,
        on_reauthentication_required=lambda: asked.append(1),
    )
    barrier = threading.Barrier(8)
    outcomes: list[BaseException | int] = []

    def call() -> None:
        barrier.wait()
        try:
            outcomes.append(session.get("/v2/employees").status_code)
        except Exception as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert len(outcomes) == 8
    for outcome in outcomes:
        assert isinstance(outcome, ReauthenticationRequired)
        assert "the retry counted as reuse" in str(outcome)
    assert asked == [1]
    counters = emulator.counters
    assert (counters.token_requests, counters.reuse_detections, counters.api_requests) == (2, 1, 0)


# -- a second process waits on the lock through the whole lost-reply refresh -------------------

_CHILD = textwrap.dedent(
    """
    import fcntl, json, sys
    from pleo_auth import FileStore, PleoAuthError, PleoSession, ReauthenticationRequired
    from pleo_auth.stores.redis import RedisStore

    kind, where, key, token_url, api_url, client_id, secret = sys.argv[1:8]
    announced = []

    def announce():
        if not announced:
            announced.append(1)
            print("blocked", flush=True)

    if kind == "file":
        store = FileStore(where)
        original = fcntl.flock

        def flock(fd, operation):
            try:
                return original(fd, operation)
            except BlockingIOError:
                announce()  # the refresh lock is taken: this process now waits for it
                raise

        fcntl.flock = flock
    else:
        import redis

        class Spy(redis.Redis):
            def set(self, name, value, *args, **kwargs):
                taken = super().set(name, value, *args, **kwargs)
                if kwargs.get("nx") and not taken:
                    announce()
                return taken

        store = RedisStore(Spy.from_url(where), key=key, check_interval=0.0)
    asked = []
    session = PleoSession(
        client_id, secret, store=store, token_url=token_url, api_url=api_url,
        on_reauthentication_required=lambda: asked.append(1),
    )
    assert session.tokens is not None
    print("ready", flush=True)
    sys.stdin.readline()
    try:
        session.refresh()
        outcome = {"outcome": "refreshed"}
    except ReauthenticationRequired as exc:
        outcome = {"outcome": "reauthenticate", "message": str(exc)}
    except PleoAuthError as exc:
        outcome = {"outcome": type(exc).__name__, "message": str(exc)}
    outcome["asked"] = len(asked)
    print(json.dumps(outcome), flush=True)
    session.close()
    """
)


class Child:
    """A child process running _CHILD, read line by line with timeouts."""

    def __init__(self, args: list[str]):
        self.process = subprocess.Popen(
            [sys.executable, "-c", _CHILD, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        assert self.process.stdout is not None
        threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def line(self, timeout: float = 60.0) -> str | None:
        """The next line; a generous timeout that only bounds a failure."""
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            return None

    def send(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text + "\n")
        self.process.stdin.flush()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(30)


@contextlib.contextmanager
def child(args: list[str]) -> Iterator[Child]:
    running = Child(args)
    try:
        yield running
    finally:
        running.close()


class RecordingRedis(redis.Redis):
    """A real client that remembers the lock values it managed to set."""

    taken: list[str]

    def set(self, name: Any, value: Any, *args: Any, **kwargs: Any) -> Any:
        result = super().set(name, value, *args, **kwargs)
        if kwargs.get("nx") and result:
            self.taken.append(value.decode() if isinstance(value, bytes) else str(value))
        return result


def redis_holder(client: redis.Redis, lock_key: str) -> tuple[str | None, int]:
    value = client.get(lock_key)
    ttl = client.pttl(lock_key)
    return (value.decode() if isinstance(value, bytes) else value), int(ttl)


@pytest.mark.parametrize("kind", ["file", "redis"])
def test_a_process_waiting_on_the_lock_never_refreshes_during_a_lost_reply_and_its_retry(
    emulator: Emulator,
    make_session: MakeSession,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    kind: str,
) -> None:
    key = f"test:{uuid.uuid4().hex}"
    checks: list[object] = []
    if kind == "file":
        if not os.path.exists("/proc/locks"):
            pytest.skip("needs Linux /proc/locks to name a lock's holder")
        path = tmp_path / "tokens.json"
        store: TokenStore = FileStore(path)
        where = str(path)

        def check() -> object:
            return flock_holder(FileStore(path).lock_path)

        ours: Callable[[], object] = os.getpid
    else:
        where = request.getfixturevalue("redis_url")
        client = RecordingRedis.from_url(where)
        client.taken = []
        store = RedisStore(client, key=key, check_interval=0.0)
        lock_key = f"{key}:lock"

        def check() -> object:
            value, ttl = redis_holder(client, lock_key)
            return value if ttl > 0 else None

        def ours() -> object:
            return client.taken[-1] if client.taken else "nobody"

    before = issued(emulator)
    store.save(before)
    args = [kind, where, key, emulator.token_url, emulator.api_url, emulator.client_id]
    args.append(emulator.client_secret or "")
    with child(args) as other:
        assert other.line() == "ready"
        blocked: list[str | None] = []

        def hook(grant_type: str | None) -> None:
            checks.append((check(), ours()))
            if len(checks) == 1:
                # This process holds the lock: start the other one's refresh, and go
                # on only once it is waiting for the lock.
                other.send("go")
                blocked.append(other.line())

        emulator.set_token_request_hook(hook)
        emulator.inject_fault(EndpointFault(after_grant=True, reset=True))
        # A long timeout: the first request waits in the hook for the other process.
        session = session_for(make_session, emulator, store, before, refresh_timeout=30.0)

        with pytest.raises(ReauthenticationRequired, match="the retry counted as reuse"):
            session.refresh()
        result = other.line()

    assert blocked == ["blocked"]
    assert len(checks) == 2
    for holder, mine in checks:
        assert holder == mine  # held by this process, at both token requests
    assert result is not None
    outcome = json.loads(result)
    assert outcome["outcome"] == "reauthenticate"  # it found the store cleared
    assert outcome["asked"] == 1
    counters = emulator.counters
    assert (counters.token_requests, counters.refresh_grants, counters.reuse_detections) == (
        2,
        1,
        1,
    )
    assert store.load() is None


# -- the Redis lease: no retry starts that could outlive it ------------------------------------


class LeaseRecordingRedisStore(RedisStore):
    """A real RedisStore that remembers the leases it granted."""

    leases: list[Lease]

    @contextlib.contextmanager
    def lock(self, *, timeout: float, lease: float) -> Iterator[Lease]:
        with super().lock(timeout=timeout, lease=lease) as granted:
            self.leases.append(granted)
            yield granted


def test_no_retry_starts_when_the_redis_lease_would_run_out_first(
    emulator: Emulator, make_session: MakeSession, redis_url: str
) -> None:
    clock = FakeClock()
    store = LeaseRecordingRedisStore(
        redis_url, key=f"test:{uuid.uuid4().hex}", check_interval=0.0, clock=clock
    )
    store.leases = []
    before = TokenSet.from_response(emulator.issue_tokens(), now=clock.time())

    def late(grant_type: str | None) -> None:
        deadline = store.leases[-1].deadline
        assert deadline is not None
        # Half an attempt's timeout of lease left once this attempt fails.
        clock.advance(deadline - clock.monotonic() - TIMEOUT / 2)

    emulator.set_token_request_hook(late)
    emulator.inject_fault(EndpointFault(status=503), count=ATTEMPTS)
    session = session_for(make_session, emulator, store, before, clock=clock)

    with pytest.raises(RefreshError, match="lease runs out before another attempt") as caught:
        session.refresh()

    assert caught.value.retryable is True
    assert emulator.counters.token_requests == 1
    assert store.load() == before
    assert current(emulator, before)
