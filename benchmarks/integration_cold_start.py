"""Part 7: a cold start of many expired grants behind one ``pleo_auth.Integration``,
against a token endpoint of limited capacity (issue 12).

N grants, one per company, whose access tokens have all expired (the emulator
issued them with a 1 s lifetime, and the run starts after it), are stored in a
``MemoryStore.family()``. Callers then make one ``GET /v2/employees`` per
company from 32 threads, each through ``integration.session(company)``, so every
grant needs a refresh before its request. The emulator, in another process,
admits at most 200 token requests a second: beyond that it answers 429 with
``Retry-After`` (``mode="reject"``) or holds the request until it fits
(``mode="delay"``), as a real server does. The integration runs with its
defaults (``max_concurrent_refreshes=4``).

Every grant must be refreshed exactly once (the emulator's count per company),
with no rejected refresh, no reuse detection and no caller error, within
1.3 × N / 200 seconds.
"""

# ruff: noqa: RUF001, RUF002 - the tables print ratios with a multiplication sign

from __future__ import annotations

import collections
import contextlib
import resource
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pleo_auth.testing import TokenCapacity

from ._common import CLIENT_ID, CLIENT_SECRET, Section, Table, Verdict, fmt, median, percentile
from ._remote import Child, ChildPipe, RemoteEmulator
from .many_grants import PATH, Sampler, Threads, company_ids

#: The lifetime of the tokens the run starts with: it has passed when the run starts.
EXPIRED_LIFETIME = 1.0


@dataclass(frozen=True)
class IntegrationColdStartConfig:
    """Settings of the cold-start part.

    Attributes:
        grants: Companies, one expired grant each (N).
        per_second: The emulator's token-endpoint capacity, requests per second.
        caller_threads: Threads making the one request per company.
        modes: The capacity's modes to run, one run each.
        slack: The target: done within ``slack × grants / per_second`` seconds.
        max_concurrent_refreshes: The integration's pool; None for its default.
    """

    grants: int = 10_000
    per_second: int = 200
    caller_threads: int = 32
    modes: tuple[str, ...] = ("delay", "reject")
    slack: float = 1.3
    max_concurrent_refreshes: int | None = None

    @classmethod
    def quick(cls) -> IntegrationColdStartConfig:
        return cls(grants=100, per_second=50, caller_threads=32)

    @property
    def floor(self) -> float:
        """The least time the capacity allows: N / per second."""
        return self.grants / self.per_second


def _client(pipe: ChildPipe, config: IntegrationColdStartConfig, url: str) -> dict[str, Any]:
    """The client process: store the expired grants, then one request per company."""
    from pleo_auth import Integration, MemoryStore
    from pleo_auth.tokens import TokenSet

    threads = Threads()
    pool = (
        {}
        if config.max_concurrent_refreshes is None
        else {"max_concurrent_refreshes": config.max_concurrent_refreshes}
    )
    integration = Integration(
        CLIENT_ID,
        CLIENT_SECRET,
        store=MemoryStore.family(),
        token_url=url + "/oauth/token",
        api_url=url,
        **pool,
    )
    timings = _instrument(integration)
    companies: list[str] = []
    expired_at = 0.0
    while (chunk := pipe.recv()) is not None:
        issued, pairs = chunk
        for company, reply in pairs:
            integration.add(company, TokenSet.from_response(reply, now=issued))
            companies.append(company)
        expired_at = max(expired_at, issued + EXPIRED_LIFETIME)
    time.sleep(max(0.0, expired_at - time.time()))  # until the last of them has expired

    errors: collections.Counter[str] = collections.Counter()
    done: list[tuple[float, float]] = []  # (start, end), seconds from the start signal
    start_signal = threading.Barrier(config.caller_threads + 1)
    origin = 0.0

    def call(share: list[str]) -> None:
        start_signal.wait()
        for company in share:
            started = time.monotonic()
            try:
                integration.session(company).get(PATH, timeout=60).raise_for_status()
            except Exception as exc:  # counted by kind, reported
                errors[type(exc).__name__] += 1
            done.append((started - origin, time.monotonic() - origin))

    callers = [
        threading.Thread(target=call, args=(companies[n :: config.caller_threads],))
        for n in range(config.caller_threads)
    ]
    with Sampler(threads):
        for caller in callers:
            threads.ours(caller)
        cpu_before = _cpu_seconds()
        origin = time.monotonic()
        wall_origin = time.time()
        start_signal.wait()
        for caller in callers:
            caller.join()
        elapsed = time.monotonic() - origin
        cpu = _cpu_seconds() - cpu_before
    gate_peak = integration._gate.peak  # benchmark introspection: the pool's high-water mark
    integration.close()
    return {
        "grants": len(companies),
        "elapsed": elapsed,
        "wall_origin": wall_origin,
        "errors": dict(errors),
        "done": done,
        "peak_library_threads": threads.peak_library,
        "peak_threads_beyond_caller": threads.peak_beyond,
        "library_thread_names": sorted(threads.names),
        "gate_peak": gate_peak,
        "max_concurrent_refreshes": integration.max_concurrent_refreshes,
        "client_cpu": cpu,
        "round_trip_p50": median(timings["round_trip"]),
        "round_trip_p99": percentile(timings["round_trip"], 99),
        "slot_held_p50": median(timings["held"]),
        "slot_wait_p50": median(timings["wait"]),
        "slot_wait_p99": percentile(timings["wait"], 99),
    }


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _instrument(integration: Any) -> dict[str, list[float]]:
    """Time, from outside, every token-endpoint round trip of ``integration`` and
    every hold of (and wait for) a slot of its refresh pool: what bounds the pace.

    Wraps two private attributes (the endpoint's ``refresh`` and the pool's
    ``slot``) on this one instance: a benchmark's diagnostic, not an API."""
    timings: dict[str, list[float]] = {"round_trip": [], "held": [], "wait": []}
    endpoint, gate = integration._endpoint, integration._gate
    refresh, slot = endpoint.refresh, gate.slot

    def timed_refresh(*args: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        try:
            return refresh(*args, **kwargs)
        finally:
            timings["round_trip"].append(time.monotonic() - started)

    @contextlib.contextmanager
    def timed_slot(*, urgent: bool) -> Iterator[None]:
        asked = time.monotonic()
        with slot(urgent=urgent):
            got = time.monotonic()
            timings["wait"].append(got - asked)
            try:
                yield
            finally:
                timings["held"].append(time.monotonic() - got)

    endpoint.refresh = timed_refresh
    gate.slot = timed_slot
    return timings


def run_mode(
    emulator: RemoteEmulator, config: IntegrationColdStartConfig, mode: str, seed: int
) -> dict[str, Any]:
    """One cold start of new grants against ``emulator``, its capacity in ``mode``."""
    companies = company_ids(config.grants, seed=seed)
    emulator.set_token_capacity(None)
    emulator.set_access_token_lifetime(EXPIRED_LIFETIME)
    with Child(_client, config, emulator.url, name="bench-cold-start") as child:
        for start in range(0, len(companies), 1000):
            share = companies[start : start + 1000]
            issued = time.time()
            child.send((issued, list(zip(share, emulator.issue_many(share), strict=True))))
        emulator.set_access_token_lifetime(3600.0)
        emulator.set_token_capacity(TokenCapacity(per_second=config.per_second, mode=mode))
        emulator.reset_counters()
        emulator.clear_rotations()
        emulator_cpu = emulator.cpu_seconds()
        child.send(None)
        result: dict[str, Any] = child.result()
    counters = emulator.counters
    result["emulator_cpu"] = emulator.cpu_seconds() - emulator_cpu
    per_company = emulator.counters_for(companies)
    rotations = emulator.rotations()
    origin = result.pop("wall_origin")
    refreshed = collections.Counter(c.refresh_grants for c in per_company.values())
    result.update(
        mode=mode,
        counters=counters,
        refreshes_per_grant=dict(sorted(refreshed.items())),
        grant_times=sorted(t - origin for _, t in rotations),
    )
    return result


def run(config: IntegrationColdStartConfig) -> Section:
    section = Section(
        f"7. Cold start: {config.grants:,} expired grants, token endpoint capped at "
        f"{config.per_second}/s"
    )
    with RemoteEmulator() as emulator:
        results = [
            run_mode(emulator, config, mode, seed=17 + n) for n, mode in enumerate(config.modes)
        ]
    section.raw = {"runs": results, "per_second": config.per_second,
                   "deadline": config.slack * config.floor}  # fmt: skip
    section.tables.append(_table(results, config))
    for result in results:
        section.verdicts.extend(_verdicts(result, config))
    return section


def _table(results: list[dict[str, Any]], config: IntegrationColdStartConfig) -> Table:
    table = Table(
        f"{config.grants:,} grants, all expired; one request per company from "
        f"{config.caller_threads} threads; emulator capped at {config.per_second} token "
        "requests/s",
        ["capacity mode", "seconds", "/ floor", "grants refreshed once", "refresh grants",
         "rejected refreshes", "reuse detections", "caller errors", "429s (throttled)",
         "held (delayed)", "token requests", "caller p50 / p99 s", "refreshes in flight, peak",
         "refresh round trip p50 / p99 ms", "slot held p50 ms", "CPU s: client / emulator",
         "pleo-auth-* threads, peak"],
    )  # fmt: skip
    slots = results[0]["max_concurrent_refreshes"] if results else "?"
    for r in results:
        c = r["counters"]
        latencies = [end - start for start, end in r["done"]]
        once = r["refreshes_per_grant"].get(1, 0)
        table.rows.append(
            [
                r["mode"],
                fmt(r["elapsed"]),
                fmt(r["elapsed"] / config.floor, 2) + "×",
                f"{once:,} of {r['grants']:,}",
                f"{c.refresh_grants:,}",
                str(c.rejected_refreshes),
                str(c.reuse_detections),
                str(sum(r["errors"].values())),
                f"{c.throttled:,}",
                f"{c.delayed:,}",
                f"{c.token_requests:,}",
                f"{fmt(median(latencies), 2)} / {fmt(percentile(latencies, 99), 2)}",
                f"{r['gate_peak']} of {r['max_concurrent_refreshes']}",
                f"{fmt(r['round_trip_p50'] * 1e3)} / {fmt(r['round_trip_p99'] * 1e3)}",
                fmt(r["slot_held_p50"] * 1e3),
                f"{r['client_cpu']:.1f} / {r['emulator_cpu']:.1f}",
                str(r["peak_library_threads"]),
            ]
        )
    table.notes.append(
        f"Floor: {config.grants:,} / {config.per_second} = {config.floor:.0f} s, the least "
        "the capacity allows. *Grants refreshed once* counts the companies whose grant the "
        "emulator refreshed exactly once. *Caller p50 / p99*: from a caller starting its "
        "request to its reply, refresh included. *Refresh round trip*: one token request, "
        "as the integration's endpoint client timed it; *slot held*: how long a refresh "
        "keeps its place in the pool (round trip, store lock and save), so the pool alone "
        "allows at most slots / held refreshes a second. *CPU s*: what the client and "
        "the emulator processes used meanwhile (the machine has 2 cores, shared). The "
        f"integration runs with `max_concurrent_refreshes={slots}` and `refresh_margin=60`; "
        "the emulator runs in another process."
    )
    return table


def _verdicts(r: dict[str, Any], config: IntegrationColdStartConfig) -> list[Verdict]:
    c = r["counters"]
    mode = r["mode"]
    once = r["refreshes_per_grant"].get(1, 0)
    errors = sum(r["errors"].values())
    limit = config.slack * config.floor
    head = f"cold start, {config.grants:,} grants, {mode} mode"
    others = {k: v for k, v in r["refreshes_per_grant"].items() if k != 1}
    return [
        Verdict(
            f"{head}: every grant refreshed exactly once",
            once == r["grants"] and c.refresh_grants == r["grants"],
            f"{once:,} of {r['grants']:,} once; {c.refresh_grants:,} refresh grants",
            "" if not others else f"grants by refresh count: {others}",
        ),
        Verdict(
            f"{head}: 0 rejected refreshes, 0 reuse detections, 0 caller errors",
            c.rejected_refreshes == 0 and c.reuse_detections == 0 and errors == 0,
            f"{c.rejected_refreshes} / {c.reuse_detections} / {errors}",
            ", ".join(f"{kind} {n}" for kind, n in r["errors"].items()),
        ),
        Verdict(
            f"{head}: done within {config.slack}× {config.floor:.0f} s",
            r["elapsed"] <= limit,
            f"{r['elapsed']:.1f} s ({r['elapsed'] / config.floor:.2f}×)",
            "" if r["elapsed"] <= limit else _why_slow(r, config),
        ),
    ]


def _why_slow(r: dict[str, Any], config: IntegrationColdStartConfig) -> str:
    c = r["counters"]
    rate = c.refresh_grants / r["elapsed"] if r["elapsed"] else 0.0
    slots = r["max_concurrent_refreshes"]
    pool_pace = slots / r["slot_held_p50"] if r["slot_held_p50"] else float("inf")
    cores = (r["client_cpu"] + r["emulator_cpu"]) / r["elapsed"]
    return (
        f"{rate:.0f} refresh grants/s against a capacity of {config.per_second}/s "
        f"({c.throttled:,} answered 429, {c.delayed:,} held): the pool, not the server, "
        f"set the pace: {slots} slots each held {r['slot_held_p50'] * 1e3:.0f} ms (median) "
        f"allow about {pool_pace:.0f}/s; client and emulator used {cores:.2f} of the "
        "machine's 2 shared cores"
    )
