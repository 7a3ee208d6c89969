"""Part 11: the hot path with the rate limit on and unsaturated (issue 15).

PleoSessions over a FileStore and a RedisStore, each with and without
``rate_limit``, on the stub transport with tokens that live a day, take turns
request by request (part 1's method: each request's CPU time, ``time.thread_time``,
charged to its session). The limit is far above what the stub can send (6,000,000
a minute), so no request waits: what is measured is the limiter's own cost, a
lock and a clock read per request, and one round trip to the shared bucket per
batch of up to 64 slots.

A second table gives the wall time of one take from each shared bucket: what a
request pays at rates low enough that a process takes one slot at a time (under
300 a minute per batch slot: at Pleo's 500 a minute, every request), next to an
API request's own tens of milliseconds.

    python -m benchmarks rate_limit        # or: python -m benchmarks issue15
"""

# ruff: noqa: RUF001 - the tables print ratios with a multiplication sign

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests

from pleo_auth import FileStore, PleoSession, RateLimit
from pleo_auth.stores.base import TokenStore
from pleo_auth.stores.buckets import Bucket, FileBucket, MemoryBucket, RedisBucket

from ._common import (
    CLIENT_ID,
    CLIENT_SECRET,
    STUB_API_URL,
    STUB_TOKEN_URL,
    Section,
    Table,
    Verdict,
    fmt,
    long_lived_tokens,
    mount_stub,
    redis_server,
    redis_store_class,
)
from .hot_path import URL, measure

TARGET_RATIO = 1.05
#: Far above what the stub transport can send: the limiter never makes one wait.
UNSATURATED = RateLimit(6_000_000)


@dataclass(frozen=True)
class RateLimitConfig:
    batch: int = 500
    repeats: int = 15
    warmup: int = 200
    takes: int = 2_000

    @classmethod
    def quick(cls) -> RateLimitConfig:
        return cls(batch=100, repeats=3, warmup=20, takes=100)


def _session(store: TokenStore, rate_limit: RateLimit | None) -> PleoSession:
    session = PleoSession(
        CLIENT_ID,
        CLIENT_SECRET,
        store=store,
        token_url=STUB_TOKEN_URL,
        api_url=STUB_API_URL,
        tokens=long_lived_tokens(),
        rate_limit=rate_limit,
    )
    mount_stub(session)
    return session


@contextlib.contextmanager
def _subjects(workdir: Path) -> Iterator[tuple[dict[str, tuple[str, requests.Session]], list[str]]]:
    """(store, session) by name, and the reasons any were left out."""
    sessions: dict[str, tuple[str, requests.Session]] = {}
    skipped: list[str] = []
    for limited in (False, True):
        limit = UNSATURATED if limited else None
        # One file per session: sessions over one store would share a coordinator.
        store = FileStore(workdir / f"tokens-{limited}.json")
        sessions[_name("FileStore", limited)] = ("FileStore", _session(store, limit))
    with redis_server() as redis_url:
        redis_store = redis_store_class()
        if redis_url is None or redis_store is None:
            skipped.append("RedisStore: no redis-server binary or redis-py")
        else:
            for limited in (False, True):
                limit = UNSATURATED if limited else None
                store = redis_store(redis_url, key=f"pleo-bench:rate:{limited}", check_interval=0.1)
                sessions[_name("RedisStore", limited)] = ("RedisStore", _session(store, limit))
        try:
            yield sessions, skipped
        finally:
            for _store, session in sessions.values():
                session.close()


def _name(store: str, limited: bool) -> str:
    return f"PleoSession + {store}, " + (
        "rate_limit on, unsaturated" if limited else "no limit (today's)"
    )


def _take_cost(bucket: Bucket, takes: int) -> float:
    """Median wall seconds of one take of one slot, at a rate it never runs out of."""
    interval, tolerance = 60.0 / 6_000_000, 10.0
    samples = []
    for _ in range(takes):
        started = time.perf_counter()
        bucket.take(1, interval, tolerance)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def run(config: RateLimitConfig) -> Section:
    section = Section("11. Hot path with the rate limit on, unsaturated (stub transport)")
    with (
        tempfile.TemporaryDirectory(prefix="pleo-bench-rate-") as tmp,
        _subjects(Path(tmp)) as (
            subjects,
            skipped,
        ),
    ):
        sessions = {name: session for name, (_store, session) in subjects.items()}
        for session in sessions.values():
            for _ in range(config.warmup):
                if session.get(URL).status_code != 200:
                    raise RuntimeError(f"{session!r} did not get a 200 from the stub")
        batches = [measure(sessions, config.batch) for _ in range(config.repeats)]
        takes = Table(
            f"Wall time of one take from each shared bucket, median of {config.takes}",
            ["bucket", "µs / take"],
        )
        buckets: dict[str, Bucket] = {
            "in this process (MemoryStore)": MemoryBucket(),
            "file (FileStore, KeyringStore)": FileBucket(Path(tmp) / ".pleo-rate-bench"),
        }
        with redis_server() as redis_url:
            if redis_url is not None:
                import redis

                client = redis.Redis.from_url(redis_url)
                buckets["Redis (RedisStore), loopback"] = RedisBucket(client, "pleo-bench:rate")
            for name, bucket in buckets.items():
                takes.rows.append([name, fmt(_take_cost(bucket, config.takes) * 1e6, 1)])
    timings = {name: [batch[name] for batch in batches] for name in batches[0]}
    best = {name: min(values) for name, values in timings.items()}
    table = Table(
        f"Per-request CPU cost, min of {config.repeats} batches of {config.batch} requests "
        "per session, interleaved request by request",
        ["session", "µs / request", "ratio to today's PleoSession"],
    )
    for name, (store, _session) in subjects.items():
        base = best[_name(store, False)]
        table.rows.append([name, fmt(best[name] * 1e6, 1), fmt(best[name] / base, 3) + "×"])
    table.notes.append(
        f"rate_limit={UNSATURATED.per_minute:,.0f} a minute: batches of {UNSATURATED.batch} "
        "slots, so one round trip to the shared bucket per 64 requests, and no wait."
    )
    table.notes.extend(f"Not measured: {reason}." for reason in skipped)
    section.tables.extend([table, takes])
    takes.notes.append(
        "At rates where a batch is one slot (below 600 a minute: Pleo's 500 included), "
        "every API request makes one take; an API request over the network takes tens "
        "of milliseconds."
    )
    section.raw = {"cpu_seconds_per_request": timings, "batch": config.batch}
    for store in ("FileStore", "RedisStore"):
        target = f"hot path, rate limit on and unsaturated, {store}: ≤ {TARGET_RATIO}× today's"
        limited, plain = _name(store, True), _name(store, False)
        if limited not in best:
            section.verdicts.append(Verdict(target, None, "n/a", "; ".join(skipped)))
            continue
        ratio = best[limited] / best[plain]
        why = "" if ratio <= TARGET_RATIO else (
            f"the limiter adds {(best[limited] - best[plain]) * 1e6:.1f} µs per request"
        )  # fmt: skip
        section.verdicts.append(Verdict(target, ratio <= TARGET_RATIO, f"{ratio:.3f}×", why))
    return section
