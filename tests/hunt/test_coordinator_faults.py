"""Regression tests for the ways 0.1 lost the grant or hung (issue 10).

Each test is named after the promise it protects. Where the fault is real (a full
disk, a garbage collector running inside a constructor, a stopped Redis, a process
restart), the test uses the real thing: processes of their own run the scenarios in
``coordinator_workers.py`` under a timeout, so a hang fails the test instead of
hanging the run.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import math
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from pleo_auth import (
    ConfigurationError,
    FileStore,
    MemoryStore,
    PleoSession,
    TokenSet,
    TokenStoreError,
)
from pleo_auth._clock import FakeClock
from pleo_auth._registry import REGISTRY
from pleo_auth.stores.redis import RedisStore
from pleo_auth.testing import Emulator, redis_server

WORKERS = Path(__file__).parents[1] / "support" / "coordinator_workers.py"


def run_worker(scenario: str, timeout: float = 90.0, **args: Any) -> dict[str, Any]:
    """Run a scenario in a process of its own; fail (never hang) if it does not end."""
    try:
        done = subprocess.run(
            [sys.executable, str(WORKERS), scenario, json.dumps(args)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"the {scenario} worker hung for {timeout:.0f}s")
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def emulator_args(emu: Emulator, **more: Any) -> dict[str, Any]:
    return {
        "client_id": emu.client_id,
        "client_secret": emu.client_secret,
        "token_url": emu.token_url,
        "api_url": emu.api_url,
        **more,
    }


class SteppingClock(FakeClock):
    """A fake clock the test moves straight to the timer's next deadline: a
    discrete-event run of the proactive timer, as fast as the machine allows and
    the same on a slow one."""

    def __init__(self) -> None:
        super().__init__()
        self._gate = threading.Condition()
        self._entered = 0
        self._deadline = math.inf

    def wait(self, event: threading.Event, timeout: float) -> bool:
        with self._gate:
            self._entered += 1
            self._deadline = self.time() + timeout
            self._gate.notify_all()
        return super().wait(event, timeout)

    def next_sleep(self, after: int, timeout: float = 20.0) -> tuple[int, float]:
        """Wait until the timer sleeps again after sleep number ``after``; its number
        and deadline. Fails if the timer never sleeps: it is spinning."""
        with self._gate:
            if not self._gate.wait_for(lambda: self._entered > after, timeout):
                pytest.fail("the proactive timer never went back to sleep")
            return self._entered, self._deadline


# -- 1. a failed store write ------------------------------------------------------------


@pytest.mark.slow
def test_a_save_that_fails_on_a_full_disk_never_leads_to_the_spent_token_being_presented(
    tmp_path: Path,
) -> None:
    with Emulator(access_token_lifetime=4) as emu:
        store = FileStore(tmp_path / "tokens.json")
        store.save(TokenSet.from_response(emu.issue_tokens()))
        result = run_worker(
            "failed_save", **emulator_args(emu, path=str(store.path), margin=1.0, requests=10)
        )
        counters = emu.counters
    assert result["save_failed"], "RLIMIT_FSIZE did not make the save fail"
    assert result["spent_withdrawn"]
    assert result["written_back"], "the timer never wrote the new pair back"
    assert result["forced_is_new"]
    assert result["store_holds_forced"]
    assert result["statuses"] == [200] * 10
    assert counters.reuse_detections == 0
    assert counters.rejected_refreshes == 0
    assert counters.refresh_grants == 2  # the refresh whose save failed, and refresh()


class FailingSaves(MemoryStore):
    """A MemoryStore whose next ``failures`` saves fail, as a Redis blip would."""

    failures = 0

    def save(self, tokens: TokenSet, *, replaces: TokenSet | None = None) -> None:
        if self.failures:
            self.failures -= 1
            raise TokenStoreError("injected: the store is unreachable", retryable=True)
        super().save(tokens, replaces=replaces)


def test_after_a_failed_save_refresh_never_adopts_the_spent_stored_pair(
    emulator: Emulator, make_session: Any
) -> None:
    first = TokenSet.from_response(emulator.issue_tokens())
    store = FailingSaves(first)
    session = make_session(emulator, store)
    store.failures = 1000  # down for longer than the refresh's own save attempts
    with pytest.raises(TokenStoreError):
        session.refresh()
    held = session.tokens
    assert held is not None
    assert held.refresh_token != first.refresh_token
    assert store.load() is None  # the spent pair is withdrawn: nobody refreshes from it
    # A refresh now must try to write the held pair back, failing: nothing is spent.
    with pytest.raises(TokenStoreError):
        session.refresh()
    assert session.tokens == held
    store.failures = 0  # back: the write-back succeeds, then the held pair is spent
    newest = session.refresh()
    assert newest.refresh_token not in (first.refresh_token, held.refresh_token)
    assert store.load() == newest
    assert session.get("/v2/employees").status_code == 200
    counters = emulator.counters
    assert (counters.refresh_grants, counters.reuse_detections) == (2, 0)
    assert counters.rejected_refreshes == 0


def test_a_process_that_finds_a_spent_pair_in_the_store_does_not_adopt_it_over_its_own(
    emulator: Emulator, make_session: Any
) -> None:
    first = TokenSet.from_response(emulator.issue_tokens())
    store = FailingSaves(first)
    session = make_session(emulator, store)
    store.failures = 1000
    with pytest.raises(TokenStoreError):
        session.refresh()
    store.failures = 0
    held = session.tokens
    # Someone rewrites the spent pair (a restore from a backup): the version moves.
    store.save(first)
    assert session.tokens == held
    assert session.get("/v2/employees").status_code == 200
    assert emulator.counters.reuse_detections == 0


def test_a_blip_during_the_save_is_ridden_out_while_the_lock_is_still_held(
    emulator: Emulator, make_session: Any
) -> None:
    store = FailingSaves(TokenSet.from_response(emulator.issue_tokens()))
    session = make_session(emulator, store)
    store.failures = 2
    new = session.refresh()
    assert store.load() == new
    assert store.failures == 0


def test_closing_the_last_session_writes_back_a_pair_a_failed_save_left_in_memory(
    emulator: Emulator,
) -> None:
    first = TokenSet.from_response(emulator.issue_tokens())
    store = FailingSaves(first)
    session = PleoSession(
        emulator.client_id, emulator.client_secret, store=store,
        token_url=emulator.token_url, api_url=emulator.api_url,
    )  # fmt: skip
    store.failures = 1000
    with pytest.raises(TokenStoreError):
        session.refresh()
    held = session.tokens
    store.failures = 0
    session.close()  # a cron job ending right after the failed save
    assert held is not None
    assert store.load() == held
    assert emulator.counters.refresh_grants == 1


def test_a_pair_left_unsaved_outlives_the_last_session_and_the_next_session_takes_it_up(
    emulator: Emulator,
) -> None:
    first = TokenSet.from_response(emulator.issue_tokens())
    store = FailingSaves(first)
    settings = {
        "store": store,
        "token_url": emulator.token_url,
        "api_url": emulator.api_url,
    }
    session = PleoSession(emulator.client_id, emulator.client_secret, **settings)
    store.failures = 1000
    with pytest.raises(TokenStoreError):
        session.refresh()
    held = session.tokens
    assert held is not None
    session.close()  # an app restarting in-process while the store still refuses writes
    assert store.load() is None  # the spent pair was withdrawn; the live one is in memory
    again = PleoSession(emulator.client_id, emulator.client_secret, **settings)
    try:
        assert again.tokens == held
        assert again.get("/v2/employees").status_code == 200
        store.failures = 0
    finally:
        again.close()  # the store takes writes again: the close writes the pair back
    assert store.load() == held
    counters = emulator.counters
    assert counters.refresh_grants == 1
    assert counters.reuse_detections == 0
    assert counters.rejected_refreshes == 0


def test_a_lingering_pair_is_written_back_by_the_timer_once_the_store_takes_writes(
    emulator: Emulator,
) -> None:
    first = TokenSet.from_response(emulator.issue_tokens())
    store = FailingSaves(first)
    clock = FakeClock()
    session = PleoSession(
        emulator.client_id, emulator.client_secret, store=store, clock=clock,
        token_url=emulator.token_url, api_url=emulator.api_url,
    )  # fmt: skip
    key = (store.key, emulator.token_url, emulator.client_id)
    store.failures = 1000
    with pytest.raises(TokenStoreError):
        session.refresh()
    held = session.tokens
    session.close()
    lingering = REGISTRY.get(key)
    assert lingering is not None
    assert lingering.owes_write_back
    store.failures = 0
    written = threading.Event()
    saved = store.save

    def save(tokens: TokenSet, *, replaces: TokenSet | None = None) -> None:
        saved(tokens, replaces=replaces)
        written.set()

    store.save = save  # type: ignore[method-assign]
    clock.advance(2.0)  # past the pause between write-back attempts: the timer wakes
    assert written.wait(10), "the lingering timer never wrote the pair back"
    assert store.load() == held
    clock.advance(2.0)  # its next pass: the registry closes the coordinator
    deadline = threading.Event()
    for _ in range(200):
        if REGISTRY.get(key) is None:
            break
        deadline.wait(0.05)
    assert REGISTRY.get(key) is None, "the coordinator lingered after its write-back"
    assert emulator.counters.refresh_grants == 1


@pytest.mark.slow
@pytest.mark.parametrize("heal", [True, False], ids=["store-back-by-exit", "store-still-down"])
def test_a_process_exiting_while_it_owes_a_write_back_makes_a_last_attempt(
    emulator: Emulator, tmp_path: Path, heal: bool
) -> None:
    path = tmp_path / "tokens.json"
    first = TokenSet.from_response(emulator.issue_tokens())
    FileStore(path).save(first)
    done = subprocess.run(
        [
            sys.executable, str(WORKERS), "exit_owing_write_back",
            json.dumps(emulator_args(emulator, path=str(path), heal=heal)),
        ],
        capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "injected" in json.loads(done.stdout.strip().splitlines()[-1])["refused"]
    assert first.refresh_token not in done.stderr
    assert emulator.counters.refresh_grants == 1
    stored = FileStore(path).load()
    if heal:
        # atexit wrote the live pair back: the grant goes on in the next process.
        assert stored is not None
        assert emulator.is_current(stored.access_token, stored.refresh_token)
        assert "were never saved" not in done.stderr
        with PleoSession(
            emulator.client_id, emulator.client_secret, store=FileStore(path),
            token_url=emulator.token_url, api_url=emulator.api_url,
        ) as session:  # fmt: skip
            session.refresh()
        assert emulator.counters.refresh_grants == 2
        assert emulator.counters.reuse_detections == 0
    else:
        # Nothing could be saved: the loss is said plainly, and nothing spent is left.
        assert stored is None
        assert "were never saved" in done.stderr
        assert "a person must log in again" in done.stderr


# -- 2. a session collected by the garbage collector ------------------------------------


def test_sessions_collected_in_reference_cycles_never_deadlock_session_construction(
    emulator: Emulator, tmp_path: Path
) -> None:
    # A collector more eager than the default (700, 10, 10) makes a collection inside
    # the registry's lock certain within a few sessions rather than likely.
    result = run_worker(
        "collected_sessions",
        timeout=60,
        **emulator_args(
            emulator, directory=str(tmp_path), sessions=100, tenants=5, gc_threshold=(50, 5, 5)
        ),
    )
    assert result["built"] == 100


# -- 4. tokens= rebuilt from the first login at every start -----------------------------


@pytest.mark.slow
def test_passing_the_first_login_reply_at_every_start_keeps_the_rotated_tokens(
    tmp_path: Path,
) -> None:
    with Emulator(access_token_lifetime=2) as emu:
        first_reply = emu.issue_tokens()
        args = emulator_args(
            emu, path=str(tmp_path / "tokens.json"), first_reply=first_reply, margin=1.0
        )
        runs = [run_worker("restart_with_first_reply", seconds=2.5, **args) for _ in range(2)]
        counters = emu.counters
    for run in runs:
        assert run["statuses"]
        assert set(run["statuses"]) == {200}
    assert counters.reuse_detections == 0
    assert counters.rejected_refreshes == 0
    assert counters.refresh_grants >= 2  # the first run rotated, so the reply was spent


def test_tokens_that_a_stored_pair_replaced_are_never_seeded_over_it(
    emulator: Emulator, make_session: Any
) -> None:
    login = TokenSet.from_response(emulator.issue_tokens(), now=1000.0)
    store = MemoryStore()
    make_session(emulator, store, tokens=login).refresh()
    rotated = store.load()
    assert rotated is not None
    rebuilt = TokenSet.from_response(
        {"access_token": login.access_token, "refresh_token": login.refresh_token,
         "expires_in": 3600},
        now=rotated.expires_at + 10_000,  # stamped later than anything stored
    )  # fmt: skip
    make_session(emulator, store, tokens=rebuilt)
    assert store.load() == rotated


# -- 5 and 6. a store that cannot be reached -------------------------------------------


@contextlib.contextmanager
def stoppable_redis() -> Iterator[tuple[str, contextlib.ExitStack]]:
    with contextlib.ExitStack() as server:
        yield server.enter_context(redis_server()), server


def test_the_timer_waits_out_a_cooldown_when_the_store_is_down_instead_of_spinning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = SteppingClock()
    # Due within one 30 s slice of the timer's wait: 40 s tokens are due after 15-20 s.
    with (
        Emulator(access_token_lifetime=40, clock=clock) as emu,
        stoppable_redis() as (
            url,
            server,
        ),
    ):
        store = RedisStore(url, check_interval=0)
        store.save(TokenSet.from_response(emu.issue_tokens(), now=clock.time()))
        session = PleoSession(
            emu.client_id, emu.client_secret, store=store, token_url=emu.token_url,
            api_url=emu.api_url, clock=clock, refresh_margin=60,
        )  # fmt: skip
        try:
            slept, deadline = clock.next_sleep(0)  # loaded, asleep until the tokens are due
            server.close()  # Redis stops
            caplog.clear()
            clock.advance(deadline - clock.time())
            slept, deadline = clock.next_sleep(slept)
            cooldown = deadline - clock.time()
            records = [r for r in caplog.records if r.name.startswith("pleo_auth")]
        finally:
            session.close()
    assert cooldown == pytest.approx(5.0)  # min(5, refresh_margin / 4)
    assert len(records) <= 3, [r.getMessage() for r in records]
    assert emu.counters.refresh_grants == 0


def test_requests_with_a_live_token_go_out_while_the_store_is_unreachable() -> None:
    with Emulator(access_token_lifetime=3600) as emu, stoppable_redis() as (url, server):
        store = RedisStore(url, check_interval=0)
        store.save(TokenSet.from_response(emu.issue_tokens()))
        session = PleoSession(
            emu.client_id, emu.client_secret, store=store, token_url=emu.token_url,
            api_url=emu.api_url,
        )  # fmt: skip
        try:
            assert session.get("/v2/employees").status_code == 200
            server.close()
            statuses = [session.get("/v2/employees").status_code for _ in range(20)]
        finally:
            session.close()
    assert statuses == [200] * 20


def test_a_first_request_with_the_store_unreachable_raises_the_stores_error() -> None:
    with Emulator() as emu, stoppable_redis() as (url, server):
        store = RedisStore(url, check_interval=0)
        server.close()
        session = PleoSession(
            emu.client_id, emu.client_secret, store=store, token_url=emu.token_url,
            api_url=emu.api_url,
        )  # fmt: skip
        try:
            with pytest.raises(TokenStoreError):
                session.get("/v2/employees")
        finally:
            session.close()


# -- 10. a 401 that a refresh does not cure --------------------------------------------


class _RefusingGateway(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(401)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def refusing_gateway() -> Iterator[str]:
    """An API that answers 401 to every token, as a gateway with a scope problem does."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RefusingGateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_fresh_token_refused_with_401_costs_one_refresh_per_rotation_across_processes(
    emulator: Emulator, refusing_gateway: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = FileStore(tmp_path / "tokens.json")
    store.save(TokenSet.from_response(emulator.issue_tokens()))
    session = PleoSession(
        emulator.client_id, emulator.client_secret, store=store,
        token_url=emulator.token_url, api_url=refusing_gateway,
    )  # fmt: skip
    try:
        statuses = [session.get("/v2/employees").status_code for _ in range(10)]
    finally:
        session.close()
    other = run_worker(
        "refused_fresh_token",
        **emulator_args(emulator, api_url=refusing_gateway, path=str(store.path), requests=10),
    )
    assert statuses == [401] * 10
    assert other["statuses"] == [401] * 10
    assert emulator.counters.refresh_grants == 1
    assert emulator.counters.reuse_detections == 0
    assert any("though it is fresh" in r.getMessage() for r in caplog.records)


# -- 12. the timer's jitter stays inside the margin ------------------------------------


@pytest.mark.parametrize("lifetime", [2, 3, 10, 30, 900])
def test_the_timer_refreshes_once_per_effective_rotation_whatever_the_token_lifetime(
    lifetime: float,
) -> None:
    margin = min(60.0, lifetime / 2)  # the effective margin
    spread = min(15.0, margin / 4)  # the jitter's bound
    span = 10 * lifetime
    fewest = math.floor(span / (lifetime - margin))
    most = math.ceil(span / (lifetime - margin - spread))
    clock = SteppingClock()
    with Emulator(access_token_lifetime=lifetime, clock=clock) as emu:
        session = PleoSession(
            emu.client_id, emu.client_secret, store=MemoryStore(), token_url=emu.token_url,
            api_url=emu.api_url, clock=clock,
            tokens=TokenSet.from_response(emu.issue_tokens(), now=clock.time()),
        )  # fmt: skip
        try:
            end = clock.time() + span
            slept = 0
            while clock.time() < end:
                slept, deadline = clock.next_sleep(slept)
                assert emu.counters.refresh_grants <= most
                clock.advance(min(deadline, end) - clock.time())
            grants = emu.counters.refresh_grants
        finally:
            session.close()
    assert fewest <= grants <= most
    assert emu.counters.rejected_refreshes == 0


def test_the_timer_refresh_log_is_quiet_for_healthy_short_tokens(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="pleo_auth")
    clock = SteppingClock()
    with Emulator(access_token_lifetime=3, clock=clock) as emu:
        session = PleoSession(
            emu.client_id, emu.client_secret, store=MemoryStore(), token_url=emu.token_url,
            api_url=emu.api_url, clock=clock,
            tokens=TokenSet.from_response(emu.issue_tokens(), now=clock.time()),
        )  # fmt: skip
        try:
            slept = 0
            for _ in range(20):
                slept, deadline = clock.next_sleep(slept)
                clock.advance(deadline - clock.time())
        finally:
            session.close()
    assert [r.getMessage() for r in caplog.records if r.name.startswith("pleo_auth")] == []


# -- the issuer the stored tokens record ----------------------------------------------


@pytest.fixture
def other_emulator() -> Iterator[Emulator]:
    with Emulator(access_token_lifetime=3600) as emu:
        yield emu


def _due_tokens_issued_by(emu: Emulator, *, token_url: str | None) -> TokenSet:
    """A live pair from ``emu``, due for a refresh, recording ``token_url`` as its issuer."""
    now = time.time()
    tokens = TokenSet.from_response(emu.issue_tokens(), now=now - 3600)
    return attrs.evolve(tokens, token_url=token_url, api_url=emu.api_url if token_url else None)


def test_a_session_pointed_at_another_token_endpoint_never_sends_the_pair_there_nor_clears_it(
    emulator: Emulator, other_emulator: Emulator, tmp_path: Path
) -> None:
    """Staging settings over a production store, a forgotten token_url: the stored
    pair says which endpoint issued it, and a session configured for another one
    refuses (ConfigurationError) instead of sending the refresh token there, taking
    its invalid_grant for a dead grant and deleting a pair live at its issuer."""
    store = FileStore(tmp_path / "tokens.json")
    tokens = _due_tokens_issued_by(emulator, token_url=emulator.token_url)
    store.save(tokens)
    session = PleoSession(
        other_emulator.client_id,
        other_emulator.client_secret,
        store=store,
        token_url=other_emulator.token_url,
        api_url=other_emulator.api_url,
    )
    try:
        with pytest.raises(ConfigurationError, match="were issued by") as caught:
            session.get("/v2/employees")
        with pytest.raises(ConfigurationError):
            session.refresh()
    finally:
        session.close()

    assert f"this session's token endpoint is {other_emulator.token_url}" in str(caught.value)
    assert other_emulator.counters.token_requests == 0, "the refresh token went to another server"
    assert emulator.counters.token_requests == 0
    assert store.load() == tokens, "a pair still live at its issuer was deleted"
    assert emulator.is_current(tokens.access_token, tokens.refresh_token)


@pytest.mark.parametrize("written", ["trailing slash", "capital scheme"])
def test_the_tokens_own_endpoint_written_differently_still_refreshes(
    emulator: Emulator, tmp_path: Path, written: str
) -> None:
    url = emulator.token_url
    if written == "trailing slash":
        recorded = url + "/"
    else:
        recorded = url.replace("http://127.0.0.1", "HTTP://127.0.0.1")
    store = FileStore(tmp_path / "tokens.json")
    store.save(_due_tokens_issued_by(emulator, token_url=recorded))

    with PleoSession(
        emulator.client_id, emulator.client_secret, store=store,
        token_url=emulator.token_url, api_url=emulator.api_url,
    ) as session:  # fmt: skip
        assert session.get("/v2/employees").status_code == 200

    assert emulator.counters.refresh_grants == 1


def test_tokens_that_record_no_issuer_refresh_at_the_sessions_endpoint_as_in_0_1(
    emulator: Emulator, tmp_path: Path
) -> None:
    """A 0.1 file, or a store of one's own, does not say who issued the pair:
    nothing tells, so it is refreshed where the session points, as 0.1 did."""
    store = FileStore(tmp_path / "tokens.json")
    store.save(_due_tokens_issued_by(emulator, token_url=None))

    with PleoSession(
        emulator.client_id, emulator.client_secret, store=store,
        token_url=emulator.token_url, api_url=emulator.api_url,
    ) as session:  # fmt: skip
        assert session.get("/v2/employees").status_code == 200

    assert emulator.counters.refresh_grants == 1
