"""An emulator in a process of its own, so that its threads, CPU and memory are
never counted as the client's (issue 12's figures are for the client process).

The child runs a :class:`pleo_auth.testing.Emulator` and answers calls sent over
a pipe; the parent (or a client process it passes the address to) talks HTTP to
it as to Pleo. The child also notes the time of every refresh grant by company,
which the emulator's public counters do not keep, so that rotations can be
counted grant by grant.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import traceback
from collections.abc import Callable, Iterable, Sequence
from multiprocessing.connection import Connection
from typing import Any

from pleo_auth.testing import Emulator, EmulatorCounters, GrantCounters

from ._common import CLIENT_ID, CLIENT_SECRET


class _TimedEmulator(Emulator):
    """An emulator that notes (company, wall time) of every rotation of a grant.

    It hooks the emulator's private ``_rotate``, which runs under its lock for a
    new grant and for every refresh grant: good enough for a benchmark, and the
    emulator's public API has no per-grant timeline.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.rotations: list[tuple[str, float]] = []

    def _rotate(self, grant: Any) -> dict[str, Any]:
        refreshed = grant.issued_at != 0.0  # 0.0: a new grant's first pair
        reply: dict[str, Any] = super()._rotate(grant)
        if refreshed:
            self.rotations.append((grant.company, grant.issued_at))
        return reply


def _serve(conn: Connection, options: dict[str, Any]) -> None:
    emulator = _TimedEmulator(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, **options)
    emulator.start()
    conn.send(emulator.url)
    lock = threading.Lock()
    while True:
        try:
            name, args, kwargs = conn.recv()
        except EOFError:
            break
        if name == "stop":
            break
        try:
            with lock:
                result = _dispatch(emulator, name, args, kwargs)
            conn.send(("ok", result))
        except Exception as exc:  # sent back and raised there
            conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
    emulator.stop()
    conn.close()


def _dispatch(emulator: _TimedEmulator, name: str, args: Any, kwargs: Any) -> Any:
    if name == "issue_many":
        companies, scope = args
        return [emulator.issue_tokens(scope, company=company) for company in companies]
    if name == "counters_for_many":
        return {company: emulator.counters_for(company) for company in args[0]}
    if name == "rotations":
        since = args[0]
        return [(c, t) for c, t in emulator.rotations if t >= since]
    if name == "clear_rotations":
        emulator.rotations.clear()
        return None
    if name == "rss_kib":
        return process_rss_kib()
    if name == "cpu_seconds":
        times = os.times()
        return times.user + times.system
    if name == "getattr":
        return getattr(emulator, args[0])
    return getattr(emulator, name)(*args, **kwargs)


class RemoteEmulator:
    """A handle on an emulator running in a child process.

    Args:
        options: Keyword arguments of :class:`~pleo_auth.testing.Emulator`
            (``access_token_lifetime``, ``token_capacity``, ...); the client id
            and secret are the benchmarks' own.

    Thread safety:
        One call at a time per handle (a lock serialises them).
    """

    def __init__(self, **options: Any):
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(child, options), name="bench-emulator", daemon=True
        )
        self._process.start()
        child.close()
        self._lock = threading.Lock()
        if not self._conn.poll(60):
            raise RuntimeError("the emulator process did not start within 60 s")
        #: The emulator's base URL: its token endpoint is ``url + "/oauth/token"``.
        self.url: str = self._conn.recv()
        self.token_url = self.url + "/oauth/token"
        self.api_url = self.url

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self._conn.send((name, args, kwargs))
            status, result = self._conn.recv()
        if status == "error":
            raise RuntimeError(f"the emulator process failed {name}: {result}")
        return result

    def issue_many(
        self, companies: Sequence[str], scope: str = "users:read"
    ) -> list[dict[str, Any]]:
        """A new grant for each company, as :meth:`Emulator.issue_tokens` makes them."""
        replies: list[dict[str, Any]] = []
        for start in range(0, len(companies), 2000):
            replies += self._call("issue_many", list(companies[start : start + 2000]), scope)
        return replies

    @property
    def counters(self) -> EmulatorCounters:
        counters: EmulatorCounters = self._call("getattr", "counters")
        return counters

    def counters_for(self, companies: Iterable[str]) -> dict[str, GrantCounters]:
        result: dict[str, GrantCounters] = self._call("counters_for_many", list(companies))
        return result

    def rotations(self, since: float = 0.0) -> list[tuple[str, float]]:
        """(company URN, wall time) of every refresh grant made at or after ``since``."""
        result: list[tuple[str, float]] = self._call("rotations", since)
        return result

    def clear_rotations(self) -> None:
        self._call("clear_rotations")

    def reset_counters(self) -> None:
        self._call("reset_counters")

    def set_access_token_lifetime(self, seconds: float) -> None:
        self._call("set_access_token_lifetime", seconds)

    def set_token_capacity(self, capacity: Any) -> None:
        self._call("set_token_capacity", capacity)

    def cpu_seconds(self) -> float:
        """CPU time the emulator process has used so far (user and system), in seconds."""
        result: float = self._call("cpu_seconds")
        return result

    def rss_kib(self) -> int:
        """The emulator process's resident set, in KiB."""
        result: int = self._call("rss_kib")
        return result

    def close(self) -> None:
        if self._process.is_alive():
            try:
                with self._lock:
                    self._conn.send(("stop", (), {}))
            except OSError:
                pass
            self._process.join(30)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._conn.close()

    def __enter__(self) -> RemoteEmulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _status(field: str, pid: int | None) -> int:
    path = "/proc/self/status" if pid is None else f"/proc/{pid}/status"
    with open(path) as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in {path}")


def process_rss_kib(pid: int | None = None) -> int:
    """The resident set of a process (this one by default), in KiB."""
    return _status("VmRSS", pid)


def os_threads(pid: int | None = None) -> int:
    """The threads of a process (this one by default), as the kernel counts them."""
    return _status("Threads", pid)


class Child:
    """A function run in a fresh (spawned) process, with a pipe to talk to it.

    ``target(conn, *args)`` runs in the child; whatever it returns is the
    child's :meth:`result`, and an exception it raises is raised again here.
    It may also :meth:`send` and :meth:`recv` on its ``conn`` meanwhile.
    """

    def __init__(self, target: Callable[..., Any], *args: Any, name: str = "bench-client"):
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_child_main, args=(child, target, args), name=name, daemon=True
        )
        self._process.start()
        child.close()

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def send(self, message: Any) -> None:
        self._conn.send(("message", message))

    def recv(self, timeout: float = 600.0) -> Any:
        if not self._conn.poll(timeout):
            raise TimeoutError(f"the child process said nothing for {timeout:g} s")
        kind, value = self._conn.recv()
        if kind == "error":
            raise RuntimeError(f"the child process failed:\n{value}")
        return value

    def result(self, timeout: float = 1800.0) -> Any:
        """The target's return value (every message it sent before is skipped)."""
        while True:
            if not self._conn.poll(timeout):
                raise TimeoutError(f"the child process did not finish within {timeout:g} s")
            kind, value = self._conn.recv()
            if kind == "error":
                raise RuntimeError(f"the child process failed:\n{value}")
            if kind == "result":
                self._process.join(60)
                return value

    def close(self) -> None:
        if self._process.is_alive():
            self._process.kill()
        self._process.join()
        self._conn.close()

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ChildPipe:
    """The child's end of a :class:`Child`'s pipe."""

    def __init__(self, conn: Connection):
        self._conn = conn

    def send(self, value: Any) -> None:
        self._conn.send(("message", value))

    def recv(self) -> Any:
        _kind, value = self._conn.recv()
        return value


def _child_main(conn: Connection, target: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        result = target(ChildPipe(conn), *args)
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        raise
    conn.send(("result", result))
    conn.close()
