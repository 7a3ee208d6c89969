"""Hunting the renewing Redis refresh lock (issue 14, part 2) on private
redis-servers: a renewal that arrives after its release, a refresh that outlasts
many leases through retries, a renewal that hangs on a Redis that stopped
answering, and a renewal that raises what no store should."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from support.integration_helpers import wait_until
from support.redis_servers import RedisServer, private_redis
from support.session_helpers import MakeSession, issued

from pleo_auth import RedisStore
from pleo_auth.stores.lease import Renewer
from pleo_auth.stores.locks import RedisRefreshLock
from pleo_auth.testing import Emulator, Fault

LEASE = 1.0  # renewed every third of a second


@pytest.fixture
def key() -> str:
    return f"hunt:{uuid.uuid4().hex}:lock"


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url) as client:
        yield client


def test_a_renewal_that_arrives_after_the_release_never_extends_the_next_owners_key(
    client: redis.Redis, key: str
) -> None:
    """The renewal a renewer had under way when its holder let go reaches Redis
    after another owner took the key: compare-and-extend leaves that key alone."""
    lock = RedisRefreshLock(client, key, lease=LEASE)
    tokens: list[str] = []
    real_set = client.set

    def remembering_set(name: str, value: str, **kwargs: object) -> object:
        tokens.append(value)
        return real_set(name, value, **kwargs)

    client.set = remembering_set  # type: ignore[method-assign]
    try:
        with lock.hold(timeout=1.0, lease=30.0):
            pass
    finally:
        client.set = real_set  # type: ignore[method-assign]
    assert len(tokens) == 1
    assert client.set(key, "the-next-owner", nx=True, px=300)
    # The late renewal, with the released acquisition's token and lots of time left.
    assert lock._renew(tokens[0], time.monotonic() + 30.0) is False
    assert client.get(key) == b"the-next-owner"
    assert 0 < client.pttl(key) <= 300  # not stretched to a lease of the old holder's


@pytest.mark.slow
def test_a_refresh_retried_for_several_leases_keeps_its_key_the_whole_time(
    redis_url: str, key: str, emulator: Emulator, make_session: MakeSession
) -> None:
    """Four token requests the emulator holds 0.6 s each (three refused with 503
    and Retry-After, then the grant): the refresh outlives three leases of 1 s.
    The key must exist, with one owner, from the lock's acquisition to its release,
    so no other holder could have spent the refresh token meanwhile."""
    store = RedisStore(redis_url, key=key, lease=LEASE)
    lock_key = store.refresh_lock.key
    session = make_session(
        emulator, store, tokens=issued(emulator), max_refresh_attempts=4, refresh_timeout=5.0
    )
    for _ in range(3):
        emulator.inject_fault(Fault(status=503, retry_after=0.1, delay=0.6))
    emulator.inject_fault(Fault(delay=0.6))  # delays the grant itself
    samples: list[tuple[float, bytes | None]] = []
    done = threading.Event()

    def watch() -> None:
        with redis.Redis.from_url(redis_url) as watcher:
            while not done.is_set():
                samples.append((time.monotonic(), watcher.get(lock_key)))
                time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        started = time.monotonic()
        session.refresh()
        took = time.monotonic() - started
    finally:
        done.set()
        watcher.join(10)
    assert took > 2 * LEASE
    owners = [value for _, value in samples if value is not None]
    held_at = [at for at, value in samples if value is not None]
    assert len(set(owners)) == 1, "the lock changed hands during the refresh"
    # Held without a gap: once gone (released, or run out) it never comes back.
    first, last = (
        samples.index((held_at[0], owners[0])),
        max(i for i, (_, value) in enumerate(samples) if value is not None),
    )
    assert all(value is not None for _, value in samples[first : last + 1])
    assert held_at[-1] - held_at[0] > 2 * LEASE
    counters = emulator.counters
    assert (counters.refresh_grants, counters.faults_served) == (1, 4)
    assert (counters.rejected_refreshes, counters.reuse_detections) == (0, 0)


def test_a_renewal_that_raises_a_base_exception_stops_no_other_leases_renewals() -> None:
    """The renewer is one thread for every lease of the process. A renew function
    that raises SystemExit (a store's driver calling sys.exit, a signal handler's
    exception) used to end that thread while it still counted as running: no lease
    of the process was renewed again, and each ran out under its holder."""
    renewer = Renewer()
    broken_calls: list[float] = []
    kept_calls: list[float] = []

    def broken() -> bool:
        broken_calls.append(time.monotonic())
        raise SystemExit(3)

    def kept() -> bool:
        kept_calls.append(time.monotonic())
        return True

    first = renewer.keep(broken, every=0.05, where="the broken lease")
    assert wait_until(lambda: len(broken_calls) == 1)
    second = renewer.keep(kept, every=0.05, where="a healthy lease")
    try:
        assert wait_until(lambda: len(kept_calls) >= 3), "the healthy lease is not renewed"
    finally:
        renewer.stop(first)
        renewer.stop(second)
    assert len(broken_calls) == 1  # the broken lease counts as lost: not tried again


# -- a Redis that stops answering -----------------------------------------------------------


@pytest.fixture
def stoppable() -> Iterator[RedisServer]:
    with private_redis("pleo-auth-hunt-") as server:
        yield server


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="one renewer thread renews every lease of the process, one after another: a "
    "renewal blocked on a Redis that stopped answering (an app's client without "
    "socket_timeout, a partition) holds up every other lease's renewals, on any other "
    "Redis or database, and they run out under their live holders",
)
def test_a_renewal_hung_on_one_redis_stops_no_lease_on_another(
    stoppable: RedisServer, client: redis.Redis, key: str
) -> None:
    # The app's own client, as redis.Redis() makes it: no socket timeout.
    stuck_client = redis.Redis(host="127.0.0.1", port=stoppable.port)
    stuck = RedisRefreshLock(stuck_client, key, lease=LEASE)
    healthy = RedisRefreshLock(client, key, lease=LEASE)
    holding = threading.Event()
    let_go = threading.Event()

    def hold_stuck() -> None:
        with stuck.hold(timeout=1.0, lease=30.0):
            holding.set()
            let_go.wait(30)

    holder = threading.Thread(target=hold_stuck, daemon=True)
    holder.start()
    try:
        assert holding.wait(10)
        with healthy.hold(timeout=1.0, lease=30.0):
            stoppable.stop()  # its next renewal blocks the renewer
            watch_until = time.monotonic() + 4 * LEASE
            gone_at = None
            while time.monotonic() < watch_until and gone_at is None:
                if not client.exists(key):
                    gone_at = time.monotonic()
                time.sleep(0.01)
            assert gone_at is None, "the healthy lease ran out under its holder"
    finally:
        let_go.set()
        stoppable.kill()  # the hung renewal and the stuck release fail at once
        holder.join(10)
        stuck_client.close()
