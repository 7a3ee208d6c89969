"""One "process" of the model-based test (tests/hunt/test_model.py): a child that holds
PleoSessions over one store and does what the parent tells it, one command at a time.

The parent owns the emulator, the model and the clock. Every command carries the
parent's fake time; the child moves its own clock to it before acting, so tokens,
the emulator and every process agree on what time it is. After each command the
child waits until its proactive timers are asleep again (:meth:`ModelClock.settle`),
so a command's effects are complete before the parent checks its invariants.

Nothing here prints or returns a token: replies carry statuses, error class names
and error messages (which pleo_auth keeps free of secrets).
"""

from __future__ import annotations

import contextlib
import faulthandler
import gc
import json
import logging
import os
import random
import select
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import requests

from pleo_auth import FileStore, PleoAuthError, PleoSession, TokenSet
from pleo_auth.stores.base import TokenStore
from pleo_auth.testing import FaultyStore

#: Seconds a command's timers get to fall asleep again; only a hang comes near it.
SETTLE_TIMEOUT = 10.0
#: Seconds a forked child gets for its one request and its timers' settling; only a
#: hang comes near it.
FORK_TIMEOUT = 15.0

#: The session settings every process of the model uses. Short budgets keep an
#: injected fault cheap; the token endpoint's timeout is real time.
SESSION_SETTINGS: dict[str, Any] = {
    "refresh_margin": 20.0,
    "max_refresh_attempts": 2,
    "max_refresh_time": 3.0,
    "refresh_timeout": 0.5,
    "drain_timeout": 0.5,
}

#: Real seconds an injected "timeout" delays the token endpoint's reply: longer
#: than ``refresh_timeout``, so the client gives up first.
TIMEOUT_DELAY = 0.8


#: The token endpoint's words for an attempt that reached the server but whose reply
#: never came back (``_transport_failure`` in pleo_auth/_endpoint.py). If the server
#: handled it, the reply was lost, and a retry presents the refresh token again.
UNANSWERED = (
    "timed out waiting for the reply",
    "connection closed without a reply",
    "connection reset before the reply was complete",
    "connection closed before the reply was complete",
)


class UnansweredAttempts(logging.Handler):
    """Counts the token-endpoint attempts of this process that went unanswered.

    The model injects the faults that lose a reply, and marks them lost at the
    emulator. On a loaded machine a reply can also come later than
    ``refresh_timeout`` with no fault at all: the client gives up, and the reply
    is lost just the same. This count lets the model see those.
    """

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:  # called under self.lock
        if any(reason in record.getMessage() for reason in UNANSWERED):
            self.count += 1


UNANSWERED_ATTEMPTS = UnansweredAttempts()
_endpoint_logger = logging.getLogger("pleo_auth._endpoint")
_endpoint_logger.setLevel(logging.INFO)
_endpoint_logger.addHandler(UNANSWERED_ATTEMPTS)


def _is_timer(thread: threading.Thread) -> bool:
    """The scheduler's thread: it sleeps on the clock only once no tick is queued or
    running on its workers (see pleo_auth._scheduler), so it alone tells."""
    return thread.name == "pleo-auth-scheduler" and thread.is_alive()


def _is_closing(thread: threading.Thread) -> bool:
    """The rest of a close() that runs on a thread of its own: settled once it ends."""
    return thread.name == "pleo-auth-close" and thread.is_alive()


class ModelClock:
    """Fake time that moves only when the model says so.

    Unlike :class:`pleo_auth.testing.FakeClock`, moving time never wakes a waiting
    proactive timer: its wait ends when its event is set (new tokens were
    published) or at a :meth:`tick`, which wakes every timer whose deadline has
    passed. A timer that is late is a legitimate interleaving; the model decides
    when each timer runs, so what it finds can be replayed.

    Thread safety:
        Every method may be called from any thread. After ``os.fork()`` the child
        gets a new Condition (a parent thread may have held the old one).
    """

    def __init__(self, start: float):
        self._now = float(start)
        self._cond = threading.Condition()
        self._firing = False
        self._waiting: dict[threading.Thread, tuple[threading.Event, float]] = {}
        os.register_at_fork(after_in_child=self._after_fork_in_child)

    def _after_fork_in_child(self) -> None:
        self._cond = threading.Condition()
        self._waiting = {}
        self._firing = False

    def time(self) -> float:
        with self._cond:
            return self._now

    def monotonic(self) -> float:
        return self.time()

    def set(self, now: float) -> None:
        """Move time forward to ``now`` (never back); no timer wakes for it."""
        with self._cond:
            self._now = max(self._now, float(now))

    def advance(self, seconds: float) -> float:
        with self._cond:
            self._now += seconds
            return self._now

    def wait(self, event: threading.Event, timeout: float) -> bool:
        me = threading.current_thread()
        with self._cond:
            deadline = self._now + timeout
            self._waiting[me] = (event, deadline)
            self._cond.notify_all()
            try:
                while not event.is_set():
                    if self._firing and self._now >= deadline:
                        return False
                    # Event.set() cannot notify this condition: look again shortly.
                    self._cond.wait(0.005)
                return True
            finally:
                self._waiting.pop(me, None)
                self._cond.notify_all()

    def _settled_locked(self) -> bool:
        for thread in threading.enumerate():
            if _is_closing(thread):
                return False
            if not _is_timer(thread):
                continue
            entry = self._waiting.get(thread)
            if entry is None:
                return False
            event, deadline = entry
            if event.is_set() or (self._firing and self._now >= deadline):
                return False
        return True

    def settle(self, timeout: float = SETTLE_TIMEOUT) -> bool:
        """Wait until every proactive timer of this process sleeps with nothing to do.

        Returns:
            False when one was still busy after ``timeout`` real seconds.
        """
        give_up_at = time.monotonic() + timeout
        with self._cond:
            while not self._settled_locked():
                left = give_up_at - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.005))
        return True

    def tick(self, timeout: float = SETTLE_TIMEOUT) -> bool:
        """Wake every timer whose deadline has passed, and wait until all sleep again."""
        with self._cond:
            self._firing = True
            self._cond.notify_all()
        try:
            return self.settle(timeout)
        finally:
            with self._cond:
                self._firing = False


@dataclass
class Outcome:
    """What one call did, in words free of secrets."""

    kind: str  # "status", "ok", "raised", "unexpected", "hang"
    status: int | None = None
    error: str | None = None
    retryable: bool | None = None
    message: str = ""


def _call(action: Callable[[], Any]) -> Outcome:
    try:
        result = action()
    except PleoAuthError as exc:
        return Outcome(
            "raised",
            error=type(exc).__name__,
            retryable=getattr(exc, "retryable", None),
            message=str(exc),
        )
    except Exception as exc:
        return Outcome("unexpected", error=type(exc).__name__, message=traceback.format_exc())
    if isinstance(result, requests.Response):
        return Outcome("status", status=result.status_code)
    return Outcome("ok")


class Worker:
    """The sessions of one process, and the commands the parent sends it."""

    def __init__(self) -> None:
        self.clock = ModelClock(0.0)
        self.sessions: dict[int, PleoSession] = {}
        self.next_id = 0
        self.store: FaultyStore | None = None
        self.config: dict[str, Any] = {}

    # -- lifetime -------------------------------------------------------------------

    def do_setup(self, config: dict[str, Any]) -> None:
        """Forget the last example: close every session, and open the new store."""
        self.do_close_all()
        gc.collect()
        # The proactive timer's jitter is random: the same seed in every example makes
        # a failing sequence replay the same way.
        random.seed(config.get("seed", 0))
        self.config = config
        inner: TokenStore
        if config["store"] == "file":
            inner = FileStore(config["path"])
        else:
            from pleo_auth.stores.redis import RedisStore

            inner = RedisStore(config["redis_url"], key=config["redis_key"], clock=self.clock)
        self.store = FaultyStore(inner)

    def do_close_all(self) -> None:
        sessions, self.sessions = list(self.sessions.values()), {}
        for session in sessions:
            session.close()

    def _session(self, app: int, tokens: TokenSet | None) -> PleoSession:
        config = self.config
        assert self.store is not None
        # Two apps per process: the same client and store, reached by two host names,
        # so each gets its own coordinator over the same stored tokens.
        host = "127.0.0.1" if app == 0 else "localhost"
        base = f"http://{host}:{config['port']}"
        return PleoSession(
            config["client_id"],
            config["client_secret"],
            store=self.store,
            token_url=base + "/oauth/token",
            api_url=base,
            tokens=tokens,
            clock=self.clock,
            **SESSION_SETTINGS,
        )

    def do_open(self, app: int, first_reply: dict[str, Any] | None) -> tuple[int | None, Outcome]:
        """Build a session; with ``first_reply``, pass ``tokens=`` rebuilt from it the
        way an app does at every start: ``TokenSet.from_response(reply)`` stamped now."""
        made: list[PleoSession] = []

        def build() -> None:
            tokens = None
            if first_reply is not None:
                tokens = TokenSet.from_response(first_reply, now=self.clock.time())
            made.append(self._session(app, tokens))

        outcome = _call(build)
        if not made:
            return None, outcome
        self.next_id += 1
        self.sessions[self.next_id] = made[0]
        return self.next_id, outcome

    def do_close(self, sid: int) -> None:
        self.sessions.pop(sid).close()

    def do_drop(self, sid: int, collect: bool) -> None:
        """Let go of a session without closing it, kept alive only by a reference
        cycle (a retry loop that keeps ``last_error``); collected now or whenever."""
        session = self.sessions.pop(sid)
        holder: dict[str, Any] = {"session": session}
        holder["self"] = holder
        session.__dict__["_model_cycle"] = holder
        del session, holder
        if collect:
            gc.collect()

    # -- calls --------------------------------------------------------------------

    def do_get(self, sid: int) -> Outcome:
        session = self.sessions[sid]
        return _call(lambda: session.get("/v2/employees", timeout=10))

    def do_get_many(self, sids: list[int], threads: int) -> list[Outcome]:
        """GETs from ``threads`` threads at once, over these sessions in turn."""
        sessions = [self.sessions[sid] for sid in sids]
        barrier = threading.Barrier(threads)
        outcomes: list[Outcome] = [Outcome("hang", message="never ran")] * threads

        def one(index: int) -> None:
            session = sessions[index % len(sessions)]
            barrier.wait()
            outcomes[index] = _call(lambda: session.get("/v2/employees", timeout=10))

        workers = [threading.Thread(target=one, args=(i,)) for i in range(threads)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()  # the parent's command timeout bounds a hang
        return outcomes

    def do_refresh(self, sid: int) -> Outcome:
        session = self.sessions[sid]
        return _call(session.refresh)

    def do_fork_get(self, sid: int) -> Outcome:
        """Fork; the child sends one GET through the inherited session, lets its own
        proactive timer finish what is due, and exits.

        The child's request starts a timer of its own, which refreshes at once if the
        tokens are due (the parent's timers wait for a tick). ``os._exit`` kills it
        wherever it is: a refresh cut off after Pleo rotated, before the save, would
        leave the store with the spent pair, which is a crash, not a fork (the crash
        rule is the model's for that). So the child settles first, as every command
        of a worker does.
        """
        session = self.sessions[sid]
        reader, writer = os.pipe()
        unanswered = UNANSWERED_ATTEMPTS.count
        pid = os.fork()
        if pid == 0:  # the child: never return into the command loop
            code = 1
            try:
                os.close(reader)
                if self.store is not None:
                    self.store.clear_faults()
                outcome = _call(lambda: session.get("/v2/employees", timeout=10))
                if not self.clock.settle():
                    outcome = Outcome(
                        "hang", message="a proactive timer of the forked child never slept again"
                    )
                report = [outcome.kind, outcome.status, outcome.error, outcome.message]
                report.append(UNANSWERED_ATTEMPTS.count - unanswered)
                os.write(writer, json.dumps(report).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(writer)
        return self._reap(pid, reader)

    def _reap(self, pid: int, reader: int) -> Outcome:
        pidfd = os.pidfd_open(pid)
        try:
            ready, _, _ = select.select([pidfd], [], [], FORK_TIMEOUT)
            if not ready:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGUSR1)  # dump its stacks (faulthandler)
                    ready, _, _ = select.select([pidfd], [], [], 2.0)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return Outcome("hang", message=f"forked child hung for {FORK_TIMEOUT:g}s")
            _, status = os.waitpid(pid, 0)
            report = b""
            while chunk := os.read(reader, 4096):
                report += chunk
        finally:
            os.close(pidfd)
            os.close(reader)
        if os.waitstatus_to_exitcode(status) != 0 or not report:
            return Outcome("unexpected", message=f"forked child exited with status {status}")
        kind, code, error, message, unanswered = json.loads(report)
        with UNANSWERED_ATTEMPTS.lock:  # the child's attempts count as ours
            UNANSWERED_ATTEMPTS.count += unanswered
        return Outcome(kind, status=code, error=error, message=message)

    # -- faults and time ------------------------------------------------------------

    def do_fail_next(self, operation: str, after: bool, count: int) -> None:
        assert self.store is not None
        self.store.fail_next(operation, count, after=after)  # type: ignore[arg-type]

    def do_clear_faults(self) -> None:
        assert self.store is not None
        self.store.clear_faults()

    def do_tick(self) -> bool:
        return self.clock.tick()

    def do_status(self) -> dict[str, Any]:
        """The store faults still armed, and those injected so far, by operation; and
        the token-endpoint attempts that went unanswered (forked children's included)."""
        assert self.store is not None
        operations = ("load", "save", "clear", "version", "lock")
        pending = {name: self.store.pending(name) for name in operations}  # type: ignore[arg-type]
        return {
            "pending": pending,
            "injected": self.store.injected,
            "unanswered": UNANSWERED_ATTEMPTS.count,
        }


def zygote(conn: Connection, dump_path: str) -> None:
    """A process that only forks: each ``("fork", ...)`` makes a fresh worker that
    serves commands on the same pipe until it exits; then this process reports
    ``("exited", status, True)`` and waits for the next.

    A fork of this single-threaded process, with everything imported, costs a few
    milliseconds and starts every example of the model in the same state.
    """
    dump = open(dump_path, "a")  # noqa: SIM115 - open for the life of the process
    faulthandler.register(signal.SIGUSR1, file=dump, all_threads=True)
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        if message[0] != "fork":
            conn.send(("crash", f"the zygote forks; it cannot {message[0]}", False))
            continue
        pid = os.fork()
        if pid == 0:  # the worker: never return into this loop
            code = 1
            try:
                serve(conn)
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        conn.send(("exited", os.waitstatus_to_exitcode(status), True))


def serve(conn: Connection) -> None:
    """The worker's loop: ``(name, now, args)`` in, ``(ok, result, settled)`` out."""
    # Cyclic garbage collection runs often, so a dropped session's finaliser can
    # run inside any allocation, as in a busy app.
    gc.set_threshold(100, 5, 5)
    worker = Worker()
    conn.send(("ok", os.getpid(), True))
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            worker.do_close_all()
            return
        name, now, args = message
        worker.clock.set(now)
        try:
            result = getattr(worker, "do_" + name)(*args)
        except Exception:
            conn.send(("crash", traceback.format_exc(), False))
            continue
        conn.send(("ok", result, worker.clock.settle()))
