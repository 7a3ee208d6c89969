"""Tokens kept in this process's memory."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Hashable, Iterator

from ..errors import TokenStoreError
from ..tokens import TokenSet
from .base import Lease, TokenStore

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
    """

    fenced = True

    def __init__(self, tokens: TokenSet | None = None):
        self._tokens = tokens
        self._version = 0
        self._mutex = threading.Lock()
        self._refresh_lock = threading.Lock()

    def load(self) -> TokenSet | None:
        with self._mutex:
            return self._tokens

    def save(self, tokens: TokenSet, *, replaces: TokenSet | None = None) -> None:
        with self._mutex:
            if replaces is not None and self._tokens != replaces:
                raise TokenStoreError("the stored tokens changed while refreshing; not saved")
            self._tokens = tokens
            self._version += 1

    def clear(self, *, only: TokenSet | None = None) -> None:
        with self._mutex:
            if only is not None and self._tokens != only:
                return
            self._tokens = None
            self._version += 1

    def version(self) -> Hashable:
        return self._version

    @contextlib.contextmanager
    def lock(self, *, timeout: float, lease: float) -> Iterator[Lease]:
        if not self._refresh_lock.acquire(timeout=max(timeout, 0.0)):
            raise TokenStoreError(
                f"timed out after {timeout:.1f}s waiting for the refresh lock", retryable=True
            )
        try:
            yield Lease()
        finally:
            self._refresh_lock.release()

    def describe(self) -> str:
        return "in memory"
