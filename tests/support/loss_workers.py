"""What tests/hunt/test_store_loss_processes.py runs in each spawned process: a
PleoSession over its own store (Redis, or a PostgreSQL row), ``threads`` threads
calling the emulator's API until told to stop, and a record of every failure with
the time its call started (so the test can tell failures while the store was down
from failures after it came back), and of every call of the reauthentication hook.
"""

from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any

from pleo_auth import PleoSession, TokenStore


@dataclass(frozen=True)
class Where:
    """The store: ``kind`` "redis" (``url``, ``key``) or "sql" (``url`` of the
    database, ``key`` the table, ``company``, ``client_id``)."""

    kind: str
    url: str
    key: str
    company: str = ""
    client_id: str = ""

    def build(self) -> TokenStore:
        if self.kind == "redis":
            from pleo_auth import RedisStore

            return RedisStore(self.url, key=self.key)
        from pleo_auth.stores import SQLStore

        return SQLStore(self.url, client_id=self.client_id, table=self.key).for_company(
            self.company
        )


@dataclass(frozen=True)
class Client:
    client_id: str
    client_secret: str | None
    token_url: str
    api_url: str


def work(client: Client, where: Where, threads: int, outbox: Any, go: Any, stop: Any) -> None:
    """Puts ("ready", None), then ("result", record) or ("failed", traceback)."""
    import os

    if os.environ.get("LOSS_LOG"):  # debugging: pleo_auth's log of each worker
        import logging

        logging.basicConfig(
            filename=f"{os.environ['LOSS_LOG']}.{os.getpid()}",
            level=logging.DEBUG,
            format="%(created).3f %(threadName)s %(name)s %(levelname)s %(message)s",
        )
    try:
        outbox.put(("result", _work(client, where, threads, outbox, go, stop)))
    except BaseException:
        outbox.put(("failed", traceback.format_exc()))


def _work(
    client: Client, where: Where, threads: int, outbox: Any, go: Any, stop: Any
) -> dict[str, Any]:
    hooks: list[float] = []
    failures: list[tuple[float, str, bool, str]] = []  # (started, class, retryable, message)
    calls = [0] * threads
    guard = threading.Lock()
    session = PleoSession(
        client.client_id,
        client.client_secret,
        store=where.build(),
        token_url=client.token_url,
        api_url=client.api_url,
        on_reauthentication_required=lambda: hooks.append(time.time()),
    )
    barrier = threading.Barrier(threads + 1)

    def call(n: int) -> None:
        barrier.wait()
        while not stop.is_set():
            started = time.time()
            try:
                status = session.get("/v2/employees", timeout=30).status_code
                failure = None if status == 200 else (f"HTTP {status}", False, "")
            except Exception as exc:
                failure = (type(exc).__name__, bool(getattr(exc, "retryable", False)), str(exc))
            calls[n] += 1
            if failure is not None:
                with guard:
                    failures.append((started, *failure))
                stop.wait(0.05)  # a caller backs off after a failure (a test pace, not a sync)

    workers = [threading.Thread(target=call, args=(n,), daemon=True) for n in range(threads)]
    for worker in workers:
        worker.start()
    outbox.put(("ready", None))
    if not go.wait(120):
        raise RuntimeError("never told to start")
    barrier.wait()
    for worker in workers:
        worker.join(180)
    session.close()  # waits for a refresh under way to save its pair
    return {"calls": sum(calls), "failures": failures, "hooks": hooks}
