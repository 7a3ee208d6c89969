"""A token store that fails on demand, for tests of what sessions do when a store fails."""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections import Counter
from collections.abc import Hashable, Iterator
from typing import Literal

from ..errors import TokenStoreError
from ..stores.base import Lease, TokenStore
from ..tokens import TokenSet

__all__ = ["FaultyStore", "StoreOperation"]

#: The store operations a :class:`FaultyStore` can fail.
StoreOperation = Literal["load", "save", "clear", "version", "lock"]

_OPERATIONS: frozenset[str] = frozenset({"load", "save", "clear", "version", "lock"})
# What happens after the operation ran is only meaningful for writes.
_AFTER_ALLOWED: frozenset[str] = frozenset({"save", "clear"})


class FaultyStore(TokenStore):
    """Wraps a real store and makes its next calls fail with :class:`TokenStoreError`.

    Everything is delegated to ``inner`` until a test arms a fault with
    :meth:`fail_next`; then the next ``count`` calls of that operation raise a
    retryable :class:`~pleo_auth.TokenStoreError`, as a full disk, a Redis blip or
    a locked keyring would::

        store = FaultyStore(FileStore(tmp_path / "tokens.json"))
        session = PleoSession(client_id, secret, store=store)
        store.fail_next("save")          # the next refresh cannot save its tokens
        store.fail_next("save", after=True)  # the write lands, its answer is lost

    A fault armed with ``after=True`` (``save`` and ``clear`` only) runs the real
    operation first and raises afterwards: the write reached the store, but the
    caller was told it failed (a Redis reply lost after the script ran).

    **Identity.** :attr:`key` is the inner store's key, so within a process a
    session over the wrapper shares its coordinator with every session over the
    same stored tokens, exactly as it would over ``inner`` itself. The coordinator
    keeps the store object of the *first* session built over those tokens: build
    every session of a process over the same wrapper, or the faults you arm may
    sit on an object no coordinator calls.

    Args:
        inner: The real store to delegate to.

    Thread safety:
        Every method may be called from any thread; the fault counters are guarded
        by a lock. After ``os.fork()`` the child gets a new lock and keeps the
        faults that were armed in the parent at the moment of the fork (call
        :meth:`clear_faults` in the child to start clean).
    """

    def __init__(self, inner: TokenStore):
        if not isinstance(inner, TokenStore):
            raise TypeError(f"FaultyStore wraps a TokenStore, not {type(inner).__name__}")
        self.inner = inner
        self._guard = threading.Lock()
        self._armed: dict[str, list[bool]] = {name: [] for name in _OPERATIONS}
        self._injected: Counter[str] = Counter()
        _INSTANCES.add(self)

    # -- control ------------------------------------------------------------------

    def fail_next(self, operation: StoreOperation, count: int = 1, *, after: bool = False) -> None:
        """Make the next ``count`` calls of ``operation`` raise :class:`TokenStoreError`.

        Faults queue up behind those already armed for the same operation.

        Args:
            operation: ``"load"``, ``"save"``, ``"clear"``, ``"version"`` or ``"lock"``
                (the lock fails as it is taken, as a lock timeout would).
            count: How many calls fail.
            after: Run the real ``save`` or ``clear`` first, then raise.

        Raises:
            ValueError: An unknown operation, a count below 1, or ``after`` for an
                operation that writes nothing.
        """
        if operation not in _OPERATIONS:
            raise ValueError(f"operation must be one of {sorted(_OPERATIONS)}, not {operation!r}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError("count must be an integer >= 1")
        if after and operation not in _AFTER_ALLOWED:
            raise ValueError("after=True applies to save and clear only")
        with self._guard:
            self._armed[operation].extend([bool(after)] * count)

    def clear_faults(self) -> None:
        """Disarm every fault not yet consumed."""
        with self._guard:
            for queue in self._armed.values():
                queue.clear()

    def pending(self, operation: StoreOperation | None = None) -> int:
        """How many armed faults wait for a call (of ``operation``, or of any)."""
        with self._guard:
            if operation is not None:
                return len(self._armed[operation])
            return sum(len(queue) for queue in self._armed.values())

    @property
    def injected(self) -> dict[str, int]:
        """How many calls of each operation have failed so far, by operation."""
        with self._guard:
            return dict(self._injected)

    def _take(self, operation: str) -> bool | None:
        """The next armed fault of ``operation``: None for none, else whether it is ``after``."""
        with self._guard:
            queue = self._armed[operation]
            if not queue:
                return None
            self._injected[operation] += 1
            return queue.pop(0)

    def _failure(self, operation: str) -> TokenStoreError:
        return TokenStoreError(
            f"injected fault: {operation} of {self.inner.describe()} failed", retryable=True
        )

    def _reset_after_fork(self) -> None:
        self._guard = threading.Lock()

    # -- the store ------------------------------------------------------------------

    def load(self) -> TokenSet | None:
        if self._take("load") is not None:
            raise self._failure("load")
        return self.inner.load()

    def save(self, tokens: TokenSet, *, replaces: TokenSet | None = None) -> None:
        after = self._take("save")
        if after is False:
            raise self._failure("save")
        self.inner.save(tokens, replaces=replaces)
        if after:
            raise self._failure("save")

    def clear(self, *, only: TokenSet | None = None) -> None:
        after = self._take("clear")
        if after is False:
            raise self._failure("clear")
        self.inner.clear(only=only)
        if after:
            raise self._failure("clear")

    # Never failed by an injected fault: the faults keep their meaning (and the
    # model test its counts) with stores that tell a loss from a logout.
    def lost(self) -> bool:
        return self.inner.lost()

    def restore(self, tokens: TokenSet) -> None:
        self.inner.restore(tokens)

    def version(self) -> Hashable:
        if self._take("version") is not None:
            raise self._failure("version")
        return self.inner.version()

    @contextlib.contextmanager
    def lock(self, *, timeout: float, lease: float) -> Iterator[Lease]:
        if self._take("lock") is not None:
            raise self._failure("lock")
        with self.inner.lock(timeout=timeout, lease=lease) as granted:
            yield granted

    @property
    def fenced(self) -> bool:  # type: ignore[override]
        """As the inner store's: the wrapper writes through it."""
        return self.inner.fenced

    @property
    def key(self) -> Hashable:
        return self.inner.key

    @property
    def spec(self) -> str | None:
        return self.inner.spec

    def describe(self) -> str:
        return self.inner.describe()


_INSTANCES: weakref.WeakSet[FaultyStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for store in list(_INSTANCES):
        store._reset_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
