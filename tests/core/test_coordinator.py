"""The refresh protocol (pleo_auth._coordinator), driven through PleoSession.

One coordinator per stored tokens per process; one refresh at a time; waiting
requests get its result; in-flight requests are drained; rotations made by
other processes are adopted rather than repeated.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from keyrings.alt.file import PlaintextKeyring
from requests.adapters import HTTPAdapter
from support.session_helpers import (
    MakeSession,
    TimerlessClock,
    bearer,
    issued,
    scheduled,
    stopped,
)

from pleo_auth import (
    FileStore,
    KeyringStore,
    Lease,
    MemoryStore,
    ReauthenticationRequired,
    RefreshError,
    TokenSet,
    TokenStore,
    TokenStoreError,
    _scheduler,
)
from pleo_auth._clock import SYSTEM_CLOCK, FakeClock
from pleo_auth._scheduler import WORKERS
from pleo_auth.testing import Emulator, Fault

REPO = Path(__file__).resolve().parents[2]

# -- helpers -----------------------------------------------------------------------------


class GatedStore(MemoryStore):
    """A MemoryStore whose next lock, once armed, is held until the test opens the gate.
    It also counts the calls to lock(), so a test can tell when a thread is waiting there."""

    def __init__(self, tokens: TokenSet | None = None):
        super().__init__(tokens)
        self.armed = False
        self.locked = threading.Event()
        self.gate = threading.Event()
        self.entries = 0
        self._entered = threading.Condition()

    def wait_for_entries(self, count: int, timeout: float = 30.0) -> bool:
        with self._entered:
            return self._entered.wait_for(lambda: self.entries >= count, timeout)

    @contextlib.contextmanager
    def lock(self, *, timeout: float, lease: float) -> Iterator[Lease]:
        with self._entered:
            self.entries += 1
            self._entered.notify_all()
        with super().lock(timeout=timeout, lease=lease) as granted:
            hold, self.armed = self.armed, False
            if hold:
                self.locked.set()
                assert self.gate.wait(30)
            yield granted


class ConcurrencyStore(MemoryStore):
    """A MemoryStore that counts the threads inside lock() (waiting or holding) at once."""

    def __init__(self, tokens: TokenSet | None = None):
        super().__init__(tokens)
        self.inside = 0
        self.most_inside = 0
        self.saves = 0
        self._count = threading.Lock()

    @contextlib.contextmanager
    def lock(self, *, timeout: float, lease: float) -> Iterator[Lease]:
        with self._count:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
        try:
            with super().lock(timeout=timeout, lease=lease) as granted:
                yield granted
        finally:
            with self._count:
                self.inside -= 1

    def save(self, tokens: TokenSet, *, replaces: TokenSet | None = None) -> None:
        super().save(tokens, replaces=replaces)
        with self._count:
            self.saves += 1


class GatedAdapter(HTTPAdapter):
    """Holds the first request it sends until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.gate = threading.Event()
        self._first = True
        self._lock = threading.Lock()

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        with self._lock:
            hold, self._first = self._first, False
        if hold:
            self.entered.set()
            assert self.gate.wait(30)
        return super().send(request, **kwargs)


class CheckingAdapter(HTTPAdapter):
    """Checks, as each request leaves, that the store already holds the token it carries."""

    def __init__(self, read_store: Callable[[], TokenSet | None]) -> None:
        super().__init__()
        self.read_store = read_store
        self.checks: list[bool] = []

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        token = str(request.headers["Authorization"]).removeprefix("Bearer ")
        stored = self.read_store()
        self.checks.append(stored is not None and stored.access_token == token)
        return super().send(request, **kwargs)


class HeldWriteKeyring(PlaintextKeyring):  # type: ignore[misc]
    """keyrings.alt's plaintext keyring, whose next write can be held half-way: the
    file truncated, as keyrings.alt's own ``open(path, "w")`` leaves it, not yet rewritten."""

    def __init__(self, file_path: Path) -> None:
        super().__init__()
        self.file_path = str(file_path)
        self.hold_next = False
        self.writing = threading.Event()
        self.finish = threading.Event()

    def set_password(self, service: str, username: str, password: str) -> None:
        if self.hold_next:
            self.hold_next = False
            with open(self.file_path, "w", encoding="utf-8"):
                pass
            self.writing.set()
            assert self.finish.wait(30)
        super().set_password(service, username, password)


def run_threads(count: int, work: Callable[[], Any]) -> tuple[list[Any], list[BaseException]]:
    """Run ``work`` on ``count`` threads started together; their results and errors."""
    barrier = threading.Barrier(count)
    results: list[Any] = []
    errors: list[BaseException] = []
    guard = threading.Lock()

    def run() -> None:
        barrier.wait()
        try:
            result = work()
        except BaseException as exc:
            with guard:
                errors.append(exc)
        else:
            with guard:
                results.append(result)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    return results, errors


class Background:
    """Runs one call on a thread and keeps its outcome."""

    def __init__(self, call: Callable[[], Any]):
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()

        def run() -> None:
            try:
                self.result = call()
            except BaseException as exc:
                self.error = exc
            finally:
                self.done.set()

        self.thread = threading.Thread(target=run)
        self.thread.start()

    def join(self) -> Any:
        self.thread.join(60)
        assert self.done.is_set()
        if self.error is not None:
            raise self.error
        return self.result


# -- one coordinator and one timer per stored tokens --------------------------------------------


def test_sessions_over_the_same_store_share_one_coordinator(
    emulator: Emulator, make_session: MakeSession
) -> None:
    store = MemoryStore(issued(emulator))
    first, second, third = (make_session(emulator, store) for _ in range(3))
    assert first._coordinator is second._coordinator
    assert second._coordinator is third._coordinator


def test_sessions_over_one_file_share_one_coordinator_through_separate_store_objects(
    emulator: Emulator, make_session: MakeSession, tmp_path: Path
) -> None:
    path = tmp_path / "tokens.json"
    first = make_session(emulator, FileStore(path), tokens=issued(emulator))
    second = make_session(emulator, FileStore(tmp_path / "." / "tokens.json"))
    assert first._coordinator is second._coordinator


def test_sessions_over_the_same_store_share_one_coordinator_on_one_timer(
    emulator: Emulator, make_session: MakeSession
) -> None:
    store = MemoryStore(issued(emulator))
    sessions = [make_session(emulator, store) for _ in range(4)]
    for session in sessions:
        assert session.get("/v2/employees").status_code == 200
    assert len({id(session._coordinator) for session in sessions}) == 1
    assert all(scheduled(session) for session in sessions)


def test_sessions_over_many_stores_add_no_threads_beyond_the_one_scheduler(
    emulator: Emulator, make_session: MakeSession
) -> None:
    sessions = [make_session(emulator, MemoryStore(issued(emulator))) for _ in range(20)]
    for session in sessions:
        assert session.get("/v2/employees").status_code == 200
    assert len({id(session._coordinator) for session in sessions}) == 20
    assert all(scheduled(session) for session in sessions)
    # 0.1 ran a thread per store; now the process has one scheduler and its workers.
    schedulers = {id(session._coordinator._entry._scheduler) for session in sessions}
    assert schedulers == {id(_scheduler.scheduler_for(SYSTEM_CLOCK))}
    assert 1 <= _scheduler.scheduler_for(SYSTEM_CLOCK).threads <= 1 + WORKERS


def test_timer_runs_until_the_last_sharing_session_closes(
    emulator: Emulator, make_session: MakeSession
) -> None:
    store = MemoryStore(issued(emulator))
    first, second = make_session(emulator, store), make_session(emulator, store)
    first.close()
    assert scheduled(second)
    assert not second._coordinator._entry.closed
    assert second.get("/v2/employees").status_code == 200
    second.close()
    assert stopped(second)


def test_a_session_made_after_all_were_closed_gets_a_fresh_coordinator(
    emulator: Emulator, make_session: MakeSession
) -> None:
    store = MemoryStore(issued(emulator))
    first = make_session(emulator, store)
    old = first._coordinator
    first.close()
    second = make_session(emulator, store)
    assert second._coordinator is not old
    assert second.get("/v2/employees").status_code == 200


def test_sessions_sharing_a_coordinator_refresh_once_for_all(
    timerless: TimerlessClock, timerless_emulator: Emulator, make_session: MakeSession
) -> None:
    store = MemoryStore()
    tokens = issued(timerless_emulator, timerless)
    sessions = [make_session(timerless_emulator, store, tokens=tokens, clock=timerless)]
    sessions += [make_session(timerless_emulator, store, clock=timerless) for _ in range(3)]
    timerless.advance(150)
    statuses = [session.get("/v2/employees").status_code for session in sessions]
    assert statuses == [200] * 4
    assert timerless_emulator.counters.refresh_grants == 1


# -- one refresh at a time ---------------------------------------------------------------------


def test_concurrent_refreshes_never_overlap(emulator: Emulator, make_session: MakeSession) -> None:
    store = ConcurrencyStore()
    session = make_session(emulator, store, tokens=issued(emulator))

    def refresh_three_times() -> None:
        for _ in range(3):
            session.refresh()

    _, errors = run_threads(8, refresh_three_times)
    assert errors == []
    assert store.most_inside == 1
    counters = emulator.counters
    assert counters.refresh_grants == store.saves - 1  # the first save was the seed
    assert counters.rejected_refreshes == 0
    assert counters.reuse_detections == 0


def test_requests_arriving_during_a_refresh_wait_for_it_then_use_the_new_token(
    timerless: TimerlessClock, timerless_emulator: Emulator, make_session: MakeSession
) -> None:
    emu = timerless_emulator
    store = GatedStore()
    session = make_session(emu, store, tokens=issued(emu, timerless), clock=timerless)
    timerless.advance(150)  # expired: whoever comes first must refresh
    store.armed = True
    first = Background(lambda: session.get("/v2/employees"))
    assert store.locked.wait(30)  # the refresh is in flight, held inside the store's lock
    later = [Background(lambda: session.get("/v2/employees")) for _ in range(8)]
    assert not any(b.done.wait(0.05) for b in later), "a request went out during the refresh"
    assert emu.counters.api_requests == 0
    store.gate.set()
    responses = [b.join() for b in [first, *later]]
    new = store.load()
    assert new is not None
    assert [r.status_code for r in responses] == [200] * 9
    assert {bearer(r) for r in responses} == {f"Bearer {new.access_token}"}
    counters = emu.counters
    assert counters.refresh_grants == 1
    assert counters.unauthorized == 0


def test_refresh_failure_is_handed_to_every_waiting_request_without_another_attempt(
    timerless: TimerlessClock, timerless_emulator: Emulator, make_session: MakeSession
) -> None:
    emu = timerless_emulator
    store = GatedStore()
    session = make_session(emu, store, tokens=issued(emu, timerless), clock=timerless)
    timerless.advance(150)
    emu.inject_fault(Fault(error="invalid_client"))
    store.armed = True
    calls = [Background(lambda: session.get("/v2/employees"))]
    assert store.locked.wait(30)
    calls += [Background(lambda: session.get("/v2/employees")) for _ in range(7)]
    store.gate.set()
    errors = []
    for call in calls:
        with pytest.raises(RefreshError) as caught:
            call.join()
        errors.append(caught.value)
    assert {error.error for error in errors} == {"invalid_client"}
    assert len({id(error) for error in errors}) == 8  # each thread gets its own exception
    assert emu.counters.token_requests == 1
    assert emu.counters.api_requests == 0


def test_dead_grant_is_handed_to_every_waiting_request_and_reported_once(
    timerless: TimerlessClock, timerless_emulator: Emulator, make_session: MakeSession
) -> None:
    emu = timerless_emulator
    calls: list[int] = []
    store = GatedStore()
    session = make_session(
        emu,
        store,
        tokens=issued(emu, timerless),
        clock=timerless,
        on_reauthentication_required=lambda: calls.append(1),
    )
    timerless.advance(150)
    emu.revoke_all()
    store.armed = True
    waiting = [Background(lambda: session.get("/v2/employees"))]
    assert store.locked.wait(30)
    waiting += [Background(lambda: session.get("/v2/employees")) for _ in range(7)]
    store.gate.set()
    for call in waiting:
        with pytest.raises(ReauthenticationRequired, match="pleo-auth login"):
            call.join()
    assert calls == [1]
    assert emu.counters.token_requests == 1
    assert store.load() is None


# -- draining requests in flight -----------------------------------------------------------------


def test_refresh_waits_for_requests_already_in_flight(
    emulator: Emulator, make_session: MakeSession
) -> None:
    old = issued(emulator)
    session = make_session(emulator, tokens=old, drain_timeout=30)
    adapter = GatedAdapter()
    session.mount(emulator.api_url + "/", adapter)
    in_flight = Background(lambda: session.get("/v2/employees"))
    assert adapter.entered.wait(30)
    refresh = Background(session.refresh)
    assert not refresh.done.wait(0.3), "the refresh did not wait for the request in flight"
    assert emulator.counters.token_requests == 0
    adapter.gate.set()
    response = in_flight.join()
    new = refresh.join()
    assert response.status_code == 200
    assert bearer(response) == f"Bearer {old.access_token}"
    assert new.access_token != old.access_token
    counters = emulator.counters
    assert counters.refresh_grants == 1
    assert counters.unauthorized == 0


def test_refresh_stops_waiting_for_requests_in_flight_after_drain_timeout(
    emulator: Emulator, make_session: MakeSession
) -> None:
    old = issued(emulator)
    session = make_session(emulator, tokens=old, drain_timeout=0.2)
    adapter = GatedAdapter()
    session.mount(emulator.api_url + "/", adapter)
    in_flight = Background(lambda: session.get("/v2/employees"))
    assert adapter.entered.wait(30)
    new = Background(session.refresh).join()  # returns although the request is still held
    assert not in_flight.done.is_set()
    assert emulator.counters.refresh_grants == 1
    adapter.gate.set()
    response = in_flight.join()  # its token died meanwhile: 401, then replayed
    assert response.status_code == 200
    assert bearer(response) == f"Bearer {new.access_token}"
    assert emulator.counters.unauthorized == 1
    assert emulator.counters.refresh_grants == 1


# -- what a successful refresh leaves behind -----------------------------------------------------


@pytest.mark.parametrize("kind", ["memory", "file"])
def test_new_tokens_are_persisted_before_any_waiting_request_is_sent(
    timerless: TimerlessClock,
    timerless_emulator: Emulator,
    make_session: MakeSession,
    tmp_path: Path,
    kind: str,
) -> None:
    emu = timerless_emulator
    path = tmp_path / "tokens.json"
    store: TokenStore = MemoryStore() if kind == "memory" else FileStore(path)
    read_store = store.load if kind == "memory" else FileStore(path).load
    session = make_session(emu, store, tokens=issued(emu, timerless), clock=timerless)
    adapter = CheckingAdapter(read_store)
    session.mount(emu.api_url + "/", adapter)
    timerless.advance(150)
    results, errors = run_threads(8, lambda: session.get("/v2/employees").status_code)
    assert errors == []
    assert results == [200] * 8
    assert adapter.checks == [True] * 8
    assert emu.counters.refresh_grants == 1


def test_a_spent_refresh_token_is_never_sent_again(
    clock: FakeClock, make_session: MakeSession
) -> None:
    with Emulator(access_token_lifetime=100, clock=clock) as emu:
        store = MemoryStore()
        session = make_session(
            emu, store, tokens=issued(emu, clock), refresh_margin=10, clock=clock
        )
        session.refresh()  # forced
        clock.advance(150)
        session.get("/v2/employees")  # on demand: expired
        session.refresh()
        for _ in range(3):
            session.refresh()
        counters = emu.counters
    assert counters.refresh_grants == 6
    assert counters.rejected_refreshes == 0
    assert counters.reuse_detections == 0


# -- other processes -----------------------------------------------------------------------------


def test_rotation_by_another_process_is_adopted_without_refreshing(
    emulator: Emulator, make_session: MakeSession, tmp_path: Path
) -> None:
    path = tmp_path / "tokens.json"
    session = make_session(emulator, FileStore(path), tokens=issued(emulator))
    assert session.get("/v2/employees").status_code == 200
    # A coordinator of its own over the same file stands in for another process.
    elsewhere = make_session(emulator, FileStore(path), token_url=emulator.token_url + "#elsewhere")
    assert elsewhere._coordinator is not session._coordinator
    rotated = elsewhere.refresh()
    response = session.get("/v2/employees")
    assert response.status_code == 200
    assert bearer(response) == f"Bearer {rotated.access_token}"
    assert session.tokens == rotated
    counters = emulator.counters
    assert counters.refresh_grants == 1
    assert counters.unauthorized == 0


def test_rotation_in_a_real_child_process_is_adopted_without_refreshing(
    emulator: Emulator, make_session: MakeSession, tmp_path: Path
) -> None:
    path = tmp_path / "tokens.json"
    session = make_session(emulator, FileStore(path), tokens=issued(emulator))
    assert session.get("/v2/employees").status_code == 200
    child = textwrap.dedent(
        """
        import os, sys
        from pleo_auth import FileStore, PleoSession
        path, token_url, api_url, client_id = sys.argv[1:5]
        with PleoSession(client_id, os.environ["PLEO_TEST_SECRET"], store=FileStore(path),
                         token_url=token_url, api_url=api_url) as session:
            session.refresh()
        """
    )
    subprocess.run(
        [sys.executable, "-c", child, str(path), emulator.token_url, emulator.api_url,
         emulator.client_id],
        check=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "PLEO_TEST_SECRET": emulator.client_secret or ""},
    )  # fmt: skip
    rotated = FileStore(path).load()
    assert rotated is not None
    response = session.get("/v2/employees")
    assert response.status_code == 200
    assert bearer(response) == f"Bearer {rotated.access_token}"
    counters = emulator.counters
    assert counters.refresh_grants == 1
    assert counters.reuse_detections == 0


def test_two_processes_refreshing_at_once_spend_the_refresh_token_once(
    timerless: TimerlessClock, timerless_emulator: Emulator, make_session: MakeSession
) -> None:
    emu = timerless_emulator
    store = GatedStore()
    here = make_session(emu, store, tokens=issued(emu, timerless), clock=timerless)
    # A coordinator of its own over the same store stands in for another process.
    there = make_session(emu, store, token_url=emu.token_url + "#elsewhere", clock=timerless)
    assert here.get("/v2/employees").status_code == 200
    assert there.get("/v2/employees").status_code == 200
    timerless.advance(150)  # both find their tokens expired
    store.armed = True
    entries = store.entries
    first = Background(lambda: here.get("/v2/employees"))
    assert store.locked.wait(30)  # one refresh holds the store's lock...
    second = Background(lambda: there.get("/v2/employees"))
    assert store.wait_for_entries(entries + 2)  # ...while the other waits for it
    store.gate.set()
    responses = [first.join(), second.join()]
    new = store.load()
    assert new is not None
    assert [r.status_code for r in responses] == [200, 200]
    assert {bearer(r) for r in responses} == {f"Bearer {new.access_token}"}
    counters = emu.counters
    assert counters.refresh_grants == 1
    assert counters.rejected_refreshes == 0
    assert counters.reuse_detections == 0


def test_refresh_returns_tokens_another_process_rotated_since_this_session_last_looked(
    emulator: Emulator, make_session: MakeSession, tmp_path: Path
) -> None:
    path = tmp_path / "tokens.json"
    session = make_session(emulator, FileStore(path), tokens=issued(emulator))
    session.get("/v2/employees")
    elsewhere = make_session(emulator, FileStore(path), token_url=emulator.token_url + "#elsewhere")
    rotated = elsewhere.refresh()
    assert session.refresh() == rotated  # as documented: no refresh is sent
    assert emulator.counters.refresh_grants == 1


def test_reader_racing_a_keyring_save_does_not_declare_the_grant_dead(
    emulator: Emulator, make_session: MakeSession, tmp_path: Path
) -> None:
    backend = HeldWriteKeyring(tmp_path / "keyring.cfg")

    def keyring_store() -> KeyringStore:
        return KeyringStore(
            "pleo-auth-test", "client", backend=backend, state_dir=tmp_path / "state"
        )

    calls: list[int] = []
    session = make_session(
        emulator,
        keyring_store(),
        tokens=issued(emulator),
        on_reauthentication_required=lambda: calls.append(1),
    )
    assert session.get("/v2/employees").status_code == 200
    elsewhere = make_session(emulator, keyring_store(), token_url=emulator.token_url + "#elsewhere")
    elsewhere.refresh()  # another process rotates: this session will reload
    backend.hold_next = True
    rotating = Background(elsewhere.refresh)  # ...and rotates again, mid-write now
    assert backend.writing.wait(30)
    request = Background(lambda: session.get("/v2/employees"))
    request.done.wait(0.5)
    backend.finish.set()
    rotating.join()
    response = request.join()
    assert response.status_code == 200
    assert calls == []


# -- callbacks -------------------------------------------------------------------------------


def test_each_session_sharing_the_coordinator_is_told_once_when_the_grant_dies(
    emulator: Emulator, make_session: MakeSession
) -> None:
    store = MemoryStore(issued(emulator))
    calls: list[str] = []
    first = make_session(emulator, store, on_reauthentication_required=lambda: calls.append("a"))
    second = make_session(emulator, store, on_reauthentication_required=lambda: calls.append("b"))
    emulator.revoke_all()
    for session in (first, second, first):
        with pytest.raises(ReauthenticationRequired):
            session.refresh()
    assert sorted(calls) == ["a", "b"]


def test_a_closed_session_is_not_told_when_the_grant_dies(
    emulator: Emulator, make_session: MakeSession
) -> None:
    store = MemoryStore(issued(emulator))
    calls: list[str] = []
    closed = make_session(emulator, store, on_reauthentication_required=lambda: calls.append("x"))
    open_ = make_session(emulator, store, on_reauthentication_required=lambda: calls.append("y"))
    closed.close()
    emulator.revoke_all()
    with pytest.raises(ReauthenticationRequired):
        open_.refresh()
    assert calls == ["y"]


def test_no_one_is_told_of_a_dead_grant_when_no_tokens_were_ever_stored(
    emulator: Emulator, make_session: MakeSession
) -> None:
    calls: list[int] = []
    session = make_session(emulator, on_reauthentication_required=lambda: calls.append(1))
    with pytest.raises(ReauthenticationRequired):
        session.get("/v2/employees")
    assert calls == []


def test_a_failing_callback_does_not_hide_the_error_or_the_other_callbacks(
    emulator: Emulator, make_session: MakeSession
) -> None:
    store = MemoryStore(issued(emulator))
    calls: list[str] = []

    def broken() -> None:
        raise RuntimeError("callback bug")

    make_session(emulator, store, on_reauthentication_required=broken)
    session = make_session(emulator, store, on_reauthentication_required=lambda: calls.append("ok"))
    emulator.revoke_all()
    with pytest.raises(ReauthenticationRequired):
        session.refresh()
    assert calls == ["ok"]


# -- store failures ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "file_mode", "message"),
    [
        (None, 0o644, "chmod 600"),
        (b"{ not json", 0o600, "does not hold pleo-auth tokens"),
    ],
)
def test_an_unusable_token_file_is_reported_as_a_store_error(
    emulator: Emulator,
    make_session: MakeSession,
    tmp_path: Path,
    content: bytes | None,
    file_mode: int,
    message: str,
) -> None:
    path = tmp_path / "tokens.json"
    FileStore(path).save(issued(emulator))
    if content is not None:
        path.write_bytes(content)
    os.chmod(path, file_mode)
    session = make_session(emulator, FileStore(path))
    with pytest.raises(TokenStoreError, match=message):
        session.get("/v2/employees")
    assert emulator.counters.api_requests == 0


def test_tokens_property_reports_an_unusable_token_file_as_a_store_error(
    emulator: Emulator, make_session: MakeSession, tmp_path: Path
) -> None:
    path = tmp_path / "tokens.json"
    FileStore(path).save(issued(emulator))
    os.chmod(path, 0o644)
    session = make_session(emulator, FileStore(path))
    with pytest.raises(TokenStoreError, match="chmod 600"):
        _ = session.tokens
