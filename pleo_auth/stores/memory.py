"""Tokens kept in this process's memory."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Hashable
from typing import TYPE_CHECKING

from ..errors import TokenStoreError
from ..tokens import TokenSet
from .base import Lease, TokenStore
from .locks import ThreadRefreshLock

if TYPE_CHECKING:
    from .family import MemoryStoreFamily

__all__ = ["MemoryStore"]


class MemoryStore(TokenStore):
    """Keeps tokens in memory, for tests and short-lived scripts.

    The tokens die with the process, and Pleo has rotated the refresh token you
    started from, so a script that uses this store must be given fresh tokens
    (``tokens=``) every run. Prefer :class:`~pleo_auth.FileStore` or
    :class:`~pleo_auth.KeyringStore` for anything that runs twice.

    Thread safety:
        Every method may be called from any thread. The lock serialises refreshes
        within this process only.

    Processes:
        A MemoryStore cannot coordinate across processes. After ``os.fork()``
        (``multiprocessing``'s fork start method, ``gunicorn --preload``), the
        child's store would be a copy: a refresh in the child would spend the
        refresh token its parent still holds, and the parent's next refresh would
        get the grant revoked. So in a forked child every method raises a
        :class:`~pleo_auth.TokenStoreError` (not retryable) that says so and
        names :class:`~pleo_auth.FileStore` and :class:`~pleo_auth.RedisStore`,
        the stores to share a grant between processes with; it never waits on a
        lock a parent thread held at the fork. A session in the child therefore
        never refreshes; it fails at the store, at the latest when its access
        token is due. The process that made the store keeps using it as before,
        and a MemoryStore made in the child works in the child.
    """

    fenced = True

    def __init__(self, tokens: TokenSet | None = None):
        self._tokens = tokens
        self._version = 0
        self._mutex = threading.Lock()
        self.refresh_lock = ThreadRefreshLock()
        self._pid = os.getpid()

    @staticmethod
    def family() -> MemoryStoreFamily:
        """Grants of many Pleo companies in memory, one MemoryStore each: a
        :class:`~pleo_auth.stores.family.MemoryStoreFamily`."""
        from .family import MemoryStoreFamily

        return MemoryStoreFamily()

    def _check_process(self) -> None:
        """Refuse in a forked child, before any lock: one held at the fork stays held."""
        pid = os.getpid()
        if pid != self._pid:
            raise TokenStoreError(
                f"MemoryStore cannot be shared across processes: this process ({pid}) is "
                f"a fork of the one that made the store ({self._pid}), and its copy of the "
                "tokens would spend a refresh token the other process holds too. Use "
                "FileStore or RedisStore to share the tokens between processes, or make "
                "the session and its MemoryStore in this process, after the fork"
            )

    def load(self) -> TokenSet | None:
        self._check_process()
        with self._mutex:
            return self._tokens

    def save(self, tokens: TokenSet, *, replaces: TokenSet | None = None) -> None:
        self._check_process()
        with self._mutex:
            if replaces is not None and self._tokens != replaces:
                raise TokenStoreError("the stored tokens changed while refreshing; not saved")
            self._tokens = tokens
            self._version += 1

    def clear(self, *, only: TokenSet | None = None) -> None:
        self._check_process()
        with self._mutex:
            if only is not None and self._tokens != only:
                return
            self._tokens = None
            self._version += 1

    def version(self) -> Hashable:
        self._check_process()
        return self._version

    def lock(self, *, timeout: float, lease: float) -> contextlib.AbstractContextManager[Lease]:
        self._check_process()  # before the lock: one held at the fork stays held
        return super().lock(timeout=timeout, lease=lease)

    def describe(self) -> str:
        return "memory"  # "tokens in memory", never "in in memory"
