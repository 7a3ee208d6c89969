"""Part 8: processes sharing many grants through a store family (issue 12).

P processes (4) each build an ``Integration`` over the same family of stores,
``FileStore.family(directory)``, ``RedisStore.family(url)`` on a private
redis-server, or a ``SQLStore`` in a private PostgreSQL or MariaDB database
(part 9 runs those), holding G grants (2,000). In each process T threads (8) call
``integration.session(company).get("/v2/employees")`` for random companies
for a few token lifetimes of 3 s tokens. The emulator runs in a process of its
own and notes when it refreshed each company's grant.

A grant's *rotation* is a refresh grant made no sooner than that grant's
previous pair could have been due (:func:`earliest_due`, less 10% for the
clocks of two processes): a grant sooner than that replaced tokens that had no
need of it, and counts against "refresh grants per rotation".
"""

# ruff: noqa: RUF001 - the tables print ratios with a multiplication sign

from __future__ import annotations

import collections
import contextlib
import multiprocessing
import random
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._common import (
    CLIENT_ID,
    CLIENT_SECRET,
    Section,
    Table,
    Verdict,
    fmt,
    median,
    percentile,
    redis_server,
)
from ._remote import RemoteEmulator
from .many_grants import PATH, company_ids

#: The integration's default refresh_margin, which these runs keep.
REFRESH_MARGIN = 60.0


def earliest_due(lifetime: float) -> float:
    """Seconds after its issue that a pair of ``lifetime`` is due at the earliest:
    the effective margin is at most half the life, and the timer's jitter at most
    a quarter of that margin (see pleo_auth._schedule)."""
    margin = min(REFRESH_MARGIN, lifetime / 2)
    return lifetime - margin - min(15.0, REFRESH_MARGIN / 4, margin / 4)


def count_rotations(times: Sequence[float], lifetime: float) -> tuple[int, float | None]:
    """Rotations among one grant's refresh times, and the shortest gap between two.

    >>> count_rotations([10.0, 11.25, 11.5, 12.75], lifetime=3.0)
    (3, 0.25)
    """
    fold = 0.9 * earliest_due(lifetime)
    rotations = 0
    shortest: float | None = None
    previous = float("-inf")
    for when in sorted(times):
        gap = when - previous
        if gap >= fold:
            rotations += 1
        if previous != float("-inf"):
            shortest = gap if shortest is None else min(shortest, gap)
        previous = when
    return rotations, shortest


@dataclass(frozen=True)
class SharedGrantsConfig:
    """Settings of the shared-grants part.

    Attributes:
        grants: Companies, one grant each, shared by every process (G).
        processes: Client processes (P).
        threads: Caller threads per process (T).
        token_lifetime: Seconds an access token lives.
        lifetimes: How many token lifetimes the load runs (R): at least 3 rotations.
        stores: The families to run: ``"file"``, ``"redis"``, and SQLStore's
            ``"postgresql"`` and ``"mysql"`` (a private database each).
    """

    grants: int = 2_000
    processes: int = 4
    threads: int = 8
    token_lifetime: float = 3.0
    lifetimes: int = 3
    stores: tuple[str, ...] = ("file", "redis")

    @classmethod
    def quick(cls, stores: tuple[str, ...] = ("file", "redis")) -> SharedGrantsConfig:
        return cls(
            grants=40, processes=2, threads=4, token_lifetime=2.0, lifetimes=1, stores=stores
        )

    @property
    def duration(self) -> float:
        return self.lifetimes * self.token_lifetime + self.token_lifetime / 4


#: The families that live in a database (``where`` its URL): SQLStore's.
SQL_STORES = ("postgresql", "mysql")


def _family(spec: tuple[str, str]) -> Any:
    from pleo_auth import FileStore, RedisStore

    kind, where = spec
    if kind == "file":
        return FileStore.family(where)
    if kind in SQL_STORES:
        from pleo_auth.stores import SQLStore

        return SQLStore(where, client_id=CLIENT_ID)
    return RedisStore.family(where, prefix="pleo-bench:shared:")


def _worker(
    index: int,
    spec: tuple[str, str],
    url: str,
    config: SharedGrantsConfig,
    companies: Sequence[str],
    ready: Any,
    results: Any,
) -> None:
    """One client process: an Integration over the shared family, T caller threads."""
    from pleo_auth import Integration

    integration = Integration(
        CLIENT_ID, CLIENT_SECRET, store=_family(spec), token_url=url + "/oauth/token", api_url=url
    )
    errors: collections.Counter[str] = collections.Counter()
    latencies: list[float] = []
    counts = [0] * config.threads
    ready.wait()
    deadline = time.monotonic() + config.duration

    def call(thread: int) -> None:
        chooser = random.Random(index * 1000 + thread)
        while time.monotonic() < deadline:
            company = chooser.choice(companies)
            started = time.monotonic()
            try:
                integration.session(company).get(PATH, timeout=30).raise_for_status()
            except Exception as exc:  # counted by kind, reported
                errors[type(exc).__name__] += 1
            latencies.append(time.monotonic() - started)
            counts[thread] += 1

    callers = [threading.Thread(target=call, args=(n,)) for n in range(config.threads)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    integration.close()
    results.put({"requests": sum(counts), "errors": dict(errors), "latencies": latencies})


def run_store(
    emulator: RemoteEmulator, config: SharedGrantsConfig, kind: str, where: str, seed: int
) -> dict[str, Any]:
    """One run over one family: seed the grants, run the processes, count."""
    from pleo_auth.tokens import TokenSet

    companies = company_ids(config.grants, seed=seed)
    family = _family((kind, where))
    if kind in SQL_STORES:
        family.create_table()
    emulator.set_access_token_lifetime(config.token_lifetime)
    for start in range(0, len(companies), 1000):
        share = companies[start : start + 1000]
        for company, reply in zip(share, emulator.issue_many(share), strict=True):
            family.store(company).save(TokenSet.from_response(reply))
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(config.processes + 1)
    results = context.Queue()
    workers = [
        context.Process(
            target=_worker,
            args=(n, (kind, where), emulator.url, config, companies, ready, results),
            name=f"bench-shared-{n}",
            daemon=True,
        )
        for n in range(config.processes)
    ]
    for worker in workers:
        worker.start()
    ready.wait(timeout=120)
    emulator.reset_counters()
    emulator.clear_rotations()
    started = time.time()
    reports = [results.get(timeout=config.duration + 300) for _ in workers]
    for worker in workers:
        worker.join(60)
    counters = emulator.counters
    rotations = emulator.rotations(since=started - 1.0)
    by_company: dict[str, list[float]] = collections.defaultdict(list)
    for company, when in rotations:
        by_company[company].append(when)
    counted = {
        company: count_rotations(by_company.get(company, []), config.token_lifetime)
        for company in _urns(companies)
    }
    per_grant = {company: rotations for company, (rotations, _gap) in counted.items()}
    gaps = [gap for _rotations, gap in counted.values() if gap is not None]
    errors: collections.Counter[str] = collections.Counter()
    for report in reports:
        errors.update(report["errors"])
    latencies = [x for report in reports for x in report["latencies"]]
    return {
        "store": kind,
        "processes": config.processes,
        "grants": config.grants,
        "token_lifetime": config.token_lifetime,
        "requests": sum(r["requests"] for r in reports),
        "errors": dict(errors),
        "latency_p50": median(latencies),
        "latency_p99": percentile(latencies, 99),
        "counters": counters,
        "refresh_grants": len(rotations),
        "rotations": sum(per_grant.values()),
        "rotations_per_grant": sorted(per_grant.values()),
        "shortest_gap": min(gaps) if gaps else None,
        "fold": 0.9 * earliest_due(config.token_lifetime),
        "timeline": sorted(when - started for _, when in rotations),
    }


def _urns(companies: Sequence[str]) -> list[str]:
    return [f"urn:pleo:company:{company}" for company in companies]


def run(config: SharedGrantsConfig) -> Section:
    section = Section(
        f"8. {config.processes} processes sharing {config.grants:,} grants through a store family"
    )
    results: list[dict[str, Any]] = []
    skipped: list[str] = []
    with (
        RemoteEmulator(access_token_lifetime=config.token_lifetime) as emulator,
        tempfile.TemporaryDirectory(prefix="pleo-bench-shared-") as tmp,
    ):
        for n, kind in enumerate(config.stores):
            if kind == "file":
                results.append(run_store(emulator, config, kind, str(Path(tmp) / "grants"), 31 + n))
                continue
            if kind in SQL_STORES:
                from .sql import LABELS, private_database

                with contextlib.ExitStack() as stack:
                    try:
                        url = stack.enter_context(private_database(kind))
                    except Exception as exc:  # a server that is not there: reported
                        skipped.append(f"SQLStore on {LABELS[kind]}: {type(exc).__name__}")
                        continue
                    results.append(run_store(emulator, config, kind, url, 31 + n))
                continue
            with redis_server() as redis_url:
                if redis_url is None:
                    skipped.append("RedisStore.family: no redis-server binary or redis-py")
                    continue
                results.append(run_store(emulator, config, kind, redis_url, 31 + n))
    section.raw = {"runs": results}
    section.tables.append(_table(results, config, skipped))
    for result in results:
        section.verdicts.extend(_verdicts(result, config))
    return section


_LABELS = {
    "file": "FileStore.family",
    "redis": "RedisStore.family",
    "postgresql": "SQLStore (PostgreSQL)",
    "mysql": "SQLStore (MariaDB)",
}


def _table(results: list[dict[str, Any]], config: SharedGrantsConfig, skipped: list[str]) -> Table:
    table = Table(
        f"{config.threads} threads × {config.processes} processes calling random companies "
        f"among {config.grants:,} for {config.duration:g} s ({config.lifetimes} lifetimes of "
        f"{config.token_lifetime:g} s tokens)",
        ["family", "requests", "refresh grants", "rotations", "refresh grants / rotation",
         "rotations per grant (min / median / max)", "shortest gap s", "rejected refreshes",
         "reuse detections",
         "caller errors", "latency p50 / p99 ms"],
    )  # fmt: skip
    for r in results:
        per_grant = r["rotations_per_grant"]
        c = r["counters"]
        ratio = r["refresh_grants"] / r["rotations"] if r["rotations"] else float("nan")
        table.rows.append(
            [
                _LABELS[r["store"]],
                f"{r['requests']:,}",
                f"{r['refresh_grants']:,}",
                f"{r['rotations']:,}",
                fmt(ratio, 3),
                f"{per_grant[0]} / {median(per_grant):g} / {per_grant[-1]}",
                fmt(r["shortest_gap"], 2),
                str(c.rejected_refreshes),
                str(c.reuse_detections),
                str(sum(r["errors"].values())),
                f"{fmt(r['latency_p50'] * 1e3)} / {fmt(r['latency_p99'] * 1e3)}",
            ]
        )
    table.notes.append(
        "Every process builds its own `Integration` (defaults: `max_concurrent_refreshes=4`, "
        "`refresh_margin` 60 s, at most half a token's life) over the same family. A grant "
        "used within its last token lifetime is refreshed ahead of expiry; one that was not "
        "is refreshed by the request that next needs it. Rotations are counted grant by "
        "grant from the emulator's own record of its refresh grants: a grant's refresh "
        f"less than {results[0]['fold'] if results else 0:.2f} s after its previous one "
        "(90% of the earliest a pair can be due) is no rotation. *Shortest gap*: between "
        "two refreshes of one grant, over every grant."
    )
    table.notes.extend(f"Not measured: {reason}." for reason in skipped)
    return table


def _verdicts(r: dict[str, Any], config: SharedGrantsConfig) -> list[Verdict]:
    c = r["counters"]
    head = f"{config.processes} processes, {config.grants:,} grants, {_LABELS[r['store']]}"
    ratio = r["refresh_grants"] / r["rotations"] if r["rotations"] else float("nan")
    errors = sum(r["errors"].values())
    extra = r["refresh_grants"] - r["rotations"]
    return [
        Verdict(
            f"{head}: exactly 1.0 refresh grant per rotation per grant",
            r["rotations"] > 0 and r["refresh_grants"] == r["rotations"],
            f"{ratio:.3f} ({r['refresh_grants']:,} grants, {r['rotations']:,} rotations)",
            ""
            if extra <= 0
            else f"{extra} refresh grants came within a quarter lifetime "
            "of the same grant's previous one",
        ),
        Verdict(
            f"{head}: 0 rejected refreshes, 0 caller errors",
            c.rejected_refreshes == 0 and errors == 0 and c.reuse_detections == 0,
            f"{c.rejected_refreshes} rejected, {c.reuse_detections} reuse detections, "
            f"{errors} caller errors",
            ", ".join(f"{kind} {n}" for kind, n in r["errors"].items()),
        ),
    ]
