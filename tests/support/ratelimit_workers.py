"""What the rate-limit process tests run in each spawned process: a PleoSession of
its own over a shared FileStore or RedisStore, and threads that send API requests
as fast as the limit lets them until the run ends.

Processes share nothing but the store (and so the limiter's bucket) and the
emulator's URL, as separate hosts would.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from pleo_auth import FileStore, PleoSession, RateLimit, RateLimited
from pleo_auth.stores.base import TokenStore


@dataclass(frozen=True)
class LimitedRun:
    """One run: where the store is ("file" and a path, "redis" and a URL, or
    "sql" and a database URL), the client, the limit and how long the threads send."""

    kind: str
    where: str
    client_id: str
    client_secret: str | None
    token_url: str
    api_url: str
    limit: RateLimit
    threads: int = 8
    duration: float = 5.0

    #: For kind "sql": the grants table, and the company whose grant it holds.
    table: str = ""
    company: str = ""

    def store(self) -> TokenStore:
        if self.kind == "file":
            return FileStore(self.where)
        if self.kind == "sql":
            from pleo_auth.stores.sql import SQLStore

            family = SQLStore(self.where, client_id=self.client_id, table=self.table)
            return family.for_company(self.company)
        from pleo_auth import RedisStore

        return RedisStore(self.where, key="pleo-rate-test")


@dataclass
class Outcome:
    """What one process's threads saw."""

    sent: int = 0  # 200s
    limited: int = 0  # RateLimited raised
    other: int = 0  # any other status or exception
    #: The longest a call took before it raised RateLimited, and before it succeeded.
    longest_limited: float = 0.0
    longest_sent: float = 0.0
    errors: list[str] = field(default_factory=list)


def worker(run: LimitedRun, ready: Any, go: Any, results: Any) -> None:
    outcome = Outcome()
    try:
        session = PleoSession(
            run.client_id,
            run.client_secret,
            store=run.store(),
            token_url=run.token_url,
            api_url=run.api_url,
            rate_limit=run.limit,
        )
        guard = threading.Lock()

        def send(end: float) -> None:
            while time.monotonic() < end:
                started = time.monotonic()
                try:
                    response = session.get("/v2/employees")
                except RateLimited:
                    took = time.monotonic() - started
                    with guard:
                        outcome.limited += 1
                        outcome.longest_limited = max(outcome.longest_limited, took)
                    continue
                except Exception:
                    with guard:
                        outcome.other += 1
                        outcome.errors.append(traceback.format_exc(limit=3))
                    continue
                took = time.monotonic() - started
                with guard:
                    if response.status_code == 200:
                        outcome.sent += 1
                        outcome.longest_sent = max(outcome.longest_sent, took)
                    else:
                        outcome.other += 1
                        outcome.errors.append(f"HTTP {response.status_code}")

        ready.put(True)
        go.wait()
        # Every thread stops starting requests at the same moment of the run.
        end = time.monotonic() + run.duration
        threads = [threading.Thread(target=send, args=(end,)) for _ in range(run.threads)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        session.close()
    except Exception:
        outcome.errors.append(traceback.format_exc())
    results.put(outcome)


def run_processes(run: LimitedRun, processes: int = 4, timeout: float = 120.0) -> list[Outcome]:
    """Run ``processes`` workers at once; their outcomes. They start sending
    together, once every one has built its session."""
    ctx = multiprocessing.get_context("spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=worker, args=(run, ready, go, results)) for _ in range(processes)]
    for proc in procs:
        proc.start()
    try:
        for _ in procs:
            ready.get(timeout=timeout)
        go.set()
        outcomes = [results.get(timeout=run.duration + timeout) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    return outcomes
