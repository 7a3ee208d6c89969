"""Tokens in Redis, for an integration that runs on several hosts.

Needs the ``pleo-auth[redis]`` extra (redis-py). redis-py is imported only when a
:class:`RedisStore` is built, so ``import pleo_auth`` never imports it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import re
import secrets
import threading
import urllib.parse
import weakref
from collections.abc import Callable, Hashable, Iterator
from typing import TYPE_CHECKING, Any

from .._clock import Clock, as_clock
from ..errors import ConfigurationError, TokenStoreError
from ..tokens import TokenSet
from .base import TokenStore, decode_tokens, encode_tokens
from .lease import DEFAULT_LEASE
from .locks import RedisRefreshLock

if TYPE_CHECKING:
    import redis as redis_py

    from .redis_family import RedisStoreFamily

__all__ = ["DEFAULT_KEY", "RedisStore"]

logger = logging.getLogger(__name__)

#: The Redis key used when none is given.
DEFAULT_KEY = "pleo-auth:tokens"

# The tokens live in one hash: ``tokens`` (the JSON document), ``fence`` (a hash of
# its refresh token, so the scripts can compare without parsing JSON), and the
# version: ``epoch`` (random, set when the hash is created) and ``version`` (bumped
# by every write). The epoch tells a re-created hash from the old one, whose
# counter may have reached the same number.

# ARGV: expected fence ('' = write whatever is stored), tokens JSON, new fence, new epoch.
# A hash that is gone (evicted, flushed; not cleared, which keeps the epoch) matches
# any fence: the saver read the pair it replaces under the lock and just spent it,
# so no newer pair exists, and its save restores the store (issue 14).
_SAVE = """
if ARGV[1] ~= '' and redis.call('EXISTS', KEYS[1]) == 1
    and redis.call('HGET', KEYS[1], 'fence') ~= ARGV[1] then
  return false
end
redis.call('HSET', KEYS[1], 'tokens', ARGV[2], 'fence', ARGV[3])
redis.call('HSETNX', KEYS[1], 'epoch', ARGV[4])
return {redis.call('HGET', KEYS[1], 'epoch'), redis.call('HINCRBY', KEYS[1], 'version', 1)}
"""

# ARGV: expected fence ('' = clear whatever is stored), new epoch.
_CLEAR = """
if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'fence') ~= ARGV[1] then
  return false
end
redis.call('HDEL', KEYS[1], 'tokens', 'fence')
redis.call('HSETNX', KEYS[1], 'epoch', ARGV[2])
return {redis.call('HGET', KEYS[1], 'epoch'), redis.call('HINCRBY', KEYS[1], 'version', 1)}
"""

# Writes tokens only where the hash is gone (lost): a logout's tombstone keeps it.
# ARGV: tokens JSON, fence, new epoch.
_RESTORE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return false
end
redis.call('HSET', KEYS[1], 'tokens', ARGV[1], 'fence', ARGV[2], 'epoch', ARGV[3])
return {ARGV[3], redis.call('HINCRBY', KEYS[1], 'version', 1)}
"""

_Version = tuple[str, int]

# Stores alive in this process, so that a forked child can replace their
# threading locks, which a parent thread may have held at the fork.
_INSTANCES: weakref.WeakSet[RedisStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for store in list(_INSTANCES):
        store._reset_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def import_redis() -> Any:
    """redis-py, imported now; a ConfigurationError saying to install it if missing."""
    try:
        import redis
    except ImportError as exc:
        raise ConfigurationError(
            "RedisStore needs redis-py: install it with `pip install 'pleo-auth[redis]'`"
        ) from exc
    return redis


def _fence(tokens: TokenSet) -> str:
    return hashlib.sha256(tokens.refresh_token.encode()).hexdigest()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, fit for an error message.

    Read as raw text, not parsed: a password written unescaped may hold ``/``,
    ``?``, ``#`` or ``@``, which would end a parser's authority early and leave
    the password in the "path". So everything between ``://`` and the *last*
    ``@`` is the user information: it becomes ``user:***``, or ``***`` when it
    has no ``:`` (redis-py reads ``redis://secret@host`` as a user name, which is
    often a password written without its colon). Query parameters whose name
    holds ``password`` become ``password=***``. An ``@`` in a key after the host
    hides the host too: safe, if less helpful.

    >>> redact_url("redis://app:Zm9v/YmFy@cache:6379/0")
    'redis://app:***@cache:6379/0'
    >>> redact_url("rediss://:p#w?d@cache/0?password=x&db=1")
    'rediss://:***@cache/0?password=***&db=1'
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    elif not _SCHEME.fullmatch(scheme):
        scheme = "***"  # not a scheme: it may be anything, a password too
    userinfo, at, after = rest.rpartition("@")
    if at:
        user, colon, _password = userinfo.partition(":")
        plain = colon and not any(char in user for char in "/?#")
        rest = f"{user}:***@{after}" if plain else f"***@{after}"
    return f"{scheme}{sep}{_redact_query(rest)}"


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")


def _redact_query(text: str) -> str:
    """``text`` with the value of every query parameter named like a password hidden."""
    before, question, after = text.partition("?")
    if not question:
        return text
    query, hash_sign, fragment = after.partition("#")
    fields = [
        f"{field.partition('=')[0]}=***"
        if "password" in urllib.parse.unquote(field.partition("=")[0]).lower()
        else field
        for field in query.split("&")
    ]
    return f"{before}?{'&'.join(fields)}{hash_sign}{fragment}"


def _unsplit(scheme: str, netloc: str, path: str, query: str, fragment: str = "") -> str:
    # Not urlunsplit: it turns unix:///path (empty host) into unix:/path.
    url = f"{scheme}://{netloc}{path}"
    if query:
        url += "?" + query
    if fragment:
        url += "#" + fragment
    return url


class RedisStore(TokenStore):
    """Keeps the tokens in one Redis hash, shared by every process on every host.

    * **Lock.** Refreshes are serialised by a Redis lock (``SET key:lock NX PX``,
      a :class:`~pleo_auth.stores.locks.RedisRefreshLock`) with a short lease
      (``lease``, 10 s by default), renewed every third of it while its holder
      works: if the holder dies, the lock expires by itself at most ``lease``
      seconds later. The :class:`~pleo_auth.Lease` it grants carries a deadline
      a safety margin before the time the holder asked for is up, and pleo_auth
      gives up a refresh rather than run past it.
    * **Fenced writes.** :meth:`save` writes only if the stored refresh token is
      still the one the new tokens were refreshed from, and :meth:`clear` with
      ``only`` deletes only those tokens; each is one Lua script, so atomic.
      A holder whose lease ran out can therefore never overwrite newer tokens:
      its save raises :class:`~pleo_auth.TokenStoreError` instead.
    * **Cheap version.** Every write bumps a counter in the same script.
      :meth:`version` returns a cached copy and re-reads it at most every
      ``check_interval`` seconds, so requests cost no Redis round trip; a
      rotation made on another host is noticed within ``check_interval``
      (and before that, a request refused with 401 is replayed with the new
      tokens). An empty store is never cached: a login is seen at once.

    The hash has no expiry: Pleo's refresh tokens live for months. The data is
    not encrypted by pleo_auth; protect the Redis server (``rediss://``, ACLs).

    Args:
        url_or_client: A Redis URL (``redis://[[user]:password@]host[:port][/db]``,
            ``rediss://...`` or ``unix:///path?db=N``), or a ``redis.Redis`` client.
            The URL may name the key, as ``?key=NAME`` (the form :attr:`spec`
            writes, as ``pleo-auth --store`` takes it) or ``#NAME``. Clients built
            from a URL get 5 s socket timeouts unless the URL sets others.
        key: The Redis key of the tokens; the lock is ``<key>:lock``. Defaults to
            the key the URL names, else ``"pleo-auth:tokens"``.
        check_interval: Seconds a cached :meth:`version` stays valid.
        lease: Seconds the lock's key lives past its last renewal (at most 300):
            how long a holder that died keeps the other processes waiting.
        clock: The :class:`~pleo_auth.testing.FakeClock` or other clock of the
            sessions that use the store; its monotonic time dates the version cache
            and the lock's lease deadlines. Defaults to the system clock. (A bare
            function of monotonic seconds is deprecated.)

    Attributes:
        redis_key: The Redis key of the tokens. (``key`` is the store's identity,
            :attr:`TokenStore.key`: server, database and this key.)
        lock_key: The Redis key of the refresh lock.
        check_interval: As given.

    Raises:
        ConfigurationError: The URL is malformed, an argument is invalid, or
            redis-py is not installed.

    Thread safety:
        Every method may be called from any thread, in any number of processes
        and hosts. redis-py's connection pool is thread-safe and re-creates its
        connections in a forked child. Each :meth:`lock` acquisition has its
        own random token, kept in the acquiring call's frame; a forked child
        never releases a lock its parent holds, and it gets fresh internal
        locks.

    Example:
        >>> store = RedisStore("redis://:secret@127.0.0.1:6379/2", key="myapp:tokens")
        >>> store.spec
        'redis://127.0.0.1:6379/2?key=myapp:tokens'
    """

    fenced = True

    def __init__(
        self,
        url_or_client: str | redis_py.Redis,
        key: str | None = None,
        *,
        check_interval: float = 0.1,
        clock: Clock | Callable[[], float] | None = None,
        lease: float = DEFAULT_LEASE,
    ):
        redis = import_redis()
        if not (isinstance(check_interval, int | float) and 0 <= check_interval < math.inf):
            raise ConfigurationError("check_interval must be a finite number of seconds >= 0")
        fragment = ""
        if isinstance(url_or_client, str):
            client, fragment = self._connect(redis, url_or_client)
        elif isinstance(url_or_client, redis.Redis):
            client = url_or_client
        else:
            raise ConfigurationError(
                "RedisStore needs a Redis URL or a redis.Redis client, "
                f"not {type(url_or_client).__name__}"
            )
        if key is not None and fragment and key != fragment:
            raise ConfigurationError(
                f"the Redis URL names key {fragment!r} but key={key!r} was given"
            )
        key = key if key is not None else fragment or DEFAULT_KEY
        if not isinstance(key, str) or not key:
            raise ConfigurationError("key must be a non-empty string")
        self.redis_key = key
        self.lock_key = f"{key}:lock"
        self.check_interval = float(check_interval)
        self._clock = as_clock(clock, owner="RedisStore")
        self._client: Any = client
        self._errors: tuple[type[Exception], ...] = (redis.exceptions.RedisError,)
        self._transient: tuple[type[Exception], ...] = (
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
            redis.exceptions.BusyLoadingError,
        )
        self._where = self._location(redis, client)
        self._save_script = client.register_script(_SAVE)
        self._clear_script = client.register_script(_CLEAR)
        self._restore_script = client.register_script(_RESTORE)
        # (version, monotonic time it was read, whether tokens were stored); None forces a read.
        self._cached: tuple[_Version | None, float, bool] | None = None
        self._cache_guard = threading.Lock()
        self._reading = threading.Lock()
        self.refresh_lock = RedisRefreshLock(
            client,
            self.lock_key,
            clock=self._clock,
            where=self.describe(),
            on_acquired=self._forget_version,
            lease=lease,
        )
        _INSTANCES.add(self)

    @staticmethod
    def family(
        url_or_client: str | redis_py.Redis,
        prefix: str = "pleo-auth:",
        *,
        check_interval: float = 0.1,
        clock: Clock | Callable[[], float] | None = None,
        lease: float = DEFAULT_LEASE,
    ) -> RedisStoreFamily:
        """Grants of many Pleo companies in one Redis, one hash per company: a
        :class:`~pleo_auth.stores.redis_family.RedisStoreFamily` (same arguments)."""
        from .redis_family import RedisStoreFamily

        return RedisStoreFamily(
            url_or_client, prefix, check_interval=check_interval, clock=clock, lease=lease
        )

    @staticmethod
    def _connect(redis: Any, url: str) -> tuple[Any, str]:
        """A client for ``url``, and the key the URL names (``?key=`` or ``#key``), if any."""
        shown = redact_url(url)
        try:
            parts = urllib.parse.urlsplit(url)
        except ValueError:  # an unbalanced [ in the host, say: show no more than its scheme
            scheme, sep, _rest = url.partition("://")
            shown = f"{scheme}://***" if sep and _SCHEME.fullmatch(scheme) else "***"
            raise ConfigurationError(f"the Redis URL {shown!r} cannot be parsed") from None
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ConfigurationError(
                f"a Redis URL starts with redis://, rediss:// or unix://, not {shown!r}"
            )
        if parts.scheme != "unix" and parts.path.strip("/") and not parts.path[1:].isdigit():
            raise ConfigurationError(
                f"invalid Redis URL {shown!r}: the path must be a database number"
            )
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        names = {value for name, value in query if name == "key"}
        if parts.fragment:
            names.add(urllib.parse.unquote(parts.fragment))
        if "" in names:
            raise ConfigurationError(f"the Redis URL {shown!r} names an empty key")
        if len(names) > 1:
            raise ConfigurationError(f"the Redis URL {shown!r} names more than one key")
        # redis-py would take key= for a connection option: keep it out of the URL.
        rest = urllib.parse.urlencode([(name, value) for name, value in query if name != "key"])
        bare = _unsplit(parts.scheme, parts.netloc, parts.path, rest)
        try:
            client = redis.Redis.from_url(bare, socket_timeout=5.0, socket_connect_timeout=5.0)
        except ValueError:
            # Not redis-py's words: they quote parts of the URL, a password's included.
            raise ConfigurationError(
                f"invalid Redis URL {shown!r}: redis-py cannot read it; check its host, "
                "port and database, and percent-encode a password's special characters"
            ) from None
        return client, names.pop() if names else ""

    @staticmethod
    def _location(redis: Any, client: Any) -> dict[str, Any]:
        pool = client.connection_pool
        kwargs = pool.connection_kwargs
        where: dict[str, Any] = {
            "db": int(kwargs.get("db") or 0),
            "username": kwargs.get("username"),
            "password": kwargs.get("password") is not None,  # whether, never which
        }
        if issubclass(pool.connection_class, redis.UnixDomainSocketConnection):
            where.update(scheme="unix", path=str(kwargs.get("path")))
        else:
            ssl = issubclass(pool.connection_class, redis.SSLConnection)
            where.update(
                scheme="rediss" if ssl else "redis",
                host=str(kwargs.get("host", "localhost")),
                port=int(kwargs.get("port", 6379)),
            )
        return where

    # -- talking to Redis -------------------------------------------------------

    @contextlib.contextmanager
    def _talking(self, action: str) -> Iterator[None]:
        try:
            yield
        except self._errors as exc:
            raise TokenStoreError(
                f"cannot {action} in {self.describe()}: {type(exc).__name__}: {exc}",
                retryable=isinstance(exc, self._transient),
            ) from exc

    def _remember(self, reply: Any, read_at: float, holds_tokens: bool) -> None:
        """Cache a version read at ``read_at``, unless a newer one is cached already."""
        version: _Version | None = None
        if reply is not None and reply[1] is not None:
            version = (_text(reply[0]), int(reply[1]))
        with self._cache_guard:
            cached = self._cached
            if (
                cached is not None
                and version is not None
                and cached[0] is not None
                and cached[0][0] == version[0]
                and cached[0][1] > version[1]
            ):
                return  # a slower reader must not bring back an older version
            self._cached = (version, read_at, holds_tokens)

    # -- TokenStore -------------------------------------------------------------

    def load(self) -> TokenSet | None:
        read_at = self._clock.monotonic()
        with self._talking("read the tokens"):
            raw, epoch, version = self._client.hmget(self.redis_key, "tokens", "epoch", "version")
        self._remember((epoch, version), read_at, raw is not None)
        if raw is None:
            return None
        return decode_tokens(raw, self.describe())

    def save(self, tokens: TokenSet, *, replaces: TokenSet | None = None) -> None:
        payload = encode_tokens(tokens)
        expected = _fence(replaces) if replaces is not None else ""
        read_at = self._clock.monotonic()
        with self._talking("save the tokens"):
            reply = self._save_script(
                keys=[self.redis_key],
                args=[expected, payload, _fence(tokens), secrets.token_hex(8)],
            )
        if reply is None:
            raise TokenStoreError(
                f"not saved: the tokens in {self.describe()} were replaced while this "
                "process refreshed them (its lock's lease had run out?)"
            )
        self._remember(reply, read_at, True)

    def clear(self, *, only: TokenSet | None = None) -> None:
        """Delete the stored tokens; with ``only``, only if they are still those
        (atomically: newer tokens saved meanwhile are left alone, silently)."""
        expected = _fence(only) if only is not None else ""
        read_at = self._clock.monotonic()
        with self._talking("clear the tokens"):
            reply = self._clear_script(keys=[self.redis_key], args=[expected, secrets.token_hex(8)])
        if reply is not None:
            self._remember(reply, read_at, False)

    def lost(self) -> bool:
        """Whether the hash is gone: a clear keeps its epoch (the tombstone of a
        logout), so a missing hash was evicted, flushed, or never written."""
        with self._talking("read the tokens"):
            return not self._client.exists(self.redis_key)

    def restore(self, tokens: TokenSet) -> None:
        read_at = self._clock.monotonic()
        with self._talking("restore the tokens"):
            reply = self._restore_script(
                keys=[self.redis_key],
                args=[encode_tokens(tokens), _fence(tokens), secrets.token_hex(8)],
            )
        if reply is None:
            raise TokenStoreError(
                f"not restored: {self.describe()} was written meanwhile", retryable=True
            )
        self._remember(reply, read_at, True)

    def version(self) -> Hashable:
        """The stored tokens' version: ``(epoch, counter)``, or None before the first write.

        Cached: Redis is asked at most once per ``check_interval`` (by one thread
        at a time; the others get the cached value meanwhile). While the store
        holds no tokens it is asked every time, so that a login made elsewhere
        is seen at once: without tokens there are no requests to keep cheap.
        """
        cached = self._cached
        now = self._clock.monotonic()
        if cached is not None and cached[2] and now - cached[1] < self.check_interval:
            return cached[0]
        # While another thread reads, the others may use a cached version, but
        # never a cached "no tokens": that would turn a fresh login into an error.
        if not self._reading.acquire(blocking=cached is None or not cached[2]):
            return cached[0] if cached is not None else None
        try:
            with self._talking("read the tokens' version"):
                epoch, version, fence = self._client.hmget(
                    self.redis_key, "epoch", "version", "fence"
                )
            self._remember((epoch, version), now, fence is not None)
        finally:
            self._reading.release()
        cached = self._cached
        return cached[0] if cached is not None else None

    def _forget_version(self) -> None:
        self._cached = None  # the lock's holder must see the current version, not a cached one

    def _reset_after_fork(self) -> None:
        # A parent thread may have held these at the fork; it does not exist here.
        self._cache_guard = threading.Lock()
        self._reading = threading.Lock()
        self._cached = None

    # -- identity -----------------------------------------------------------------

    @property
    def key(self) -> Hashable:
        """The server, database and key: equal for every store over the same tokens."""
        where = self._where
        if where["scheme"] == "unix":
            return ("redis", "unix", where["path"], where["db"], self.redis_key)
        return ("redis", where["host"], where["port"], where["db"], self.redis_key)

    @property
    def spec_omits_password(self) -> bool:
        return bool(self._where["password"])

    @property
    def spec(self) -> str:
        """The store as a ``--store`` URL. It never holds the password: where the
        server needs one, give the command the full URL yourself."""
        where = self._where
        key = urllib.parse.urlencode({"key": self.redis_key}, safe=":/-_.@")
        if where["scheme"] == "unix":
            return f"unix://{where['path']}?db={where['db']}&{key}"
        user = where["username"]
        userinfo = f"{urllib.parse.quote(user, safe='')}@" if user else ""
        host = where["host"]
        host = f"[{host}]" if ":" in host else host
        return f"{where['scheme']}://{userinfo}{host}:{where['port']}/{where['db']}?{key}"

    def describe(self) -> str:
        return f"{describe_server(self._where)} key {self.redis_key!r}"


def describe_server(where: dict[str, Any]) -> str:
    """``redis HOST:PORT db N`` (or the unix socket) for messages: free of secrets."""
    if where["scheme"] == "unix":
        server = f"unix socket {where['path']}"
    else:
        server = f"{where['host']}:{where['port']}"
    return f"redis {server} db {where['db']}"
