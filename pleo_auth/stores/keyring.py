"""Tokens in the operating system's keyring."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections.abc import Hashable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import TokenStoreError
from ..tokens import TokenSet
from . import _files
from .base import Lease, TokenStore, decode_tokens, encode_tokens

if TYPE_CHECKING:
    from keyring.backend import KeyringBackend

__all__ = ["KeyringStore"]

#: How long a save, clear or confirming read waits for a refresh in another process.
_LOCK_TIMEOUT = 60.0


class KeyringStore(TokenStore):
    """Keeps both tokens as ONE keyring entry, so they are always saved together.

    The entry is a small JSON document under ``(service, account)``. The backend
    is whatever :mod:`keyring` picks (macOS Keychain, Windows Credential Locker,
    the Secret Service on Linux) unless you pass one.

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
        backend: A keyring backend to use instead of the system default, for
            example ``keyrings.alt.file.PlaintextKeyring()`` on a headless server.
        state_dir: Where the lock file and change marker live. Defaults to
            ``$XDG_RUNTIME_DIR/pleo-auth`` or ``~/.cache/pleo-auth``. Every process
            sharing the tokens must use the same directory.

    Thread safety:
        Every method may be called from any thread and any process at once, as
        far as the keyring backend allows (every backend shipped with keyring does).
    """

    fenced = True

    def __init__(
        self,
        service: str = "pleo-auth",
        account: str | None = None,
        *,
        backend: KeyringBackend | None = None,
        state_dir: str | os.PathLike[str] | None = None,
    ):
        self.service = service
        self.account = account or "default"
        self._backend = backend
        self._custom_location = backend is not None or state_dir is not None
        base = Path(state_dir) if state_dir is not None else _files.default_state_dir()
        tag = hashlib.sha256(f"{self.service}\0{self.account}".encode()).hexdigest()[:16]
        self.lock_path = base / f"keyring-{tag}.lock"
        self.marker_path = base / f"keyring-{tag}.changed"

    def _keyring(self) -> Any:
        if self._backend is not None:
            return self._backend
        # Imported late: finding keyring backends costs more than importing requests.
        import keyring

        return keyring.get_keyring()

    def load(self) -> TokenSet | None:
        if _files.holds(self.lock_path):
            return self._read()
        try:
            tokens = self._read()
        except TokenStoreError:
            tokens = None
        if tokens is not None:
            return tokens
        # Some backends (keyrings.alt's files) rewrite in place, so a read can land
        # mid-write and find nothing or half a document. Every write holds the
        # lock, so a read under it is the truth.
        with self.lock(timeout=_LOCK_TIMEOUT, lease=_LOCK_TIMEOUT):
            return self._read()

    def _read(self) -> TokenSet | None:
        try:
            raw = self._keyring().get_password(self.service, self.account)
        except _keyring_errors() as exc:
            raise TokenStoreError(f"cannot read the keyring: {_keyring_reason(exc)}") from exc
        if raw is None:
            return None
        return decode_tokens(raw, f"keyring entry {self.service}/{self.account}")

    def save(self, tokens: TokenSet, *, replaces: TokenSet | None = None) -> None:
        payload = encode_tokens(tokens)
        with self.lock(timeout=_LOCK_TIMEOUT, lease=_LOCK_TIMEOUT):
            if replaces is not None and self._read() != replaces:
                raise TokenStoreError(
                    "the tokens in the keyring changed during the refresh; not saved"
                )
            try:
                self._keyring().set_password(self.service, self.account, payload)
            except _keyring_errors() as exc:
                raise TokenStoreError(f"cannot write the keyring: {_keyring_reason(exc)}") from exc
            self._mark_changed()

    def clear(self, *, only: TokenSet | None = None) -> None:
        from keyring.errors import PasswordDeleteError

        with self.lock(timeout=_LOCK_TIMEOUT, lease=_LOCK_TIMEOUT):
            if only is not None and self._read() != only:
                return
            try:
                self._keyring().delete_password(self.service, self.account)
            except PasswordDeleteError:
                pass  # nothing stored: already clear
            except _keyring_errors() as exc:
                raise TokenStoreError(f"cannot clear the keyring: {_keyring_reason(exc)}") from exc
            self._mark_changed()

    def _mark_changed(self) -> None:
        try:
            _files.atomic_write(self.marker_path, secrets.token_hex(8).encode())
        except OSError as exc:
            raise TokenStoreError(
                f"cannot update the change marker {self.marker_path}: {exc.strerror or exc}"
            ) from exc

    def version(self) -> Hashable:
        return _files.stat_version(self.marker_path)

    @contextlib.contextmanager
    def lock(self, *, timeout: float, lease: float) -> Iterator[Lease]:
        with _files.file_lock(self.lock_path, timeout) as granted:
            yield granted

    @property
    def key(self) -> Hashable:
        return ("keyring", self.service, self.account, str(self.lock_path.parent))

    @property
    def spec(self) -> str | None:
        # The command line knows only the default service and state directory.
        if self.service != "pleo-auth" or self._custom_location:
            return None
        return "keyring"

    def describe(self) -> str:
        return f"keyring service {self.service!r}, account {self.account!r}"


def _keyring_errors() -> tuple[type[Exception], ...]:
    from keyring.errors import KeyringError

    # Backends also fail with OSError (file backends, a dead D-Bus socket).
    return (KeyringError, OSError)


def _keyring_reason(exc: Exception) -> str:
    from keyring.errors import NoKeyringError

    if isinstance(exc, NoKeyringError):
        return (
            "no keyring backend is available on this machine. Use a file store "
            "(`--store file:PATH` or FileStore), or install and unlock a keyring."
        )
    return f"{type(exc).__name__}: {exc}"
