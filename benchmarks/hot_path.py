"""Part 1: the per-request cost of the auth layer, with no network.

Every session is mounted on the same :class:`~benchmarks._common.StubAdapter`, so
the only work that differs is the auth layer's. The baseline is a plain
``requests.Session`` carrying a static Bearer header. PleoSession runs with each
store's staleness check on (a ``stat`` per request for FileStore and
KeyringStore; a cached Redis read at most every 100 ms for RedisStore), and
with tokens that live a day, so no refresh happens while it is measured.
"""

# ruff: noqa: RUF001 - the tables print ratios with a multiplication sign

from __future__ import annotations

import contextlib
import gc
import logging
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests

from pleo_auth import FileStore, KeyringStore, PleoSession
from pleo_auth.stores.base import TokenStore
from pleo_auth.tokens import TokenSet

from . import clients
from ._common import (
    CLIENT_ID,
    CLIENT_SECRET,
    STUB_API_URL,
    STUB_PATH,
    STUB_TOKEN_URL,
    Section,
    Table,
    Verdict,
    anchor_available,
    fmt,
    long_lived_tokens,
    mount_stub,
    redis_server,
    redis_store_class,
)

logger = logging.getLogger(__name__)

TARGET_RATIO = 1.03
BASELINE = "requests.Session, static Bearer header"
STRICT_BASELINE = "requests.Session, static Bearer as session.auth"
URL = STUB_API_URL + STUB_PATH


@dataclass(frozen=True)
class HotPathConfig:
    batch: int = 200
    repeats: int = 15
    warmup: int = 200


def pleo_session(store: TokenStore, tokens: TokenSet) -> PleoSession:
    """A PleoSession over ``store`` with the stub mounted after construction."""
    session = PleoSession(
        CLIENT_ID,
        CLIENT_SECRET,
        store=store,
        token_url=STUB_TOKEN_URL,
        api_url=STUB_API_URL,
        tokens=tokens,
    )
    mount_stub(session)
    return session


def keyring_store(workdir: Path) -> KeyringStore:
    """A KeyringStore on keyrings.alt's PlaintextKeyring, in a private file."""
    from keyrings.alt.file import PlaintextKeyring

    backend = PlaintextKeyring()
    backend.file_path = str(workdir / "keyring.cfg")
    return KeyringStore(account=CLIENT_ID, backend=backend, state_dir=workdir / "state")


@contextlib.contextmanager
def subjects(workdir: Path) -> Iterator[tuple[dict[str, requests.Session], list[str]]]:
    """Every session to compare, built once; and the reasons any were left out."""
    tokens = long_lived_tokens()
    sessions: dict[str, requests.Session] = {}
    skipped: list[str] = []
    sessions[BASELINE] = mount_stub(clients.plain_session(tokens.access_token))
    sessions[STRICT_BASELINE] = mount_stub(clients.plain_auth_session(tokens.access_token))
    sessions["PleoSession + FileStore"] = pleo_session(FileStore(workdir / "tokens.json"), tokens)
    sessions["PleoSession + KeyringStore"] = pleo_session(keyring_store(workdir), tokens)
    with redis_server() as redis_url:
        redis_store = redis_store_class()
        if redis_url is None:
            skipped.append("PleoSession + RedisStore: no redis-server binary or redis-py")
        elif redis_store is None:
            skipped.append("PleoSession + RedisStore: pleo_auth.stores.redis is not importable")
        else:
            store = redis_store(redis_url, key="pleo-bench:hot-path", check_interval=0.1)
            sessions["PleoSession + RedisStore"] = pleo_session(store, tokens)
        token = clients.token_dict(tokens)
        if anchor_available("requests_oauthlib"):
            sessions["requests-oauthlib OAuth2Session"] = mount_stub(
                clients.oauthlib_session(token, STUB_TOKEN_URL)
            )
        else:
            skipped.append("requests-oauthlib: not installed (pip install 'pleo-auth[bench]')")
        if anchor_available("authlib"):
            sessions["Authlib OAuth2Session"] = mount_stub(
                clients.authlib_session(token, STUB_TOKEN_URL, leeway=60)
            )
        else:
            skipped.append("Authlib: not installed (pip install 'pleo-auth[bench]')")
        try:
            yield sessions, skipped
        finally:
            for session in sessions.values():
                session.close()


def measure(sessions: dict[str, requests.Session], batch: int) -> dict[str, float]:
    """One batch: ``batch`` rounds, each sending one request through every session
    (starting one further along each round); each request's CPU time is charged
    to its session. Returns CPU seconds per request, by session."""
    names = list(sessions)
    gets = [sessions[name].get for name in names]
    spent = [0.0] * len(names)
    clock = time.thread_time
    gc.collect()
    for round_ in range(batch):
        for offset in range(len(names)):
            index = (round_ + offset) % len(names)
            started = clock()
            gets[index](URL)
            spent[index] += clock() - started
    return {name: spent[index] / batch for index, name in enumerate(names)}


def run(config: HotPathConfig) -> Section:
    section = Section("1. Hot-path overhead (stub transport, no network)")
    with (
        tempfile.TemporaryDirectory(prefix="pleo-bench-hot-") as tmp,
        subjects(Path(tmp)) as (
            sessions,
            skipped,
        ),
    ):
        for session in sessions.values():
            response = session.get(URL)
            if response.status_code != 200 or "Authorization" not in response.request.headers:
                raise RuntimeError(f"{session!r} did not send an authenticated request")
            for _ in range(config.warmup):
                session.get(URL)
        batches = [measure(sessions, config.batch) for _ in range(config.repeats)]
    timings = {name: [batch[name] for batch in batches] for name in batches[0]}
    best = {name: min(values) for name, values in timings.items()}
    base = best[BASELINE]
    strict = best[STRICT_BASELINE]
    table = Table(
        f"Per-request CPU cost, min of {config.repeats} batches of {config.batch} "
        "requests per session, interleaved request by request",
        ["session", "µs / request", "overhead µs", "ratio to plain Session", "ratio to .auth"],
    )
    for name, value in best.items():
        table.rows.append(
            [
                name,
                fmt(value * 1e6, 1),
                fmt((value - base) * 1e6, 1),
                fmt(value / base, 3) + "×",
                fmt(value / strict, 3) + "×",
            ]
        )
    table.notes.append(
        "Each batch sends the same GET through the session's full `requests` machinery "
        "(`trust_env` on, as in real use) to an adapter that returns a canned 200. "
        "The sessions take turns request by request, and each request's CPU time "
        "(`time.thread_time`) is charged to its session, so every session meets the "
        "same caches and background load, and other processes on a shared machine do "
        "not inflate the figures. "
        "The target is against the first row, the issue's baseline. A Session without "
        "an auth object also looks up `~/.netrc` on every request, which PleoSession "
        "(it always passes one) skips; the last column compares against the second row, "
        "which skips it too, so it shows the auth layer's own cost."
    )
    table.notes.extend(f"Not measured: {reason}." for reason in skipped)
    section.tables.append(table)
    section.raw = {"cpu_seconds_per_request": timings, "batch": config.batch}
    for store in ("FileStore", "KeyringStore", "RedisStore"):
        name = f"PleoSession + {store}"
        target = f"hot path, {store}: ≤ {TARGET_RATIO}× plain Session"
        if name not in best:
            section.verdicts.append(
                Verdict(target, None, "n/a", next((s for s in skipped if store in s), ""))
            )
            continue
        ratio = best[name] / base
        strict_ratio = best[name] / strict
        met = ratio <= TARGET_RATIO
        why = _why_slow(best[name] - base) if not met else ""
        if met and strict_ratio > TARGET_RATIO:
            why = (
                f"met against the issue's baseline, whose netrc lookup PleoSession skips; "
                f"against a Session that skips it too, PleoSession adds "
                f"{(best[name] - strict) * 1e6:.0f} µs ({strict_ratio:.3f}×)"
            )
        measured = f"{ratio:.3f}× ({strict_ratio:.3f}× vs. session.auth baseline)"
        section.verdicts.append(Verdict(target, met, measured, why))
    return section


def _why_slow(overhead: float) -> str:
    return (
        f"PleoSession adds {overhead * 1e6:.1f} µs per request (version check, Condition "
        "acquire and release, URL resolution) to a plain Session's cost"
    )
