"""What tests/stores/test_lease_processes.py runs in each spawned process: a
PleoSession that refreshes once over a RedisStore or a SQLStore, and a lock holder
that stalls mid-refresh, then tries to save.

Processes share nothing but the servers' URLs (Redis or the database, and the
emulator), as hosts would. Each says what it did on ``outbox`` as tuples; times
are :func:`time.monotonic`, which every process of one machine shares.
"""

from __future__ import annotations

import logging
import time
import traceback
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
        with PleoSession(
            client["client_id"],
            client["client_secret"],
            store=store,
            token_url=client["token_url"],
            api_url=client["api_url"],
        ) as session:
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
