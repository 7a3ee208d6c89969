"""Part 10: the hot path with events and OpenTelemetry metrics on (issue 15).

One :class:`~pleo_auth.PleoSession` over a ``MemoryStore`` on the stub transport,
tokens that live a day (no refresh while it is measured), sends requests with
events and metrics on (``pleo_auth.otel.instrument`` on an OpenTelemetry SDK
``MeterProvider`` with an in-memory reader, plus a global event subscriber) and
off (nothing subscribed: today's PleoSession). The states take turns request by
request (part 1's method), each request's CPU time (``time.thread_time``) charged
to its state, so both meet the same caches and background load. A plain
``requests.Session`` with a static Bearer header takes its turn too, for scale.

    python -m benchmarks observability        # or: python -m benchmarks issue15
"""

# ruff: noqa: RUF001 - the tables print ratios with a multiplication sign

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests

from pleo_auth import MemoryStore, events

from . import clients
from ._common import Section, Table, Verdict, anchor_available, fmt, long_lived_tokens, mount_stub
from .hot_path import URL, pleo_session

TARGET_RATIO = 1.05
OFF = "PleoSession, nothing subscribed (today's)"
ON = "PleoSession, events + OpenTelemetry metrics on"
PLAIN = "requests.Session, static Bearer header"


@dataclass(frozen=True)
class ObservabilityConfig:
    batch: int = 500
    repeats: int = 21
    warmup: int = 200

    @classmethod
    def quick(cls) -> ObservabilityConfig:
        return cls(batch=100, repeats=3, warmup=20)


def _measure(
    gets: dict[str, Callable[[str], requests.Response]], subscribed: tuple[Any, ...], batch: int
) -> dict[str, float]:
    """One batch: ``batch`` rounds, each sending one request in every state (starting
    one further along each round); each request's CPU time is charged to its state.
    ON differs from OFF only in the process's subscribers, swapped in for its request
    and out after it, outside the timed span. CPU seconds per request, by state."""
    names = list(gets)
    spent = dict.fromkeys(names, 0.0)
    clock = time.thread_time
    gc.collect()
    for round_ in range(batch):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            get = gets[name]
            if name == ON:
                events._global = subscribed  # what events.subscribe() leaves there
            started = clock()
            get(URL)
            spent[name] += clock() - started
            events._global = ()
    return {name: spent[name] / batch for name in names}


def run(config: ObservabilityConfig) -> Section:
    section = Section("10. Hot path with events and metrics on (stub transport, no network)")
    target = f"hot path with events and metrics on: ≤ {TARGET_RATIO}× today's PleoSession"
    if not anchor_available("opentelemetry.sdk"):
        reason = "opentelemetry-sdk is not installed (pip install 'pleo-auth[test]')"
        section.verdicts.append(Verdict(target, None, "n/a", reason))
        return section
    tokens = long_lived_tokens()
    session = pleo_session(MemoryStore(), tokens)
    plain = mount_stub(clients.plain_session(tokens.access_token))
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from pleo_auth import otel

    instrumentation = otel.instrument(MeterProvider(metric_readers=[InMemoryMetricReader()]))
    unsubscribe = events.subscribe(lambda event: None)
    subscribed = events._global
    events._global = ()
    gets: dict[str, Callable[[str], requests.Response]] = {
        OFF: session.get,
        ON: session.get,
        PLAIN: plain.get,
    }
    try:
        for get in (session.get, plain.get):
            for _ in range(config.warmup):
                get(URL)
        batches = [_measure(gets, subscribed, config.batch) for _ in range(config.repeats)]
        events._global = subscribed
        if not events.flush(10):
            raise RuntimeError("events still queued after the run")
    finally:
        events._global = subscribed
        unsubscribe()
        instrumentation.close()
        session.close()
        plain.close()
    timings = {name: [batch[name] for batch in batches] for name in gets}
    best = {name: min(values) for name, values in timings.items()}
    ratio = best[ON] / best[OFF]
    table = Table(
        f"Per-request CPU cost, min of {config.repeats} batches of {config.batch} requests, "
        "the states interleaved request by request",
        ["session", "µs / request", "ratio to today's PleoSession"],
    )
    for name in (PLAIN, OFF, ON):
        table.rows.append([name, fmt(best[name] * 1e6, 1), fmt(best[name] / best[OFF], 3) + "×"])
    table.notes.append(
        "Events are emitted only where a refresh, a reload, a lock or a 401 happens, "
        "never on a request's ordinary path, so turning them on adds nothing per "
        "request but noise: the ratio says how much noise. Metrics are recorded on the "
        "events' dispatcher thread, not the caller's."
    )
    section.tables.append(table)
    section.raw = {"cpu_seconds_per_request": timings, "batch": config.batch}
    section.verdicts.append(
        Verdict(
            target,
            ratio <= TARGET_RATIO,
            fmt(ratio, 3) + "×",
            "same session, interleaved request by request",
        )
    )
    return section
