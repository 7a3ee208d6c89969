"""Part 9: grants in the application's database, ``SQLStore`` (issue 13).

* **Hot path.** A :class:`~pleo_auth.PleoSession` over one company's grant in a
  ``SQLStore`` (PostgreSQL, MariaDB, SQLite) beside one over a ``MemoryStore``,
  every session on the stub transport, taking turns request by request (part 1's
  method). Tokens live a day: no refresh happens while it is measured.
* **Database queries per request in steady state.** Every statement the store's
  engine sends is counted by a SQLAlchemy ``before_cursor_execute`` listener on
  the engine, over a few seconds of requests through the session after a warm-up.
  The version cache asks once per ``check_interval`` (1 s, the default).
* **Processes sharing grants.** Part 8's run (4 processes x 8 threads over 2,000
  grants, 3 s tokens) over ``SQLStore`` families on PostgreSQL and MariaDB.

Each database is private to the run: ``pleo_bench_<pid>_<hex>``, created on the
servers ``PLEO_BENCH_POSTGRESQL`` and ``PLEO_BENCH_MARIADB`` name (SQLAlchemy URLs
of an administrator's database; by default ``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``
and ``mysql+pymysql://root@127.0.0.1:3306/mysql``) and dropped afterwards; SQLite
is a file in a temporary directory.
"""

# ruff: noqa: RUF001 - the tables print ratios with a multiplication sign

from __future__ import annotations

import contextlib
import gc
import os
import secrets
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pleo_auth import MemoryStore

from . import shared_grants
from ._common import Section, Table, Verdict, fmt, long_lived_tokens
from .hot_path import URL, pleo_session

TARGET_RATIO = 1.05
TARGET_QUERIES = 0.01
#: One company whose grant the hot-path sessions use.
COMPANY = "5b4c0d1e-2f3a-4b5c-8d6e-7f8091a2b3c4"

#: The administrators' URLs: where each database of a run is created.
SERVERS = {
    "postgresql": os.environ.get(
        "PLEO_BENCH_POSTGRESQL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    ),
    "mysql": os.environ.get("PLEO_BENCH_MARIADB", "mysql+pymysql://root@127.0.0.1:3306/mysql"),
}
LABELS = {"postgresql": "PostgreSQL", "mysql": "MariaDB", "sqlite": "SQLite"}


@dataclass(frozen=True)
class SqlConfig:
    """Settings of the SQLStore part.

    Attributes:
        batch, repeats, warmup: As part 1's.
        steady_seconds: Seconds of requests over which the queries are counted.
        databases: Which databases to measure: ``"postgresql"``, ``"mysql"``, ``"sqlite"``.
        shared: Part 8's settings for the shared-grants run (its ``stores`` name
            the SQL families; empty for none).
    """

    batch: int = 200
    repeats: int = 15
    warmup: int = 200
    steady_seconds: float = 5.0
    databases: tuple[str, ...] = ("postgresql", "mysql", "sqlite")
    shared: shared_grants.SharedGrantsConfig = field(
        default_factory=lambda: shared_grants.SharedGrantsConfig(stores=("postgresql", "mysql"))
    )

    @classmethod
    def quick(cls) -> SqlConfig:
        return cls(
            batch=100,
            repeats=3,
            warmup=20,
            steady_seconds=1.5,
            shared=shared_grants.SharedGrantsConfig.quick(stores=("postgresql", "mysql")),
        )


@contextlib.contextmanager
def private_database(kind: str) -> Iterator[str]:
    """The URL of a new database on ``kind``'s server (a SQLite file for
    ``"sqlite"``), dropped afterwards."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="pleo-bench-sql-") as tmp:
            yield f"sqlite:///{Path(tmp) / 'grants.sqlite3'}"
        return
    name = f"pleo_bench_{os.getpid()}_{secrets.token_hex(4)}"
    admin_url = sqlalchemy.make_url(SERVERS[kind])
    admin = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
        try:
            yield admin_url.set(database=name).render_as_string(hide_password=False)
        finally:
            drop = f"DROP DATABASE IF EXISTS {name}"
            if kind == "postgresql":
                drop += " WITH (FORCE)"
            with admin.connect() as connection:
                connection.execute(sqlalchemy.text(drop))
    finally:
        admin.dispose()


@contextlib.contextmanager
def sql_families(kinds: tuple[str, ...]) -> Iterator[tuple[dict[str, Any], list[str]]]:
    """A ``SQLStore`` per database that answers (with its table created), and the
    reasons any were left out."""
    from pleo_auth.stores import SQLStore

    families: dict[str, Any] = {}
    skipped: list[str] = []
    with contextlib.ExitStack() as stack:
        for kind in kinds:
            try:
                url = stack.enter_context(private_database(kind))
                family = SQLStore(url, client_id=shared_grants.CLIENT_ID)
                family.create_table()
            except Exception as exc:  # a server that is not there: reported, not fatal
                skipped.append(f"SQLStore on {LABELS[kind]}: {type(exc).__name__}")
                continue
            stack.callback(family.close)
            families[kind] = family
        yield families, skipped


def measure(sessions: dict[str, Any], batch: int) -> dict[str, float]:
    """Part 1's batch: ``batch`` rounds, each sending one request through every
    session (starting one further along each round), each request's CPU time
    (``time.thread_time``) charged to its session. CPU seconds per request."""
    names = list(sessions)
    gets = [sessions[name].get for name in names]
    spent = [0.0] * len(names)
    gc.collect()
    for round_ in range(batch):
        for offset in range(len(names)):
            index = (round_ + offset) % len(names)
            started = time.thread_time()
            gets[index](URL)
            spent[index] += time.thread_time() - started
    return {name: spent[index] / batch for index, name in enumerate(names)}


class QueryCounter:
    """Counts the statements an engine sends (a ``before_cursor_execute`` listener)."""

    def __init__(self, engine: Any):
        import sqlalchemy

        self.count = 0
        self._engine = engine
        sqlalchemy.event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, *args: Any) -> None:
        self.count += 1

    def close(self) -> None:
        import sqlalchemy

        sqlalchemy.event.remove(self._engine, "before_cursor_execute", self._seen)


def steady_queries(session: Any, engine: Any, seconds: float) -> tuple[int, int]:
    """Requests sent through ``session`` in ``seconds``, and the statements its
    store's engine sent meanwhile."""
    counter = QueryCounter(engine)
    requests = 0
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            session.get(URL)
            requests += 1
    finally:
        counter.close()
    return requests, counter.count


def run(config: SqlConfig) -> Section:
    section = Section("9. Grants in the application's database (SQLStore)")
    tokens = long_lived_tokens()
    with sql_families(config.databases) as (families, skipped):
        sessions: dict[str, Any] = {
            "PleoSession + MemoryStore": pleo_session(MemoryStore(), tokens)
        }
        for kind, family in families.items():
            sessions[f"PleoSession + SQLStore ({LABELS[kind]})"] = pleo_session(
                family.for_company(COMPANY), tokens
            )
        try:
            for session in sessions.values():
                response = session.get(URL)
                if response.status_code != 200 or "Authorization" not in response.request.headers:
                    raise RuntimeError(f"{session!r} did not send an authenticated request")
                for _ in range(config.warmup):
                    session.get(URL)
            batches = [measure(sessions, config.batch) for _ in range(config.repeats)]
            steady = {
                kind: steady_queries(
                    sessions[f"PleoSession + SQLStore ({LABELS[kind]})"],
                    family.engine,
                    config.steady_seconds,
                )
                for kind, family in families.items()
            }
        finally:
            for session in sessions.values():
                session.close()
    best = {name: min(batch[name] for batch in batches) for name in batches[0]}
    base = best["PleoSession + MemoryStore"]
    table = Table(
        f"Per-request CPU cost, min of {config.repeats} batches of {config.batch} requests per "
        "session, interleaved request by request; queries per request over "
        f"{config.steady_seconds:g} s of requests after the warm-up",
        ["session", "µs / request", "ratio to MemoryStore", "requests", "queries",
         "queries / request"],
    )  # fmt: skip
    for name, value in best.items():
        kind = next((k for k, label in LABELS.items() if f"({label})" in name), None)
        sent, queries = steady[kind] if kind is not None else (None, None)
        table.rows.append(
            [
                name,
                fmt(value * 1e6, 1),
                fmt(value / base, 3) + "×",
                f"{sent:,}" if sent is not None else "-",
                str(queries) if queries is not None else "-",
                fmt(queries / sent, 5) if sent and queries is not None else "-",
            ]
        )
    table.notes.append(
        "Each SQLStore session holds one company's grant in a private database (the "
        "default `check_interval` of 1 s); the MemoryStore session is the baseline. "
        "Queries are every statement the store's engine sent, counted by a SQLAlchemy "
        "`before_cursor_execute` listener, while one thread sent requests as fast as it "
        "could: the version cache's one query a second, over as many requests as fit."
    )
    table.notes.extend(f"Not measured: {reason}." for reason in skipped)
    section.tables.append(table)
    section.raw = {
        "cpu_seconds_per_request": {name: [b[name] for b in batches] for name in batches[0]},
        "steady": {kind: {"requests": s, "queries": q} for kind, (s, q) in steady.items()},
    }
    for kind in config.databases:
        name = f"PleoSession + SQLStore ({LABELS[kind]})"
        head = f"SQLStore, {LABELS[kind]}"
        if kind not in families:
            reason = next((s for s in skipped if LABELS[kind] in s), "")
            section.verdicts.append(Verdict(f"hot path, {head}", None, "n/a", reason))
            continue
        ratio = best[name] / base
        section.verdicts.append(
            Verdict(
                f"hot path, {head}: ≤ {TARGET_RATIO}× PleoSession + MemoryStore",
                ratio <= TARGET_RATIO,
                f"{ratio:.3f}×",
                ""
                if ratio <= TARGET_RATIO
                else f"adds {(best[name] - base) * 1e6:.1f} µs per request",
            )
        )
        sent, queries = steady[kind]
        per = queries / sent if sent else float("nan")
        section.verdicts.append(
            Verdict(
                f"{head}: ≤ {TARGET_QUERIES} database queries per request in steady state",
                per <= TARGET_QUERIES,
                f"{per:.5f} ({queries} queries, {sent:,} requests)",
                "",
            )
        )
    if config.shared.stores:
        shared = shared_grants.run(config.shared)
        section.tables.extend(shared.tables)
        section.verdicts.extend(shared.verdicts)
        section.raw["shared_grants"] = shared.raw
    return section
