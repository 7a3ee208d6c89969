"""Grants of many Pleo companies in one Redis: :class:`RedisStoreFamily`.

Needs the ``pleo-auth[redis]`` extra, as :class:`~pleo_auth.RedisStore` does.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._clock import Clock, as_clock
from ..company import Company
from ..errors import ConfigurationError, TokenStoreError
from .family import TokenStoreFamily
from .lease import DEFAULT_LEASE, LeaseTerms
from .redis import RedisStore, describe_server, import_redis

if TYPE_CHECKING:
    import redis as redis_py

__all__ = ["RedisStoreFamily"]

#: What follows the prefix in a company's key; its lock adds ``:lock``.
_KIND = "company:"

# A company's id in a SCAN pattern: every character a class or a literal hyphen,
# so the pattern matches the companies' keys and never their locks.
_HEX = "[0-9a-f]"
_ID_PATTERN = "-".join(_HEX * n for n in (8, 4, 4, 4, 12))
_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

#: Keys SCAN is asked to look at per call, and HEXISTS sent per round trip.
_SCAN_COUNT = 1000


def glob_escape(text: str) -> str:
    """``text`` as a Redis glob pattern that matches exactly ``text``.

    >>> glob_escape("app[1]*?:")
    'app\\\\[1\\\\]\\\\*\\\\?:'
    """
    return re.sub(r"([\\*?\[\]^])", r"\\\1", text)


def _holds_tokens(reply: object, wrong_type: type[Exception]) -> bool:
    """Whether one HEXISTS reply says the hash holds tokens; False for a key of
    another type; any other error is raised."""
    if isinstance(reply, wrong_type) and str(reply).startswith("WRONGTYPE"):
        return False
    if isinstance(reply, Exception):
        raise reply
    return bool(reply)


class RedisStoreFamily(TokenStoreFamily):
    """One Redis hash per company, under a prefix: ``<prefix>company:<uuid>``.

    Each company's grant is a :class:`~pleo_auth.RedisStore` over that key, with
    everything a RedisStore does: fenced writes, a cached version, and its own
    :class:`~pleo_auth.stores.locks.RedisRefreshLock` at ``<prefix>company:<uuid>:lock``,
    so refreshes of different companies never wait for each other, on any host.
    The key holds the company's lower-case UUID only, never the string a caller
    passed. All the family's stores share one Redis client and its connection pool.

    :meth:`companies` walks the keys with ``SCAN`` (never ``KEYS``, which blocks
    the server) for the pattern of the prefix, escaped so that a ``*``, ``?`` or
    ``[`` in it matches only itself, followed by a company id, and keeps the
    hashes that hold tokens: a cleared grant leaves its hash's version fields
    behind, so that a session watching it sees the change.

    Args:
        url_or_client: A Redis URL, as :class:`~pleo_auth.RedisStore` takes it but
            without a key (the prefix names them), or a ``redis.Redis`` client.
        prefix: What every key of the family starts with. Two families with one
            prefix on one database are the same family.
        check_interval: Seconds each company's cached version stays valid.
        clock: The sessions' clock, as for :class:`~pleo_auth.RedisStore`.
        lease: Seconds each company's lock lives past its last renewal, as for
            :class:`~pleo_auth.RedisStore` (10 by default, at most 300).

    Raises:
        ConfigurationError: The URL is malformed or names a key, an argument is
            invalid, or redis-py is not installed.

    Thread safety:
        Every method may be called from any thread, process and host at once.
    """

    def __init__(
        self,
        url_or_client: str | redis_py.Redis,
        prefix: str = "pleo-auth:",
        *,
        check_interval: float = 0.1,
        clock: Clock | Callable[[], float] | None = None,
        lease: float = DEFAULT_LEASE,
    ):
        redis = import_redis()
        if not isinstance(prefix, str):
            raise ConfigurationError(f"prefix must be a string, not {type(prefix).__name__}")
        if not (isinstance(check_interval, int | float) and 0 <= check_interval < math.inf):
            raise ConfigurationError("check_interval must be a finite number of seconds >= 0")
        if isinstance(url_or_client, str):
            client, key = RedisStore._connect(redis, url_or_client)
            if key:
                raise ConfigurationError(
                    "a RedisStore.family URL names no key: the prefix names the keys"
                )
        elif isinstance(url_or_client, redis.Redis):
            client = url_or_client
        else:
            raise ConfigurationError(
                "RedisStore.family needs a Redis URL or a redis.Redis client, "
                f"not {type(url_or_client).__name__}"
            )
        self.prefix = prefix
        self.check_interval = float(check_interval)
        self.terms = LeaseTerms(lease)
        self._clock = as_clock(clock, owner="RedisStore.family")
        self._client: Any = client
        self._errors: tuple[type[Exception], ...] = (redis.exceptions.RedisError,)
        self._wrong_type: type[Exception] = redis.exceptions.ResponseError
        self._transient: tuple[type[Exception], ...] = (
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
            redis.exceptions.BusyLoadingError,
        )
        self._server = describe_server(RedisStore._location(redis, client))

    def key_of(self, company: Company | str) -> str:
        """The Redis key of ``company``'s grant."""
        return f"{self.prefix}{_KIND}{Company(company).id}"

    def build_store(self, company: Company) -> RedisStore:
        return RedisStore(
            self._client,
            key=self.key_of(company),
            check_interval=self.check_interval,
            clock=self._clock,
            lease=self.terms.lease,
        )

    def companies(self) -> list[Company]:
        start = len(self.prefix) + len(_KIND)
        pattern = glob_escape(self.prefix + _KIND) + _ID_PATTERN
        try:
            keys = sorted(
                {
                    key.decode() if isinstance(key, bytes) else str(key)
                    for key in self._client.scan_iter(match=pattern, count=_SCAN_COUNT)
                }
            )
            found: list[Company] = []
            for first in range(0, len(keys), _SCAN_COUNT):
                batch = keys[first : first + _SCAN_COUNT]
                pipe = self._client.pipeline(transaction=False)
                for key in batch:
                    pipe.hexists(key, "tokens")
                # A key of another type (another tool's, a hand-made one) answers
                # WRONGTYPE: it holds no grant, and must not hide the others.
                replies = pipe.execute(raise_on_error=False)
                found.extend(
                    Company(key[start:])
                    for key, holds in zip(batch, replies, strict=True)
                    if _holds_tokens(holds, self._wrong_type) and _ID.fullmatch(key[start:])
                )
        except self._errors as exc:
            raise TokenStoreError(
                f"cannot list the companies in {self.describe()}: {type(exc).__name__}: {exc}",
                retryable=isinstance(exc, self._transient),
            ) from exc
        return found

    def describe(self) -> str:
        return f"{self._server}, keys {self.prefix + _KIND + '<uuid>'!r}"
