"""pleo_auth.stores.buckets: the rate limit's shared GCRA buckets in a file and in
a real Redis, what the limiter does while Redis is down, and a forked child."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pleo_auth import FileStore, MemoryStore, RateLimit, RateLimited, RedisStore
from pleo_auth.ratelimit import Limiter, limiter_for
from pleo_auth.stores.buckets import FileBucket, MemoryBucket, RedisBucket, bucket_for
from pleo_auth.testing import FakeClock
from pleo_auth.testing._redis import _serves, free_port

INTERVAL = 3600.0  # so long that no slot comes due during a test, however slow
TOLERANCE = 3 * INTERVAL  # three slots


def test_two_file_buckets_over_one_file_share_its_slots(tmp_path: Path) -> None:
    first, second = FileBucket(tmp_path / "b"), FileBucket(tmp_path / "b")
    assert first.take(2, INTERVAL, TOLERANCE) == (2, 0.0)
    assert second.take(5, INTERVAL, TOLERANCE) == (1, 0.0)
    granted, wait = first.take(1, INTERVAL, TOLERANCE)
    assert granted == 0
    assert 0 < wait <= INTERVAL
    assert (tmp_path / "b").stat().st_mode & 0o777 == 0o600


def test_a_damaged_bucket_file_counts_as_an_empty_bucket(tmp_path: Path) -> None:
    (tmp_path / "b").write_bytes(b"\xff" * 8)  # a NaN
    assert FileBucket(tmp_path / "b").take(5, INTERVAL, TOLERANCE) == (3, 0.0)


def test_an_unwritable_bucket_directory_is_unavailable_not_a_crash(tmp_path: Path) -> None:
    from pleo_auth.stores.buckets import BucketUnavailable

    (tmp_path / "file").write_text("")
    with pytest.raises(BucketUnavailable):
        FileBucket(tmp_path / "file" / "b").take(1, INTERVAL, TOLERANCE)


def test_two_redis_buckets_on_one_key_share_its_slots(redis_url: str) -> None:
    import redis

    key = f"pleo-auth:rate:test-{os.getpid()}-{time.monotonic_ns()}"
    first = RedisBucket(redis.Redis.from_url(redis_url), key)
    second = RedisBucket(redis.Redis.from_url(redis_url), key)
    assert first.identity() == second.identity()
    assert first.take(2, INTERVAL, TOLERANCE) == (2, 0.0)
    assert second.take(5, INTERVAL, TOLERANCE) == (1, 0.0)
    granted, wait = first.take(1, INTERVAL, TOLERANCE)
    assert granted == 0
    assert 0 < wait <= INTERVAL
    ttl = redis.Redis.from_url(redis_url).pttl(key)
    assert 0 < ttl <= (TOLERANCE + 1) * 1000  # gone once it holds nothing


def test_each_store_keeps_its_bucket_where_it_keeps_its_lock(
    tmp_path: Path, redis_url: str
) -> None:
    file_bucket = bucket_for(FileStore(tmp_path / "t.json"), "n")
    assert isinstance(file_bucket, FileBucket)
    assert file_bucket.path == tmp_path / ".pleo-rate-n"
    family_bucket = bucket_for(FileStore.family(tmp_path / "f").store(_COMPANY), "n")
    assert isinstance(family_bucket, FileBucket)
    assert family_bucket.path == tmp_path / "f" / ".pleo-rate-n"
    redis_bucket = bucket_for(RedisStore(redis_url, key="k"), "n")
    assert isinstance(redis_bucket, RedisBucket)
    assert redis_bucket.key == "pleo-auth:rate:n"
    assert bucket_for(MemoryStore(), "n") is None


_COMPANY = "5b4c0d1e-2f3a-4b5c-8d6e-7f8091a2b3c4"


# -- Redis down while limiting ----------------------------------------------------------


class OwnRedis:
    """A redis-server on one port that the test starts, kills and starts again."""

    def __init__(self, binary: str, workdir: str):
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.workdir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        assert _serves(self.proc, self.port, time.monotonic() + 10)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed")
        pytest.skip("redis-server is not installed")
    with tempfile.TemporaryDirectory(prefix="pleo-auth-redis-") as workdir:
        server = OwnRedis(binary, workdir)
        try:
            yield server
        finally:
            server.kill()


def limiter_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "pleo_auth.ratelimit"]


@pytest.mark.slow
def test_while_redis_is_down_the_limiter_keeps_the_rate_in_this_process_then_shares_again(
    own_redis: OwnRedis, caplog: pytest.LogCaptureFixture
) -> None:
    import redis

    own_redis.start()
    clock = FakeClock()
    client = redis.Redis(host="127.0.0.1", port=own_redis.port, socket_timeout=2)
    bucket = RedisBucket(client, "pleo-auth:rate:down")
    # Two slots, then one a minute: none comes due on Redis's clock during the test.
    limiter = Limiter(RateLimit(1, burst=3, wait=0), bucket, clock=clock)
    limiter.acquire(clock.monotonic())
    own_redis.kill()
    with caplog.at_level(logging.WARNING, logger="pleo_auth.ratelimit"):
        # Fails open to this process alone: a fresh local bucket of 2 slots...
        limiter.acquire(clock.monotonic())
        limiter.acquire(clock.monotonic())
        # ...and then the rate, kept here alone; Redis is not asked again yet.
        with pytest.raises(RateLimited):
            limiter.acquire(clock.monotonic())
        down = limiter_warnings(caplog)
        assert len(down) == 1
        assert "limiting this process alone" in down[0]
        own_redis.start()  # back, and empty
        # Past this process's next slot (a minute), and so past RETRY_SHARED: the
        # shared bucket is asked again.
        clock.advance(60.0)
        limiter.acquire(clock.monotonic())
        limiter.acquire(clock.monotonic())
        with pytest.raises(RateLimited):
            limiter.acquire(clock.monotonic())
    messages = limiter_warnings(caplog)
    assert len(messages) == 2
    assert "is back" in messages[1]
    assert client.exists("pleo-auth:rate:down") == 1


def test_a_forked_child_spends_none_of_its_parents_batch(tmp_path: Path) -> None:
    limit = RateLimit(6_000, burst=100, wait=0)  # batches of 20; 100 - 70 = 30 slots
    limiter = limiter_for(limit, FileStore(tmp_path / "t.json"), "client", "https://api")
    assert limiter is not None
    limiter.acquire(time.monotonic())  # a batch of 20 taken, 19 held here
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first slot comes from the file, not the parent's batch
        try:
            bucket = limiter._shared
            assert isinstance(bucket, FileBucket)
            taken: list[int] = []
            real = bucket.take
            bucket.take = lambda *a: taken.append(1) or real(*a)  # type: ignore[method-assign]
            limiter.acquire(time.monotonic())
            os.write(write, b"1" if taken == [1] else b"0")
        finally:
            os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"
    os.close(read)
    assert status == 0


def test_memory_buckets_share_nothing_between_instances() -> None:
    clock = FakeClock()
    first, second = MemoryBucket(clock.monotonic), MemoryBucket(clock.monotonic)
    assert first.take(3, INTERVAL, TOLERANCE) == (3, 0.0)
    assert second.take(3, INTERVAL, TOLERANCE) == (3, 0.0)


def test_a_session_whose_redis_dies_keeps_sending_within_a_limit_of_its_own(
    own_redis: OwnRedis, caplog: pytest.LogCaptureFixture
) -> None:
    from pleo_auth import PleoSession, TokenSet
    from pleo_auth.testing import Emulator

    own_redis.start()
    with Emulator() as emu:
        emu.record_api_requests()
        session = PleoSession(
            emu.client_id,
            emu.client_secret,
            store=RedisStore(f"redis://127.0.0.1:{own_redis.port}/0", key="k"),
            token_url=emu.token_url,
            api_url=emu.api_url,
            tokens=TokenSet.from_response(emu.issue_tokens()),
            rate_limit=RateLimit(1, burst=3, wait=0),  # two slots, then one a minute
        )
        with session:
            assert session.get("/v2/employees").status_code == 200
            own_redis.kill()
            with caplog.at_level(logging.WARNING, logger="pleo_auth.ratelimit"):
                # The store serves the tokens it holds in memory; the limiter its own bucket.
                assert session.get("/v2/employees").status_code == 200
                assert session.get("/v2/employees").status_code == 200
                with pytest.raises(RateLimited):
                    session.get("/v2/employees")
        assert emu.counters.api_requests == 3
    assert len(limiter_warnings(caplog)) == 1
