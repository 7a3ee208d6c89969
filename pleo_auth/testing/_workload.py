"""A multi-process load against an :class:`~pleo_auth.testing.Emulator`: many
processes, each with its own store and :class:`~pleo_auth.PleoSession`, hammering
``GET /v2/employees`` while the tokens rotate underneath them.

It backs the stress tests, the ``pleo-auth demo`` command and the benchmarks::

    from pleo_auth.testing import Emulator, run_workload

    with Emulator(access_token_lifetime=2) as emu:
        report = run_workload(emu, "file:/tmp/demo/tokens.json", duration=10)
    assert report.caller_errors == 0 and report.reuse_detections == 0

Workers share nothing but the store spec (and the emulator's URLs): each builds
its own store and session from the spec, as separate hosts would. A
``client_factory`` puts another HTTP client in the workers' hands instead (the
benchmarks compare other OAuth libraries this way).

Each worker also samples its own resident memory and thread count while the load
runs (:class:`ResourceSample`), so a soak test can show that neither grows with
the rotations.
"""

from __future__ import annotations

import array
import collections
import importlib
import logging
import math
import multiprocessing
import os
import queue as queue_module
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._schedule import RefreshSchedule
from ..errors import ConfigurationError
from ..stores.base import TokenStore
from ..tokens import TokenSet
from ._emulator import Emulator, EmulatorCounters

__all__ = [
    "ClientSpec",
    "ResourceSample",
    "WorkloadError",
    "WorkloadProgress",
    "WorkloadReport",
    "build_store",
    "run_workload",
]

logger = logging.getLogger(__name__)

#: The path every worker thread requests.
API_PATH = "/v2/employees"

_PROGRESS_EVERY = 0.5  # seconds between progress reports
_START_TIMEOUT = 120.0  # seconds for every worker to import, build its session and report
_FINISH_GRACE = 120.0  # seconds past the duration before a silent worker counts as hung


class WorkloadError(RuntimeError):
    """The workload could not run: a worker failed to start, died or hung.

    Errors that callers of the session see are not this: they are counted in the
    :class:`WorkloadReport`.
    """


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


@dataclass(frozen=True)
class ClientSpec:
    """What a ``client_factory`` gets in each worker process to build its client.

    Attributes:
        store_spec: The workload's store spec (see :func:`build_store`).
        client_id: The emulator's client id.
        client_secret: The emulator's client secret.
        token_url: The emulator's token endpoint.
        api_url: The emulator's API base URL.
        refresh_margin: The workload's ``refresh_margin``.

    Thread safety:
        Immutable; share it freely.
    """

    store_spec: str
    client_id: str
    client_secret: str | None
    token_url: str
    api_url: str
    refresh_margin: float


@dataclass(frozen=True)
class _WorkerConfig:
    """Everything a worker needs; picklable, so it crosses a spawn."""

    client: ClientSpec
    client_factory: str | None
    threads: int
    duration: float
    session_options: tuple[tuple[str, Any], ...] = ()
    error_pause: float = 0.0


# -- the store spec -----------------------------------------------------------------


def build_store(spec: str, *, client_id: str) -> TokenStore:
    """The store a workload spec names; each worker calls it to build its own.

    * ``file:PATH``: a :class:`~pleo_auth.FileStore`.
    * ``keyring-file:PATH``: a :class:`~pleo_auth.KeyringStore` over keyrings.alt's
      plaintext file backend at ``PATH``, with its lock and change marker in
      ``PATH.state/`` beside it. For tests: a real keyring backend every process
      can share, with no desktop session.
    * ``redis://...``, ``rediss://...``, ``unix://...``: a
      :class:`~pleo_auth.RedisStore`; the key is ``?key=NAME`` or ``#NAME``.

    Raises:
        ConfigurationError: The spec is not one of these.
    """
    kind, colon, rest = spec.partition(":")
    if kind == "keyring-file" and colon and rest:
        from keyrings.alt.file import PlaintextKeyring

        from ..stores.keyring import KeyringStore

        path = Path(rest).expanduser().absolute()
        backend = PlaintextKeyring()
        backend.file_path = str(path)
        return KeyringStore(
            account=client_id, backend=backend, state_dir=path.with_name(path.name + ".state")
        )
    if kind == "keyring":
        raise ConfigurationError(
            "a workload store spec is file:PATH, keyring-file:PATH or redis://HOST:PORT/DB[#KEY]"
        )
    from ..stores.spec import store_from_spec

    return store_from_spec(spec, client_id=client_id)


def _shown(spec: str) -> str:
    from ..stores.spec import redact_spec

    return redact_spec(spec)


# -- the worker process ---------------------------------------------------------------


class _ThreadTally:
    """One worker thread's records; only its thread writes, others read totals."""

    __slots__ = (
        "caller_401s",
        "error_count",
        "errors",
        "failure_ends",
        "failures",
        "last_end",
        "requests",
        "samples",
        "timeline",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.error_count = 0  # read by the reporting thread, unlike the Counter
        self.last_end = 0.0
        self.caller_401s = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self.samples: dict[str, str] = {}
        self.timeline = array.array("d")  # start, latency, start, latency, ...
        self.failures = array.array("d")  # start of each failed request
        self.failure_ends = array.array("d")  # and its end, in the same order

    def failed(self, start: float, end: float, kind: str, message: str) -> None:
        self.failures.append(start)
        self.failure_ends.append(end)
        self.errors[kind] += 1
        self.error_count += 1
        self.samples.setdefault(kind, message[:300])

    def record_bytes(self) -> int:
        """Bytes held by the growing records; read from another thread, so only len()."""
        return 8 * (len(self.timeline) + len(self.failures) + len(self.failure_ends))


class _WarningLog(logging.Handler):
    """Keeps the library's warnings in a worker, with the monotonic time of each."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record must not break the worker
            message = str(record.msg)
        self.records.append((time.monotonic(), f"{record.name} {record.levelname}: {message}"))


def _rss() -> int:
    """This process's resident memory, in bytes."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            resident_pages = int(statm.read().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # bytes there, KiB elsewhere


def _worker_main(config: _WorkerConfig, index: int, outbox: Any, go: Any, start_at: Any) -> None:
    """Entry point of a worker process. Reports through ``outbox``, never raises."""
    try:
        _work(config, index, outbox, go, start_at)
    except BaseException:
        outbox.put(("failed", index, traceback.format_exc()))


def _build_client(config: _WorkerConfig, saved: list[str]) -> Any:
    """The worker's HTTP client: a PleoSession over its own store, or the factory's.

    Every pair the session saves is appended to ``saved`` by fingerprint.
    """
    spec = config.client
    if config.client_factory is not None:
        module, _, name = config.client_factory.partition(":")
        factory = getattr(importlib.import_module(module), name)
        return factory(spec)
    from ..session import PleoSession

    store = build_store(spec.store_spec, client_id=spec.client_id)
    save = store.save

    def counted_save(tokens: TokenSet, *, replaces: TokenSet | None = None) -> None:
        save(tokens, replaces=replaces)
        saved.append(tokens.fingerprint)  # only once the save went through

    # On the instance: the store's class, and so its key and behaviour, stay as built.
    store.save = counted_save  # type: ignore[method-assign]
    return PleoSession(
        spec.client_id,
        spec.client_secret,
        store=store,
        token_url=spec.token_url,
        api_url=spec.api_url,
        refresh_margin=spec.refresh_margin,
        **dict(config.session_options),
    )


def _work(config: _WorkerConfig, index: int, outbox: Any, go: Any, start_at: Any) -> None:
    from ..session import _LIVE_SESSIONS

    saved: list[str] = []
    warnings = _WarningLog()
    logging.getLogger("pleo_auth").addHandler(warnings)
    session = _build_client(config, saved)
    url = config.client.api_url.rstrip("/") + API_PATH
    barrier = threading.Barrier(config.threads + 1)
    tallies = [_ThreadTally() for _ in range(config.threads)]
    times: dict[str, float] = {}

    def loop(tally: _ThreadTally) -> None:
        barrier.wait()
        origin = times["origin"]
        deadline = times["deadline"]
        get = session.get
        record = tally.timeline.extend
        error_pause = config.error_pause
        while True:
            started = time.monotonic()
            if started >= deadline:
                return
            try:
                response = get(url, timeout=30)
            except Exception as exc:
                finished = time.monotonic()
                status = None
                tally.failed(started - origin, finished - origin, type(exc).__name__, str(exc))
            else:
                status = response.status_code
                response.close()
                finished = time.monotonic()
            tally.requests += 1
            tally.last_end = finished - origin
            record((started - origin, finished - started))
            if status is not None and status != 200:
                if status == 401:
                    tally.caller_401s += 1
                tally.failed(
                    started - origin,
                    finished - origin,
                    f"HTTP {status}",
                    f"GET {API_PATH} answered {status}",
                )
            if error_pause and status != 200:
                time.sleep(error_pause)

    threads = [
        threading.Thread(target=loop, args=(tally,), name=f"workload-{index}-{n}", daemon=True)
        for n, tally in enumerate(tallies)
    ]
    for thread in threads:
        thread.start()
    outbox.put(("ready", index))
    if not go.wait(_START_TIMEOUT):
        barrier.abort()
        return
    # CLOCK_MONOTONIC is one clock for every process on a host.
    origin = times["origin"] = start_at.value
    deadline = times["deadline"] = start_at.value + config.duration
    barrier.wait()

    def totals() -> tuple[int, int]:
        return (
            sum(tally.requests for tally in tallies),
            sum(tally.error_count for tally in tallies),
        )

    resources: list[tuple[float, int, int, int]] = []

    def sample() -> None:
        now = time.monotonic()
        if now < deadline:  # afterwards the load threads are leaving
            records = sum(tally.record_bytes() for tally in tallies)
            resources.append((now - origin, _rss(), threading.active_count(), records))

    sample()
    for thread in threads:
        while thread.is_alive():
            thread.join(_PROGRESS_EVERY)
            sample()
            outbox.put(("progress", index, *totals()))
    close = getattr(session, "close", None)
    if close is not None:
        close()
    # With the fork start method, sessions the parent had built live on here and
    # keep the shared refresh timer running: close them too.
    for inherited in list(_LIVE_SESSIONS):
        inherited.close()
    # The timer may be mid-refresh: exiting now would lose the tokens it is
    # about to save, after the server spent the stored refresh token.
    for thread in threading.enumerate():
        if thread.name == "pleo-auth-refresh":
            thread.join(_FINISH_GRACE)
    timeline = array.array("d")
    failures = array.array("d")
    failure_ends = array.array("d")
    errors: collections.Counter[str] = collections.Counter()
    samples: dict[str, str] = {}
    for tally in tallies:
        timeline.extend(tally.timeline)
        failures.extend(tally.failures)
        failure_ends.extend(tally.failure_ends)
        errors.update(tally.errors)
        for kind, message in tally.samples.items():
            samples.setdefault(kind, message)
    outbox.put(
        (
            "result",
            index,
            {
                "requests": sum(tally.requests for tally in tallies),
                "caller_401s": sum(tally.caller_401s for tally in tallies),
                "errors": dict(errors),
                "samples": samples,
                "timeline": timeline.tobytes(),
                "failures": failures.tobytes(),
                "failure_ends": failure_ends.tobytes(),
                "last_end": max(tally.last_end for tally in tallies),
                "saved": list(saved),
                "resources": resources,
                "warnings": [(at - origin, text[:500]) for at, text in warnings.records],
            },
        )
    )


# -- the parent -------------------------------------------------------------------------


def run_workload(
    emulator: Emulator,
    store_spec: str,
    *,
    processes: int = 4,
    threads: int = 8,
    duration: float = 10.0,
    refresh_margin: float = 1.0,
    start_method: str = "spawn",
    on_progress: Callable[[WorkloadProgress], None] | None = None,
    seed: bool = True,
    client_factory: str | None = None,
    session_options: Mapping[str, Any] | None = None,
    error_pause: float = 0.0,
) -> WorkloadReport:
    """Run ``processes`` worker processes of ``threads`` threads each for ``duration``
    seconds, every thread looping ``GET /v2/employees`` through its process's session.

    Before the workers start, the store is seeded with a new grant from
    ``emulator.issue_tokens()`` (unless ``seed`` is False, when it must already
    hold the emulator's tokens). The workers build their sessions first, so that
    the load starts on a signal, all at once, with the seeded tokens fresh.

    Args:
        emulator: A running emulator; its access token lifetime sets the pace of
            rotations (:meth:`Emulator.set_access_token_lifetime`).
        store_spec: ``file:PATH``, ``keyring-file:PATH`` or
            ``redis://HOST:PORT/DB[#KEY]`` (see :func:`build_store`).
        processes: Worker processes.
        threads: Threads per worker.
        duration: Seconds of load.
        refresh_margin: The sessions' ``refresh_margin``.
        start_method: The :mod:`multiprocessing` start method: ``"spawn"`` (each
            worker a fresh interpreter, like a separate host), ``"forkserver"``
            or ``"fork"``.
        on_progress: Called from this thread about every 0.5 s while the load runs.
        seed: Seed the store with a new grant first.
        client_factory: ``"module:function"``, importable in the workers: called
            in each worker with a :class:`ClientSpec`, it returns the
            ``requests.Session``-like client the worker's threads share, in place
            of a :class:`~pleo_auth.PleoSession`. Threads call
            ``client.get(api_url + "/v2/employees", timeout=...)``; the client is
            closed at the end if it has ``close()``. The store is still seeded.
        session_options: More keyword arguments for every worker's
            :class:`~pleo_auth.PleoSession`, such as ``max_refresh_attempts``,
            ``max_refresh_time`` or ``refresh_timeout``; picklable values only.
            Not with ``client_factory``.
        error_pause: Seconds a thread waits after a request failed for its caller
            before it sends the next, as a real caller would rather than spin
            (a thread that spins on ``ReauthenticationRequired`` piles up
            thousands of failures a second, and their records).

    Returns:
        The report; callers' errors are counted in it, not raised.

    Raises:
        ConfigurationError: An argument is invalid.
        WorkloadError: A worker failed to start, died or hung; the message
            carries its traceback.

    Thread safety:
        Runs in the calling thread; ``emulator`` may be shared with other users,
        but its counters then include their traffic.
    """
    if client_factory is not None and ":" not in client_factory:
        raise ConfigurationError("client_factory must be 'module:function'")
    if processes < 1 or threads < 1:
        raise ConfigurationError("processes and threads must be at least 1")
    if not (0 < duration < math.inf) or refresh_margin < 0:
        raise ConfigurationError("duration must be positive and refresh_margin not negative")
    if not (0 <= error_pause < math.inf):
        raise ConfigurationError("error_pause must be a finite number of seconds >= 0")
    options = dict(session_options or {})
    if options and client_factory is not None:
        raise ConfigurationError("session_options apply to PleoSession, not to a client_factory")
    fixed = {"store", "token_url", "api_url", "refresh_margin"} & options.keys()
    if fixed:
        raise ConfigurationError(
            f"session_options cannot set {', '.join(sorted(fixed))}: the workload sets them"
        )
    client_id = emulator.client_id
    store = build_store(store_spec, client_id=client_id)
    config = _WorkerConfig(
        client=ClientSpec(
            store_spec=store_spec,
            client_id=client_id,
            client_secret=emulator.client_secret,
            token_url=emulator.token_url,
            api_url=emulator.api_url,
            refresh_margin=refresh_margin,
        ),
        client_factory=client_factory,
        threads=threads,
        duration=duration,
        session_options=tuple(sorted(options.items())),
        error_pause=error_pause,
    )
    ctx: Any = multiprocessing.get_context(start_method)
    outbox = ctx.Queue()
    go = ctx.Event()
    start_at = ctx.Value("d", 0.0, lock=False)
    workers = [
        ctx.Process(
            target=_worker_main,
            args=(config, index, outbox, go, start_at),
            name=f"pleo-auth-workload-{index}",
            daemon=True,
        )
        for index in range(processes)
    ]
    try:
        for worker in workers:
            worker.start()
        _await_ready(workers, outbox)
        seeded = _seed(store, emulator) if seed else _stored(store)
        before = emulator.counters
        start_at.value = time.monotonic()
        go.set()
        results = _collect(workers, outbox, before, emulator, start_at.value, duration, on_progress)
        for worker in workers:
            worker.join(_FINISH_GRACE)
        after = emulator.counters
        span = time.time() - (seeded.issued_at or seeded.expires_at)
    finally:
        go.set()  # release workers still waiting, if we failed before the start
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
                worker.join(10)
        outbox.close()
        outbox.join_thread()
    return _report(
        store_spec, config, processes, seeded, results, before, after, span, start_at.value
    )


def _await_ready(workers: list[Any], outbox: Any) -> None:
    waiting = set(range(len(workers)))
    give_up_at = time.monotonic() + _START_TIMEOUT
    while waiting:
        try:
            message = outbox.get(timeout=0.2)
        except queue_module.Empty:
            _check_alive(workers, waiting)
            if time.monotonic() > give_up_at:
                raise WorkloadError(
                    f"workers {sorted(waiting)} did not start in {_START_TIMEOUT:.0f}s"
                ) from None
            continue
        kind, index = message[0], message[1]
        if kind == "failed":
            raise WorkloadError(f"worker {index} failed to start:\n{message[2]}")
        if kind == "ready":
            waiting.discard(index)


def _check_alive(workers: list[Any], waiting: set[int]) -> None:
    for index in waiting:
        code = workers[index].exitcode
        if code is not None:
            raise WorkloadError(f"worker {index} exited with code {code} without reporting")


def _seed(store: TokenStore, emulator: Emulator) -> TokenSet:
    tokens = TokenSet.from_response(emulator.issue_tokens())
    with store.lock(timeout=30.0, lease=30.0):
        store.save(tokens)
    return tokens


def _stored(store: TokenStore) -> TokenSet:
    tokens = store.load()
    if tokens is None:
        raise ConfigurationError(f"seed=False, but {store.describe()} holds no tokens")
    return tokens


def _collect(
    workers: list[Any],
    outbox: Any,
    before: EmulatorCounters,
    emulator: Emulator,
    started: float,
    duration: float,
    on_progress: Callable[[WorkloadProgress], None] | None,
) -> dict[int, dict[str, Any]]:
    results: dict[int, dict[str, Any]] = {}
    progress: dict[int, tuple[int, int]] = {}
    give_up_at = started + duration + _FINISH_GRACE
    next_report = started + _PROGRESS_EVERY
    while len(results) < len(workers):
        try:
            message = outbox.get(timeout=0.1)
        except queue_module.Empty:
            _check_alive(workers, set(range(len(workers))) - set(results))
            if time.monotonic() > give_up_at:
                raise WorkloadError(
                    f"workers {sorted(set(range(len(workers))) - set(results))} did not "
                    f"finish within {_FINISH_GRACE:.0f}s of the deadline"
                ) from None
        else:
            kind, index = message[0], message[1]
            if kind == "failed":
                raise WorkloadError(f"worker {index} failed:\n{message[2]}")
            if kind == "progress":
                progress[index] = (message[2], message[3])
            elif kind == "result":
                results[index] = message[2]
                progress[index] = (message[2]["requests"], sum(message[2]["errors"].values()))
        now = time.monotonic()
        if on_progress is not None and now >= next_report:
            next_report = now + _PROGRESS_EVERY
            on_progress(
                WorkloadProgress(
                    elapsed=min(now - started, duration),
                    duration=duration,
                    requests=sum(done for done, _ in progress.values()),
                    errors=sum(failed for _, failed in progress.values()),
                    refresh_grants=emulator.counters.refresh_grants - before.refresh_grants,
                    errors_by_process=tuple(
                        progress.get(index, (0, 0))[1] for index in range(len(workers))
                    ),
                )
            )
    return results


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
