"""What a workload reports: progress while it runs, and the report at the end."""

from __future__ import annotations

import array
import collections
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._schedule import RefreshSchedule
from ..tokens import TokenSet
from ._emulator import EmulatorCounters

if TYPE_CHECKING:
    from ._workload_worker import _WorkerConfig


@dataclass(frozen=True)
class WorkloadProgress:
    """A snapshot passed to ``on_progress`` about every half second.

    Attributes:
        elapsed: Seconds since the workers started.
        duration: Seconds the workload runs.
        requests: API requests finished so far, in every worker.
        errors: Of those, the ones that failed for the caller (exception or non-200).
        refresh_grants: Refresh grants the emulator has made so far.
        errors_by_process: ``errors`` of each worker, by worker index.

    Thread safety:
        Immutable; share it freely.
    """

    elapsed: float
    duration: float
    requests: int
    errors: int
    refresh_grants: int
    errors_by_process: tuple[int, ...] = ()


@dataclass(frozen=True)
class ResourceSample:
    """One worker process's footprint at one moment of the load.

    Attributes:
        elapsed: Seconds since the start signal.
        rss: Resident memory of the process, in bytes: ``/proc/self/statm``
            where it exists, else the peak from :func:`resource.getrusage`.
        threads: :func:`threading.active_count` in the process: the load
            threads, the main thread, the session's refresh timer and the
            result queue's feeder.
        records: Bytes of ``rss`` that are the runner's own per-request records
            (timeline and failures), which grow with the requests by design:
            subtract them to see what the session itself holds.

    Thread safety:
        Immutable; share it freely.
    """

    elapsed: float
    rss: int
    threads: int
    records: int


@dataclass(frozen=True)
class WorkloadReport:
    """What a workload did, as callers and as the emulator saw it.

    Times are in seconds. Emulator counts cover the whole run: from seeding the
    store to the exit of the last worker.

    Attributes:
        store_spec: The store spec, with any password masked.
        processes: Worker processes.
        threads: Threads per worker.
        duration: Seconds of load requested.
        started_at: When the start signal was given, in :func:`time.monotonic`
            seconds (one clock for every process on the host): the origin of
            ``timeline`` and ``failures``.
        elapsed: Seconds from the start signal to the end of the last request.
        span: Wall-clock seconds from the issue of the seeded tokens to the
            exit of the last worker: the window the emulator counts cover.
        token_lifetime: Lifetime of the access tokens, from the seeded tokens.
        refresh_margin: The sessions' ``refresh_margin``.
        requests: API requests made by callers.
        caller_errors: Requests that raised or answered other than 200.
        errors_by_kind: ``caller_errors`` by exception class name, or ``"HTTP <status>"``.
        error_samples: The first message seen for each kind (never holds a secret).
        caller_401s: Requests answered 401 to the caller (also in ``caller_errors``).
        rps: ``requests / elapsed``.
        latency_p50: Median request latency, seconds.
        latency_p99: 99th percentile request latency, seconds.
        timeline: ``(start, latency)`` of every request, sorted by start, where
            ``start`` counts from the start signal: ready to plot.
        failures: The ``start`` of every request that failed for its caller, sorted.
        failure_spans: ``(start, end)`` of every request that failed for its
            caller, sorted, on the clock of ``timeline``.
        refresh_grants: Refresh grants the emulator made.
        rejected_refreshes: Refresh grant requests the emulator refused.
        reuse_detections: Spent refresh tokens presented (each kills the grant).
        unauthorized: API requests the emulator answered 401, replays included.
            Requests in flight in one process while another rotates the tokens get
            401 and are replayed; callers never see those.
        api_requests: API requests the emulator received, replays included.
        rotations_expected: Rotations the sessions' refresh schedule calls for in
            ``duration``, rounded: one every token lifetime less the effective
            refresh margin and the mean timer jitter. A guide, not a bound.
        saved_rotations: The fingerprint (:attr:`TokenSet.fingerprint`) of every
            pair the workers' sessions saved to the store, one per save: each
            refresh grant that reached its client appears here exactly once.
            Empty with a ``client_factory``.
        resources: Per worker, by worker index, its :class:`ResourceSample` s,
            about every half second from the start signal to the deadline.
        warnings: ``(time, text)`` of every record of WARNING or above that the
            ``pleo_auth`` loggers emitted in the workers, sorted, ``time`` on the
            clock of ``timeline``: a refresh that gave up shows here even when no
            caller noticed. Empty with a ``client_factory``.

    Thread safety:
        Immutable; share it freely.
    """

    store_spec: str
    processes: int
    threads: int
    duration: float
    started_at: float
    elapsed: float
    span: float
    token_lifetime: float
    refresh_margin: float
    requests: int
    caller_errors: int
    errors_by_kind: Mapping[str, int]
    error_samples: Mapping[str, str]
    caller_401s: int
    rps: float
    latency_p50: float
    latency_p99: float
    timeline: tuple[tuple[float, float], ...] = field(repr=False)
    failures: tuple[float, ...] = field(repr=False)
    failure_spans: tuple[tuple[float, float], ...] = field(repr=False)
    refresh_grants: int
    rejected_refreshes: int
    reuse_detections: int
    unauthorized: int
    api_requests: int
    rotations_expected: int
    saved_rotations: tuple[str, ...] = field(repr=False)
    resources: tuple[tuple[ResourceSample, ...], ...] = field(repr=False)
    warnings: tuple[tuple[float, str], ...] = field(repr=False)


def _shown(spec: str) -> str:
    from ..stores.spec import redact_spec

    return redact_spec(spec)


def _percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list; 0.0 when it is empty."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def _report(
    store_spec: str,
    config: _WorkerConfig,
    processes: int,
    seeded: TokenSet,
    results: Mapping[int, Mapping[str, Any]],
    before: EmulatorCounters,
    after: EmulatorCounters,
    span: float,
    started_at: float,
) -> WorkloadReport:
    points = array.array("d")
    failures = array.array("d")
    failure_ends = array.array("d")
    errors: collections.Counter[str] = collections.Counter()
    samples: dict[str, str] = {}
    saved: list[str] = []
    warnings: list[tuple[float, str]] = []
    for index in sorted(results):
        result = results[index]
        points.frombytes(result["timeline"])
        failures.frombytes(result["failures"])
        failure_ends.frombytes(result["failure_ends"])
        saved.extend(result["saved"])
        warnings.extend((at, text) for at, text in result["warnings"])
        errors.update(result["errors"])
        for kind, message in result["samples"].items():
            samples.setdefault(kind, message)
    timeline = tuple(sorted(zip(points[0::2], points[1::2], strict=True)))
    latencies = sorted(points[1::2])
    requests = sum(result["requests"] for result in results.values())
    elapsed = max((result["last_end"] for result in results.values()), default=0.0)
    lifetime = seeded.expires_at - (seeded.issued_at or seeded.expires_at)
    refresh_margin = config.client.refresh_margin
    period = RefreshSchedule.for_margin(refresh_margin).mean_period(lifetime)
    return WorkloadReport(
        store_spec=_shown(store_spec),
        processes=processes,
        threads=config.threads,
        duration=config.duration,
        started_at=started_at,
        elapsed=elapsed,
        span=span,
        token_lifetime=lifetime,
        refresh_margin=refresh_margin,
        requests=requests,
        caller_errors=sum(errors.values()),
        errors_by_kind=dict(errors),
        error_samples=samples,
        caller_401s=sum(result["caller_401s"] for result in results.values()),
        rps=requests / elapsed if elapsed > 0 else 0.0,
        latency_p50=_percentile(latencies, 0.50),
        latency_p99=_percentile(latencies, 0.99),
        timeline=timeline,
        failures=tuple(sorted(failures)),
        failure_spans=tuple(sorted(zip(failures, failure_ends, strict=True))),
        refresh_grants=after.refresh_grants - before.refresh_grants,
        rejected_refreshes=after.rejected_refreshes - before.rejected_refreshes,
        reuse_detections=after.reuse_detections - before.reuse_detections,
        unauthorized=after.unauthorized - before.unauthorized,
        api_requests=after.api_requests - before.api_requests,
        rotations_expected=round(config.duration / period) if period > 0 else 0,
        saved_rotations=tuple(saved),
        warnings=tuple(sorted(warnings)),
        resources=tuple(
            tuple(ResourceSample(*sample) for sample in results[index]["resources"])
            for index in sorted(results)
        ),
    )
