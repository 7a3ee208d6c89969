"""Where :class:`~pleo_auth.stores.encrypted.EncryptedTokenStore`'s keys come from:
the environment, a private file, or the OS keyring; and the keys themselves.

No function here ever puts a key in a message, a log line or a repr.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError

__all__ = [
    "KEYRING_ACCOUNT",
    "KEYS_FILE_VARIABLE",
    "KEYS_VARIABLE",
    "Keys",
    "find_keys",
    "keys_from_env",
    "keys_from_file",
    "keys_from_keyring",
]

#: The environment variable of the keys: Fernet keys separated by commas, newest first.
KEYS_VARIABLE = "PLEO_AUTH_KEYS"
#: The environment variable naming a key file (mode 0600), read when PLEO_AUTH_KEYS is unset.
KEYS_FILE_VARIABLE = "PLEO_AUTH_KEYS_FILE"
#: The keyring account of the keys, under the service ``pleo-auth``.
KEYRING_ACCOUNT = "encryption-keys"

_SEPARATORS = re.compile(r"[\s,]+")


def import_fernet() -> Any:
    """cryptography's fernet module; a ConfigurationError saying to install it if missing."""
    try:
        from cryptography import fernet
    except ImportError as exc:
        raise ConfigurationError(
            "EncryptedStore needs cryptography: install it with `pip install 'pleo-auth[crypto]'`"
        ) from exc
    return fernet


class Keys:
    """Fernet keys, newest first: the first encrypts, every one decrypts.

    Holds the Fernet objects only, never the key strings; its repr says how many
    keys there are and nothing else.

    Args:
        keys: Fernet key strings (or bytes), as ``Fernet.generate_key()`` makes them.

    Raises:
        ConfigurationError: No key, or one that is not a Fernet key (the message
            says which one by position, never what it is).
    """

    def __init__(self, keys: Iterable[str | bytes]):
        fernet = import_fernet()
        if isinstance(keys, str | bytes):
            raise ConfigurationError(
                "keys must be a list of Fernet keys, newest first, not one string"
            )
        given = list(keys)
        if not given:
            raise ConfigurationError(
                "EncryptedStore needs at least one Fernet key (newest first); make one with "
                "`python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key()"
                ".decode())'`"
            )
        made = []
        for index, key in enumerate(given, start=1):
            if not isinstance(key, str | bytes):
                raise ConfigurationError(
                    f"encryption key {index} of {len(given)} is a {type(key).__name__}, "
                    "not a Fernet key string"
                )
            try:
                made.append(fernet.Fernet(key.strip()))
            except (ValueError, TypeError):
                # Not chained: binascii's message may quote the key.
                raise ConfigurationError(
                    f"encryption key {index} of {len(given)} is not a Fernet key "
                    "(32 url-safe base64-encoded bytes, as Fernet.generate_key() makes)"
                ) from None
        self.count = len(made)
        self._current = made[0]
        self._all = made
        self._multi = fernet.MultiFernet(made)
        self._invalid: type[Exception] = fernet.InvalidToken

    def encrypt(self, data: bytes) -> bytes:
        """``data`` encrypted and authenticated under the first key."""
        token: bytes = self._current.encrypt(data)
        return token

    def decrypt(self, token: bytes) -> bytes | None:
        """What ``token`` holds, or None when no key opens it (or it was changed)."""
        try:
            data: bytes = self._multi.decrypt(token)
        except self._invalid:
            return None
        return data

    def which(self, token: bytes) -> int | None:
        """The position (0 = the first) of the key that opens ``token``, or None."""
        for index, key in enumerate(self._all):
            try:
                key.decrypt(token)
            except self._invalid:
                continue
            return index
        return None

    def __repr__(self) -> str:
        return f"<Keys: {self.count} Fernet key{'s' if self.count != 1 else ''}>"

    def __reduce__(self) -> Any:
        # Pickling would write the keys wherever the pickle goes.
        raise TypeError("encryption keys cannot be pickled")


def parse_keys(text: str, where: str) -> list[str]:
    """The keys in ``text``: separated by commas, spaces or new lines, newest first.

    Raises:
        ConfigurationError: ``text`` holds no key.
    """
    keys = [key for key in _SEPARATORS.split(text) if key]
    if not keys:
        raise ConfigurationError(f"{where} holds no encryption key")
    return keys


def keys_from_env(env: Mapping[str, str] | None = None) -> list[str] | None:
    """The keys in ``PLEO_AUTH_KEYS``, or None when it is unset or blank."""
    env = os.environ if env is None else env
    text = env.get(KEYS_VARIABLE, "")
    if not text.strip():
        return None
    return parse_keys(text, KEYS_VARIABLE)


def keys_from_file(path: str | os.PathLike[str]) -> list[str]:
    """The keys in a private file: one per line (or comma-separated), newest first.

    Raises:
        ConfigurationError: The file is missing, is not a regular file, can be
            read or written by group or others, belongs to another user, or holds
            no key. The message names the file and the fix, never its content.
    """
    where = Path(os.path.expanduser(os.fspath(path)))
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(where, flags)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read the key file {where}: {exc.strerror or type(exc).__name__}"
        ) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigurationError(f"refusing the key file {where}: it is not a regular file")
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigurationError(
                f"refusing the key file {where}: group or others can read or write it "
                f"(mode {stat.S_IMODE(info.st_mode):04o}); it holds encryption keys: "
                f"fix it with `chmod 600 {where}`"
            )
        if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
            raise ConfigurationError(
                f"refusing the key file {where}: it belongs to uid {info.st_uid}, not to "
                f"this user (uid {os.geteuid()})"
            )
        with os.fdopen(fd, "rb", closefd=False) as handle:
            raw = handle.read()
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read the key file {where}: {exc.strerror or type(exc).__name__}"
        ) from None
    finally:
        os.close(fd)
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise ConfigurationError(f"the key file {where} is not ASCII text") from None
    return parse_keys(text, f"the key file {where}")


def keys_from_keyring(
    service: str = "pleo-auth", account: str = KEYRING_ACCOUNT, *, backend: Any = None
) -> list[str] | None:
    """The keys kept in the OS keyring under ``(service, account)``, or None if none.

    Args:
        service: The keyring service.
        account: The keyring user name.
        backend: A keyring backend; by default keyring's choice, refused (as
            :class:`~pleo_auth.KeyringStore` refuses it) when it keeps nothing or
            keeps it unencrypted.

    Raises:
        TokenStoreError: The keyring cannot be used or read.
    """
    from ._keyring_backends import _raise_backend_error, _usable_default_backend

    chosen = backend if backend is not None else _usable_default_backend()
    try:
        text = chosen.get_password(service, account)
    except Exception as exc:
        _raise_backend_error("read", exc)
    if not isinstance(text, str) or not text.strip():
        return None
    return parse_keys(text, f"keyring entry {service}/{account}")


def find_keys(env: Mapping[str, str] | None = None) -> list[str]:
    """The keys ``--encrypt`` and ``ENCRYPT`` use, from the first source that has some:
    ``PLEO_AUTH_KEYS``; the file ``PLEO_AUTH_KEYS_FILE`` names; the OS keyring's
    entry ``pleo-auth``/``encryption-keys``.

    Raises:
        ConfigurationError: No source holds a key, or a source is refused (the
            message says which, and never shows a key).
    """
    env = os.environ if env is None else env
    keys = keys_from_env(env)
    if keys is not None:
        return keys
    path = env.get(KEYS_FILE_VARIABLE, "").strip()
    if path:
        return keys_from_file(path)
    from ..errors import TokenStoreError

    try:
        keys = keys_from_keyring()
    except TokenStoreError as exc:
        reason = f"the keyring cannot be read ({exc})"
    else:
        if keys is not None:
            return keys
        reason = f"the keyring has no entry pleo-auth/{KEYRING_ACCOUNT}"
    raise ConfigurationError(
        f"encryption is on, but no key was found: set {KEYS_VARIABLE} (Fernet keys, "
        f"newest first, comma-separated), or {KEYS_FILE_VARIABLE} (a file of mode 0600), "
        f"or store them in the keyring as pleo-auth/{KEYRING_ACCOUNT}; {reason}"
    )
