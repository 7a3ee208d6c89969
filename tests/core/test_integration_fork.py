"""A forked child of a process with an Integration never inherits the token
endpoint's connections.

Bug: ``Integration`` builds one ``TokenEndpoint`` for all its companies and its
coordinators are made with ``owns_endpoint=False``, so a coordinator's
``_reset_after_fork`` skips ``endpoint.reset_connections()``, and the
integration's own at-fork handler resets only its lock and its gate. The child
therefore keeps the parent's private token-endpoint ``requests.Session``: its
pooled keep-alive sockets (two processes writing refresh requests, carrying
refresh tokens, onto one connection, each able to read the other's reply), and
its urllib3 pool-manager lock. A parent thread caught inside that pool at the
fork (as any thread sending a refresh is for a few microseconds) leaves the
lock held for ever in the child, whose first refresh then hangs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest
from support.integration_helpers import grant, integration, new_companies

from pleo_auth import FileStore
from pleo_auth.testing import Emulator

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

CHILD_TIMEOUT = 10.0  # seconds; only a deadlocked child gets near it


def _fork_child(body: Callable[[Connection], None]) -> tuple[int, Connection]:
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


def _reap(pid: int, timeout: float) -> int | None:
    """The child's exit code, or None if it was still running after ``timeout``."""
    give_up_at = time.monotonic() + timeout
    while time.monotonic() < give_up_at:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)  # polling interval only; the bound is the timeout
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


def test_a_fork_while_a_thread_is_inside_the_token_endpoint_pool_leaves_the_child_refreshing(
    emulator: Emulator, tmp_path: Path
) -> None:
    (company,) = new_companies(1)
    with integration(emulator, FileStore.family(tmp_path / "grants")) as pleo:
        pleo.add(company, grant(emulator, company, now=time.time()))
        pleo.session(company).refresh()  # the endpoint's private pool is in use
        http = pleo._endpoint._network._http
        pools_lock = http.adapters["http://"].poolmanager.pools.lock  # type: ignore[attr-defined]
        inside, leave = threading.Event(), threading.Event()

        def hold() -> None:
            with pools_lock:
                inside.set()
                leave.wait(2 * CHILD_TIMEOUT)

        holder = threading.Thread(target=hold)
        holder.start()
        assert inside.wait(CHILD_TIMEOUT)
        try:

            def child(out: Connection) -> None:
                tokens = pleo.session(company).refresh()
                out.send({"expires_at": tokens.expires_at})

            pid, pipe = _fork_child(child)
            code = _reap(pid, CHILD_TIMEOUT)
            report: dict[str, Any] = {}
            with contextlib.suppress(EOFError):
                if code is not None and pipe.poll(0):
                    report = pipe.recv()
        finally:
            leave.set()
            holder.join(2 * CHILD_TIMEOUT)
    assert code is not None, "the child's refresh hung on its parent's pool lock"
    assert code == 0, report.get("error")
    assert emulator.counters.refresh_grants == 2
    assert emulator.counters.rejected_refreshes == 0
