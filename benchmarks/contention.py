"""Part 2: contention and rotation, through the emulator, over several rotations.

T threads in each of P processes loop ``GET /v2/employees`` against a
:class:`~pleo_auth.testing.Emulator` in this process, whose access tokens live a
few seconds, using the workload runner of the stress tests,
:func:`pleo_auth.testing.run_workload` (each worker process builds its
own session, as separate hosts would). The libraries:

* ``static``: a plain ``requests.Session`` with a fixed Bearer token, on an
  emulator whose tokens never expire during the run: the ceiling. The token is
  set as ``session.auth`` (so requests skips its netrc lookup, as it does for
  PleoSession), and every client mounts PleoSession's 64-connection pool.
* ``pleo_auth``: PleoSession over a shared FileStore.
* ``requests-oauthlib`` and ``authlib``: their OAuth2Session with automatic
  refresh and the fairest settings each offers (see :mod:`benchmarks.clients`).

For every run the emulator's refresh grants are timed by polling its counters
every few milliseconds, and a token-endpoint round trip is timed under the same
load (a plain ``requests`` refresh of a private grant on a second emulator in
this process, which shares the CPU and the GIL with the first).

Definitions used in the table:

* A *rotation* is a refresh grant made at least a quarter of a token lifetime
  after the previous one; a grant sooner than that replaced tokens that had no
  need of it, and counts against "grants per rotation".
* *Around a rotation* is the second centred on a refresh grant; *steady state* is
  every other request, less the first half second (connections opening).
"""

# ruff: noqa: RUF001 - the tables print ratios with a multiplication sign

from __future__ import annotations

import collections
import contextlib
import logging
import math
import multiprocessing
import secrets
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from pleo_auth.testing import Emulator, WorkloadReport, run_workload
from pleo_auth.tokens import TokenSet

from . import clients
from ._common import (
    CLIENT_ID,
    CLIENT_SECRET,
    Section,
    Table,
    Verdict,
    anchor_available,
    fmt,
    percentile,
)
from .plot import Series, render

logger = logging.getLogger(__name__)

WARMUP = 0.5  # seconds at the start left out of the steady state
WINDOW = 0.5  # half the window around a rotation
SLACK = 0.005  # the "+ 5 ms" of the rotation-latency target
THROUGHPUT_FLOOR = 0.95

_MODULES = {"requests-oauthlib": "requests_oauthlib", "authlib": "authlib"}
REPEATED = ("static", "pleo_auth")
_PRELOAD = (
    "requests",
    "pleo_auth.session",
    "pleo_auth.stores.file",
    "benchmarks._preload",
    "benchmarks.clients",
)


@dataclass(frozen=True)
class ContentionConfig:
    """Settings of the contention runs.

    Attributes:
        loads: (threads, processes) pairs.
        token_lifetime: Seconds an access token lives: whole seconds, at least 2.
            Authlib keeps expiry in whole seconds (``int(expires_in)``, and an
            ``expires_at`` truncated to the second), so with shorter or fractional
            lifetimes it would refresh on every request.
        refresh_margin: PleoSession's ``refresh_margin``, and Authlib's ``leeway``.
        rotations: Rotations each run should span (R).
        libraries: Which libraries to run; anchors not installed are skipped.
        plot_load: The load whose timelines are drawn.
        probe_every: Seconds between token-endpoint round-trip probes.
        repeats: Runs of ``static`` and ``pleo_auth`` per load, in back-to-back
            pairs; their samples are pooled, and the throughput target is judged on
            the median of the pairs' ratios. The anchors run once: how they fail
            does not depend on timing noise.
        start_method: The workers' :mod:`multiprocessing` start method. The
            default, ``forkserver``, forks each worker from a clean server process
            that has already imported the clients (no state of this process leaks
            in, as with ``spawn``, but without a second of imports per worker).
    """

    loads: tuple[tuple[int, int], ...] = ((1, 1), (16, 1), (8, 4))
    token_lifetime: float = 3.0
    refresh_margin: float = 1.0
    rotations: int = 3
    libraries: tuple[str, ...] = clients.LIBRARIES
    plot_load: tuple[int, int] = (8, 4)
    probe_every: float = 0.25
    repeats: int = 3
    start_method: str = "forkserver"

    @classmethod
    def quick(cls) -> ContentionConfig:
        return cls(
            loads=((1, 1), (4, 2)),
            token_lifetime=2.0,
            refresh_margin=0.4,
            rotations=2,
            plot_load=(4, 2),
            repeats=1,
        )

    @property
    def duration(self) -> float:
        """Seconds of load: R rotations of PleoSession's schedule, and a little."""
        period = self.token_lifetime - min(self.refresh_margin, self.token_lifetime / 2)
        return round(self.rotations * period + period / 4, 2)


@dataclass
class RunResult:
    """One library on one load (one run, or several pooled), with everything the
    tables and the plot need. Latencies are in seconds."""

    library: str
    threads: int
    processes: int
    duration: float
    token_lifetime: float
    runs: int
    requests: int
    caller_errors: int
    errors_by_kind: dict[str, int]
    refresh_grants: int
    rejected_refreshes: int
    reuse_detections: int
    rotations: int
    rps: float
    grant_times: list[float] = field(default_factory=list)
    revocations: list[float] = field(default_factory=list)
    rps_runs: list[float] = field(default_factory=list)
    pair_ratios: list[float] = field(default_factory=list)
    steady: list[float] = field(default_factory=list, repr=False)
    around_first: list[float] = field(default_factory=list, repr=False)
    around_later: list[float] = field(default_factory=list, repr=False)
    round_trips: list[float] = field(default_factory=list, repr=False)
    timeline: list[tuple[float, float]] = field(default_factory=list, repr=False)
    failures: list[float] = field(default_factory=list, repr=False)

    @property
    def grants_per_rotation(self) -> float | None:
        return self.refresh_grants / self.rotations if self.rotations else None

    @property
    def load(self) -> str:
        return f"{self.threads}×{self.processes}"

    @property
    def around(self) -> list[float]:
        """Latencies of requests that started within a second centred on a grant."""
        return self.around_first + self.around_later

    @property
    def steady_p50(self) -> float:
        return percentile(self.steady, 50)

    @property
    def steady_p99(self) -> float:
        return percentile(self.steady, 99)

    @property
    def rotation_p50(self) -> float:
        return percentile(self.around, 50)

    @property
    def rotation_p99(self) -> float:
        return percentile(self.around, 99)

    @property
    def token_rtt(self) -> float:
        return statistics.median(self.round_trips) if self.round_trips else math.nan

    def summary(self) -> dict[str, Any]:
        samples = ("steady", "around_first", "around_later", "round_trips", "timeline", "failures")
        data = {key: value for key, value in vars(self).items() if key not in samples}
        for name in ("grants_per_rotation", "steady_p50", "steady_p99", "rotation_p50",
                     "rotation_p99", "token_rtt"):  # fmt: skip
            data[name] = getattr(self, name)
        data["rotation_requests"] = len(self.around)
        data["first_rotation_p99"] = percentile(self.around_first, 99)
        data["later_rotations_p99"] = percentile(self.around_later, 99)
        return data


def pool(results: Sequence[RunResult]) -> RunResult:
    """Several runs of one library on one load as one: counts summed, latency
    samples pooled, the best throughput kept, and the first run's timeline."""
    first = results[0]
    errors: collections.Counter[str] = collections.Counter()
    for result in results:
        errors.update(result.errors_by_kind)
    return RunResult(
        library=first.library,
        threads=first.threads,
        processes=first.processes,
        duration=first.duration,
        token_lifetime=first.token_lifetime,
        runs=sum(r.runs for r in results),
        requests=sum(r.requests for r in results),
        caller_errors=sum(r.caller_errors for r in results),
        errors_by_kind=dict(errors),
        refresh_grants=sum(r.refresh_grants for r in results),
        rejected_refreshes=sum(r.rejected_refreshes for r in results),
        reuse_detections=sum(r.reuse_detections for r in results),
        rotations=sum(r.rotations for r in results),
        rps=max(r.rps for r in results),
        grant_times=first.grant_times,
        revocations=first.revocations,
        steady=[x for r in results for x in r.steady],
        rps_runs=[x for r in results for x in r.rps_runs],
        around_first=[x for r in results for x in r.around_first],
        around_later=[x for r in results for x in r.around_later],
        round_trips=[x for r in results for x in r.round_trips],
        timeline=first.timeline,
        failures=first.failures,
    )


# -- timing the emulator -----------------------------------------------------------------


class GrantClock:
    """Polls an emulator's counters and notes the monotonic time of each refresh
    grant, and of each reuse detection (which revokes the grant).

    Thread safety:
        Runs its own thread between ``__enter__`` and ``__exit__``; read
        :attr:`times` only after ``__exit__``.
    """

    def __init__(self, emulator: Emulator, every: float = 0.002):
        self._emulator = emulator
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-grant-clock", daemon=True)
        self.times: list[float] = []
        self.revocations: list[float] = []

    def __enter__(self) -> GrantClock:
        counters = self._emulator.counters
        self._seen = counters.refresh_grants
        self._seen_reuse = counters.reuse_detections
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._poll()

    def _poll(self) -> None:
        counters = self._emulator.counters
        now = time.monotonic()
        if counters.refresh_grants > self._seen:
            self.times.extend([now] * (counters.refresh_grants - self._seen))
            self._seen = counters.refresh_grants
        if counters.reuse_detections > self._seen_reuse:
            self.revocations.extend([now] * (counters.reuse_detections - self._seen_reuse))
            self._seen_reuse = counters.reuse_detections

    def _loop(self) -> None:
        while not self._stop.wait(self._every):
            self._poll()


class RoundTripProbe:
    """Times pleo_auth's own token-endpoint client refreshing a private grant on a
    second emulator, every ``every`` seconds, while a load runs.

    Thread safety:
        Runs its own thread between ``__enter__`` and ``__exit__``; read
        :attr:`samples` only after ``__exit__``.
    """

    def __init__(self, emulator: Emulator, every: float):
        self._emulator = emulator
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-rtt-probe", daemon=True)
        self.samples: list[tuple[float, float]] = []  # (monotonic start, seconds)

    def __enter__(self) -> RoundTripProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        # One token request as any client makes it: a form POST with Basic auth.
        tokens = TokenSet.from_response(self._emulator.issue_tokens())
        with requests.Session() as http:
            http.auth = (CLIENT_ID, CLIENT_SECRET)
            while not self._stop.wait(self._every):
                started = time.monotonic()
                reply = http.post(
                    self._emulator.token_url,
                    data={"grant_type": "refresh_token", "refresh_token": tokens.refresh_token},
                    timeout=30,
                )
                reply.raise_for_status()
                tokens = TokenSet.from_response(reply.json())
                self.samples.append((started, time.monotonic() - started))


# -- one run -----------------------------------------------------------------------------


def run_one(
    emulator: Emulator,
    probe: Emulator,
    library: str,
    threads: int,
    processes: int,
    config: ContentionConfig,
    workdir: Path,
) -> RunResult:
    """Run one library on one load and measure it."""
    lifetime = 86400.0 if library == "static" else config.token_lifetime
    if config.start_method == "forkserver":
        # Takes effect when the fork server starts, that is, for the first run.
        multiprocessing.set_forkserver_preload(list(_PRELOAD))
    emulator.set_access_token_lifetime(lifetime)
    # A file of its own for every run: a store left by an earlier run would hold
    # tokens near expiry, which the new sessions' timers would refresh before the start.
    spec = f"file:{workdir / f'{library}-{threads}x{processes}-{secrets.token_hex(4)}.json'}"
    with GrantClock(emulator) as grants, RoundTripProbe(probe, config.probe_every) as rtt:
        report = run_workload(
            emulator,
            spec,
            processes=processes,
            threads=threads,
            duration=config.duration,
            refresh_margin=config.refresh_margin,
            start_method=config.start_method,
            client_factory=clients.FACTORIES[library],
        )
    origin = report.started_at
    grant_times = [t - origin for t in grants.times]
    in_load = [s for start, s in rtt.samples if 0 <= start - origin <= config.duration]
    if len(grant_times) != report.refresh_grants:
        logger.warning(
            "%s at %d×%d: %d refresh grants timed, but the emulator counted %d in the run",
            library, threads, processes, len(grant_times), report.refresh_grants,
        )  # fmt: skip
    result = measure(library, report, grant_times, in_load, lifetime)
    result.revocations = [t - origin for t in grants.revocations]
    return result


def measure(
    library: str,
    report: WorkloadReport,
    grant_times: Sequence[float],
    round_trips: Sequence[float],
    lifetime: float,
) -> RunResult:
    """Turn a workload report and the grant times into the figures of the table."""
    windows = [(g - WINDOW, g + WINDOW) for g in sorted(grant_times)]
    first: list[float] = []
    later: list[float] = []
    steady: list[float] = []
    for start, latency in report.timeline:
        inside = [n for n, (low, high) in enumerate(windows) if low <= start <= high]
        if not inside:
            if start >= WARMUP:
                steady.append(latency)
        elif inside[0] == 0:
            first.append(latency)
        else:
            later.append(latency)
    return RunResult(
        library=library,
        threads=report.threads,
        processes=report.processes,
        duration=report.duration,
        token_lifetime=lifetime,
        runs=1,
        requests=report.requests,
        caller_errors=report.caller_errors,
        errors_by_kind=dict(report.errors_by_kind),
        refresh_grants=report.refresh_grants,
        rejected_refreshes=report.rejected_refreshes,
        reuse_detections=report.reuse_detections,
        rotations=count_rotations(grant_times, lifetime),
        rps=report.rps,
        grant_times=list(grant_times),
        rps_runs=[report.rps],
        steady=steady,
        around_first=first,
        around_later=later,
        round_trips=list(round_trips),
        timeline=list(report.timeline),
        failures=list(report.failures),
    )


def count_rotations(grant_times: Sequence[float], lifetime: float) -> int:
    """Grants made at least a quarter of a token lifetime after the previous grant.

    >>> count_rotations([1.9, 3.8, 3.81, 5.7], lifetime=3.0)
    3
    """
    rotations = 0
    previous = float("-inf")
    for grant in sorted(grant_times):
        if grant - previous >= lifetime / 4:
            rotations += 1
        previous = grant
    return rotations


# -- the part ----------------------------------------------------------------------------


def libraries(config: ContentionConfig) -> tuple[list[str], list[str]]:
    """The libraries to run, and the reasons any were left out."""
    chosen, skipped = [], []
    for library in config.libraries:
        module = _MODULES.get(library)
        if module is not None and not anchor_available(module):
            skipped.append(f"{library}: not installed (pip install 'pleo-auth[bench]')")
        else:
            chosen.append(library)
    return chosen, skipped


@dataclass
class Emulators:
    main: Emulator
    probe: Emulator


@contextlib.contextmanager
def emulators() -> Iterator[Emulators]:
    main = Emulator(client_id=CLIENT_ID, client_secret=CLIENT_SECRET).start()
    probe = Emulator(client_id=CLIENT_ID, client_secret=CLIENT_SECRET).start()
    try:
        yield Emulators(main, probe)
    finally:
        main.stop()
        probe.stop()


def run(config: ContentionConfig) -> Section:
    section = Section(
        f"2. Contention and rotation (emulator, {config.token_lifetime:g} s tokens, "
        f"{config.duration:g} s per run)"
    )
    chosen, skipped = libraries(config)
    runs: dict[tuple[str, int, int], list[RunResult]] = collections.defaultdict(list)
    with (
        tempfile.TemporaryDirectory(prefix="pleo-bench-contention-") as tmp,
        emulators() as pair,
    ):
        for number, (threads, processes) in enumerate(config.loads):
            for round_ in range(config.repeats):
                # static and pleo_auth back to back, taking turns to go first: a pair
                # meets much the same background load. The anchors once, after.
                turn = list(REPEATED) if (number + round_) % 2 == 0 else list(REPEATED[::-1])
                if round_ == 0:
                    turn += [library for library in chosen if library not in REPEATED]
                for library in turn:
                    if library not in chosen:
                        continue
                    logger.info("contention: %s at %d×%d", library, threads, processes)
                    runs[library, threads, processes].append(
                        run_one(
                            pair.main, pair.probe, library, threads, processes, config, Path(tmp)
                        )
                    )
    results = [pool(group) for group in runs.values()]
    for result in results:
        if result.library == "pleo_auth":
            static = runs.get(("static", result.threads, result.processes), [])
            mine = runs[result.library, result.threads, result.processes]
            result.pair_ratios = [
                p.rps / s.rps for p, s in zip(mine, static, strict=False) if s.rps > 0
            ]
    order = {name: index for index, name in enumerate(config.libraries)}
    results.sort(key=lambda r: (config.loads.index((r.threads, r.processes)), order[r.library]))
    section.tables.append(_main_table(results, skipped, config))
    section.tables.append(_target_table(results))
    section.verdicts.extend(_verdicts(results))
    section.raw = {
        "config": vars(config) | {"duration": config.duration},
        "results": [r.summary() for r in results],
        "runs": [r.summary() for group in runs.values() for r in group],
        "plot": {
            r.library: {
                "timeline": r.timeline,
                "failures": r.failures,
                "grants": r.grant_times,
                "revocations": r.revocations,
                "duration": r.duration,
                "load": r.load,
            }
            for r in results
            if (r.threads, r.processes) == config.plot_load
        },
    }
    return section


def draw(section: Section, path: Path) -> Path | None:
    """Draw the plot of the plot load's runs; None when matplotlib is missing."""
    if not anchor_available("matplotlib"):
        logger.warning("matplotlib is not installed: no plot (pip install 'pleo-auth[bench]')")
        return None
    runs: Mapping[str, Mapping[str, Any]] = section.raw["plot"]
    if not runs:
        return None
    series = {
        name: Series(run["timeline"], run["failures"], run["grants"], run["revocations"])
        for name, run in runs.items()
    }
    first = next(iter(runs.values()))
    threads, processes = first["load"].split("×")
    title = (
        f"GET /v2/employees, {threads} threads × {processes} processes, "
        f"tokens live {section.raw['config']['token_lifetime']:g} s"
    )
    return render(series, first["duration"], path, title)


def _ms(seconds: float) -> str:
    return fmt(seconds * 1e3, 1)


def _main_table(
    results: Sequence[RunResult], skipped: Sequence[str], config: ContentionConfig
) -> Table:
    table = Table(
        f"{config.duration:g} s of load per run (about {config.rotations} of PleoSession's "
        "rotations); load is threads × processes",
        ["library", "load", "runs", "refresh grants", "rotations", "grants / rotation",
         "rejected refreshes", "reuse detections", "caller errors", "req/s",
         "p50 / p99 steady (ms)", "p50 / p99 around rotation (ms)"],
    )  # fmt: skip
    for r in results:
        per = r.grants_per_rotation
        table.rows.append(
            [
                r.library,
                r.load,
                str(r.runs),
                str(r.refresh_grants),
                str(r.rotations),
                "n/a" if per is None else f"{per:.2f}",
                f"{r.rejected_refreshes:,}",
                str(r.reuse_detections),
                f"{r.caller_errors:,}" + _error_kinds(r),
                fmt(r.rps, 0),
                f"{_ms(r.steady_p50)} / {_ms(r.steady_p99)}",
                f"{_ms(r.rotation_p50)} / {_ms(r.rotation_p99)}" if r.around else "n/a",
            ]
        )
    table.notes.append(
        "Counts are summed over a library's runs, latency samples pooled, and req/s is "
        "the best run's. "
        "static: a fixed token and no refresh at all (tokens outlive the run), the "
        "ceiling; like every client here it has PleoSession's 64-connection pool, and "
        "its token is `session.auth`, so requests skips the netrc lookup for it as it "
        "does for PleoSession. A rotation is a "
        "refresh grant at least a quarter of a token lifetime after the previous one. "
        "Once an anchor's grant is revoked (a reuse detection), every later request fails: "
        "those fast failures are in its latency figures too."
    )
    table.notes.extend(f"Not run: {reason}." for reason in skipped)
    return table


def _error_kinds(r: RunResult) -> str:
    if not r.errors_by_kind:
        return ""
    top = sorted(r.errors_by_kind.items(), key=lambda item: -item[1])[:2]
    return " (" + ", ".join(f"{kind}: {count:,}" for kind, count in top) + ")"


def _target_table(results: Sequence[RunResult]) -> Table:
    table = Table(
        "PleoSession against its latency and throughput targets",
        ["load", "steady p99 (ms)", "token round trip (ms)", "bound: p99 + RTT + 5 ms",
         "p99 around rotation (ms)", "best req/s", "static best req/s",
         "throughput ratio (median of pairs)"],
    )  # fmt: skip
    static = {r.load: r for r in results if r.library == "static"}
    for r in results:
        if r.library != "pleo_auth":
            continue
        base = static.get(r.load)
        bound = r.steady_p99 + r.token_rtt + SLACK
        table.rows.append(
            [
                r.load,
                _ms(r.steady_p99),
                _ms(r.token_rtt),
                _ms(bound),
                _ms(r.rotation_p99),
                fmt(r.rps, 0),
                fmt(base.rps, 0) if base else "n/a",
                fmt(statistics.median(r.pair_ratios), 3) + "×" if r.pair_ratios else "n/a",
            ]
        )
    table.notes.append(
        "Token round trip: median time for pleo_auth's token client to refresh a private "
        "grant on a second emulator in the same process, sampled throughout the same run, "
        "so it pays the same CPU and GIL contention as the emulator under load."
    )
    return table


def _verdicts(results: Sequence[RunResult]) -> list[Verdict]:
    verdicts: list[Verdict] = []
    static = {r.load: r for r in results if r.library == "static"}
    for r in results:
        if r.library != "pleo_auth":
            continue
        per = r.grants_per_rotation
        exact = per == 1.0 and r.rotations > 0
        verdicts.append(
            Verdict(
                f"contention {r.load}: exactly 1.0 refresh grant per rotation",
                exact,
                f"{r.refresh_grants} grants, {r.rotations} rotations",
                "" if exact else "see grant times in results.json",
            )
        )
        clean = r.caller_errors == 0 and r.rejected_refreshes == 0 and r.reuse_detections == 0
        verdicts.append(
            Verdict(
                f"contention {r.load}: 0 caller errors, 0 rejected refreshes, 0 reuse detections",
                clean,
                f"{r.caller_errors} / {r.rejected_refreshes} / {r.reuse_detections}",
                "" if clean else f"errors: {r.errors_by_kind}",
            )
        )
        bound = r.steady_p99 + r.token_rtt + SLACK
        if r.around:
            ok = r.rotation_p99 <= bound
            verdicts.append(
                Verdict(
                    f"contention {r.load}: p99 around a rotation ≤ steady p99 + token RTT + 5 ms",
                    ok,
                    f"{_ms(r.rotation_p99)} ms ≤ {_ms(bound)} ms",
                    "" if ok else _why_rotation_slow(r),
                )
            )
        base = static.get(r.load)
        if base is not None and r.pair_ratios:
            ratio = statistics.median(r.pair_ratios)
            ok = ratio >= THROUGHPUT_FLOOR
            pairs = ", ".join(f"{x:.2f}" for x in r.pair_ratios)
            verdicts.append(
                Verdict(
                    f"contention {r.load}: throughput within 5% of a static-token Session",
                    ok,
                    f"{ratio:.3f}× (median of {len(r.pair_ratios)} back-to-back pairs: {pairs})",
                    "" if ok else _why_throughput(r, base),
                )
            )
    return verdicts


def _why_rotation_slow(r: RunResult) -> str:
    first = percentile(r.around_first, 99)
    later = percentile(r.around_later, 99)
    return (
        f"p99 {_ms(first)} ms around each run's first rotation (that refresh also imports "
        f"backoff and filelock and opens a connection while requests wait) and "
        f"{_ms(later)} ms around later ones. Each refresh holds new requests back until "
        "the requests in flight finish (their token dies with the refresh), then takes the "
        "store lock, calls the token endpoint and writes the store; on this 2-core machine "
        f"the steady p99 itself is {_ms(r.steady_p99)} ms"
    )


def _why_throughput(r: RunResult, base: RunResult) -> str:
    def runs(result: RunResult) -> str:
        return "/".join(f"{x:,.0f}" for x in result.rps_runs)

    spread = max(base.rps_runs) / min(base.rps_runs) - 1 if base.rps_runs else 0.0
    return (
        f"the runs gave {runs(r)} req/s with PleoSession and {runs(base)} with the static "
        f"token, which alone varied by {spread:.0%} from run to run on this machine"
    )
