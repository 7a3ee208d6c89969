"""RedisRefreshLock's renewal, on a private redis-server: the key lives one short
lease, the renewer keeps it while its holder works, only for as long as the
holder asked, only while the key is still this holder's, and never from a forked
child. (A holder killed mid-refresh, across processes: test_lease_processes.py.)"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from support.integration_helpers import wait_until

from pleo_auth import ConfigurationError, RedisStore
from pleo_auth.stores.locks import RedisRefreshLock

LEASE = 1.0  # renewed every third of a second: two renewals may come late


@pytest.fixture
def key() -> str:
    return f"test:{uuid.uuid4().hex}:lock"


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url) as client:
        yield client


class CountingLock(RedisRefreshLock):
    """Counts its renewals."""

    renewals = 0

    def _renew(self, token: str, until: float) -> bool:
        self.renewals += 1
        return super()._renew(token, until)


@pytest.mark.slow
def test_the_key_lives_one_lease_and_is_renewed_for_as_long_as_it_is_held(
    client: redis.Redis, key: str
) -> None:
    lock = CountingLock(client, key, lease=LEASE)
    with lock.hold(timeout=1.0, lease=30.0):
        watch_until = time.monotonic() + 3 * LEASE  # three leases: it would have expired
        ttls = []
        while time.monotonic() < watch_until:
            ttls.append(client.pttl(key))
            time.sleep(0.01)
        assert min(ttls) > 0, "the key ran out under its holder"
        assert max(ttls) <= LEASE * 1000
        assert lock.renewals >= 2
    assert client.exists(key) == 0


def test_renewals_stop_when_the_holder_releases(client: redis.Redis, key: str) -> None:
    lock = CountingLock(client, key, lease=LEASE)
    with lock.hold(timeout=1.0, lease=30.0):
        assert wait_until(lambda: lock.renewals >= 1)
    after_release = lock.renewals
    # Three renewal periods with no renewal: the holder let go, so the renewer did too.
    time.sleep(LEASE)
    assert lock.renewals == after_release
    assert client.exists(key) == 0


def test_a_renewal_never_extends_a_key_that_another_holder_took(
    client: redis.Redis, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    lock = RedisRefreshLock(client, key, lease=LEASE)
    with caplog.at_level(logging.WARNING, logger="pleo_auth.stores.lease"):
        with lock.hold(timeout=1.0, lease=30.0):
            # The lease ran out under its holder and someone else took it, for 60 s.
            client.set(key, "someone-else", px=60_000)
            # The next renewal finds the other's token, leaves the key alone, and stops.
            assert wait_until(lambda: "was taken over" in caplog.text, timeout=30.0)
            # A blind PEXPIRE would have cut the other's 60 s down to one lease.
            assert client.pttl(key) > 30_000
            assert client.get(key) == b"someone-else"
        assert client.get(key) == b"someone-else", "the late holder released the other's lock"


@pytest.mark.slow
def test_a_stuck_holder_is_renewed_only_for_the_time_it_asked_for(
    client: redis.Redis, key: str
) -> None:
    asked = 2.5 * LEASE
    stuck = RedisRefreshLock(client, key, lease=LEASE)
    other = RedisRefreshLock(client, key, lease=LEASE)
    held = stuck.hold(timeout=1.0, lease=asked)
    started = time.monotonic()
    held.__enter__()  # and never let go, as a deadlocked holder would not
    try:
        with other.hold(timeout=30.0, lease=1.0):
            taken = time.monotonic() - started
    finally:
        held.__exit__(None, None, None)
    print(f"\na holder stuck for good was renewed for {taken:.3f}s (it asked for {asked}s)")
    # Renewed past its first lease, up to its time, never past it: the others wait
    # out that time, no more than one waiter's pause (0.1 s) and the round trips later.
    assert LEASE < taken <= asked + 1.0


def test_a_holder_that_asks_for_less_than_one_lease_gets_a_key_that_short(
    client: redis.Redis, key: str
) -> None:
    with RedisRefreshLock(client, key, lease=10.0).hold(timeout=1.0, lease=0.5):
        assert 0 < client.pttl(key) <= 500


def test_the_default_lease_is_ten_seconds(client: redis.Redis, key: str) -> None:
    lock = RedisRefreshLock(client, key)
    assert lock.terms.lease == 10.0
    with lock.hold(timeout=1.0, lease=48.0) as granted:
        assert 9_000 < client.pttl(key) <= 10_000
    assert granted.deadline is not None  # the holder's own time: 48 s less a margin


def test_a_store_and_a_family_pass_their_lease_to_the_lock(redis_url: str) -> None:
    store = RedisStore(redis_url, key=f"test:{uuid.uuid4().hex}", lease=2.5)
    assert store.refresh_lock.terms.lease == 2.5  # type: ignore[attr-defined]
    family = RedisStore.family(redis_url, f"test:{uuid.uuid4().hex}:", lease=3.0)
    company = "0b6e1a7c-55d2-4c1e-9a51-3f1d2c4b5a60"
    assert family.store(company).refresh_lock.terms.lease == 3.0  # type: ignore[attr-defined]


@pytest.mark.parametrize("lease", [0, -1, 301, float("nan"), float("inf"), True, "10"])
def test_a_lease_out_of_range_is_a_configuration_error(redis_url: str, lease: object) -> None:
    with pytest.raises(ConfigurationError, match="lease"):
        RedisStore(redis_url, lease=lease)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="lease"):
        RedisStore.family(redis_url, lease=lease)  # type: ignore[arg-type]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_never_renews_a_lock_its_parent_holds(
    redis_url: str, client: redis.Redis, key: str
) -> None:
    """The holder forks a child that keeps a lock of its own (so it has a renewer
    running), then the holder is killed: its lock runs out within one lease, as the
    child renews only its own."""
    own_key = key + ":child"
    reader, writer = os.pipe()
    holder = os.fork()
    if holder == 0:  # the holder: never returns into pytest
        try:
            lock = RedisRefreshLock(redis.Redis.from_url(redis_url), key, lease=LEASE)
            with lock.hold(timeout=5.0, lease=60.0):
                if os.fork() == 0:  # the child, with a copy of its parent's renewals
                    mine = RedisRefreshLock(redis.Redis.from_url(redis_url), own_key, lease=LEASE)
                    with mine.hold(timeout=5.0, lease=60.0):
                        os.write(writer, f"c{os.getpid():010d}".encode())
                        threading.Event().wait(30)
                    os._exit(0)
                os.write(writer, b"h")
                threading.Event().wait(60)
        finally:
            os._exit(1)
    child_pid = None
    try:
        os.close(writer)
        said = b""
        while len(said) < 12:  # "h" from the holder, "c<pid>" from its child
            chunk = os.read(reader, 12 - len(said))
            assert chunk, "the holder or its child died"
            said += chunk
        text = said.decode()
        child_pid = int(text.replace("h", "")[1:])
        assert "h" in text
        os.kill(holder, signal.SIGKILL)
        os.waitpid(holder, 0)
        killed_at = time.monotonic()
        assert wait_until(lambda: client.exists(key) == 0, timeout=10 * LEASE)
        freed = time.monotonic() - killed_at
        assert client.exists(own_key) == 1, "the child's renewer stopped"
    finally:
        os.close(reader)
        if child_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child_pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(holder, signal.SIGKILL)
            os.waitpid(holder, 0)
    assert freed <= LEASE + 0.1


def test_the_lease_is_known_held_from_its_take_and_from_each_renewal(
    client: redis.Redis, key: str
) -> None:
    """Lease.held_until: until when Redis granted the key for sure, so that a holder
    frozen past it sends no token request (see the endpoint's tests)."""
    lock = CountingLock(client, key, lease=LEASE)
    before = time.monotonic()
    with lock.hold(timeout=1.0, lease=30.0) as lease:
        assert lease.held_until is not None
        first = lease.held_until()
        assert before + 0.9 * LEASE <= first <= time.monotonic() + 0.9 * LEASE
        assert wait_until(lambda: lock.renewals >= 1, timeout=30.0)
        assert wait_until(lambda: lease.held_until() > first, timeout=30.0)
        assert lease.held_until() <= time.monotonic() + 0.9 * LEASE
        assert client.pttl(key) > 0  # what it says is held, is
