"""RedisStore against a real, private redis-server (the ``redis_url`` fixture)."""

from __future__ import annotations

import logging
import secrets
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Hashable, Iterator
from typing import Any

import pytest
import redis

from pleo_auth import ConfigurationError, PleoSession, TokenSet, TokenStoreError
from pleo_auth.stores.locks import RedisRefreshLock
from pleo_auth.stores.redis import RedisStore
from pleo_auth.stores.spec import store_from_spec
from pleo_auth.testing import Emulator, FakeClock, MakeStore, TokenStoreContract

PASSWORD = "hunter2-" + secrets.token_hex(4)


class CountingRedis(redis.Redis):
    """A real client that also counts the commands it sends."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands: list[str] = []

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.commands.append(str(args[0]).upper())
        return super().execute_command(*args, **options)


def tokens(lifetime: float = 3600.0) -> TokenSet:
    now = time.time()
    return TokenSet(
        access_token="at_" + secrets.token_urlsafe(16),
        refresh_token="rt_" + secrets.token_urlsafe(16),
        expires_at=now + lifetime,
        scope="users:read",
        issued_at=now,
    )


class TestRedisStoreContract(TokenStoreContract):
    """The contract every store honours. Its handles re-read the version on every
    call (``check_interval=0``); the cache is tested on its own below."""

    @pytest.fixture
    def make_store(self, redis_url: str, key: str) -> MakeStore:
        return lambda: RedisStore(redis_url, key=key, check_interval=0.0)


@pytest.fixture
def key() -> str:
    return f"test:{uuid.uuid4().hex}"


@pytest.fixture
def store(redis_url: str, key: str) -> RedisStore:
    return RedisStore(redis_url, key=key)


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url) as raw:
        yield raw


def test_load_is_none_before_anything_is_saved(store: RedisStore) -> None:
    assert store.load() is None


def test_saved_tokens_load_back_equal_from_another_client(
    store: RedisStore, redis_url: str, key: str
) -> None:
    saved = tokens()
    store.save(saved)
    assert RedisStore(redis_url, key=key).load() == saved


def test_both_tokens_live_in_one_hash_under_the_key(
    store: RedisStore, client: redis.Redis, key: str
) -> None:
    saved = tokens()
    store.save(saved)
    assert client.type(key) == b"hash"
    document = client.hget(key, "tokens")
    assert document is not None
    assert saved.access_token.encode() in document
    assert saved.refresh_token.encode() in document


def test_fenced_save_refuses_when_the_stored_refresh_token_changed(store: RedisStore) -> None:
    first, second, stale = tokens(), tokens(), tokens()
    store.save(first)
    store.save(second, replaces=first)
    with pytest.raises(TokenStoreError, match="were replaced"):
        store.save(stale, replaces=first)
    assert store.load() == second


def test_fenced_save_refuses_when_the_tokens_were_cleared(store: RedisStore) -> None:
    first = tokens()
    store.save(first)
    store.clear()
    with pytest.raises(TokenStoreError, match="were replaced"):
        store.save(tokens(), replaces=first)
    assert store.load() is None


def test_fenced_save_compares_refresh_tokens_only(store: RedisStore) -> None:
    stored = tokens()
    store.save(stored)
    same_refresh_token = TokenSet(
        access_token="at_other", refresh_token=stored.refresh_token, expires_at=stored.expires_at
    )
    new = tokens()
    store.save(new, replaces=same_refresh_token)
    assert store.load() == new


def test_save_without_replaces_overwrites_whatever_is_stored(store: RedisStore) -> None:
    store.save(tokens())
    login = tokens()
    store.save(login)
    assert store.load() == login


def test_fenced_clear_leaves_newer_tokens_alone(store: RedisStore) -> None:
    old, new = tokens(), tokens()
    store.save(old)
    store.save(new, replaces=old)
    store.clear(only=old)
    assert store.load() == new


def test_fenced_clear_deletes_the_tokens_it_names(store: RedisStore) -> None:
    stored = tokens()
    store.save(stored)
    store.clear(only=stored)
    assert store.load() is None


def test_unfenced_clear_deletes_any_tokens(store: RedisStore) -> None:
    store.save(tokens())
    store.clear()
    assert store.load() is None


def test_a_key_holding_something_else_is_a_store_error(
    store: RedisStore, client: redis.Redis, key: str
) -> None:
    client.set(key, "not a hash")
    with pytest.raises(TokenStoreError, match="WRONGTYPE") as caught:
        store.load()
    assert isinstance(caught.value.__cause__, redis.ResponseError)


def test_a_hash_without_pleo_tokens_is_a_store_error_that_says_what_to_do(
    store: RedisStore, client: redis.Redis, key: str
) -> None:
    client.hset(key, "tokens", "{not json")
    with pytest.raises(TokenStoreError, match="log in again"):
        store.load()


def test_works_with_a_client_that_decodes_responses(redis_url: str, key: str) -> None:
    with redis.Redis.from_url(redis_url, decode_responses=True) as decoding:
        store = RedisStore(decoding, key=key)
        first, second = tokens(), tokens()
        store.save(first)
        version = store.version()
        store.save(second, replaces=first)
        assert store.load() == second
        assert store.version() != version


# -- the lock --------------------------------------------------------------------------


def test_the_lock_excludes_a_second_holder_on_another_client(
    store: RedisStore, redis_url: str, key: str
) -> None:
    other = RedisStore(redis_url, key=key)
    with (
        store.lock(timeout=1.0, lease=30.0),
        pytest.raises(TokenStoreError, match="timed out") as caught,
        other.lock(timeout=0.0, lease=30.0),
    ):
        pass
    assert caught.value.retryable is True


def test_the_lock_is_free_again_after_release(store: RedisStore, client: redis.Redis) -> None:
    with store.lock(timeout=1.0, lease=30.0):
        assert client.exists(store.lock_key) == 1
    assert client.exists(store.lock_key) == 0


def test_a_waiter_gets_the_lock_when_the_holder_releases_it(
    store: RedisStore, redis_url: str, key: str
) -> None:
    other = RedisStore(redis_url, key=key)
    holding = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with store.lock(timeout=1.0, lease=30.0):
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(10)
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(_take(other)))
    waiter.start()
    release.set()
    waiter.join(30)
    holder.join(30)
    assert got == [True]


def _take(store: RedisStore) -> bool:
    with store.lock(timeout=20.0, lease=30.0):
        return True


def test_the_lease_deadline_is_the_lease_less_a_safety_margin_on_the_store_clock(
    redis_url: str, key: str, client: redis.Redis
) -> None:
    clock = FakeClock(5000.0)
    store = RedisStore(redis_url, key=key, clock=clock)
    with store.lock(timeout=1.0, lease=4.0) as lease:
        ttl_ms = client.pttl(store.lock_key)
    assert lease.deadline == clock.monotonic() + 4.0 - 0.4  # 10% of the lease
    assert 0 < ttl_ms <= 4000


def test_a_bare_function_as_clock_still_works_with_a_deprecation_warning(
    redis_url: str, key: str
) -> None:
    now = [7000.0]
    with pytest.warns(DeprecationWarning, match=r"RedisStore\(clock=<function>\) is deprecated"):
        store = RedisStore(redis_url, key=key, clock=lambda: now[0])
    with store.lock(timeout=1.0, lease=4.0) as lease:
        assert lease.deadline == 7000.0 + 4.0 - 0.4


def test_a_clock_that_is_neither_a_clock_nor_a_function_is_a_configuration_error(
    redis_url: str, key: str
) -> None:
    with pytest.raises(ConfigurationError, match="RedisStore needs a Clock"):
        RedisStore(redis_url, key=key, clock=5000.0)  # type: ignore[arg-type]


def test_the_lease_safety_margin_is_at_most_one_second(redis_url: str, key: str) -> None:
    clock = FakeClock(5000.0)
    store = RedisStore(redis_url, key=key, clock=clock)
    with store.lock(timeout=1.0, lease=53.0) as lease:
        pass
    assert lease.deadline == clock.monotonic() + 53.0 - 1.0


def test_a_holder_whose_lease_ran_out_neither_releases_the_next_lock_nor_overwrites_its_tokens(
    redis_url: str, key: str, client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    slow = RedisStore(redis_url, key=key)
    fast = RedisStore(redis_url, key=key)
    old = tokens()
    slow.save(old)
    slow_lock = slow.lock(timeout=1.0, lease=0.2)
    slow_lock.__enter__()
    # The second holder waits (no sleep here) until Redis expires the first lease.
    with fast.lock(timeout=30.0, lease=30.0):
        newer = tokens()
        fast.save(newer, replaces=old)
        with caplog.at_level(logging.WARNING, logger="pleo_auth.stores.locks"):
            slow_lock.__exit__(None, None, None)
        assert client.exists(slow.lock_key) == 1, "the late holder released the new lock"
        with pytest.raises(TokenStoreError, match="were replaced"):
            slow.save(tokens(), replaces=old)
    assert fast.load() == newer
    assert "expired before it was released" in caplog.text


def test_a_non_positive_lease_is_a_configuration_error(store: RedisStore) -> None:
    with pytest.raises(ConfigurationError, match="lease"), store.lock(timeout=1.0, lease=0.0):
        pass


# -- the version --------------------------------------------------------------------------


def test_version_is_none_before_the_first_write(store: RedisStore) -> None:
    assert store.version() is None


def test_version_is_read_from_redis_at_most_once_per_check_interval(
    redis_url: str, key: str
) -> None:
    clock = FakeClock(5000.0)
    with CountingRedis.from_url(redis_url) as counting:
        store = RedisStore(counting, key=key, check_interval=0.25, clock=clock)
        store.save(tokens())
        counting.commands.clear()
        for _ in range(64):
            store.version()
            clock.advance(1 / 256)  # 64 calls within 0.25 s
        assert counting.commands == []  # the save's own version is cached
        for _ in range(64):
            store.version()
        assert counting.commands == ["HMGET"]


def test_a_change_made_elsewhere_is_noticed_within_check_interval(redis_url: str, key: str) -> None:
    clock = FakeClock(5000.0)
    here = RedisStore(redis_url, key=key, check_interval=0.25, clock=clock)
    elsewhere = RedisStore(redis_url, key=key)
    first = tokens()
    elsewhere.save(first)
    before = here.version()
    elsewhere.save(tokens(), replaces=first)
    clock.advance(0.125)
    assert here.version() == before  # still cached
    clock.advance(0.125)
    assert here.version() != before


def test_an_empty_store_is_asked_every_time_so_a_login_elsewhere_is_seen_at_once(
    redis_url: str, key: str
) -> None:
    clock = FakeClock(5000.0)  # never moves: nothing ages out of the cache
    here = RedisStore(redis_url, key=key, clock=clock)
    elsewhere = RedisStore(redis_url, key=key)
    empty = here.version()
    assert here.load() is None
    elsewhere.save(tokens())
    assert here.version() != empty


def test_a_store_emptied_elsewhere_is_asked_every_time_once_it_knows(
    redis_url: str, key: str
) -> None:
    clock = FakeClock(5000.0)
    here = RedisStore(redis_url, key=key, clock=clock)
    elsewhere = RedisStore(redis_url, key=key)
    elsewhere.save(tokens())
    here.load()
    elsewhere.clear()
    clock.advance(1.0)
    emptied = here.version()  # read: the cache had aged out
    elsewhere.save(tokens())
    assert here.version() != emptied  # no clock movement needed: it held no tokens


def test_threads_never_get_a_cached_empty_version_while_another_thread_reads(
    redis_url: str, key: str
) -> None:
    clock = FakeClock(5000.0)
    here = RedisStore(redis_url, key=key, clock=clock)
    elsewhere = RedisStore(redis_url, key=key)
    empty = here.version()
    elsewhere.save(tokens())
    threads = 16
    barrier = threading.Barrier(threads)
    seen: list[Hashable] = []

    def look() -> None:
        barrier.wait()
        seen.append(here.version())

    lookers = [threading.Thread(target=look) for _ in range(threads)]
    for looker in lookers:
        looker.start()
    for looker in lookers:
        looker.join(30)
    assert len(seen) == threads
    assert empty not in seen


def test_a_save_updates_the_cached_version_at_once(redis_url: str, key: str) -> None:
    clock = FakeClock(5000.0)
    store = RedisStore(redis_url, key=key, clock=clock)
    first = tokens()
    store.save(first)
    before = store.version()
    store.save(tokens(), replaces=first)
    assert store.version() != before


def test_a_clear_changes_the_version(store: RedisStore) -> None:
    store.save(tokens())
    before = store.version()
    store.clear()
    assert store.load() is None
    assert store.version() != before


def test_taking_the_lock_forgets_the_cached_version(redis_url: str, key: str) -> None:
    clock = FakeClock(5000.0)
    here = RedisStore(redis_url, key=key, clock=clock)
    elsewhere = RedisStore(redis_url, key=key)
    first = tokens()
    elsewhere.save(first)
    before = here.version()
    elsewhere.save(tokens(), replaces=first)
    with here.lock(timeout=1.0, lease=30.0):
        assert here.version() != before  # no clock movement needed under the lock


def test_a_recreated_key_never_repeats_an_old_version(
    store: RedisStore, client: redis.Redis, key: str
) -> None:
    store.save(tokens())
    before = store.version()
    client.delete(key)
    store.save(tokens())  # the counter starts again at 1
    assert store.version() != before


# -- identity and secrets -------------------------------------------------------------


def test_key_is_equal_for_a_url_and_a_client_on_the_same_server_db_and_key(
    redis_url: str, key: str, client: redis.Redis
) -> None:
    assert RedisStore(redis_url, key=key).key == RedisStore(client, key=key).key


def test_key_differs_by_database_and_by_key(redis_url: str, key: str) -> None:
    base = RedisStore(redis_url, key=key)
    other_db = RedisStore(redis_url.rsplit("/", 1)[0] + "/1", key=key)
    other_key = RedisStore(redis_url, key=key + "x")
    assert len({base.key, other_db.key, other_key.key}) == 3


def test_spec_names_server_db_and_key(redis_url: str, key: str) -> None:
    store = RedisStore(redis_url, key=key)
    assert store.spec == f"{redis_url}?key={key}"


def test_spec_builds_an_equal_store_directly_and_through_the_store_parser(
    redis_url: str, key: str
) -> None:
    store = RedisStore(redis_url, key=key)
    assert RedisStore(store.spec).key == store.key
    assert store_from_spec(store.spec, client_id="any").key == store.key


def test_the_key_may_be_given_as_a_url_fragment(redis_url: str, key: str) -> None:
    assert RedisStore(f"{redis_url}#{key}").redis_key == key


def test_a_url_and_an_argument_naming_different_keys_is_a_configuration_error(
    redis_url: str,
) -> None:
    with pytest.raises(ConfigurationError, match="names key 'a' but key='b'"):
        RedisStore(f"{redis_url}?key=a", key="b")


def test_no_password_in_repr_describe_spec_or_key(redis_url: str, key: str) -> None:
    with_password = redis_url.replace("redis://", f"redis://:{PASSWORD}@")
    from_url = RedisStore(with_password, key=key)
    from_client = RedisStore(redis.Redis.from_url(with_password), key=key)
    for store in (from_url, from_client):
        shown = [repr(store), store.describe(), store.spec, str(store.key)]
        assert all(PASSWORD not in text for text in shown), shown


def test_spec_keeps_the_user_name_but_not_the_password(redis_url: str, key: str) -> None:
    store = RedisStore(redis_url.replace("redis://", f"redis://alice:{PASSWORD}@"), key=key)
    assert store.spec.startswith("redis://alice@127.0.0.1:")
    assert PASSWORD not in store.spec


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (f"http://:{PASSWORD}@127.0.0.1/0", "starts with redis://"),
        (f"redis://:{PASSWORD}@127.0.0.1:notaport/0", "redis-py cannot read it"),
        (f"redis://:{PASSWORD}@[::1/0", "cannot be parsed"),
        (f"redis://:{PASSWORD}@127.0.0.1/zero", "the path must be a database number"),
        (f"redis://:{PASSWORD}@127.0.0.1/0?key=a#b", "more than one key"),
        (f"redis://127.0.0.1/0?password={PASSWORD}&key=", "an empty key"),
    ],
    ids=["scheme", "port", "host", "database", "key", "empty-key"],  # the same in every process
)
def test_a_bad_url_is_a_configuration_error_that_hides_the_password(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as caught:
        RedisStore(url)
    assert PASSWORD not in str(caught.value)
    assert isinstance(caught.value, ValueError)


# Generated passwords (base64, openssl rand) often hold "/", "+" or "=". Written
# unescaped in a URL, "/" (or "#", "?") ends the authority early, so a parser no
# longer sees the "@" in the netloc: the redaction must read the raw text.
SLASHED = "Zm9v/YmFyYmF6"


@pytest.mark.parametrize(
    "url",
    [
        pytest.param(f"redis://:{SLASHED}@127.0.0.1:6379/0", id="password-with-slash"),
        pytest.param(f"redis://app:{SLASHED}@127.0.0.1:6379/0", id="user-and-password"),
        pytest.param("redis://:Zm9v#YmFy@127.0.0.1:6379/0", id="password-with-hash"),
        pytest.param("redis://:Zm9v?YmFy@127.0.0.1:6379/0", id="password-with-question-mark"),
        pytest.param("redis://:Zm9v@Ym/Fy@127.0.0.1:6379/0", id="password-with-at-and-slash"),
    ],
)
def test_a_malformed_family_url_never_shows_its_password_in_the_error(url: str) -> None:
    password = url.split("://")[1].rpartition("@")[0].partition(":")[2]
    with pytest.raises(ConfigurationError) as caught:
        RedisStore.family(url, "app:")
    message = str(caught.value)
    for fragment in {password, *password.replace("#", "/").replace("?", "/").split("/")}:
        assert fragment not in message, f"password fragment {fragment!r} in: {message}"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"redis://:{SLASHED}@cache:6379/0", "redis://:***@cache:6379/0"),
        (f"rediss://app:{SLASHED}@cache/1", "rediss://app:***@cache/1"),
        ("redis://:a#b?c@cache/0#key", "redis://:***@cache/0#key"),
        ("redis://secret@cache/0", "redis://***@cache/0"),
        ("redis://cache/0?password=pw&db=2#k", "redis://cache/0?password=***&db=2#k"),
        ("redis://cache:6379/0?key=app:tokens", "redis://cache:6379/0?key=app:tokens"),
        ("secret@host://x", "***://x"),
    ],
)
def test_redact_url_reads_the_raw_text_up_to_the_last_at(url: str, shown: str) -> None:
    from pleo_auth.stores.redis import redact_url

    assert redact_url(url) == shown


def test_a_password_with_a_slash_is_hidden_in_a_store_urls_error() -> None:
    with pytest.raises(ConfigurationError, match="database number") as caught:
        RedisStore(f"redis://:{SLASHED}@127.0.0.1:6379/0", key="k")
    assert "YmFyYmF6" not in str(caught.value)
    assert "Zm9v" not in str(caught.value)


def test_a_wrong_argument_type_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="not int"):
        RedisStore(6379)  # type: ignore[arg-type]


def test_a_negative_check_interval_is_a_configuration_error(redis_url: str) -> None:
    with pytest.raises(ConfigurationError, match="check_interval"):
        RedisStore(redis_url, check_interval=-1)


# -- Redis down --------------------------------------------------------------------------


@pytest.fixture
def dead_store() -> RedisStore:
    with socket.socket() as sock:  # a port nothing listens on once this closes
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return RedisStore(f"redis://:{PASSWORD}@127.0.0.1:{port}/0", key="k")


@pytest.mark.parametrize(
    "operation",
    [
        pytest.param(lambda store: store.load(), id="load"),
        pytest.param(lambda store: store.save(tokens()), id="save"),
        pytest.param(lambda store: store.clear(), id="clear"),
        pytest.param(lambda store: store.version(), id="version"),
        pytest.param(lambda store: store.lock(timeout=1.0, lease=1.0).__enter__(), id="lock"),
    ],
)
def test_redis_down_is_a_retryable_store_error_caused_by_the_redis_error(
    dead_store: RedisStore, operation: Any
) -> None:
    with pytest.raises(TokenStoreError, match="Connection refused") as caught:
        operation(dead_store)
    assert caught.value.retryable is True
    assert isinstance(caught.value.__cause__, redis.ConnectionError)
    assert PASSWORD not in str(caught.value)


# -- with a session --------------------------------------------------------------------------


def test_a_session_over_redis_refreshes_and_saves_the_new_tokens(
    emulator: Emulator, redis_url: str, key: str
) -> None:
    store = RedisStore(redis_url, key=key)
    store.save(TokenSet.from_response(emulator.issue_tokens()))
    with PleoSession(
        emulator.client_id,
        emulator.client_secret,
        store=store,
        token_url=emulator.token_url,
        api_url=emulator.api_url,
    ) as session:
        assert session.get("/v2/employees").status_code == 200
        refreshed = session.refresh()
        assert session.get("/v2/employees").status_code == 200
    assert RedisStore(redis_url, key=key).load() == refreshed
    counters = emulator.counters
    assert counters.refresh_grants == 1
    assert counters.rejected_refreshes == 0
    assert counters.unauthorized == 0


def test_importing_pleo_auth_does_not_import_redis() -> None:
    code = (
        "import sys, pleo_auth\n"
        "from pleo_auth import PleoSession, FileStore, KeyringStore, TokenSet\n"
        "import pleo_auth.stores\n"
        "assert 'redis' not in sys.modules, 'redis was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_store_composes_a_redis_lease_on_its_lock_key(store: RedisStore) -> None:
    assert isinstance(store.refresh_lock, RedisRefreshLock)
    assert store.refresh_lock.key == store.lock_key
    assert "lock" not in vars(RedisStore)


def test_a_redis_lease_alone_excludes_a_second_holder_and_expires_by_itself(
    redis_url: str, key: str
) -> None:
    clock = FakeClock(100.0)
    first = RedisRefreshLock(redis.Redis.from_url(redis_url), key + ":lock", clock=clock)
    second = RedisRefreshLock(redis.Redis.from_url(redis_url), key + ":lock", clock=clock)
    with first.hold(timeout=1.0, lease=30.0) as lease:
        assert lease.deadline == 100.0 + 30.0 - 1.0
        waiting = second.hold(timeout=0.0, lease=30.0)
        with pytest.raises(TokenStoreError, match="timed out") as refused:
            waiting.__enter__()
        assert refused.value.retryable
        ttl = redis.Redis.from_url(redis_url).pttl(key + ":lock")
        assert 0 < ttl <= 30_000
    with second.hold(timeout=0.0, lease=30.0):
        pass


def test_a_redis_lock_whose_on_acquired_callback_raises_is_released(
    client: redis.Redis, key: str
) -> None:
    """on_acquired runs after SET NX took the lock: if it raises, the lock is let go
    at once, not left until its lease runs out with every other host waiting."""
    lock_key = f"{key}:lock"

    def callback() -> None:
        raise RuntimeError("the callback failed")

    lock = RedisRefreshLock(client, lock_key, on_acquired=callback)
    with (
        pytest.raises(RuntimeError, match="the callback failed"),
        lock.hold(timeout=1.0, lease=60.0),
    ):
        pass
    assert client.exists(lock_key) == 0, "the lock was left held until its lease runs out"
    # Free at once for the next holder: it waits no time at all.
    with RedisRefreshLock(client, lock_key).hold(timeout=0.0, lease=60.0):
        assert client.exists(lock_key) == 1
