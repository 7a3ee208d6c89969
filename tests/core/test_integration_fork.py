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
import gc
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
import requests
from support.integration_helpers import grant, integration, new_companies

from pleo_auth import FileStore, PleoSession
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


def _refresh_in_a_child_while_a_thread_holds_the_pool(
    session: PleoSession, http: requests.Session
) -> tuple[int | None, dict[str, Any]]:
    """Fork while a thread of ours holds ``http``'s pool-manager lock, and refresh
    ``session``'s grant in the child: its exit code (None: it hung) and report."""
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
            tokens = session.refresh()
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
    return code, report


def test_a_fork_while_a_thread_is_inside_the_token_endpoint_pool_leaves_the_child_refreshing(
    emulator: Emulator, tmp_path: Path
) -> None:
    (company,) = new_companies(1)
    with integration(emulator, FileStore.family(tmp_path / "grants")) as pleo:
        pleo.add(company, grant(emulator, company, now=time.time()))
        pleo.session(company).refresh()  # the endpoint's private pool is in use
        code, report = _refresh_in_a_child_while_a_thread_holds_the_pool(
            pleo.session(company), pleo._endpoint._network._http
        )
    assert code is not None, "the child's refresh hung on its parent's pool lock"
    assert code == 0, report.get("error")
    assert emulator.counters.refresh_grants == 2
    assert emulator.counters.rejected_refreshes == 0


def test_a_grant_shared_with_an_integration_closed_and_collected_refreshes_in_a_child(
    emulator: Emulator, tmp_path: Path
) -> None:
    """Two integrations over one family share a company's coordinator, built by the
    first with its token endpoint; once the first is closed and collected, no
    integration resets that endpoint after a fork, yet the second still uses it."""
    (company,) = new_companies(1)
    family = FileStore.family(tmp_path / "grants")
    first = integration(emulator, family)
    with integration(emulator, family) as second:
        first.add(company, grant(emulator, company, now=time.time()))
        first.session(company).refresh()  # the first's endpoint's pool is in use
        session = second.session(company)
        http = session._coordinator.endpoint._network._http
        first.close()
        del first
        gc.collect()
        code, report = _refresh_in_a_child_while_a_thread_holds_the_pool(session, http)
    assert code is not None, "the child's refresh hung on its parent's pool lock"
    assert code == 0, report.get("error")
    assert emulator.counters.refresh_grants == 2
    assert emulator.counters.rejected_refreshes == 0
