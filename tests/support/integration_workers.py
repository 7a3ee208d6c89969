"""What the Integration's multi-process tests run in each spawned process.

Each worker builds its own family from a :class:`FamilySpec` (a directory, or a
Redis URL and prefix) and its own :class:`~pleo_auth.Integration`, as a separate
host would: processes share nothing but the store and the emulator's URLs.

:class:`EmulatorProcess` runs the emulator in a process of its own, for the soak
runs, where the emulator sharing the callers' interpreter (and its lock) would
measure Python's scheduling instead of the library's.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import random
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pleo_auth import FileStore, Integration, TokenSet
from pleo_auth._clock import SYSTEM_CLOCK
from pleo_auth._scheduler import scheduler_for
from pleo_auth.stores.family import TokenStoreFamily


@dataclass(frozen=True)
class FamilySpec:
    """Where a family lives: ``kind`` "file" (``where`` a directory), "redis"
    (``where`` a URL, with ``prefix``) or "sql" (``where`` a database URL, ``prefix``
    the table, keyed by ``client_id``)."""

    kind: str
    where: str
    prefix: str = ""
    client_id: str = ""

    def build(self) -> TokenStoreFamily:
        if self.kind == "file":
            return FileStore.family(self.where)
        if self.kind == "sql":
            from pleo_auth.stores import SQLStore

            return SQLStore(self.where, client_id=self.client_id, table=self.prefix)
        from pleo_auth import RedisStore

        return RedisStore.family(self.where, prefix=self.prefix)


@dataclass(frozen=True)
class Client:
    """The emulator's client and endpoints, and the Integration's options."""

    client_id: str
    client_secret: str | None
    token_url: str
    api_url: str
    options: tuple[tuple[str, Any], ...] = ()

    def integration(self, family: TokenStoreFamily) -> Integration:
        return Integration(
            self.client_id,
            self.client_secret,
            store=family,
            token_url=self.token_url,
            api_url=self.api_url,
            **dict(self.options),
        )


def settle_scheduler(timeout: float = 60.0) -> None:
    """Wait until no refresh of this process's scheduler runs: exiting in the middle
    of one would lose the pair Pleo just issued."""
    scheduler = scheduler_for(SYSTEM_CLOCK)
    with scheduler._cond:
        scheduler._cond.wait_for(lambda: not scheduler._ticking and not scheduler._ready, timeout)


# -- two logins at once -----------------------------------------------------------------


def login(
    client: Client, family: FamilySpec, company: str, tokens: dict[str, Any], barrier: Any
) -> None:
    """Store ``tokens`` as ``company``'s grant the moment every login is ready."""
    with client.integration(family.build()) as pleo:
        barrier.wait(60)
        pleo.add(company, TokenSet.from_dict(tokens))


# -- load -------------------------------------------------------------------------------


def load(
    client: Client,
    family: FamilySpec,
    companies: list[str],
    threads: int,
    outbox: Any,
    go: Any,
    stop: Any,
) -> None:
    """``threads`` threads calling random companies from ``go`` until ``stop``;
    puts ("result", counts) or ("failed", traceback) in ``outbox``."""
    try:
        outbox.put(("result", _load(client, family, companies, threads, outbox, go, stop)))
    except BaseException:
        outbox.put(("failed", traceback.format_exc()))


def _load(
    client: Client,
    family: FamilySpec,
    companies: list[str],
    threads: int,
    outbox: Any,
    go: Any,
    stop: Any,
) -> dict[str, Any]:
    pleo = client.integration(family.build())
    errors: Counter[str] = Counter()
    samples: dict[str, str] = {}
    calls = [0] * threads
    slowest = [0.0] * threads
    guard = threading.Lock()
    barrier = threading.Barrier(threads + 1)

    # Each thread goes round every company, from its own place in a shuffled order: a
    # grant is used every len(companies) / (calls a second) seconds, where random picks
    # would leave some unused for many times that (a coupon collector's wait).
    order = companies[:]
    random.Random(os.getpid()).shuffle(order)

    def work(n: int) -> None:
        turn = itertools.islice(itertools.cycle(order), n * len(order) // threads, None)
        barrier.wait()
        while not stop.is_set():
            company = next(turn)
            started = time.monotonic()
            try:
                status = pleo.session(company).get("/v2/employees", timeout=30).status_code
                failure = None if status == 200 else f"HTTP {status}"
            except Exception as exc:
                failure, detail = type(exc).__name__, str(exc)[:300]
                with guard:
                    samples.setdefault(failure, detail)
            slowest[n] = max(slowest[n], time.monotonic() - started)
            calls[n] += 1
            if failure is not None:
                with guard:
                    errors[failure] += 1

    workers = [threading.Thread(target=work, args=(n,), daemon=True) for n in range(threads)]
    for worker in workers:
        worker.start()
    outbox.put(("ready", None))
    if not go.wait(900):  # the seed: 2,000 grants saved under their locks, on a busy database
        raise RuntimeError("never told to start")
    barrier.wait()
    for worker in workers:
        worker.join()  # each ends at its first call after stop (calls time out at 30 s)
    pleo.close()
    settle_scheduler()
    return {
        "calls": sum(calls),
        "errors": dict(errors),
        "samples": samples,
        "slowest": max(slowest),  # seconds: the longest any call took, refreshes included
    }


def run_load(
    client: Client,
    family: FamilySpec,
    companies: list[str],
    *,
    processes: int,
    threads: int,
    duration: float,
    seed: Any,
    until: Callable[[], bool] | None = None,
    within: float = 0.0,
) -> list[dict[str, Any]]:
    """Start ``processes`` load workers; once all are ready call ``seed()``, then let
    them go for ``duration`` seconds, and then, with ``until``, on until it holds
    (asked every 0.1 s) or ``within`` seconds more have passed; their results.

    ``until`` makes the run as long as what it proves needs on this machine rather
    than a length tuned to it: a loaded machine makes fewer calls a second, and the
    run goes on until they did what the test counts (the test asserts ``until()``).
    """
    ctx = multiprocessing.get_context("spawn")
    outbox = ctx.Queue()
    go, stop = ctx.Event(), ctx.Event()
    workers = [
        ctx.Process(
            target=load,
            args=(client, family, companies, threads, outbox, go, stop),
            daemon=True,
        )
        for _ in range(processes)
    ]
    try:
        for worker in workers:
            worker.start()
        for _ in workers:
            kind, payload = outbox.get(timeout=120)
            if kind == "failed":
                raise RuntimeError(f"a worker failed to start:\n{payload}")
        seed()
        go.set()
        stop.wait(duration)  # never set here: the load's length
        if until is not None:
            give_up = time.monotonic() + within
            while not until() and time.monotonic() < give_up:
                stop.wait(0.1)
        stop.set()
        results = []
        for _ in workers:
            kind, payload = outbox.get(timeout=240)
            if kind == "failed":
                raise RuntimeError(f"a worker failed:\n{payload}")
            results.append(payload)
        for worker in workers:
            worker.join(60)
        return results
    finally:
        go.set()
        stop.set()
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
                worker.join(10)
