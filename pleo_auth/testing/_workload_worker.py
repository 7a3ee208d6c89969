"""The worker side of a workload: what each worker process of
:func:`~pleo_auth.testing.run_workload` does, and what it is told."""

from __future__ import annotations

import array
import collections
import importlib
import logging
import os
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError
from ..stores.base import TokenStore
from ..tokens import TokenSet

#: The path every worker thread requests.
API_PATH = "/v2/employees"

_PROGRESS_EVERY = 0.5  # seconds between progress reports
_START_TIMEOUT = 120.0  # seconds for every worker to import, build its session and report
_FINISH_GRACE = 120.0  # seconds past the duration before a silent worker counts as hung


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
    saved: list[str] = []
    warnings = _WarningLog()
    logging.getLogger("pleo_auth").addHandler(warnings)
    session = _build_client(config, saved)
    url = config.client.api_url.rstrip("/") + API_PATH
    barrier = threading.Barrier(config.threads + 1)
    tallies = [_ThreadTally() for _ in range(config.threads)]
    times: dict[str, float] = {}
    threads = [
        threading.Thread(
            target=_load,
            args=(session, url, tally, barrier, times, config.error_pause),
            name=f"workload-{index}-{n}",
            daemon=True,
        )
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
    _close_sessions(session)
    result = _result(tallies, origin)
    result.update(
        saved=list(saved),
        resources=resources,
        warnings=[(at - origin, text[:500]) for at, text in warnings.records],
    )
    outbox.put(("result", index, result))


def _load(
    session: Any,
    url: str,
    tally: _ThreadTally,
    barrier: threading.Barrier,
    times: dict[str, float],
    error_pause: float,
) -> None:
    """One load thread: GET ``url`` until the deadline, recording every request."""
    barrier.wait()
    origin = times["origin"]
    deadline = times["deadline"]
    get = session.get
    record = tally.timeline.extend
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


def _close_sessions(session: Any) -> None:
    """Close the worker's client, and sessions inherited over a fork, and let a
    refresh in progress save its tokens."""
    from ..session import _LIVE_SESSIONS

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


def _result(tallies: list[_ThreadTally], origin: float) -> dict[str, Any]:
    """The load threads' records, merged, as the worker reports them."""
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
    return {
        "requests": sum(tally.requests for tally in tallies),
        "caller_401s": sum(tally.caller_401s for tally in tallies),
        "errors": dict(errors),
        "samples": samples,
        "timeline": timeline.tobytes(),
        "failures": failures.tobytes(),
        "failure_ends": failure_ends.tobytes(),
        "last_end": max(tally.last_end for tally in tallies),
    }
