"""Soak: the multi-process load through 50+ rotations, with faults injected at
random on the token endpoint and one revocation and new login in the middle.

Four spawned processes of six threads each call ``GET /v2/employees`` through a
PleoSession over one token file, against the emulator in this process, for
about a minute. Access tokens live 1 s, so the tokens rotate more than once a
second. Meanwhile a driver thread here:

* injects bursts of faults on ``/oauth/token``: 500, 502, 503, 504, 429 with
  ``Retry-After``, a connection closed without a reply, and replies delayed by
  up to half a second (alone, or before an error). The first burst is
  ``MAX_ATTEMPTS - 1`` failures in a row, the most a refresh can meet and still
  succeed, and every kind is served within the first few bursts;
* half-way through, revokes the grant (``Emulator.revoke_all``, as a user who
  disconnects the app) and, once every process has seen it, logs in again by
  saving a new grant to the store, as ``pleo-auth login`` does.

The run passes only if callers saw no error but ``ReauthenticationRequired``,
and that only between the revocation and the new login; every refresh grant
reached a client and was saved exactly once; no refresh token was spent twice;
and each worker's memory and thread count stayed flat.

Why callers see no error from the faults: every burst holds at most
``MAX_ATTEMPTS - 1`` failing faults, the next burst waits until a refresh has
succeeded after the last one, and refreshes are serialised across processes by
the store's lock. So no refresh meets more than ``MAX_ATTEMPTS - 1`` failures,
and the worst burst takes less than ``MAX_REFRESH_TIME`` (checked below, from
the endpoint's own backoff settings). Callers wait for a refresh in progress
instead of failing, and a request that meets an expired token is replayed once
the refresh is done. Delays stay far below ``REFRESH_TIMEOUT``: a reply that came
after the client gave up would be a lost rotation, which ``test_endpoint`` and
the fault tests cover on purpose, not this soak.

Run it with ``pytest -m soak tests/hunt/test_soak_faults.py -s`` to see the figures.
The seed of the fault schedule is printed; ``PLEO_SOAK_SEED=N`` replays the same
schedule (thread timing still differs between runs).
"""

from __future__ import annotations

import os
import random
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pleo_auth import FileStore, TokenSet
from pleo_auth._endpoint import TokenEndpoint
from pleo_auth.testing import Emulator, Fault
from pleo_auth.testing._workload import (
    ResourceSample,
    WorkloadProgress,
    WorkloadReport,
    run_workload,
)

PROCESSES = 4
THREADS = 6
LIFETIME = 1.0  # seconds an access token lives
MARGIN = 0.4  # the sessions refresh this long before expiry
DURATION = 70.0  # seconds of load
ROTATIONS_AT_LEAST = 50
REVOKE_AFTER = 30  # refresh grants before the revocation
# A caller told to log in waits this long before it calls again, rather than spin:
# spinning threads pile up a hundred thousand failures, whose records and garbage
# would swamp the memory samples.
ERROR_PAUSE = 0.05

# The sessions' retry budget, set explicitly so the reasoning above holds even if
# the defaults change.
MAX_ATTEMPTS = 5
MAX_REFRESH_TIME = 30.0
REFRESH_TIMEOUT = 10.0
FAULT_DELAY_MAX = 0.5  # seconds; far below REFRESH_TIMEOUT
RETRY_AFTER_MAX = 0.5  # seconds
BURST_WEIGHTS = {1: 6, 2: 3, 3: 1, MAX_ATTEMPTS - 1: 1}  # faults per burst
GAP = (1, 3)  # clean rotations between bursts, at random

FAILING_KINDS = ("500", "502", "503", "504", "429", "drop")
FAULT_KINDS = (*FAILING_KINDS, "slow")

# Resource samples: ignore the first WARM_UP seconds (imports, connection pools,
# malloc arenas of each thread), then compare the first and the last WINDOW.
WARM_UP = 10.0
WINDOW = 10.0
# From the early window to the late one, the median RSS (less the runner's own
# records) may not grow by more than RSS_TOLERANCE. Measured runs grow by under
# 0.3 MiB. At least ROTATIONS_BETWEEN rotations separate the windows (checked),
# so a leak of 70 KB per rotation, let alone a few hundred, fails. One thread per
# rotation fails through the thread count, which may not grow at all: a
# session's threads are fixed (the load threads, main, the refresh timer, the
# result queue's feeder).
RSS_TOLERANCE = 2 * 1024 * 1024
ROTATIONS_BETWEEN = 30

GIVE_UP = 60.0  # seconds a driver step may wait: bounds a failure, never paces the test


def worst_burst_seconds() -> float:
    """The longest one refresh can spend on a burst: every attempt delayed, every
    wait the endpoint's backoff cap or the longest Retry-After, whichever is longer."""
    endpoint = TokenEndpoint("http://127.0.0.1/oauth/token", "client", None)  # the defaults
    endpoint.close()
    factor, cap = endpoint.backoff_factor, endpoint.backoff_max
    waits = sum(
        max(min(cap, factor * 2**attempt), RETRY_AFTER_MAX) for attempt in range(MAX_ATTEMPTS - 1)
    )
    return MAX_ATTEMPTS * FAULT_DELAY_MAX + waits


def test_the_retry_budget_outlasts_the_worst_burst() -> None:
    # Not a soak: the arithmetic the soak relies on, checked in every run.
    assert max(BURST_WEIGHTS) < MAX_ATTEMPTS
    assert worst_burst_seconds() < MAX_REFRESH_TIME
    assert FAULT_DELAY_MAX < REFRESH_TIMEOUT / 5


class FaultDriver(threading.Thread):
    """Injects fault bursts between rotations, and revokes and logs in once."""

    def __init__(self, emulator: Emulator, store_path: Path, rng: random.Random) -> None:
        super().__init__(name="soak-fault-driver", daemon=True)
        self.emulator = emulator
        self.store_path = store_path
        self.rng = rng
        self.stopping = threading.Event()
        self.started = threading.Event()
        self.progress: WorkloadProgress | None = None
        self.grants_by_time: list[tuple[float, int]] = []  # (elapsed, refresh grants)
        self.failure: BaseException | None = None
        self.injected: list[str] = []  # the kind of every injected fault, in order
        self.bursts = 0
        self.revoked_at: float | None = None  # time.monotonic()
        self.logged_in_at: float | None = None
        self.rejected_before_revocation: int | None = None
        self.store_empty_at_login: bool | None = None
        failing = list(FAILING_KINDS)
        rng.shuffle(failing)
        self._first_burst = failing[: MAX_ATTEMPTS - 1]
        rest = [*failing[MAX_ATTEMPTS - 1 :], "slow"]
        rng.shuffle(rest)
        self._kinds = iter(rest)  # every kind once, first; then at random

    def on_progress(self, progress: WorkloadProgress) -> None:
        self.progress = progress
        self.grants_by_time.append((progress.elapsed, progress.refresh_grants))
        self.started.set()

    def grants_at(self, elapsed: float) -> int:
        return max((grants for at, grants in self.grants_by_time if at <= elapsed), default=0)

    def run(self) -> None:
        try:
            self._drive()
        except BaseException as exc:
            self.failure = exc

    # -- waiting --------------------------------------------------------------------

    def _wait_for(self, what: str, condition: Callable[[], bool]) -> bool:
        """Poll ``condition``; False if the workload ended first."""
        give_up_at = time.monotonic() + GIVE_UP
        while not condition():
            if self.stopping.wait(0.02):
                return False
            if time.monotonic() > give_up_at:
                raise TimeoutError(f"the driver waited {GIVE_UP:.0f}s for {what}")
        return True

    def _grants(self) -> int:
        return self.emulator.counters.refresh_grants

    def _wait_for_grants(self, more: int) -> bool:
        target = self._grants() + more
        return self._wait_for(f"{more} refresh grants", lambda: self._grants() >= target)

    # -- the schedule -----------------------------------------------------------------

    def _drive(self) -> None:
        if not self._wait_for("the load to start", self.started.is_set):
            return
        while not self.stopping.is_set():
            if self.revoked_at is None and self._grants() >= REVOKE_AFTER:
                self._revoke_and_log_in()
                continue
            if not self._wait_for_grants(self.rng.randint(*GAP)):
                return
            self._inject_burst()
            # Every fault of the burst consumed, then one refresh that succeeded
            # after the last: the refresh that met the burst is over before the
            # next one is queued, so none meets two bursts.
            if not self._wait_for("the burst to be consumed", self._no_fault_pending):
                return
            if not self._wait_for_grants(1):
                return

    def _no_fault_pending(self) -> bool:
        return self.emulator.pending_faults == 0

    def _next_kind(self) -> str:
        return next(self._kinds, None) or self.rng.choice(FAULT_KINDS)

    def _inject_burst(self) -> None:
        if self.bursts == 0:
            kinds = self._first_burst
        else:
            size = self.rng.choices(list(BURST_WEIGHTS), weights=list(BURST_WEIGHTS.values()))[0]
            kinds = [self._next_kind() for _ in range(size)]
        for kind in kinds:
            self.emulator.inject_fault(Fault(**self._fault(kind)))
            self.injected.append(kind)
        self.bursts += 1

    def _fault(self, kind: str) -> dict[str, Any]:
        delay = round(self.rng.uniform(0.05, FAULT_DELAY_MAX), 2)
        if kind == "slow":
            return {"delay": delay}  # a slow reply, then the grant as usual
        fault: dict[str, Any]
        if kind == "drop":
            fault = {"drop": True}
        elif kind == "429":
            fault = {"status": 429, "retry_after": round(self.rng.uniform(0.1, RETRY_AFTER_MAX), 1)}
        else:
            fault = {"status": int(kind)}
        if self.rng.random() < 0.25:
            fault["delay"] = delay  # a slow failure
        return fault

    def _revoke_and_log_in(self) -> None:
        # Quiet here: no fault pending, and the last burst's refresh is over.
        progress = self.progress
        assert progress is not None
        errors_before = progress.errors_by_process
        self.rejected_before_revocation = self.emulator.counters.rejected_refreshes
        self.revoked_at = time.monotonic()
        self.emulator.revoke_all()

        # Log in again only once every process has seen the grant die (a refresh
        # refused, the store cleared, a caller told to log in): each process has
        # then settled on the empty store, so no load of it can still be under way
        # when the new tokens land, and every request that starts after the login
        # finds them.
        def every_process_saw_it() -> bool:
            latest = self.progress
            assert latest is not None
            seen = latest.errors_by_process
            return (
                self.emulator.counters.rejected_refreshes > self.rejected_before_revocation
                and len(seen) == PROCESSES
                and all(now > before for now, before in zip(seen, errors_before, strict=True))
            )

        if not self._wait_for("every process to see the revocation", every_process_saw_it):
            return
        store = FileStore(self.store_path)
        self.store_empty_at_login = store.load() is None
        store.save(TokenSet.from_response(self.emulator.issue_tokens()))  # `pleo-auth login`
        self.logged_in_at = time.monotonic()


def net_rss(sample: ResourceSample) -> int:
    return sample.rss - sample.records


def window(samples: tuple[ResourceSample, ...], start: float, end: float) -> list[ResourceSample]:
    return [sample for sample in samples if start <= sample.elapsed < end]


def summary(report: WorkloadReport, driver: FaultDriver) -> str:
    served = report_faults_served(driver)
    lines = [
        f"rotations (refresh grants) {report.refresh_grants}, saved by clients "
        f"{len(report.saved_rotations)}, requests {report.requests} ({report.rps:.0f}/s), "
        f"latency p50 {report.latency_p50 * 1000:.1f} ms p99 {report.latency_p99 * 1000:.0f} ms",
        f"caller errors {report.caller_errors} {dict(report.errors_by_kind)}, caller 401s "
        f"{report.caller_401s}, rejected refreshes {report.rejected_refreshes}, reuse "
        f"detections {report.reuse_detections}, server 401s (replayed) {report.unauthorized}",
        f"faults injected {len(driver.injected)} in {driver.bursts} bursts, served {served}",
    ]
    lines += [f"  {kind}: {sample}" for kind, sample in sorted(report.error_samples.items())]
    if driver.revoked_at is not None and driver.logged_in_at is not None:
        lines.append(
            f"revoked at {driver.revoked_at - report.started_at:.1f}s, logged in again at "
            f"{driver.logged_in_at - report.started_at:.1f}s"
        )
    early_end, late_start = WARM_UP + WINDOW, report.duration - WINDOW
    lines.append(
        f"rotations between the early and late samples "
        f"{driver.grants_at(late_start) - driver.grants_at(early_end)}"
    )
    for index, samples in enumerate(report.resources):
        early = window(samples, WARM_UP, early_end)
        late = window(samples, late_start, report.duration)
        if early and late:
            lines.append(
                f"worker {index}: RSS less records {_mib(early)} -> {_mib(late)} MiB "
                f"(median), threads {max(s.threads for s in early)} -> "
                f"{max(s.threads for s in late)}, records {late[-1].records / 2**20:.1f} MiB"
            )
    return "\n".join(lines)


def report_faults_served(driver: FaultDriver) -> int:
    return driver.emulator.counters.faults_served


def _mib(samples: list[ResourceSample]) -> str:
    return f"{statistics.median(net_rss(s) for s in samples) / 2**20:.1f}"


@pytest.mark.soak
def test_soak_with_random_token_endpoint_faults_and_a_revocation_loses_nothing(
    emulator: Emulator, tmp_path: Path
) -> None:
    seed = int(os.environ.get("PLEO_SOAK_SEED") or random.SystemRandom().randrange(2**32))
    print(f"fault schedule seed {seed} (replay with PLEO_SOAK_SEED={seed})")
    path = tmp_path / "tokens.json"
    emulator.set_access_token_lifetime(LIFETIME)
    driver = FaultDriver(emulator, path, random.Random(seed))
    driver.start()
    try:
        report = run_workload(
            emulator,
            f"file:{path}",
            processes=PROCESSES,
            threads=THREADS,
            duration=DURATION,
            refresh_margin=MARGIN,
            on_progress=driver.on_progress,
            error_pause=ERROR_PAUSE,
            session_options={
                "max_refresh_attempts": MAX_ATTEMPTS,
                "max_refresh_time": MAX_REFRESH_TIME,
                "refresh_timeout": REFRESH_TIMEOUT,
            },
        )
    finally:
        driver.stopping.set()
        driver.join(GIVE_UP)
    print(summary(report, driver))
    counters = emulator.counters

    # The driver did what the test claims.
    assert driver.failure is None, repr(driver.failure)
    assert driver.revoked_at is not None
    assert driver.logged_in_at is not None
    served_kinds = set(driver.injected[: counters.faults_served])
    assert served_kinds == set(FAULT_KINDS), served_kinds
    assert driver.store_empty_at_login, "the dead grant's tokens were still stored"

    # Callers: no error but the reauthentication asked for, and that only between
    # the revocation and the new login. A request may have started before the
    # revocation (its token then refused), but it cannot have failed before it;
    # and none that started after the login may fail.
    revoked = driver.revoked_at - report.started_at
    logged_in = driver.logged_in_at - report.started_at
    assert set(report.errors_by_kind) == {"ReauthenticationRequired"}, report.error_samples
    assert report.caller_errors >= PROCESSES  # every process saw the revocation
    outside = [(s, e) for s, e in report.failure_spans if e < revoked or s > logged_in]
    assert outside == [], (revoked, logged_in, outside[:5])
    assert report.caller_401s == 0
    assert any(start > logged_in for start, _ in report.timeline), "no load after the login"
    # Nor did any refresh give up unseen (the timer's failures reach no caller):
    # the workers' sessions warned only about the grant they lost.
    assert report.warnings, "no session noticed the revocation"
    assert [w for w in report.warnings if not revoked <= w[0] <= logged_in] == []

    # Tokens: every grant reached a client and was saved once; nothing was spent
    # twice. The one rejected refresh is the first to present the revoked grant's
    # refresh token (refused as revoked, not as reused); it clears the store, so
    # no other process presents that token again, and the new grant is never
    # refused.
    assert report.refresh_grants >= ROTATIONS_AT_LEAST
    assert len(report.saved_rotations) == len(set(report.saved_rotations))
    assert len(report.saved_rotations) == report.refresh_grants
    assert report.reuse_detections == 0
    assert driver.rejected_before_revocation == 0
    assert report.rejected_refreshes == 1
    stored = FileStore(path).load()
    assert stored is not None
    assert emulator.is_current(stored.access_token, stored.refresh_token)

    # Resources: flat in every worker after the warm-up.
    early_end, late_start = WARM_UP + WINDOW, report.duration - WINDOW
    assert driver.grants_at(late_start) - driver.grants_at(early_end) >= ROTATIONS_BETWEEN
    assert len(report.resources) == PROCESSES
    for index, samples in enumerate(report.resources):
        early = window(samples, WARM_UP, early_end)
        late = window(samples, late_start, report.duration)
        assert len(early) >= 5, (index, len(early))
        assert len(late) >= 5, (index, len(late))
        assert max(s.threads for s in late) <= max(s.threads for s in early), index
        growth = statistics.median(map(net_rss, late)) - statistics.median(map(net_rss, early))
        assert growth <= RSS_TOLERANCE, (index, growth)
