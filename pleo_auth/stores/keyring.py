"""Tokens in the operating system's keyring."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
from collections.abc import Hashable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError, TokenStoreError
from ..tokens import TokenSet
from . import _files
from ._keyring_backends import (
    _on_one_connection,
    _raise_backend_error,
    _usable_default_backend,
    _writes_to_windows_vault,
    backend_place,
)
from .base import TokenStore, decode_tokens, encode_tokens
from .locks import FileRefreshLock

if TYPE_CHECKING:
    from keyring.backend import KeyringBackend

    from .keyring_family import KeyringStoreFamily

__all__ = ["WINDOWS_CREDENTIAL_LIMIT", "KeyringStore", "backend_place"]

logger = logging.getLogger(__name__)

#: How long a save, clear or confirming read waits for a refresh in another process.
_LOCK_TIMEOUT = 60.0

#: Bytes in one Windows Credential Manager entry (``CRED_MAX_CREDENTIAL_BLOB_SIZE``).
#: keyring's ``WinVaultKeyring`` stores the password as UTF-16-LE, so about 1,280
#: characters fit.
WINDOWS_CREDENTIAL_LIMIT = 2560

#: The smallest entry limit accepted: a split entry's head (149 characters) must fit.
_MIN_ENTRY_BYTES = 320

#: Marks a head entry that points at parts instead of holding the tokens.
_SPLIT_FORMAT = "pleo-auth-split/1"

#: The two places a split payload alternates between: a save writes the one the
#: head does not point at, so the parts a reader may be reading stay intact.
_SLOTS = ("a", "b")

#: Reads of a split entry that find the head moving under them before giving up.
_READ_ATTEMPTS = 5

#: More parts than any token pair needs; bounds the sweep of a strange backend.
_MAX_PARTS = 4096


class KeyringStore(TokenStore):
    """Keeps both tokens in the operating system's keyring, saved as one unit.

    The tokens are a small JSON document under ``(service, account)``. The backend
    is whatever :mod:`keyring` picks (macOS Keychain, Windows Credential Manager,
    the Secret Service on Linux) unless you pass one.

    **Long tokens.** An entry larger than the backend holds (Windows: 2,560 bytes,
    about 1,280 characters) is split. The parts go under ``{account}#a.0``,
    ``{account}#a.1``, ... or ``{account}#b.0``, ..., whichever set the current
    entry does not use; then the entry ``{account}`` itself is replaced, in one
    write, by a small head naming the set, the number of parts and their SHA-256;
    then the previous set is deleted. The head write is the commit: a save
    interrupted before it leaves the previous tokens whole and loadable, and a
    reader checks the hash, so it never returns a mix of two saves. Tokens that
    fit stay one plain entry, as every earlier version wrote them.

    **No usable keyring.** When no ``backend`` is given and keyring's choice keeps
    nothing (its ``fail`` or ``null`` backend) or keeps it unencrypted
    (keyrings.alt's ``PlaintextKeyring``, or a subclass), :meth:`load`,
    :meth:`save` and :meth:`clear` raise :class:`~pleo_auth.TokenStoreError`
    (not retryable) naming FileStore and RedisStore: the tokens never fall back to
    a plain-text file silently. This holds when ``PYTHON_KEYRING_BACKEND``,
    ``keyringrc.cfg`` or ``keyring.set_keyring()`` names such a backend too:
    those settings steer every Python program of the user, or every library in
    the process (they are often set for pip or twine), and are no decision about
    where a Pleo grant may live. A backend passed as ``backend=`` is the caller's
    explicit choice and is used as given; for a plain file,
    :class:`~pleo_auth.FileStore` is the better choice (a private 0600 file
    replaced atomically). When keyring's choice is its chainer, the store uses
    the chain's first backend, the one keyring writes to, so a read never finds a
    stale copy in a backend further down the chain.

    **The Secret Service** (Linux desktops). keyring's stock backend for it,
    whether keyring chose it or it is passed as ``backend=``, is replaced by a
    subclass that keeps one D-Bus connection per process instead of opening one
    per call: gnome-keyring 42 to 50 can crash under that churn (upstream issues
    190, 196 and 199), which locks the user's keyring. It reads and writes the
    same items in the same collection. A subclass of keyring's backend is used
    as given.

    **A locked or unreachable keyring** (the collection is locked, the keyring
    daemon or the D-Bus session is gone) raises a retryable
    :class:`~pleo_auth.TokenStoreError` that says so. Every other backend failure
    is a TokenStoreError too, never the backend's own exception.

    Reading a keyring can cost milliseconds and may prompt the user, so it is read
    only when the tokens change. Processes on this machine share a lock file and
    a change marker in a private state directory: refreshes, saves and clears are
    serialised by the lock (a save with ``replaces`` is fenced), and other processes
    notice a rotation by a ``stat`` of the marker. Backends that rewrite a file in
    place (keyrings.alt) can be caught mid-write; a read that finds nothing or half
    a document is repeated under the lock, so it never reports a false logout.

    Args:
        service: The keyring service name.
        account: The keyring user name; :class:`~pleo_auth.PleoSession` uses the
            client id. Defaults to ``"default"``.
        backend: A keyring backend to use instead of keyring's default, for
            example ``keyring.backends.SecretService.Keyring()``. Used as given,
            except as said above for the Secret Service.
        state_dir: Where the lock file and change marker live. Every process
            sharing the tokens must use the same directory. Defaults to
            ``.cache/pleo-auth`` in the home directory the user database gives
            this uid (``pwd``), read from no environment variable: a login shell,
            a cron job, ``sudo -u`` and a system service of one user all take
            the same lock on one entry. (0.1.0 used ``$XDG_RUNTIME_DIR/pleo-auth``
            when that was set: stop every 0.1.0 process on an entry before
            starting a newer one.) Pass it when that home is not writable, the
            same in every process.
        max_entry_bytes: The most one keyring entry may hold, counted as UTF-16-LE
            bytes (two per character of the ASCII JSON written). Larger payloads
            are split as above. Defaults to :data:`WINDOWS_CREDENTIAL_LIMIT` when
            the backend is keyring's Windows Credential Manager backend
            (``WinVaultKeyring``, alone or in keyring's chainer), else no limit.
            At least 320.

    Raises:
        ConfigurationError: ``max_entry_bytes`` is below 320.

    Thread safety:
        Every method may be called from any thread and any process at once, as
        far as the keyring backend allows (every backend shipped with keyring does).
        The only state on the object is the backend keyring resolved, computed once.
    """

    fenced = True
    refresh_lock: FileRefreshLock

    def __init__(
        self,
        service: str = "pleo-auth",
        account: str | None = None,
        *,
        backend: KeyringBackend | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        max_entry_bytes: int | None = None,
    ):
        if max_entry_bytes is not None and (
            isinstance(max_entry_bytes, bool)
            or not isinstance(max_entry_bytes, int)
            or max_entry_bytes < _MIN_ENTRY_BYTES
        ):
            raise ConfigurationError(
                f"max_entry_bytes must be None or an integer of at least {_MIN_ENTRY_BYTES}"
            )
        self.service = service
        self.account = account or "default"
        self.max_entry_bytes = max_entry_bytes
        self._backend = backend
        self._resolved_backend: Any = None
        self._custom_location = backend is not None or state_dir is not None
        base = Path(state_dir) if state_dir is not None else _files.default_state_dir()
        tag = hashlib.sha256(f"{self.service}\0{self.account}".encode()).hexdigest()[:16]
        self.lock_path = base / f"keyring-{tag}.lock"
        self.marker_path = base / f"keyring-{tag}.changed"
        self.refresh_lock = FileRefreshLock(
            self.lock_path,
            directory_hint=(
                "(the default state directory, in this user's home). Pass "
                "KeyringStore(state_dir=...), a private directory, the same in every "
                "process that shares these tokens"
            )
            if state_dir is None
            else None,
        )

    @staticmethod
    def family(
        service: str = "pleo-auth",
        *,
        backend: KeyringBackend | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        max_entry_bytes: int | None = None,
    ) -> KeyringStoreFamily:
        """Grants of a few Pleo companies, one keyring entry each: a
        :class:`~pleo_auth.stores.keyring_family.KeyringStoreFamily` (same arguments)."""
        from .keyring_family import KeyringStoreFamily

        return KeyringStoreFamily(
            service, backend=backend, state_dir=state_dir, max_entry_bytes=max_entry_bytes
        )

    def _keyring(self) -> Any:
        """The backend: the one passed in, else keyring's choice if it is usable.

        Raises:
            TokenStoreError: keyring's choice keeps nothing or keeps it unencrypted,
                or cannot be loaded.
        """
        if self._resolved_backend is None:
            # Resolved late: finding keyring backends costs more than importing requests.
            # Two threads may both resolve it; each gets a working backend, and the
            # last one stays.
            chosen = self._backend if self._backend is not None else _usable_default_backend()
            self._resolved_backend = _on_one_connection(chosen)
        return self._resolved_backend

    def _entry_limit(self, backend: Any) -> int | None:
        if self.max_entry_bytes is not None:
            return self.max_entry_bytes
        return WINDOWS_CREDENTIAL_LIMIT if _writes_to_windows_vault(backend) else None

    # -- the TokenStore interface ---------------------------------------------------

    def load(self) -> TokenSet | None:
        backend = self._keyring()  # an unusable keyring fails here, without the lock
        if self.refresh_lock.held():
            return self._read(backend)
        try:
            tokens = self._read(backend)
        except TokenStoreError:
            tokens = None
        if tokens is not None:
            return tokens
        # Some backends (keyrings.alt's files) rewrite in place, so a read can land
        # mid-write and find nothing or half a document; a split entry can be read
        # while a save moves it. Every write holds the lock, so a read under it is
        # the truth.
        with self.lock(timeout=_LOCK_TIMEOUT, lease=_LOCK_TIMEOUT):
            return self._read(backend)

    def save(self, tokens: TokenSet, *, replaces: TokenSet | None = None) -> None:
        backend = self._keyring()
        payload = encode_tokens(tokens)
        with self.lock(timeout=_LOCK_TIMEOUT, lease=_LOCK_TIMEOUT):
            if replaces is not None:
                current, head = self._read_entry(backend)
                if current != replaces:
                    raise TokenStoreError(
                        "the tokens in the keyring changed during the refresh; not saved"
                    )
            else:
                head = self._get(backend, self.account)
            self._write(backend, payload, head)
            self._mark_changed()

    def clear(self, *, only: TokenSet | None = None) -> None:
        backend = self._keyring()
        with self.lock(timeout=_LOCK_TIMEOUT, lease=_LOCK_TIMEOUT):
            if only is not None and self._read(backend) != only:
                return
            try:
                # The head goes first: from then on no reader finds the tokens.
                self._delete(backend, self.account, "clear")
            finally:
                self._mark_changed()
            for slot in _SLOTS:
                self._delete_parts(backend, slot, "clear")

    # -- one entry, or a head and its parts -----------------------------------------

    def _part(self, slot: str, index: int) -> str:
        return f"{self.account}#{slot}.{index}"

    def _read(self, backend: Any) -> TokenSet | None:
        return self._read_entry(backend)[0]

    def _read_entry(self, backend: Any) -> tuple[TokenSet | None, str | None]:
        """The stored tokens, and the head entry they were read through."""
        where = f"keyring entry {self.service}/{self.account}"
        for _ in range(_READ_ATTEMPTS):
            head = self._get(backend, self.account)
            if head is None:
                return None, None
            split = _parse_head(head)
            if split is None:
                return decode_tokens(head, where), head
            payload = self._join(backend, split)
            if payload is not None:
                return decode_tokens(payload, where), head
            if self._get(backend, self.account) == head:
                raise TokenStoreError(
                    f"{where} is split into {split['parts']} parts, but a part is missing "
                    "or does not match; run `pleo-auth logout` and log in again"
                )
            # A save moved the tokens while we read the parts: read the new ones.
        raise TokenStoreError(
            f"{where} changed on every one of {_READ_ATTEMPTS} reads; try again",
            retryable=True,
        )

    def _join(self, backend: Any, split: dict[str, Any]) -> str | None:
        """The parts ``split`` names, joined, or None if one is missing or they mismatch."""
        parts = []
        for index in range(split["parts"]):
            part = self._get(backend, self._part(split["slot"], index))
            if part is None:
                return None
            parts.append(part)
        payload = "".join(parts)
        if hashlib.sha256(payload.encode()).hexdigest() != split["sha256"]:
            return None
        return payload

    def _write(self, backend: Any, payload: str, head: str | None) -> None:
        """Replace the stored payload, committed by one write of the head entry.

        The caller holds the lock; ``head`` is the head entry stored now.
        """
        previous = _parse_head(head) if head is not None else None
        limit = self._entry_limit(backend)
        if limit is None or _utf16_size(payload) <= limit:
            self._set(backend, self.account, payload)
        else:
            slot = _SLOTS[0] if previous is None or previous["slot"] != _SLOTS[0] else _SLOTS[1]
            # Parts an interrupted save left in this slot are overwritten from
            # part 0 up; any beyond the new last part go with the slot's next sweep.
            parts = _split(payload, limit)
            for index, part in enumerate(parts):
                self._set(backend, self._part(slot, index), part)
            new_head = json.dumps(
                {
                    "format": _SPLIT_FORMAT,
                    "slot": slot,
                    "parts": len(parts),
                    "sha256": hashlib.sha256(payload.encode()).hexdigest(),
                    # Two saves of equal tokens still get distinct heads, so a reader
                    # always notices that the head moved.
                    "nonce": secrets.token_hex(4),
                },
                sort_keys=True,
                separators=(",", ":"),
            )
            self._set(backend, self.account, new_head)  # the commit
        if previous is not None:
            try:
                self._delete_parts(backend, previous["slot"], "write", known=previous["parts"])
            except TokenStoreError as exc:
                # Saved. The sweep after the next commit to the other slot, or a
                # clear, deletes what is left.
                logger.warning("saved, but could not delete the previous parts: %s", exc)

    def _delete_parts(self, backend: Any, slot: str, action: str, known: int = 0) -> None:
        """Delete every part in ``slot``, the last first.

        Parts are written from the first up and deleted from the last down, so an
        interrupted save or sweep always leaves an unbroken run from part 0, and
        a sweep that looks for parts from ``known`` (a count it knows exist) up
        finds all of them.
        """
        count = known
        while count < _MAX_PARTS and self._get(backend, self._part(slot, count)) is not None:
            count += 1
        for index in reversed(range(count)):
            self._delete(backend, self._part(slot, index), action)

    # -- the backend, its errors wrapped ------------------------------------------

    def _get(self, backend: Any, username: str) -> str | None:
        try:
            value: str | None = backend.get_password(self.service, username)
        except Exception as exc:
            _raise_backend_error("read", exc)
        return value

    def _set(self, backend: Any, username: str, value: str) -> None:
        try:
            backend.set_password(self.service, username, value)
        except Exception as exc:
            _raise_backend_error("write", exc)

    def _delete(self, backend: Any, username: str, action: str) -> None:
        from keyring.errors import PasswordDeleteError

        try:
            backend.delete_password(self.service, username)
        except PasswordDeleteError:
            pass  # nothing stored: already gone
        except Exception as exc:
            _raise_backend_error(action, exc)

    # -- locking and change detection ---------------------------------------------

    def _mark_changed(self) -> None:
        try:
            _files.atomic_write(self.marker_path, secrets.token_hex(8).encode())
        except OSError as exc:
            raise TokenStoreError(
                f"cannot update the change marker {self.marker_path}: {exc.strerror or exc}"
            ) from exc

    def version(self) -> Hashable:
        return _files.stat_version(self.marker_path)

    @property
    def key(self) -> Hashable:
        # The tokens' place, not the lock's: stores over one entry share one
        # coordinator in a process whatever their state_dir.
        backend = None if self._backend is None else backend_place(self._backend)
        return ("keyring", self.service, self.account, backend)

    @property
    def spec(self) -> str | None:
        # The command line knows only the default service and state directory.
        if self.service != "pleo-auth" or self._custom_location:
            return None
        return "keyring"

    def describe(self) -> str:
        return f"keyring service {self.service!r}, account {self.account!r}"


# -- split entries -------------------------------------------------------------------


def _utf16_size(text: str) -> int:
    return len(text.encode("utf-16-le", "surrogatepass"))


def _split(payload: str, limit: int) -> list[str]:
    """``payload`` cut into pieces of at most ``limit`` UTF-16-LE bytes each."""
    parts: list[str] = []
    start = size = 0
    for index, char in enumerate(payload):
        cost = 4 if ord(char) > 0xFFFF else 2
        if size + cost > limit:
            parts.append(payload[start:index])
            start, size = index, 0
        size += cost
    parts.append(payload[start:])
    return parts


def _parse_head(raw: str) -> dict[str, Any] | None:
    """The head of a split entry, or None when ``raw`` is anything else."""
    try:
        head = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(head, dict) or head.get("format") != _SPLIT_FORMAT:
        return None
    parts, slot, digest = head.get("parts"), head.get("slot"), head.get("sha256")
    if (
        slot not in _SLOTS
        or not isinstance(parts, int)
        or not 0 < parts <= _MAX_PARTS
        or not isinstance(digest, str)
    ):
        return None
    return head
