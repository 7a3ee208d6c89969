"""Which keyring backend a KeyringStore uses, whether it may, and what its errors mean.

keyring picks a backend by itself; this module refuses the ones that keep nothing
or keep plain text, tells where a backend keeps its items, and turns whatever a
backend raises into a :class:`~pleo_auth.TokenStoreError` that names no stored data.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable
from typing import Any, NoReturn

from ..errors import StoreUnusable, TokenStoreError

logger = logging.getLogger("pleo_auth.stores.keyring")

#: Backends that keep nothing or keep it unencrypted, by the class's module and name.
_REFUSED = {
    ("keyring.backends.fail", "Keyring"): "keyring found no usable backend on this machine",
    ("keyring.backends.null", "Keyring"): (
        "keyring's default backend is its null backend, which keeps nothing"
    ),
    ("keyrings.alt.file", "PlaintextKeyring"): (
        "keyring's default backend is keyrings.alt's PlaintextKeyring, an unencrypted file"
    ),
}

_STOCK_SECRET_SERVICE = ("keyring.backends.SecretService", "Keyring")

_ALTERNATIVES = (
    "Use a file (--store file:PATH, FileStore) or Redis (--store redis://HOST:PORT/DB, "
    "RedisStore), or install and unlock a keyring (gnome-keyring or KWallet on Linux)."
)


def backend_place(backend: Any) -> Hashable:
    """Where a keyring backend keeps its items, as far as this process can tell: two
    backend objects with equal places reach the same items. Objects of keyring's
    Secret Service backend on one session bus do, and file backends on one file do;
    any other backend object is a place of its own (an in-memory one certainly is).
    A wrapper may say where its items are with a ``pleo_auth_place`` attribute."""
    place = getattr(backend, "pleo_auth_place", None)
    if place is not None:
        return ("wrapped", place)
    lineage = {f"{kind.__module__}.{kind.__qualname__}" for kind in type(backend).__mro__}
    if "keyring.backends.SecretService.Keyring" in lineage:  # no import: it loads D-Bus
        return ("secret-service", os.environ.get("DBUS_SESSION_BUS_ADDRESS"))
    where = getattr(backend, "file_path", None)
    if isinstance(where, str):
        return ("file", type(backend).__qualname__, os.path.realpath(where))
    return ("object", id(backend))  # the registry keeps the store, so the id stays unique


def _class_names(obj: object) -> set[tuple[str, str]]:
    return {(cls.__module__, cls.__name__) for cls in type(obj).__mro__}


def _chain_members(backend: Any) -> list[Any] | None:
    """The backends of keyring's chainer, best first, or None for any other backend."""
    if ("keyring.backends.chainer", "ChainerBackend") not in _class_names(backend):
        return None
    return list(backend.backends)


def _on_one_connection(backend: Any) -> Any:
    """keyring's stock Secret Service backend, swapped for one that keeps its connection."""
    if (type(backend).__module__, type(backend).__qualname__) != _STOCK_SECRET_SERVICE:
        return backend
    try:
        from ._secret_service import SharedConnectionKeyring
    except ImportError:  # no secretstorage (not Linux): keyring's backend reports that itself
        return backend
    return SharedConnectionKeyring.replacing(backend)


def _writes_to_windows_vault(backend: Any) -> bool:
    members = _chain_members(backend)
    if members is not None:
        return any(_writes_to_windows_vault(member) for member in members)
    return ("keyring.backends.Windows", "WinVaultKeyring") in _class_names(backend)


def _configured_by() -> str:
    """Where keyring's choice came from, for the message."""
    if os.environ.get("PYTHON_KEYRING_BACKEND"):
        return " (chosen by PYTHON_KEYRING_BACKEND)"
    try:
        import keyring.core

        locate: Any = keyring.core._config_path  # private, so looked up defensively
        path = locate()
        if path.exists() and "default-keyring" in path.read_text(encoding="utf-8"):
            return f" (chosen by {path})"
    except Exception:  # keyring internals moved: the message only loses a detail
        logger.debug("could not locate keyring's configuration file", exc_info=True)
    return ""


def _usable_default_backend() -> Any:
    """keyring's default backend, unless it keeps nothing or keeps it unencrypted.

    Raises:
        TokenStoreError: It is unusable (never retryable: only installing,
            configuring or unlocking a keyring helps).
    """
    import keyring

    try:
        chosen = keyring.get_keyring()
    except Exception as exc:
        raise StoreUnusable(
            f"cannot load the keyring backend{_configured_by()}: {_describe(exc)}",
            fix=_ALTERNATIVES,
        ) from exc
    members = _chain_members(chosen)
    if members is not None:
        if not members:
            raise StoreUnusable(
                "keyring found no usable backend on this machine", fix=_ALTERNATIVES
            )
        chosen = members[0]  # where keyring's chainer writes
    names = _class_names(chosen)
    for name, reason in _REFUSED.items():
        if name in names:
            raise StoreUnusable(
                f"{reason}{_configured_by()}; pleo-auth does not keep tokens there",
                fix=_ALTERNATIVES,
            )
    return chosen


def _describe(exc: Exception) -> str:
    """``Type: first line of the message``, on one printable line of bounded length."""
    first_line = str(exc).strip().split("\n", 1)[0][:200]
    shown = "".join(char if char.isprintable() else "?" for char in first_line)
    return f"{type(exc).__name__}: {shown}" if shown else type(exc).__name__


#: Exceptions about the keyring's surroundings (its service, bus, files, lock
#: state), by class name anywhere in their MRO. Their messages name no stored data.
_ENVIRONMENT_ERRORS = {"KeyringError", "OSError", "SecretStorageException", "DBusErrorResponse"}

_UNREACHABLE = {
    "InitError",
    "SecretServiceNotAvailableException",
    "DBusErrorResponse",
    "ConnectionError",
    "TimeoutError",
}


def _raise_backend_error(action: str, exc: Exception) -> NoReturn:
    """Raise a TokenStoreError for whatever a keyring backend raised; never a token in it.

    An error about the keyring's surroundings is chained, its first line in the
    message. Any other (a file backend's parser or decoder choking on its file)
    is named by type only and not chained: its message or repr can quote what
    the keyring holds.
    """
    names = {name for _, name in _class_names(exc)}
    if not names & _ENVIRONMENT_ERRORS:
        raise TokenStoreError(
            f"cannot {action} the keyring: its backend failed with {type(exc).__name__} "
            "(message withheld: it may quote what the keyring holds). Check or delete the "
            "keyring's storage, or run `pleo-auth logout` and log in again"
        ) from None
    detail = _describe(exc)
    if "KeyringLocked" in names:
        error = TokenStoreError(
            f"cannot {action} the keyring: it is locked ({detail}). Unlock it (log in to "
            "the desktop session, or unlock the login keyring with your keyring manager) "
            "and try again",
            retryable=True,
        )
    elif "NoKeyringError" in names:
        error = TokenStoreError(f"cannot {action} the keyring: it has no backend. {_ALTERNATIVES}")
    elif names & _UNREACHABLE:
        error = TokenStoreError(
            f"cannot {action} the keyring: its service is not reachable ({detail}). Check that "
            "the keyring daemon and, on Linux, the D-Bus session (DBUS_SESSION_BUS_ADDRESS) "
            "are running",
            retryable=True,
        )
    else:
        error = TokenStoreError(f"cannot {action} the keyring: {detail}")
    raise error from exc
