"""Fork safety: a session built before ``os.fork()`` keeps working in the child.

As under ``gunicorn --preload`` or ``multiprocessing`` with the fork start method,
the child must get a fresh Condition and its own timer, must never inherit a
refresh (or a lock) that a parent thread was in the middle of, and must
coordinate with its parent through the store.

Children report through a pipe and are always reaped with a timeout, so a
deadlocked child fails the test instead of hanging it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Hashable, Iterator
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest
import redis

from pleo_auth import Lease, PleoSession, TokenSet
from pleo_auth.stores.base import TokenStore
from pleo_auth.stores.redis import RedisStore
from pleo_auth.testing import Emulator
from pleo_auth.testing._workload import WorkloadReport, build_store, run_workload

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

CHILD_TIMEOUT = 60.0  # seconds; only a deadlocked child ever gets near it
STORE_KINDS = ["file", "keyring-file", "redis"]


# -- children ------------------------------------------------------------------------------


def fork_child(body: Callable[[Connection], None]) -> tuple[int, Connection]:
    """Run ``body(pipe)`` in a forked child; the parent gets the pid and the pipe's read end."""
    reader, writer = Pipe(duplex=False)
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            reader.close()
            body(writer)
            code = 0
        except BaseException:
            with contextlib.suppress(BaseException):
                writer.send({"error": traceback.format_exc()})
        finally:
            os._exit(code)
    writer.close()
    return pid, reader


def receive(pipe: Connection, timeout: float = CHILD_TIMEOUT) -> dict[str, Any]:
    if not pipe.poll(timeout):
        pytest.fail(f"the child said nothing for {timeout:.0f}s: deadlocked?")
    message: dict[str, Any] = pipe.recv()
    assert "error" not in message, message["error"]
    return message


def reap(pid: int, timeout: float = CHILD_TIMEOUT) -> int:
    """The child's exit code; a child still running after ``timeout`` is killed and fails."""
    give_up_at = time.monotonic() + timeout
    while time.monotonic() < give_up_at:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)  # polling interval only; the bound is the timeout
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"the child was still running after {timeout:.0f}s: deadlocked")


# -- stores ----------------------------------------------------------------------------------


class ManualClock:
    """Monotonic time that moves only when the test says. It starts at the real
    monotonic time: the store's lease deadlines are read on the session's clock."""

    def __init__(self) -> None:
        self.now = time.monotonic()

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return time.time()

    def wait(self, event: threading.Event, timeout: float) -> bool:
        return event.wait(timeout)


def make_store(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock
) -> TokenStore:
    if kind == "file":
        return build_store(f"file:{tmp_path / 'tokens.json'}", client_id="c")
    if kind == "keyring-file":
        return build_store(f"keyring-file:{tmp_path / 'keyring.cfg'}", client_id="c")
    redis_url = request.getfixturevalue("redis_url")
    # A manual clock, so the parent's cached version ages exactly when the test says.
    return RedisStore(redis_url, key=f"test:{uuid.uuid4().hex}", clock=clock)


class GatedStore(TokenStore):
    """Delegates to ``inner``. Once armed, the next lock taken in this process is
    held until the test lets go: a refresh frozen with the store's lock held."""

    def __init__(self, inner: TokenStore):
        self.inner = inner
        self.armed = False
        self.inside = threading.Event()
        self.let_go = threading.Event()
        self._pid = os.getpid()

    def load(self) -> TokenSet | None:
        return self.inner.load()

    def save(self, tokens: TokenSet, *, replaces: TokenSet | None = None) -> None:
        self.inner.save(tokens, replaces=replaces)

    def clear(self, *, only: TokenSet | None = None) -> None:
        self.inner.clear(only=only)

    def version(self) -> Hashable:
        return self.inner.version()

    @contextlib.contextmanager
    def lock(self, *, timeout: float, lease: float) -> Iterator[Lease]:
        with self.inner.lock(timeout=timeout, lease=lease) as granted:
            if self.armed and os.getpid() == self._pid:
                self.armed = False
                self.inside.set()
                self.let_go.wait(CHILD_TIMEOUT)
            yield granted

    @property
    def key(self) -> Hashable:
        return ("gated", self.inner.key)

    def describe(self) -> str:
        return f"gated {self.inner.describe()}"


def session_over(
    store: TokenStore, emulator: Emulator, *, refresh_margin: float = 60.0
) -> PleoSession:
    return PleoSession(
        emulator.client_id,
        emulator.client_secret,
        store=store,
        token_url=emulator.token_url,
        api_url=emulator.api_url,
        refresh_margin=refresh_margin,
    )


def refresh_timers() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "pleo-auth-scheduler" and t.is_alive())


# -- tests ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_a_session_used_before_fork_works_in_the_child_with_its_own_timer_and_shares_rotations(
    emulator: Emulator, kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    clock = ManualClock()
    store = make_store(kind, request, tmp_path, clock)
    store.save(TokenSet.from_response(emulator.issue_tokens()))
    with session_over(store, emulator) as session:
        assert session.get("/v2/employees").status_code == 200  # tokens loaded, timer running

        def child(out: Connection) -> None:
            statuses = [session.get("/v2/employees").status_code for _ in range(5)]
            timers = refresh_timers()
            refreshed = session.refresh()
            statuses.append(session.get("/v2/employees").status_code)
            out.send({"statuses": statuses, "timers": timers, "rotated": refreshed.fingerprint})

        pid, pipe = fork_child(child)
        try:
            report = receive(pipe)
        finally:
            code = reap(pid)
        clock.now += 1.0  # Redis: the parent's cached version ages out
        assert session.get("/v2/employees").status_code == 200
        current = session.tokens
    assert code == 0
    assert report["statuses"] == [200] * 6
    assert report["timers"] == 1  # the child's own; the parent's did not survive the fork
    assert current is not None
    assert current.fingerprint == report["rotated"]  # the parent adopted the child's rotation
    counters = emulator.counters
    assert counters.refresh_grants == 1
    assert counters.rejected_refreshes == 0
    assert counters.reuse_detections == 0
    assert counters.unauthorized == 0


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_a_fork_while_a_parent_thread_holds_the_refresh_leaves_the_child_working(
    emulator: Emulator, kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    store = GatedStore(make_store(kind, request, tmp_path, ManualClock()))
    store.save(TokenSet.from_response(emulator.issue_tokens()))
    with session_over(store, emulator) as session:
        assert session.get("/v2/employees").status_code == 200
        store.armed = True
        refreshed: list[TokenSet] = []
        refresher = threading.Thread(target=lambda: refreshed.append(session.refresh()))
        refresher.start()
        assert store.inside.wait(CHILD_TIMEOUT)  # the parent thread holds the lock, mid-refresh

        def child(out: Connection) -> None:
            # The parent's refresh never finishes here: the child must not wait for it.
            statuses = [session.get("/v2/employees").status_code for _ in range(5)]
            out.send({"statuses": statuses})
            # This one needs the store's lock, which the parent still holds: it waits
            # for the parent's refresh and adopts its tokens.
            adopted = session.refresh()
            status = session.get("/v2/employees").status_code
            out.send({"adopted": adopted.fingerprint, "status": status})

        pid, pipe = fork_child(child)
        try:
            before_parent_refresh = receive(pipe)
            store.let_go.set()
            refresher.join(CHILD_TIMEOUT)
            after_parent_refresh = receive(pipe)
        finally:
            store.let_go.set()
            code = reap(pid)
    assert code == 0
    assert before_parent_refresh["statuses"] == [200] * 5
    assert len(refreshed) == 1
    assert after_parent_refresh["adopted"] == refreshed[0].fingerprint
    assert after_parent_refresh["status"] == 200
    counters = emulator.counters
    assert counters.refresh_grants == 1  # the parent's; the child adopted it
    assert counters.rejected_refreshes == 0
    assert counters.reuse_detections == 0


def test_a_forked_child_never_releases_a_redis_lock_its_parent_holds(redis_url: str) -> None:
    store = RedisStore(redis_url, key=f"test:{uuid.uuid4().hex}")
    held = store.lock(timeout=1.0, lease=60.0)
    held.__enter__()
    try:

        def child(out: Connection) -> None:
            held.__exit__(None, None, None)  # as if the child finalised the parent's lock
            with redis.Redis.from_url(redis_url) as client:
                out.send({"still_locked": client.exists(store.lock_key) == 1})

        pid, pipe = fork_child(child)
        try:
            report = receive(pipe)
        finally:
            code = reap(pid)
        with redis.Redis.from_url(redis_url) as client:
            locked_in_parent = client.exists(store.lock_key) == 1
    finally:
        held.__exit__(None, None, None)
    assert code == 0
    assert report["still_locked"] is True
    assert locked_in_parent is True


def test_a_fork_while_another_thread_is_inside_the_connection_pool_does_not_hang_the_child(
    emulator: Emulator, tmp_path: Path
) -> None:
    store = build_store(f"file:{tmp_path / 'tokens.json'}", client_id="c")
    store.save(TokenSet.from_response(emulator.issue_tokens()))
    with session_over(store, emulator) as session:
        assert session.get("/v2/employees").status_code == 200
        # A thread caught inside urllib3's pool manager at the moment of the fork,
        # as any thread sending a request is for a few microseconds.
        pools_lock = session.adapters["http://"].poolmanager.pools.lock  # type: ignore[attr-defined]
        inside, leave = threading.Event(), threading.Event()

        def hold() -> None:
            with pools_lock:
                inside.set()
                leave.wait(CHILD_TIMEOUT)

        holder = threading.Thread(target=hold)
        holder.start()
        assert inside.wait(CHILD_TIMEOUT)
        try:
            pid, pipe = fork_child(
                lambda out: out.send({"status": session.get("/v2/employees").status_code})
            )
            code = reap(pid, timeout=10.0)  # the child exits right after it reports
            report = receive(pipe, timeout=0.0)
        finally:
            leave.set()
            holder.join(CHILD_TIMEOUT)
    assert code == 0
    assert report["status"] == 200


@pytest.mark.slow
def test_fork_started_workers_of_a_parent_with_a_live_session_rotate_cleanly(
    emulator: Emulator, tmp_path: Path
) -> None:
    spec = f"file:{tmp_path / 'tokens.json'}"
    store = build_store(spec, client_id=emulator.client_id)
    store.save(TokenSet.from_response(emulator.issue_tokens()))
    # The workers' sessions join this one's coordinator, settings included.
    with session_over(store, emulator, refresh_margin=0.5) as session:
        assert session.get("/v2/employees").status_code == 200  # as a preloaded app would
        emulator.set_access_token_lifetime(1.5)
        report = run_workload(
            emulator,
            spec,
            processes=3,
            threads=4,
            duration=4.0,
            refresh_margin=0.5,
            start_method="fork",
        )
        after_workers = session.get("/v2/employees").status_code
    assert after_workers == 200
    assert_clean(report)


def assert_clean(report: WorkloadReport) -> None:
    # Bounds derived as in test_multiprocess.rotation_bounds.
    lifetime = report.token_lifetime
    shortest = lifetime - min(report.refresh_margin, lifetime / 2) - report.refresh_margin / 4
    assert report.caller_errors == 0, report.error_samples
    assert report.reuse_detections == 0
    assert report.rejected_refreshes == 0
    assert report.duration // lifetime <= report.refresh_grants <= report.span // shortest
