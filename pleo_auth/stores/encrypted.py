"""Tokens encrypted at rest, in any store: :func:`EncryptedStore`.

Needs the ``pleo-auth[crypto]`` extra (cryptography). cryptography is imported
only when an encrypted store is built, so ``import pleo_auth`` never imports it.

**How.** Every shipped store writes the tokens through
:func:`~pleo_auth.stores.base.encode_tokens` and reads them through
:func:`~pleo_auth.stores.base.decode_tokens`. Around each call it makes to the
store it wraps, an :class:`EncryptedTokenStore` sets a codec
(:data:`~pleo_auth.stores.base.CODEC`, a context variable) that those two
functions apply: the store then keeps ``pleo-auth-encrypted:1:`` and a Fernet
token where it kept the JSON document, and everything else it does (its lock,
its fenced writes, its version) stays exactly as it was.

**Binding.** Fernet (AES-128-CBC with HMAC-SHA256) takes no associated data, so
the company and the client id go inside the authenticated plaintext, beside the
document, and are compared after decryption: a ciphertext copied to another
company's row, file or key decrypts, but is refused, and no one without the key
can make one that names another company.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
from collections.abc import Hashable, Iterable, Iterator
from typing import Any, Literal, overload

import attrs

from ..company import Company
from ..errors import ConfigurationError, TokenStoreError
from ..tokens import TokenSet
from ._keys import Keys, find_keys
from .base import CODEC, SEALED_PREFIX, Lease, SealedTokensRefused, TokenStore
from .family import TokenStoreFamily

__all__ = [
    "EncryptedStore",
    "EncryptedStoreFamily",
    "EncryptedTokenStore",
    "Rotation",
    "encrypt_family",
    "encrypt_store",
    "find_keys",
    "rotate_key",
    "rotate_keys",
]

#: What every ciphertext this version writes starts with; the Fernet token follows.
PREFIX = f"{SEALED_PREFIX}1:"

#: Bytes of a Fernet token around its ciphertext: version, time, IV, HMAC.
_FERNET_OVERHEAD = 1 + 8 + 16 + 32

#: Seconds a rotation waits for a grant's lock, and the lease it asks for.
_ROTATE_TIMEOUT = 60.0


def _binding(client_id: str | None, company: str | None) -> str:
    parts = [f"company {company}" if company else "no company"]
    parts.append(f"client {client_id!r}" if client_id else "no client id")
    return " and ".join(parts)


class _Codec:
    """Seals documents for one (client id, company), and opens only those.

    One per store call: it counts what it did for that call alone.
    """

    def __init__(
        self, keys: Keys, client_id: str | None, company: str | None, *, plaintext: bool = False
    ):
        self.keys = keys
        self.client_id = client_id
        self.company = company
        self.accept_plaintext = plaintext
        self.sealed = 0
        self.opened_plaintext = 0

    def seal(self, document: str) -> str:
        payload = {"client_id": self.client_id, "company": self.company, "tokens": document}
        data = json.dumps(payload, sort_keys=True).encode()
        self.sealed += 1
        return PREFIX + self.keys.encrypt(data).decode("ascii")

    def open(self, raw: str | bytes, where: str) -> str:
        text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw
        if not text.startswith(SEALED_PREFIX):
            if self.accept_plaintext:
                self.opened_plaintext += 1
                return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
            raise TokenStoreError(
                f"{where} holds tokens that are not encrypted, and this store encrypts: "
                "refused (the store was left as it is). Encrypt them with "
                "`pleo-auth rotate-key --store SPEC`, or log in again"
            )
        if not text.startswith(PREFIX):
            raise SealedTokensRefused(
                f"{where} holds tokens encrypted in a format this version of pleo-auth "
                "does not know: refused (the store was left as it is)"
            )
        token = text[len(PREFIX) :].strip().encode("ascii", "replace")
        if not _well_formed(token):
            raise SealedTokensRefused(
                f"cannot decrypt the tokens in {where}: the ciphertext is truncated or "
                f"malformed ({len(token)} characters). The store was left as it is; "
                "restore it from a backup, or log in again"
            )
        data = self.keys.decrypt(token)
        if data is None:
            raise SealedTokensRefused(
                f"cannot decrypt the tokens in {where}: none of the {self.keys.count} "
                "encryption key(s) given opens them. Either the key they were encrypted "
                "with is missing or wrong (check PLEO_AUTH_KEYS; after a rotation keep the "
                "old key in the list until `pleo-auth rotate-key` has run), or the "
                "ciphertext was changed. The store was left as it is"
            )
        try:
            payload = json.loads(data)
            document = payload["tokens"]
            their = (payload["client_id"], payload["company"])
        except (ValueError, TypeError, KeyError):
            raise SealedTokensRefused(
                f"the tokens in {where} decrypt to no pleo-auth document: refused "
                "(the store was left as it is)"
            ) from None
        if their != (self.client_id, self.company) or not isinstance(document, str):
            raise SealedTokensRefused(
                f"the tokens in {where} were encrypted for {_binding(*their)}, not for "
                f"{_binding(self.client_id, self.company)}: copied from another grant? "
                "Refused (the store was left as it is)"
            )
        return document


def _well_formed(token: bytes) -> bool:
    """Whether ``token`` has a Fernet token's shape: base64 of a whole number of blocks."""
    try:
        data = base64.urlsafe_b64decode(token)
    except (binascii.Error, ValueError):
        return False
    body = len(data) - _FERNET_OVERHEAD
    return data[:1] == b"\x80" and body >= 16 and body % 16 == 0


def _keys(keys: Keys | Iterable[str | bytes] | None) -> Keys:
    if isinstance(keys, Keys):
        return keys
    return Keys(find_keys() if keys is None else keys)


def _holds_objects(store: TokenStore) -> bool:
    """Whether ``store`` (or the store it wraps) keeps TokenSet objects, not text."""
    from .memory import MemoryStore

    seen: Any = store
    for _ in range(8):
        if isinstance(seen, MemoryStore):
            return True
        seen = getattr(seen, "inner", None)
        if not isinstance(seen, TokenStore):
            return False
    return False


class EncryptedTokenStore(TokenStore):
    """A :class:`~pleo_auth.TokenStore` that keeps another store's tokens encrypted.

    Build it with :func:`EncryptedStore`. The wrapped store keeps a Fernet
    ciphertext of the document where it kept the document itself (see
    :mod:`pleo_auth.stores.encrypted`); its lock, its fenced writes
    (``replaces``, compared in Redis and SQL by the SHA-256 of the refresh
    token, as without encryption) and its :meth:`version` are used as they are.

    * Every save encrypts under the first key; a load decrypts with any of them.
    * A ciphertext no key opens, one cut short, or one made for another company
      or client id raises :class:`~pleo_auth.TokenStoreError` (not retryable)
      that says which; it is never read as "no tokens", so nothing clears the
      store or asks for a login because of it, and the store is left as it is.
    * Unencrypted tokens found in the store are refused the same way; ``pleo-auth
      rotate-key`` (:func:`rotate_key`) encrypts them.
    * :class:`~pleo_auth.MemoryStore` keeps objects, not text: over it nothing is
      encrypted, since nothing is at rest.

    Args:
        inner: The store to keep the ciphertext in.
        keys: The keys (see :func:`EncryptedStore`).
        client_id: The OAuth client id the ciphertext is bound to.
        company: The company it is bound to.

    Thread safety:
        As the wrapped store's: every call sets its codec in its own context.
    """

    def __init__(
        self,
        inner: TokenStore,
        keys: Keys | Iterable[str | bytes] | None = None,
        *,
        client_id: str | None = None,
        company: Company | str | None = None,
    ):
        if not isinstance(inner, TokenStore):
            raise ConfigurationError(
                f"EncryptedStore wraps a TokenStore or a store family, not {type(inner).__name__}"
            )
        if isinstance(inner, EncryptedTokenStore):
            raise ConfigurationError("this store is encrypted already")
        self.inner = inner
        self._keys = _keys(keys)
        if company is None:
            found = getattr(inner, "company", None)
            company = found if isinstance(found, Company) else None
        if client_id is None:
            owner = getattr(inner, "family", None)
            found_id = getattr(owner, "client_id", None)
            client_id = found_id if isinstance(found_id, str) else None
        self.client_id = client_id or None
        self.company = Company(company) if company is not None else None

    @property
    def key_count(self) -> int:
        """How many keys decrypt; the first of them encrypts."""
        return self._keys.count

    @contextlib.contextmanager
    def _coded(self, *, plaintext: bool = False) -> Iterator[_Codec]:
        company = self.company.id if self.company is not None else None
        codec = _Codec(self._keys, self.client_id, company, plaintext=plaintext)
        token = CODEC.set(codec)
        try:
            yield codec
        finally:
            CODEC.reset(token)

    def load(self) -> TokenSet | None:
        with self._coded():
            return self.inner.load()

    def save(self, tokens: TokenSet, *, replaces: TokenSet | None = None) -> None:
        with self._coded() as codec:
            self.inner.save(tokens, replaces=replaces)
        self._check_sealed(codec)

    def clear(self, *, only: TokenSet | None = None) -> None:
        with self._coded():
            self.inner.clear(only=only)

    def lost(self) -> bool:
        with self._coded():
            return self.inner.lost()

    def restore(self, tokens: TokenSet) -> None:
        with self._coded() as codec:
            self.inner.restore(tokens)
        self._check_sealed(codec)

    def _check_sealed(self, codec: _Codec) -> None:
        if codec.sealed == 0 and not _holds_objects(self.inner):
            raise TokenStoreError(
                f"{self.inner.describe()} saved without pleo_auth.stores.base.encode_tokens, "
                "so EncryptedStore could not encrypt what it wrote: use it over a store "
                "that writes through encode_tokens and reads through decode_tokens"
            )

    def lock(self, *, timeout: float, lease: float) -> contextlib.AbstractContextManager[Lease]:
        return self.inner.lock(timeout=timeout, lease=lease)

    def version(self) -> Hashable:
        return self.inner.version()

    @property
    def fenced(self) -> bool:  # type: ignore[override]
        """As the wrapped store's: it does the compare-and-set."""
        return self.inner.fenced

    @property
    def key(self) -> Hashable:
        # Not the inner key: a plain store over the same place must not share a coordinator.
        return ("encrypted", self.inner.key)

    @property
    def spec(self) -> str | None:
        """The wrapped store's spec (give ``pleo-auth`` ``--encrypt`` beside it)."""
        return self.inner.spec

    def describe(self) -> str:
        return f"{self.inner.describe()}, encrypted"

    def __repr__(self) -> str:
        return f"<EncryptedTokenStore {self.describe()}, {self._keys.count} key(s)>"


class EncryptedStoreFamily(TokenStoreFamily):
    """A :class:`~pleo_auth.TokenStoreFamily` whose grants are all encrypted.

    Build it with :func:`EncryptedStore` over a family. Each company's store is
    an :class:`EncryptedTokenStore` over the wrapped family's store for that
    company, bound to the company and the client id; listing and removing
    companies needs no key.

    Args:
        inner: The family to keep the ciphertext in.
        keys: The keys (see :func:`EncryptedStore`).
        client_id: The OAuth client id every grant is bound to; by default the
            family's own (:class:`~pleo_auth.stores.SQLStore` has one), else none.

    Thread safety:
        As the wrapped family's.
    """

    def __init__(
        self,
        inner: TokenStoreFamily,
        keys: Keys | Iterable[str | bytes] | None = None,
        *,
        client_id: str | None = None,
    ):
        if not isinstance(inner, TokenStoreFamily):
            raise ConfigurationError(
                f"EncryptedStoreFamily wraps a store family, not {type(inner).__name__}"
            )
        if isinstance(inner, EncryptedStoreFamily):
            raise ConfigurationError("this family is encrypted already")
        own = getattr(inner, "client_id", None)
        if client_id is not None and isinstance(own, str) and own != client_id:
            raise ConfigurationError(
                f"the family's client id is {own!r}, but client_id={client_id!r} was given"
            )
        self.inner = inner
        self.client_id = client_id or (own if isinstance(own, str) else None)
        self._keys = _keys(keys)

    def build_store(self, company: Company) -> EncryptedTokenStore:
        return EncryptedTokenStore(
            self.inner.store(company), self._keys, client_id=self.client_id, company=company
        )

    def for_company(self, company: Company | str) -> EncryptedTokenStore:
        """The encrypted store of ``company``'s grant, for a :class:`~pleo_auth.PleoSession`.

        Raises:
            ConfigurationError: ``company`` is not a company id or URN.
        """
        return self.build_store(Company(company))

    def companies(self) -> list[Company]:
        return self.inner.companies()

    def remove(self, company: Company | str) -> None:
        self.inner.remove(company)

    def describe(self) -> str:
        return f"{self.inner.describe()}, encrypted"

    def __repr__(self) -> str:
        return f"<EncryptedStoreFamily {self.describe()}, {self._keys.count} key(s)>"


@overload
def EncryptedStore(
    inner: TokenStoreFamily,
    keys: Keys | Iterable[str | bytes] | None = ...,
    *,
    client_id: str | None = ...,
    company: None = ...,
) -> EncryptedStoreFamily: ...


@overload
def EncryptedStore(
    inner: TokenStore,
    keys: Keys | Iterable[str | bytes] | None = ...,
    *,
    client_id: str | None = ...,
    company: Company | str | None = ...,
) -> EncryptedTokenStore: ...


def EncryptedStore(
    inner: TokenStore | TokenStoreFamily,
    keys: Keys | Iterable[str | bytes] | None = None,
    *,
    client_id: str | None = None,
    company: Company | str | None = None,
) -> EncryptedTokenStore | EncryptedStoreFamily:
    """Encrypt at rest whatever ``inner`` keeps: a store, or a family of them.

    >>> from cryptography.fernet import Fernet
    >>> from pleo_auth import FileStore
    >>> keys = [Fernet.generate_key().decode()]
    >>> EncryptedStore(FileStore.family("/srv/pleo"), keys, client_id="my-client")
    <EncryptedStoreFamily one file per company in /srv/pleo, encrypted, 1 key(s)>

    Args:
        inner: A :class:`~pleo_auth.TokenStore` (FileStore, RedisStore,
            KeyringStore, ``SQLStore.for_company(...)``) or a
            :class:`~pleo_auth.TokenStoreFamily` (``FileStore.family(...)``,
            ``RedisStore.family(...)``, ``SQLStore(...)``, ...).
        keys: Fernet keys (``Fernet.generate_key()``), newest first: the first
            encrypts, every one decrypts. Defaults to the first source that has
            some: ``PLEO_AUTH_KEYS``, the file ``PLEO_AUTH_KEYS_FILE`` names
            (mode 0600), the keyring entry ``pleo-auth``/``encryption-keys``.
        client_id: The OAuth client id the ciphertext is bound to (a database
            family's own by default).
        company: The company a single store's ciphertext is bound to (a family
            binds each store to its company).

    Returns:
        An :class:`EncryptedTokenStore`, or an :class:`EncryptedStoreFamily` for a family.

    Raises:
        ConfigurationError: No key, a malformed key (never shown), or
            cryptography is not installed (``pip install 'pleo-auth[crypto]'``).
    """
    if isinstance(inner, TokenStoreFamily):
        if company is not None:
            raise ConfigurationError("company= binds a single store; a family binds each company")
        return EncryptedStoreFamily(inner, keys, client_id=client_id)
    return EncryptedTokenStore(inner, keys, client_id=client_id, company=company)


def encrypt_store(store: TokenStore, *, client_id: str | None = None) -> TokenStore:
    """``store`` encrypted with the keys :func:`~pleo_auth.stores._keys.find_keys`
    finds (``--encrypt``, ``ENCRYPT``); a store already encrypted as it is."""
    if isinstance(store, EncryptedTokenStore):
        return store
    return EncryptedTokenStore(store, client_id=client_id or None)


def encrypt_family(
    family: TokenStoreFamily, *, client_id: str | None = None, keys: list[str] | None = None
) -> TokenStoreFamily:
    """``family`` encrypted as :func:`encrypt_store` encrypts a store (with ``keys``
    if given)."""
    if isinstance(family, EncryptedStoreFamily):
        return family
    return EncryptedStoreFamily(family, keys, client_id=client_id or None)


# -- key rotation -----------------------------------------------------------------------

#: What :func:`rotate_key` did to one grant.
Outcome = Literal["rotated", "encrypted", "empty"]


def rotate_key(store: EncryptedTokenStore, *, timeout: float = _ROTATE_TIMEOUT) -> Outcome:
    """Re-encrypt ``store``'s tokens under its first key, holding its refresh lock.

    Under the lock no refresh runs, so the pair read is the pair written back,
    and the write is fenced on it as a refresh's would be. Tokens stored
    unencrypted are encrypted.

    Returns:
        ``"rotated"``, ``"encrypted"`` (they were not encrypted), or ``"empty"``.

    Raises:
        TokenStoreError: The lock was not taken within ``timeout``, no key opens
            the tokens, or the store failed; the store is left as it was.
    """
    with store.lock(timeout=timeout, lease=timeout):
        with store._coded(plaintext=True) as codec:
            tokens = store.inner.load()
            if tokens is None:
                return "empty"
            store.inner.save(tokens, replaces=tokens)
        store._check_sealed(codec)
    return "encrypted" if codec.opened_plaintext else "rotated"


@attrs.frozen
class Rotation:
    """What :func:`rotate_keys` did, by company (or ``None`` for a single store).

    Attributes:
        done: The outcome of each grant rotated, encrypted or found empty.
        failed: The error of each grant that could not be rotated (no key, no lock).
    """

    done: dict[str | None, Outcome] = attrs.field(factory=dict)
    failed: dict[str | None, TokenStoreError] = attrs.field(factory=dict)


def rotate_keys(
    target: EncryptedTokenStore | EncryptedStoreFamily, *, timeout: float = _ROTATE_TIMEOUT
) -> Rotation:
    """Re-encrypt every grant of ``target`` under the first key, one lock at a time.

    A grant that fails (no key opens it, its lock is not free within
    ``timeout``) is recorded in :attr:`Rotation.failed`, and the others go on.

    Raises:
        TokenStoreError: The family's companies cannot be listed.
    """
    result = Rotation()
    if isinstance(target, EncryptedTokenStore):
        stores: list[tuple[str | None, EncryptedTokenStore]] = [(None, target)]
    else:
        stores = [(company.id, target.for_company(company)) for company in target.companies()]
    for name, store in stores:
        try:
            result.done[name] = rotate_key(store, timeout=timeout)
        except TokenStoreError as exc:
            result.failed[name] = exc
    return result
