"""Renewing leases across real processes, on a private redis-server (RedisStore) and
on PostgreSQL (SQLStore), against the emulator:

* a holder SIGKILLed mid-refresh (its token request held at the emulator) delays
  another process's refresh by at most one lease, plus that refresh;
* a holder stopped (SIGSTOP) past its lease cannot renew it: another process takes
  over and refreshes, and when the stopped one runs again its save is refused by
  the store's fence;
* a holder frozen between reading the pair and sending its token request, for
  longer than its lease, never sends that request when it runs again: the other
  process may have spent the refresh token already.

The default run uses a lease of 1 s; the soak run measures the default lease (10 s).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from support.databases import dispose_engines, shared_engine, unique_name
from support.integration_helpers import grant, wait_until
from support.lease_workers import (
    build_store,
    freeze_after_reading_then_refresh,
    refresh_once,
    stall_then_save,
)

from pleo_auth import Company
from pleo_auth.stores.base import save_login
from pleo_auth.stores.lease import DEFAULT_LEASE, MAX_PAUSE
from pleo_auth.testing import Emulator

A = Company("0b6e1a7c-55d2-4c1e-9a51-3f1d2c4b5a60")
LEASE = 1.0
SPAWN = multiprocessing.get_context("spawn")
TIMEOUT = 60.0  # seconds; only a deadlocked process gets near it
# What a waiter may add to a dead holder's lease: its backoff's longest pause (0.1 s
# on Redis, MAX_PAUSE on a database) and the round trips, generous for a loaded machine.
SLACK = MAX_PAUSE + 1.0


@pytest.fixture(scope="module", autouse=True)
def _engines() -> Iterator[None]:
    yield
    dispose_engines()


class Where:
    """The store the processes share, and how the test reads its lock from outside."""

    def __init__(self, kind: str, url: str, name: str, client_id: str):
        self.kind, self.url, self.name, self.client_id = kind, url, name, client_id
        self.lease = LEASE

    def store(self, lease: float) -> Any:
        return build_store(self.kind, self.url, self.name, A.id, self.client_id, lease)

    def lease_left(self) -> float | None:
        """Seconds until the lock's lease runs out, None when nobody holds it."""
        if self.kind == "redis":
            with redis.Redis.from_url(self.url) as client:
                left_ms = client.pttl(f"{self.name}:lock")
            return left_ms / 1000 if left_ms >= 0 else None
        import sqlalchemy

        from pleo_auth.stores import SQLStore

        family = SQLStore(shared_engine(self.url), client_id=self.client_id, table=self.name)
        t = family.table
        with family.engine.connect() as connection:
            until = connection.execute(
                sqlalchemy.select(t.c.lease_until).where(
                    (t.c.client_id == self.client_id) & (t.c.company == A.id)
                )
            ).scalar_one_or_none()
        if until is None:
            return None
        left = float(until) - family.database_time()
        return left if left > 0 else None

    def lease_ends_at(self) -> float | None:
        """When the lease runs out, on this process's monotonic clock."""
        left = self.lease_left()
        return None if left is None else time.monotonic() + left


@pytest.fixture(params=["redis", "postgresql"])
def where(request: pytest.FixtureRequest, emulator: Emulator) -> Where:
    if request.param == "redis":
        url: str = request.getfixturevalue("redis_url")
        return Where("redis", url, f"test:{uuid.uuid4().hex}", emulator.client_id)
    url = request.getfixturevalue("postgres_url")
    name = unique_name("grants")
    from pleo_auth.stores import SQLStore

    SQLStore(shared_engine(url), client_id=emulator.client_id, table=name).create_table()
    return Where("sql", url, name, emulator.client_id)


class HoldFirstTokenRequest:
    """A token request hook: holds the first request until :meth:`drop` (then
    answers it 500: the server grants nothing), and lets the others through,
    noting when each arrived."""

    def __init__(self) -> None:
        self.first = threading.Event()
        self._drop = threading.Event()
        self._seen = 0
        self._guard = threading.Lock()
        self.later: list[float] = []

    def __call__(self, grant_type: str | None) -> None:
        with self._guard:
            self._seen += 1
            first = self._seen == 1
            if not first:
                self.later.append(time.monotonic())
        if first:
            self.first.set()
            self._drop.wait(TIMEOUT)
            raise RuntimeError("the held request's client is gone")

    def drop(self) -> None:
        self._drop.set()


def expect(outbox: Any, kind: str) -> tuple[Any, ...]:
    message: tuple[Any, ...] = outbox.get(timeout=TIMEOUT)
    assert message[0] == kind, message
    return message


def client_of(emulator: Emulator) -> dict[str, str]:
    return {
        "client_id": emulator.client_id,
        "client_secret": emulator.client_secret or "",
        "token_url": emulator.token_url,
        "api_url": emulator.api_url,
    }


def renewed(where: Where) -> Callable[[], bool]:
    """A predicate that holds once the lease was renewed since it was made."""
    first = where.lease_ends_at()
    assert first is not None, "nobody holds the lock"

    def check() -> bool:
        now = where.lease_ends_at()
        return now is not None and now > first + where.lease / 6  # renewed: a third

    return check


def killed_holder_run(where: Where, emulator: Emulator, lease: float) -> dict[str, float]:
    """Kill a holder mid-refresh while another process waits for the lock; the
    figures of the run, in seconds after the kill."""
    where.lease = lease
    save_login(where.store(lease), grant(emulator, A, now=time.time(), age=7200))
    hook = HoldFirstTokenRequest()
    emulator.set_token_request_hook(hook)
    client = client_of(emulator)
    holder_go, waiter_go = SPAWN.Event(), SPAWN.Event()
    holder_out, waiter_out = SPAWN.Queue(), SPAWN.Queue()
    common = (where.kind, where.url, where.name, A.id, client, lease)
    holder = SPAWN.Process(target=refresh_once, args=(*common, holder_go, holder_out), daemon=True)
    waiter = SPAWN.Process(target=refresh_once, args=(*common, waiter_go, waiter_out), daemon=True)
    holder.start()
    waiter.start()
    try:
        expect(holder_out, "ready")
        expect(waiter_out, "ready")
        holder_go.set()
        assert hook.first.wait(TIMEOUT), "the holder sent no token request"
        expect(holder_out, "locking")  # it holds the lock, its token request held
        waiter_go.set()
        expect(waiter_out, "locking")  # it waits for the lock
        # A holder at work: its lease renewed while it waits for the server.
        assert wait_until(renewed(where), timeout=TIMEOUT)
        os.kill(holder.pid, signal.SIGKILL)  # type: ignore[arg-type]
        killed_at = time.monotonic()
        left_at_kill = where.lease_left()
        holder.join(TIMEOUT)
        hook.drop()  # the dead holder's request is answered 500: nothing granted
        _, refreshed_at, status = expect(waiter_out, "refreshed")
        waiter.join(TIMEOUT)
    finally:
        for process in (holder, waiter):
            if process.is_alive():
                process.kill()
                process.join(TIMEOUT)
        emulator.set_token_request_hook(None)
    assert status == 200
    assert left_at_kill is not None, "the lease had run out before the kill"
    assert len(hook.later) == 1
    counters = emulator.counters
    assert counters.refresh_grants == 1
    assert counters.rejected_refreshes == 0
    assert counters.reuse_detections == 0
    stored = where.store(lease).load()
    assert stored is not None
    assert emulator.is_current(stored.access_token, stored.refresh_token)
    return {
        "lease left at the kill": left_at_kill,
        "waiter's token request": hook.later[0] - killed_at,
        "waiter refreshed": refreshed_at - killed_at,
        "refresh took": refreshed_at - hook.later[0],
    }


def report(where: Where, lease: float, figures: dict[str, float]) -> None:
    shown = ", ".join(f"{name} {value:.3f}s" for name, value in figures.items())
    print(f"\n{where.kind} (lease {lease:g}s), a holder SIGKILLed mid-refresh: {shown}")


def check_killed_holder(figures: dict[str, float], lease: float) -> None:
    # The dead holder's lease ran at most one lease past the kill (its renewals kept
    # it running until then), and nobody took the lock before it ran out.
    assert figures["lease left at the kill"] <= lease + 0.01
    assert figures["waiter's token request"] >= figures["lease left at the kill"] - 0.05
    # The waiter refreshed within one lease plus one refresh of the kill.
    assert figures["waiter's token request"] <= lease + SLACK
    assert figures["waiter refreshed"] <= lease + SLACK + figures["refresh took"]


@pytest.mark.slow
def test_a_holder_killed_mid_refresh_delays_another_processs_refresh_by_at_most_one_lease(
    where: Where, emulator: Emulator
) -> None:
    figures = killed_holder_run(where, emulator, LEASE)
    report(where, LEASE, figures)
    check_killed_holder(figures, LEASE)


@pytest.mark.soak
def test_soak_a_holder_killed_mid_refresh_at_the_default_lease(
    where: Where, emulator: Emulator
) -> None:
    figures = killed_holder_run(where, emulator, DEFAULT_LEASE)
    report(where, DEFAULT_LEASE, figures)
    check_killed_holder(figures, DEFAULT_LEASE)


def let_refresh(go: Any, out: Any) -> tuple[float, int]:
    """Let a ``refresh_once`` process that is ready go; when it refreshed, and the
    status its API request got."""
    expect(out, "ready")
    go.set()
    expect(out, "locking")
    _, refreshed_at, status = expect(out, "refreshed")
    return refreshed_at, status


def end(*processes: Any) -> None:
    """Continue (if stopped), kill and join whichever of ``processes`` still runs."""
    for process in processes:
        if process.is_alive():
            os.kill(process.pid, signal.SIGCONT)
            process.kill()
            process.join(TIMEOUT)


def stopped(pid: int) -> bool:
    """Whether the process is stopped (SIGSTOP): its state in /proc is T."""
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] == "T"


@pytest.mark.slow
def test_a_holder_stopped_past_its_lease_is_taken_over_and_its_save_is_refused(
    where: Where, emulator: Emulator
) -> None:
    """The stopped holder's renewer is stopped too, so its lease runs out; another
    process refreshes the pair. The stopped one's own pair, when it runs again, is
    one issued apart (a new grant): presenting its stale refresh token would be
    reuse, which Pleo punishes by revoking the grant, whatever the store does. What
    is tested is that the store's fence refuses its save over the newer pair."""
    where.lease = LEASE
    save_login(where.store(LEASE), grant(emulator, A, now=time.time(), age=7200))
    inbox, stalled_out = SPAWN.Queue(), SPAWN.Queue()
    stalled = SPAWN.Process(
        target=stall_then_save,
        args=(where.kind, where.url, where.name, A.id, emulator.client_id, LEASE, inbox,
              stalled_out),
        daemon=True,
    )  # fmt: skip
    go, out = SPAWN.Event(), SPAWN.Queue()
    other = SPAWN.Process(
        target=refresh_once,
        args=(where.kind, where.url, where.name, A.id, client_of(emulator), LEASE, go, out),
        daemon=True,
    )
    stalled.start()
    other.start()
    try:
        expect(stalled_out, "holding")
        assert wait_until(renewed(where), timeout=TIMEOUT)
        os.kill(stalled.pid, signal.SIGSTOP)  # type: ignore[arg-type]
        stopped_at = time.monotonic()
        refreshed_at, status = let_refresh(go, out)
        other.join(TIMEOUT)
        assert status == 200
        assert where.lease_left() is None  # the other let go; the stopped one holds nothing
        inbox.put(emulator.issue_tokens(company=A))
        os.kill(stalled.pid, signal.SIGCONT)  # type: ignore[arg-type]
        _, message = expect(stalled_out, "refused")
        _, warnings = expect(stalled_out, "released")
        stalled.join(TIMEOUT)
    finally:
        end(stalled, other)
    print(
        f"\n{where.kind}: the holder stopped past its {LEASE:g}s lease; "
        f"another process refreshed {refreshed_at - stopped_at:.3f}s after the stop"
    )
    assert "replaced" in message
    assert any("taken over" in text or "expired before" in text for text in warnings), warnings
    assert refreshed_at - stopped_at <= LEASE + SLACK + 5.0  # the other's start included
    counters = emulator.counters
    assert counters.refresh_grants == 1
    assert counters.rejected_refreshes == 0
    assert counters.reuse_detections == 0
    stored = where.store(LEASE).load()
    assert stored is not None
    assert emulator.is_current(stored.access_token, stored.refresh_token), "grant lost"


@pytest.mark.slow
def test_a_holder_frozen_past_its_lease_before_its_token_request_never_sends_it(
    where: Where, emulator: Emulator
) -> None:
    """The frozen holder's renewals froze with it, so its lease ran out and another
    process refreshed: the refresh token the frozen one read is spent. Sending it when
    it runs again would be reuse, and Pleo would revoke the grant; the fence on the
    save would come too late. It asks, before sending, whether its lease is still
    known to be held: it is not, so it sends nothing, takes the lock again and finds
    the other's pair, which its request then uses."""
    where.lease = LEASE
    save_login(where.store(LEASE), grant(emulator, A, now=time.time(), age=7200))
    client = client_of(emulator)
    common = (where.kind, where.url, where.name, A.id, client, LEASE)
    frozen, out = SPAWN.Event(), SPAWN.Queue()
    holder = SPAWN.Process(
        target=freeze_after_reading_then_refresh, args=(*common, frozen, out), daemon=True
    )
    go, other_out = SPAWN.Event(), SPAWN.Queue()
    other = SPAWN.Process(target=refresh_once, args=(*common, go, other_out), daemon=True)
    holder.start()
    other.start()
    try:
        assert frozen.wait(TIMEOUT), "the holder never read the pair under the lock"
        assert holder.pid is not None
        assert wait_until(lambda: stopped(holder.pid), timeout=TIMEOUT)
        # Nobody renews the frozen holder's lease: it runs out.
        assert wait_until(lambda: where.lease_left() is None, timeout=TIMEOUT)
        _, status = let_refresh(go, other_out)
        other.join(TIMEOUT)
        assert status == 200
        os.kill(holder.pid, signal.SIGCONT)
        _, answered, warnings = expect(out, "answered")
        holder.join(TIMEOUT)
    finally:
        end(holder, other)
    assert any("not sending the refresh token" in text for text in warnings), warnings
    assert answered == 200  # it looked again under the lock, and took up the other's pair
    counters = emulator.counters
    assert counters.refresh_grants == 1  # the other process's, alone
    assert counters.rejected_refreshes == 0
    assert counters.reuse_detections == 0
    stored = where.store(LEASE).load()
    assert stored is not None
    assert emulator.is_current(stored.access_token, stored.refresh_token), "grant lost"
