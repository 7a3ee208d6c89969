"""Part 4: does the per-request cost stay flat with more threads and more sessions?

One shared session, driven by 1, 4, 16 and 64 threads, through the stub transport
(no network); 1 against 100 PleoSession objects over one FileStore (they share
one coordinator); and the same with each store. The comparison is a plain
``requests.Session`` with a static Bearer token as its ``auth``: an auth object,
as PleoSession always passes, spares it requests' per-request netrc lookup, whose
file-system calls would otherwise hand the GIL around and skew the comparison as
threads are added.

Every thread alternates between the sessions request by request and charges each
request's CPU time (``time.thread_time``) to the session that sent it. Both sides
therefore meet the same contention, caches and background load, and their ratio
isolates what pleo_auth adds, its locking under contention included.
"""

# ruff: noqa: RUF001 - the tables print ratios with a multiplication sign

from __future__ import annotations

import gc
import statistics
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import requests

from pleo_auth import FileStore, MemoryStore

from . import clients
from ._common import (
    STUB_API_URL,
    STUB_PATH,
    Section,
    Table,
    Verdict,
    fmt,
    long_lived_tokens,
    mount_stub,
    redis_server,
    redis_store_class,
)
from .hot_path import keyring_store, pleo_session

URL = STUB_API_URL + STUB_PATH

#: How far PleoSession's cost relative to a plain Session may drift between the
#: lightest and the heaviest load before the cost no longer counts as flat.
FLAT_TOLERANCE = 0.10


@dataclass(frozen=True)
class ScalingConfig:
    threads: tuple[int, ...] = (1, 4, 16, 64)
    requests: int = 320
    repeats: int = 7
    many_sessions: int = 100
    session_threads: tuple[int, ...] = (1, 16)
    store_threads: tuple[int, ...] = (1, 64)


@dataclass
class _Run:
    cpu: dict[str, float]  # CPU seconds per request, by subject
    wall: float  # elapsed seconds per request, every subject together


def _drive(subjects: Mapping[str, Sequence[requests.Session]], threads: int, total: int) -> _Run:
    """Send about ``total`` GETs per subject from ``threads`` threads; each thread
    takes the subjects in turn, request by request, spreading a subject's
    requests round-robin over its sessions."""
    names = list(subjects)
    per_thread = max(1, total // threads)
    barrier = threading.Barrier(threads + 1)
    spent = [dict.fromkeys(names, 0.0) for _ in range(threads)]
    failures: list[BaseException] = []

    def worker(index: int) -> None:
        mine = spent[index]
        clock = time.thread_time
        barrier.wait()
        try:
            for i in range(per_thread):
                for offset in range(len(names)):
                    name = names[(i + offset) % len(names)]
                    sessions = subjects[name]
                    session = sessions[(index + i) % len(sessions)]
                    started = clock()
                    session.get(URL)
                    mine[name] += clock() - started
        except BaseException as exc:  # reported after the run
            failures.append(exc)

    pool = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(threads)]
    for thread in pool:
        thread.start()
    gc.collect()
    barrier.wait()
    started = time.perf_counter()
    for thread in pool:
        thread.join()
    wall = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"a scaling worker failed: {failures[0]!r}")
    sent = per_thread * threads
    cpu = {name: sum(totals[name] for totals in spent) / sent for name in names}
    return _Run(cpu, wall / (sent * len(names)))


def _repeat(
    subjects: Mapping[str, Sequence[requests.Session]], threads: int, config: ScalingConfig
) -> list[_Run]:
    return [_drive(subjects, threads, config.requests) for _ in range(config.repeats)]


def _median_ratio(runs: Sequence[_Run], subject: str, base: str) -> float:
    return statistics.median(run.cpu[subject] / run.cpu[base] for run in runs)


def _best(runs: Sequence[_Run], subject: str) -> float:
    return min(run.cpu[subject] for run in runs)


def run(config: ScalingConfig) -> Section:
    section = Section("4. Scaling (stub transport, no network)")
    tokens = long_lived_tokens()
    with (
        tempfile.TemporaryDirectory(prefix="pleo-bench-scaling-") as tmp,
        redis_server() as redis_url,
    ):
        store_path = Path(tmp) / "tokens.json"
        pleo = pleo_session(FileStore(store_path), tokens)
        plain = mount_stub(clients.plain_auth_session(tokens.access_token))
        many = [pleo_session(FileStore(store_path), tokens) for _ in range(config.many_sessions)]
        stores: dict[str, list[requests.Session]] = {
            "FileStore": [pleo],
            "KeyringStore": [pleo_session(keyring_store(Path(tmp)), tokens)],
            "MemoryStore": [pleo_session(MemoryStore(), tokens)],
        }
        redis_store = redis_store_class()
        if redis_url is not None and redis_store is not None:
            store = redis_store(redis_url, key="pleo-bench:scaling", check_interval=0.1)
            stores["RedisStore"] = [pleo_session(store, tokens)]
        every = [pleo, plain, *many, *(s for group in stores.values() for s in group)]
        try:
            for session in every:
                session.get(URL)
            by_threads = {
                threads: _repeat({"pleo": [pleo], "plain": [plain]}, threads, config)
                for threads in config.threads
            }
            by_sessions = {
                threads: _repeat({"one": [pleo], "many": many, "plain": [plain]}, threads, config)
                for threads in config.session_threads
            }
            by_store = {
                threads: _repeat({**stores, "plain": [plain]}, threads, config)
                for threads in config.store_threads
            }
        finally:
            for session in every:
                session.close()

    thread_table = Table(
        f"One shared session; {config.requests} requests per session per run, "
        f"{config.repeats} runs",
        ["threads", "PleoSession CPU µs/req", "plain Session CPU µs/req",
         "PleoSession / plain", "wall µs/req, both"],
    )  # fmt: skip
    ratios: list[float] = []
    for threads, runs in by_threads.items():
        ratio = _median_ratio(runs, "pleo", "plain")
        ratios.append(ratio)
        thread_table.rows.append(
            [
                str(threads),
                fmt(_best(runs, "pleo") * 1e6),
                fmt(_best(runs, "plain") * 1e6),
                fmt(ratio, 3) + "×",
                fmt(min(run.wall for run in runs) * 1e6),
            ]
        )
    thread_table.notes.append(
        "Every thread alternates between the two sessions request by request, and each "
        "request's CPU time (`time.thread_time`) is charged to the session that sent it: "
        "both meet the same contention and background load. CPU columns are the best "
        "run; the ratio is the median of the runs' ratios. Wall time is for all requests "
        "of a run together: with the GIL, threads add no throughput to pure-Python work, "
        "so flat is the best possible."
    )

    session_table = Table(
        f"1 against {len(many)} PleoSession objects over one FileStore (requests spread "
        f"round-robin over them); {config.requests} requests per subject per run, "
        f"{config.repeats} runs",
        ["threads", "1 session CPU µs/req", f"{len(many)} sessions CPU µs/req",
         "plain CPU µs/req", "1 session / plain", f"{len(many)} sessions / plain",
         f"{len(many)} sessions / 1"],
    )  # fmt: skip
    session_ratios: list[float] = []
    for threads, runs in by_sessions.items():
        one = _median_ratio(runs, "one", "plain")
        spread = _median_ratio(runs, "many", "plain")
        session_ratios.append(_median_ratio(runs, "many", "one"))
        session_table.rows.append(
            [
                str(threads),
                fmt(_best(runs, "one") * 1e6),
                fmt(_best(runs, "many") * 1e6),
                fmt(_best(runs, "plain") * 1e6),
                fmt(one, 3) + "×",
                fmt(spread, 3) + "×",
                fmt(session_ratios[-1], 3) + "×",
            ]
        )

    store_table = Table(
        "PleoSession / plain Session by store (how each notices rotations elsewhere); "
        f"{config.requests} requests per subject per run, {config.repeats} runs",
        ["threads", *stores],
    )
    for threads, runs in by_store.items():
        store_table.rows.append(
            [str(threads)] + [fmt(_median_ratio(runs, name, "plain"), 3) + "×" for name in stores]
        )
    store_table.notes.append(
        "FileStore and KeyringStore `stat` a file on every request; RedisStore reads "
        "Redis at most every 100 ms (`check_interval`); MemoryStore compares a counter. "
        "A `stat` releases the GIL, and with many threads each release hands it to "
        "another thread."
    )

    section.tables.extend([thread_table, session_table, store_table])
    section.raw = {
        "threads": {str(t): [vars(r) for r in runs] for t, runs in by_threads.items()},
        "sessions": {str(t): [vars(r) for r in runs] for t, runs in by_sessions.items()},
        "stores": {str(t): [vars(r) for r in runs] for t, runs in by_store.items()},
    }
    drift = max(ratios) / min(ratios) - 1
    flat = drift <= FLAT_TOLERANCE
    why = ""
    if not flat:
        by_store_last = by_store[max(by_store)]
        why = (
            f"PleoSession / plain grows from {ratios[0]:.3f}× at {config.threads[0]} thread(s) "
            f"to {ratios[-1]:.3f}× at {config.threads[-1]}. At {max(by_store)} threads, by "
            "store: "
            + ", ".join(
                f"{name} {_median_ratio(by_store_last, name, 'plain'):.3f}×" for name in stores
            )
            + ": the `stat` FileStore and KeyringStore make on every request releases the "
            "GIL, which many threads then pass around; the rest is the Condition taken "
            "twice per request"
        )
    section.verdicts.append(
        Verdict(
            f"scaling: per-request cost flat from {config.threads[0]} to "
            f"{config.threads[-1]} threads (FileStore)",
            flat,
            f"PleoSession / plain Session between {min(ratios):.3f}× and {max(ratios):.3f}×",
            why,
        )
    )
    worst = max(session_ratios, key=lambda r: abs(r - 1))
    same = abs(worst - 1) <= FLAT_TOLERANCE
    section.verdicts.append(
        Verdict(
            f"scaling: per-request cost flat from 1 to {config.many_sessions} sessions "
            "over one store",
            same,
            f"{config.many_sessions} sessions / 1 session: "
            + ", ".join(
                f"{r:.3f}× at {t} thread(s)"
                for t, r in zip(config.session_threads, session_ratios, strict=True)
            ),
            "" if same else "see the sessions table",
        )
    )
    return section
