"""What tests/stores/test_lease_processes.py runs in each spawned process: a
PleoSession that refreshes once over a RedisStore or a SQLStore, a lock holder
that stalls mid-refresh, then tries to save, and a PleoSession frozen between
reading the pair under the lock and sending its token request.

Processes share nothing but the servers' URLs (Redis or the database, and the
emulator), as hosts would. Each says what it did on ``outbox`` as tuples; times
are :func:`time.monotonic`, which every process of one machine shares.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
import traceback
from collections.abc import Iterator
from typing import Any

from pleo_auth import PleoSession, TokenSet, TokenStore, TokenStoreError


def build_store(kind: str, url: str, name: str, company: str, client_id: str, lease: float) -> Any:
    """The store of ``kind``: "redis" (the hash ``name``) or "sql" (``company``'s row
    of the table ``name``), its lock's lease ``lease`` seconds."""
    if kind == "redis":
        from pleo_auth import RedisStore

        return RedisStore(url, key=name, lease=lease)
    from pleo_auth.stores import SQLStore

    return SQLStore(url, client_id=client_id, table=name, lease=lease).for_company(company)


def session_over(store: TokenStore, client: dict[str, str]) -> PleoSession:
    """A PleoSession of the emulator's client over ``store``."""
    return PleoSession(
        client["client_id"],
        client["client_secret"],
        store=store,
        token_url=client["token_url"],
        api_url=client["api_url"],
    )


def _say_when_locking(store: TokenStore, outbox: Any) -> None:
    """Put ("locking", time) each time a caller asks for ``store``'s lock."""
    lock = store.lock

    def locking(**kwargs: Any) -> Any:
        outbox.put(("locking", time.monotonic()))
        return lock(**kwargs)

    store.lock = locking  # type: ignore[method-assign]


def refresh_once(
    kind: str,
    url: str,
    name: str,
    company: str,
    client: dict[str, str],
    lease: float,
    go: Any,
    outbox: Any,
) -> None:
    """Say ("ready",), wait for ``go``, then send one API request through a new
    PleoSession, which refreshes the stored pair (its access token expired) under
    the store's lock. Puts ("refreshed", time, status) or ("failed", traceback)."""
    try:
        store = build_store(kind, url, name, company, client["client_id"], lease)
        store.load()  # connect, and import everything, before the clock starts
        _say_when_locking(store, outbox)
        outbox.put(("ready",))
        go.wait(120)
        with session_over(store, client) as session:
            status = session.get("/v2/employees").status_code
            outbox.put(("refreshed", time.monotonic(), status))
    except BaseException:
        outbox.put(("failed", traceback.format_exc()))


class _Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def stall_then_save(
    kind: str,
    url: str,
    name: str,
    company: str,
    client_id: str,
    lease: float,
    inbox: Any,
    outbox: Any,
) -> None:
    """Take the store's lock, asking for 60 s, and load the pair, as a refresh does;
    say ("holding",) and wait for a pair on ``inbox`` (the test stops this process
    meanwhile). Then save it as the refresh of the loaded pair, and let go. Puts
    ("refused", message) or ("saved",), then ("released", warnings logged)."""
    try:
        recorder = _Recorder()
        logging.getLogger("pleo_auth").addHandler(recorder)
        store = build_store(kind, url, name, company, client_id, lease)
        with store.lock(timeout=30.0, lease=60.0):
            stored = store.load()
            assert stored is not None
            outbox.put(("holding",))
            new = TokenSet.from_response(inbox.get(timeout=120), now=time.time())
            try:
                store.save(new, replaces=stored)
                outbox.put(("saved",))
            except TokenStoreError as exc:
                outbox.put(("refused", str(exc)))
        outbox.put(("released", recorder.messages))
    except BaseException:
        outbox.put(("failed", traceback.format_exc()))


def freeze_after_reading_then_refresh(
    kind: str,
    url: str,
    name: str,
    company: str,
    client: dict[str, str],
    lease: float,
    frozen: Any,
    outbox: Any,
) -> None:
    """Send one API request through a new PleoSession, whose refresh (its access token
    expired) freezes this very process (SIGSTOP) just after it read the stored pair
    under the store's lock, before its token request: as a VM paused, or a process
    swapped out, at the worst moment. ``frozen`` is set first (an Event, which is
    set at once: a Queue's feeder thread would be frozen with the message). Once
    continued, puts ("answered", status, warnings logged), or ("failed", traceback)."""
    try:
        recorder = _Recorder()
        logging.getLogger("pleo_auth").addHandler(recorder)
        store = build_store(kind, url, name, company, client["client_id"], lease)
        store.load()  # connect, and import everything, before the freeze
        lock, load = store.lock, store.load
        holder: list[int | None] = [None]  # the thread inside the lock

        @contextlib.contextmanager
        def locking(**kwargs: Any) -> Iterator[Any]:
            with lock(**kwargs) as granted:
                holder[0] = threading.get_ident()
                try:
                    yield granted
                finally:
                    holder[0] = None

        def reading() -> Any:
            tokens = load()
            # Only the holder's own read: the scheduler's warm-up reads on a thread of
            # its own meanwhile, and freezing there would leave the holder to go on.
            if holder[0] == threading.get_ident() and not frozen.is_set():
                frozen.set()
                os.kill(os.getpid(), signal.SIGSTOP)
            return tokens

        store.lock = locking  # type: ignore[method-assign]
        store.load = reading  # type: ignore[method-assign]
        with session_over(store, client) as session:
            status = session.get("/v2/employees").status_code
        outbox.put(("answered", status, recorder.messages))
    except BaseException:
        outbox.put(("failed", traceback.format_exc()))
