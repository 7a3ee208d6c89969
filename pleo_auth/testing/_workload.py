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

This module is the parent, which starts the workers and collects their results;
the workers' side is :mod:`._workload_worker`, the report :mod:`._workload_report`.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import queue as queue_module
import time
from collections.abc import Callable, Mapping
from typing import Any

from .._clock import SYSTEM_CLOCK
from ..errors import ConfigurationError
from ..stores.base import TokenStore
from ..tokens import TokenSet
from ._emulator import Emulator, EmulatorCounters
from ._workload_report import (
    ResourceSample,
    WorkloadProgress,
    WorkloadReport,
    _report,
)
from ._workload_worker import (
    _FINISH_GRACE,
    _PROGRESS_EVERY,
    _START_TIMEOUT,
    API_PATH,
    ClientSpec,
    _worker_main,
    _WorkerConfig,
    build_store,
)

__all__ = [
    "API_PATH",
    "ClientSpec",
    "ResourceSample",
    "WorkloadError",
    "WorkloadProgress",
    "WorkloadReport",
    "build_store",
    "run_workload",
]

logger = logging.getLogger(__name__)


class WorkloadError(RuntimeError):
    """The workload could not run: a worker failed to start, died or hung.

    Errors that callers of the session see are not this: they are counted in the
    :class:`WorkloadReport`.
    """


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
        span = SYSTEM_CLOCK.time() - (seeded.issued_at or seeded.expires_at)
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
