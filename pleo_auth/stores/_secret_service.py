"""keyring's Secret Service backend on one D-Bus connection per process.

keyring's own backend opens a D-Bus connection for every call and closes it
straight after. gnome-keyring 42 to 50 aborts now and then under that churn, in
its idle handler for a property read by a client it no longer knows
("gkd_secret_service_get_pkcs11_session: assertion 'client' failed"; upstream
gnome-keyring issues 190, 196 and 199). On a desktop the daemon is then started
again with the login keyring locked, and the user is asked to unlock it. Four
processes reading in a loop for two minutes crashed it 7 times in 12,348 calls
with a connection per call, and never in 9,256 calls with one connection per
process (``python tests/support/secret_service_churn.py 120 4``).

So KeyringStore swaps keyring's stock Secret Service backend for this subclass,
which differs only in the connection: the same collection, the same item
attributes and labels, so either reads what the other wrote. Each call opens a
Secret Service session and closes it afterwards, so the daemon keeps no state of
ours between calls and a restarted daemon needs nothing from us.

The connection is this process's: after a fork the child opens its own. Calls
are serialised on it by a lock (jeepney's blocking connection is not
thread-safe). A connection that fails at the transport (the bus went away, or a
call was interrupted mid-message) is dropped; a call that found it cached retries
once on a fresh one, and if the bus is really gone that attempt reports it.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import secretstorage
from keyring.backends import SecretService
from keyring.errors import InitError, KeyringLocked, PasswordDeleteError
from secretstorage.util import DBusAddressWrapper, open_session

T = TypeVar("T")

_SESSION_INTERFACE = "org.freedesktop.Secret.Session"

#: Every live backend, to give each a fresh lock and no connection in a forked child.
_INSTANCES: weakref.WeakSet[SharedConnectionKeyring] = weakref.WeakSet()


class _Borrowed:
    """The shared connection as lent to one call: keyring's ``closing()`` is a no-op."""

    def __init__(self, connection: Any):
        self._connection = connection

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)

    def close(self) -> None:
        pass


class SharedConnectionKeyring(SecretService.Keyring):
    """keyring's ``SecretService.Keyring``, on one D-Bus connection per process."""

    #: Never one of keyring's own choices (keyring registers every subclass):
    #: KeyringStore builds it in place of the stock backend.
    viable = False

    def __init__(self, *args: Any, **kwargs: Any):
        stock: Any = super()
        stock.__init__(*args, **kwargs)
        self._reset()
        _INSTANCES.add(self)

    @classmethod
    def replacing(cls, stock: Any) -> SharedConnectionKeyring:
        """This backend with ``stock``'s settings (its collection, scheme, appid)."""
        backend = cls()
        vars(backend).update(
            {name: value for name, value in vars(stock).items() if not name.startswith("_")}
        )
        return backend

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._connection: Any = None
        self._session: Any = None

    # -- keyring's interface, serialised ----------------------------------------------

    def get_password(self, service: str, username: str) -> str | None:
        stock: Any = super()
        result: str | None = self._serialised(lambda: stock.get_password(service, username))
        return result

    def set_password(self, service: str, username: str, password: str) -> None:
        stock: Any = super()
        self._serialised(lambda: stock.set_password(service, username, password))

    def delete_password(self, service: str, username: str) -> None:
        stock: Any = super()
        self._serialised(lambda: stock.delete_password(service, username))

    def get_credential(self, service: str, username: str | None) -> Any:
        stock: Any = super()
        return self._serialised(lambda: stock.get_credential(service, username))

    def get_preferred_collection(self) -> Any:
        """The collection keyring would use, on the shared connection and a new session.

        Called by keyring's methods with the lock held.
        """
        if self._connection is None:
            self._connection = secretstorage.dbus_init()  # raises as keyring's would
        bus = _Borrowed(self._connection)
        try:
            self._session = open_session(bus)
            if hasattr(self, "preferred_collection"):
                collection = secretstorage.Collection(bus, self.preferred_collection)
            else:
                collection = secretstorage.get_default_collection(bus)
            # Its items and create_item use this session; given none, each would
            # open one of its own, left open on the daemon for as long as the
            # connection lives.
            collection.session = self._session
        except secretstorage.exceptions.SecretStorageException as exc:
            raise InitError(f"Failed to create the collection: {exc}.") from exc
        if collection.is_locked():
            collection.unlock()
            if collection.is_locked():  # the user dismissed the prompt
                raise KeyringLocked("Failed to unlock the collection!")
        return collection

    # -- the connection ---------------------------------------------------------------

    def _serialised(self, call: Callable[[], T]) -> T:
        with self._lock:
            cached = self._connection is not None
            try:
                return self._attempt(call)
            except (OSError, EOFError):
                if not cached:
                    raise
            # The cached connection broke (a bus restarted, or an earlier call was
            # interrupted mid-message): one more try, on a fresh connection.
            return self._attempt(call)

    def _attempt(self, call: Callable[[], T]) -> T:
        try:
            return call()
        except PasswordDeleteError:
            raise  # nothing to delete: the connection is fine
        except BaseException:
            self._disconnect()
            raise
        finally:
            self._close_session()

    def _close_session(self) -> None:
        session, self._session = self._session, None
        if session is None or session.object_path is None or self._connection is None:
            return
        with contextlib.suppress(Exception):  # the daemon drops it with the connection anyway
            DBusAddressWrapper(session.object_path, _SESSION_INTERFACE, self._connection).call(
                "Close", ""
            )

    def _disconnect(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close()


def _after_fork_in_child() -> None:
    # The parent's socket is shared with the child: neither may use the other's.
    # Its lock may have been held by a thread that the child does not have.
    for backend in list(_INSTANCES):
        backend._reset()


os.register_at_fork(after_in_child=_after_fork_in_child)
