"""The interface every token store implements."""

from __future__ import annotations

import abc
import contextlib
import contextvars
import json
import logging
import math
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import attrs

from ..errors import TokenStoreError, TokensUnreadable
from ..tokens import TokenSet

if TYPE_CHECKING:
    from .locks import RefreshLock

logger = logging.getLogger("pleo_auth")

__all__ = [
    "CODEC",
    "Lease",
    "TokenCodec",
    "TokenStore",
    "decode_tokens",
    "encode_tokens",
    "require_refresh_lock",
]


class TokenCodec(Protocol):
    """Turns the JSON document into what a store keeps, and back: see :data:`CODEC`."""

    def seal(self, document: str) -> str:
        """What the store keeps in place of ``document``."""

    def open(self, raw: str | bytes, where: str) -> str:
        """The document ``raw`` (read from ``where``) was sealed from.

        Raises:
            TokenStoreError: ``raw`` cannot be opened; the message never quotes it.
        """


#: The codec of the store call running in this context, set by
#: :class:`~pleo_auth.stores.encrypted.EncryptedTokenStore` around the calls it
#: makes to the store it wraps, so that every store that writes through
#: :func:`encode_tokens` and reads through :func:`decode_tokens` keeps ciphertext.
CODEC: contextvars.ContextVar[TokenCodec | None] = contextvars.ContextVar(
    "pleo_auth_codec", default=None
)

#: What a sealed document starts with (see :mod:`pleo_auth.stores.encrypted`).
SEALED_PREFIX = "pleo-auth-encrypted:"


class SealedTokensRefused(TokenStoreError):
    """Encrypted tokens the keys at hand cannot open (no key, a wrong one, another
    grant's): a live grant, perhaps, and never leftovers a login may replace."""


def encode_tokens(tokens: TokenSet) -> str:
    """The JSON document every shipped store keeps: both tokens in one unit
    (sealed by the :data:`CODEC` of the running call, if any)."""
    document = json.dumps(tokens.to_dict(), sort_keys=True)
    codec = CODEC.get()
    return document if codec is None else codec.seal(document)


_JSON_KINDS = {list: "array", str: "string", int: "number", float: "number", bool: "boolean"}


def decode_tokens(raw: str | bytes, where: str) -> TokenSet:
    """Parse :func:`encode_tokens`' output read from ``where`` (for the message).

    Only the document :func:`encode_tokens` writes is accepted: a JSON object with
    non-empty string tokens, a finite ``expires_at``, and ``token_type``, ``scope``,
    ``issued_at``, ``lineage`` and ``after_401`` of the right type or absent. Other
    keys are ignored.

    Raises:
        TokensUnreadable: ``raw`` is not a saved :class:`~pleo_auth.TokenSet`. The
            message names ``where`` and what is wrong, never the content.
    """

    def refused(reason: str) -> TokensUnreadable:
        return TokensUnreadable(
            f"{where} does not hold pleo-auth tokens ({reason}); "
            "run `pleo-auth logout` and log in again"
        )

    codec = CODEC.get()
    if codec is not None:
        raw = codec.open(raw, where)
    elif _sealed(raw):
        # Not TokensUnreadable: a login must not take this for leftovers to replace.
        raise SealedTokensRefused(
            f"{where} holds encrypted tokens, and this store was given no key to open "
            "them: use EncryptedStore (--encrypt, ENCRYPT, with the keys in PLEO_AUTH_KEYS)"
        )
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise refused(f"not JSON: {exc.msg} at character {exc.pos}") from exc
    except UnicodeDecodeError:
        # Not chained: the error's repr carries the raw bytes, tokens included.
        raise refused("not UTF-8 text") from None
    except RecursionError:
        raise refused("JSON nested too deeply") from None
    if not isinstance(data, dict):
        kind = "null" if data is None else _JSON_KINDS.get(type(data), "value")
        raise refused(f"a JSON {kind}, not an object")
    problem = _problem(data)
    if problem is not None:
        raise refused(problem)
    return TokenSet.from_dict(data)  # checked above: it cannot fail


def _sealed(raw: str | bytes) -> bool:
    head = raw[: len(SEALED_PREFIX)]
    return (head.decode("ascii", "replace") if isinstance(head, bytes) else head) == SEALED_PREFIX


def _problem(data: dict[str, Any]) -> str | None:
    """What makes ``data`` not a saved TokenSet, in words free of its values."""
    for name in ("access_token", "refresh_token"):
        value = data.get(name)
        if not isinstance(value, str) or not value:
            return f"{name} is missing or not a non-empty string"
    if not _finite_number(data.get("expires_at")):
        return "expires_at is missing or not a finite number"
    token_type = data.get("token_type")
    if token_type is not None and (not isinstance(token_type, str) or not token_type):
        return "token_type is not a non-empty string"
    if data.get("scope") is not None and not isinstance(data["scope"], str):
        return "scope is not a string"
    if data.get("issued_at") is not None and not _finite_number(data["issued_at"]):
        return "issued_at is not a finite number"
    lineage = data.get("lineage")
    if lineage is not None and not (
        isinstance(lineage, list) and all(isinstance(item, str) and item for item in lineage)
    ):
        return "lineage is not an array of non-empty strings"
    if data.get("after_401") is not None and not isinstance(data["after_401"], bool):
        return "after_401 is not a boolean"
    for name in ("token_url", "api_url"):
        if data.get(name) is not None and not isinstance(data[name], str):
            return f"{name} is not a string"
    return None


def _finite_number(value: object) -> bool:
    # JSON's true and false are not numbers; an integer too big for a float is not finite.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


@attrs.frozen
class Lease:
    """The right to refresh, granted by :meth:`TokenStore.lock`.

    Attributes:
        deadline: Monotonic time by which the holder must have finished, or None
            when the lock cannot expire under its holder (file locks, which the
            operating system releases only when the holder lets go or dies).
        held_until: For a lease that renews itself (Redis, the database stores):
            returns the real monotonic time (:func:`time.monotonic`) until which
            the lease is known to be held, from the last take or renewal the
            server granted. pleo_auth sends no refresh token past it: a holder
            frozen for longer than a lease (SIGSTOP, a swap storm) or cut off
            from the server may have lost the lease to another process, which may
            have spent that refresh token already, and presenting it again would
            revoke the grant. None when the lock cannot run out under its holder.
    """

    deadline: float | None = None
    held_until: Callable[[], float] | None = None


class TokenStore(abc.ABC):
    """Where tokens live between refreshes, and the lock that serialises refreshes.

    A store keeps exactly one :class:`~pleo_auth.TokenSet` and writes it whole, so a
    reader never sees a new access token beside an old refresh token.

    Implementations provide:

    * :meth:`load`, :meth:`save` and :meth:`clear`, each atomic;
    * an exclusive lock shared by every process (and, for a networked store,
      every host) that uses the same tokens: either a composed
      :class:`~pleo_auth.stores.locks.RefreshLock` set as :attr:`refresh_lock`
      (a lock file, a Redis lease), which :meth:`lock` holds, or their own
      :meth:`lock`;
    * :meth:`version`, a cheap value that changes whenever the stored tokens do.
      pleo_auth calls it before every request, so it must cost no more than a
      ``stat``: no network round trip, no keyring read.

    Thread safety:
        Implementations must allow :meth:`load`, :meth:`version` and
        :meth:`lock` from any thread at once.
    """

    #: Whether :meth:`save` honours ``replaces`` atomically (a fenced write).
    fenced: ClassVar[bool] = False

    #: The lock :meth:`lock` holds, for a store that composes one (set it in
    #: ``__init__``); None in a store that implements :meth:`lock` itself.
    refresh_lock: RefreshLock | None = None

    @abc.abstractmethod
    def load(self) -> TokenSet | None:
        """The stored tokens, or None when there are none.

        Raises:
            TokenStoreError: The store could not be read, or its content is unusable.
        """

    @abc.abstractmethod
    def save(self, tokens: TokenSet, *, replaces: TokenSet | None = None) -> None:
        """Store ``tokens`` in place of whatever is there.

        Args:
            tokens: The new tokens.
            replaces: The tokens these were refreshed from. A fenced store writes
                only if the stored tokens are still these, and raises otherwise.

        Raises:
            TokenStoreError: The write failed, or (fenced stores) lost the race.
        """

    @abc.abstractmethod
    def clear(self, *, only: TokenSet | None = None) -> None:
        """Delete the stored tokens; with ``only``, only if they are still those."""

    def lost(self) -> bool:
        """Whether the store, holding no tokens, lost its data rather than being
        cleared: no tombstone of a logout is there (a Redis key evicted or flushed,
        a restart without persistence, a truncated table). Asked under the lock,
        after :meth:`load` found no tokens: a process holding the live pair then
        restores it (:meth:`restore`) instead of asking for a login.

        The default, False, reads every empty store as a logout (as
        :class:`FileStore` does: a deleted token file is a logout).

        Raises:
            TokenStoreError: The store could not be read.
        """
        return False

    def restore(self, tokens: TokenSet) -> None:
        """Write ``tokens`` back into a store that :meth:`lost` its data, only if it
        still holds neither tokens nor a tombstone. The caller holds the lock.

        Raises:
            TokenStoreError: The store is no longer lost (restored, or cleared,
                meanwhile), cannot be written, or cannot restore at all.
        """
        raise TokenStoreError(f"{self.describe()} cannot restore tokens it lost")

    def lock(self, *, timeout: float, lease: float) -> contextlib.AbstractContextManager[Lease]:
        """Hold the store's exclusive refresh lock: by default, :attr:`refresh_lock`.

        Args:
            timeout: Seconds to wait for another holder before giving up.
            lease: Seconds the holder may need. Stores whose locks can expire
                (Redis) grant at least this long; others may ignore it.

        Raises:
            TokenStoreError: The lock was not acquired within ``timeout`` (retryable).
            NotImplementedError: The store neither composes a lock nor overrides this.
        """
        refresh_lock = self.refresh_lock
        if refresh_lock is None:
            raise NotImplementedError(
                f"{type(self).__name__} must set refresh_lock (a pleo_auth.stores.locks."
                "RefreshLock) or implement lock()"
            )
        return refresh_lock.hold(timeout=timeout, lease=lease)

    def version(self) -> Hashable:
        """A value that changes whenever the stored tokens change.

        The default, a constant, means "cannot tell": rotations made elsewhere
        are then noticed only when a request is refused with 401.
        """
        return None

    @property
    def spec_omits_password(self) -> bool:
        """Whether this store was given a password that :attr:`spec` leaves out: a
        command that must reach it then reads the whole spec from ``PLEO_STORE``."""
        return False

    @property
    def key(self) -> Hashable:
        """Identifies the stored tokens: two stores with equal keys hold the same
        tokens, so sessions over them share one coordinator in a process."""
        return (type(self).__name__, id(self))

    @property
    def spec(self) -> str | None:
        """The ``--store`` argument of the ``pleo-auth`` command for this store,
        or None when no other process can reach it (memory)."""
        return None

    def describe(self) -> str:
        """A human description of where the tokens live, free of secrets."""
        return type(self).__name__

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


def save_login(store: TokenStore, tokens: TokenSet, *, fresh: bool = False) -> None:
    """Save a new login's ``tokens`` over whatever ``store`` holds.

    Under the store's refresh lock, so that a refresh of the previous grant
    running in another process cannot overwrite the login with its result; and
    recorded as replacing the previous pair, so that pair never passes for newer.

    A login the stored pair descends from (its reply, passed again) is not saved:
    its refresh token is spent, and the next refresh would present it and lose
    the grant. The stored pair is its live continuation. So a read that fails
    saves nothing and raises, unless it failed for now (a retryable
    :class:`~pleo_auth.TokenStoreError`) and ``fresh``: the tokens were issued just
    now by a code exchange, and no stored pair can descend from them. Unreadable
    leftovers (:class:`~pleo_auth.errors.TokensUnreadable`: garbage, a foreign
    document) are replaced.
    """
    with store.lock(timeout=60.0, lease=30.0):
        try:
            previous = store.load()
        except SealedTokensRefused:
            raise  # a grant these keys cannot open: not leftovers, never overwritten
        except TokensUnreadable:
            previous = None  # unreadable leftovers: the login replaces them
        except TokenStoreError as exc:
            # Not leftovers: a read that failed (a timeout, a dropped connection, a
            # replica without its master) may have missed this login's rotated
            # continuation. Only a login just made can have none.
            if not (fresh and exc.retryable):
                raise
            previous = None
        if previous is not None and (
            previous.refresh_token == tokens.refresh_token or previous.descends_from(tokens)
        ):
            logger.info(
                "not saving tokens %s to %s: it holds tokens %s, which replaced them",
                tokens.fingerprint,
                store.describe(),
                previous.fingerprint,
            )
            return
        store.save(tokens.succeeding(previous), replaces=previous)


def require_refresh_lock(store: TokenStore) -> None:
    """Refuse a store that can never lock, before anything relies on its lock.

    0.1's :meth:`TokenStore.lock` was abstract, so such a store could not be
    built. Now that a store may compose a lock instead, one that does neither is
    found here, when a session or login is built over it, and not at its first
    refresh, in production, behind a generic refresh error.

    Raises:
        TypeError: ``store`` neither sets :attr:`TokenStore.refresh_lock` nor
            overrides :meth:`TokenStore.lock` (TypeError, as 0.1 raised).
    """
    if store.refresh_lock is None and type(store).lock is TokenStore.lock:
        raise TypeError(
            f"{type(store).__name__} has no refresh lock: set refresh_lock in its __init__ "
            "(a pleo_auth.stores.locks.RefreshLock, such as FileRefreshLock) or implement lock()"
        )
