"""Imports made ahead of time, and forks that wait for the ones in progress.

``os.fork()`` copies the process but only the thread that called it. A module
that another thread is in the middle of importing stays locked in the child, by
a thread that does not exist there, and the child's first import of that module
hangs for ever. ``gunicorn --preload`` forks its workers right after the app
module built its :class:`~pleo_auth.PleoSession`: exactly when the session's
timer thread used to import what a refresh needs.

So no thread of ours imports anything lazily where a fork can catch it:

* :func:`warm_up` imports what building a session and refreshing import lazily,
  on the thread that builds the session, before its timer starts: the fork of
  ``--preload`` comes from that same thread, so it cannot land inside. It costs
  the first constructor about 20 ms, once per process (``backoff`` brings in
  ``asyncio``), which the timer thread used to pay.
* :func:`warm_up_store` is the timer thread's first act: it reads the store once,
  so that a backend that loads itself on first use (keyring finds its backends:
  dozens of imports and a D-Bus connection) does so inside a warm-up.
* A fork on any thread waits, at most :data:`FORK_WAIT` seconds, until no other
  thread is in a warm-up; no warm-up starts or ends until the fork is done.
* While a fork waits, the warm-up goes on importing. CPython then runs the
  after-fork handlers those imports register, but not their before-fork
  handlers, so nothing imported in a warm-up may register a pair. filelock does,
  so it is imported with this module: about 25 ms more for the first use of
  ``pleo_auth.PleoSession``. ``import pleo_auth`` itself costs what it did.

Thread safety:
    Every function may be called from any thread, and a fork may come at any
    moment. ``_guard`` is never held across an import or any I/O, except by the
    forking thread, from its wait's end until the fork is done.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

# Not in warm_up(): a fork may wait for a warm-up while it imports, and CPython then
# runs the after-fork handlers registered meanwhile but not their before-fork
# handler. filelock registers a pair, and its child hung on the first lock.
import filelock  # noqa: F401  # FileStore's and KeyringStore's lock

if TYPE_CHECKING:
    from .stores.base import TokenStore

logger = logging.getLogger(__name__)

#: The longest a fork waits for a warm-up on another thread. An import takes
#: milliseconds; a warm-up still running after this is stuck in the store's I/O
#: (a keyring that does not answer), where a fork leaves no import lock behind.
FORK_WAIT = 10.0

_guard = threading.Condition(threading.Lock())
_warming: dict[int, int] = {}  # thread ident -> depth of its nested warm-ups
_imported = False


def warm_up() -> None:
    """Import every module that building a session or refreshing imports lazily.

    Fast after the first call.
    """
    global _imported
    if _imported:
        return
    with _warming_up():
        import encodings.idna  # noqa: F401  # getaddrinfo() encodes a host name with it
        import netrc  # noqa: F401  # requests reads ~/.netrc when a request has no auth
        import shlex  # noqa: F401  # the session's login hint

        import backoff  # noqa: F401  # the token endpoint's retries

        from .stores import keyring  # noqa: F401  # the default store, and the login hint
    _imported = True


def warm_up_store(store: TokenStore) -> None:
    """Warm up, then read ``store`` once, inside a warm-up that a fork waits for.

    Failures are left for the caller's own first read to report.
    """
    with _warming_up():
        warm_up()
        try:
            store.version()
            store.load()
        except Exception as exc:
            logger.debug("warming up %s failed: %s", store.describe(), type(exc).__name__)


@contextlib.contextmanager
def _warming_up() -> Iterator[None]:
    me = threading.get_ident()
    with _guard:  # blocks while a fork is under way
        _warming[me] = _warming.get(me, 0) + 1
    try:
        yield
    finally:
        with _guard:
            depth = _warming.pop(me) - 1
            if depth:
                _warming[me] = depth
            else:
                _guard.notify_all()


def _others_warming() -> bool:
    me = threading.get_ident()
    return any(ident != me for ident in _warming)


def _before_fork() -> None:
    # Returns holding _guard: one of the _after_fork functions lets go of it.
    _guard.acquire()
    if not _others_warming():
        return
    logger.debug("fork waits for a warm-up on another thread to finish")
    deadline = time.monotonic() + FORK_WAIT
    while _others_warming():
        left = deadline - time.monotonic()
        if left <= 0:
            logger.warning(
                "forking while another thread is still warming up after %.0fs; "
                "the child may hang if it was importing",
                FORK_WAIT,
            )
            return
        _guard.wait(left)


def _after_fork_in_parent() -> None:
    _guard.release()


def _after_fork_in_child() -> None:
    global _guard, _warming
    # Only this thread survived: forget the others' warm-ups, keep its own.
    me = threading.get_ident()
    _warming = {me: _warming[me]} if me in _warming else {}
    _guard = threading.Condition(threading.Lock())


os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)
