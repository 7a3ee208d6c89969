"""Helpers the Integration tests share: grants made at the emulator, a family that
counts what its stores are asked, a family that records the order of refresh
locks, and a way to know the scheduler of a FakeClock has nothing left to do."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Hashable, Iterator
from typing import Any

from pleo_auth import Company, Integration, MemoryStore, TokenSet, TokenStore
from pleo_auth._clock import Clock, FakeClock
from pleo_auth.stores.base import Lease
from pleo_auth.stores.family import TokenStoreFamily
from pleo_auth.testing import Emulator, settle


def new_companies(count: int) -> list[str]:
    """``count`` fresh company ids, as Pleo writes them (lower-case UUIDs)."""
    return [str(uuid.uuid4()) for _ in range(count)]


def grant(emu: Emulator, company: str | Company, *, now: float, age: float = 0.0) -> TokenSet:
    """A new grant of ``company`` at the emulator, issued ``age`` seconds before ``now``
    (so an ``age`` beyond the emulator's lifetime gives an expired access token)."""
    return TokenSet.from_response(emu.issue_tokens(company=company), now=now - age)


def integration(emu: Emulator, family: TokenStoreFamily, **kwargs: Any) -> Integration:
    """An Integration with the emulator's client, endpoints and ``family``."""
    return Integration(
        emu.client_id,
        emu.client_secret,
        store=family,
        token_url=emu.token_url,
        api_url=emu.api_url,
        **kwargs,
    )


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``predicate`` until it holds; False if ``timeout`` real seconds pass first.

    For state that has no condition to wait on (a thread reaching a lock); the
    bound is a timeout, never a guess of how long the machine takes."""
    give_up_at = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > give_up_at:
            return False
        time.sleep(0.001)
    return True


def settled(clock: Clock, timeout: float = 10.0) -> bool:
    """Wait until the scheduler of ``clock`` has nothing due and runs no tick:
    everything the last ``advance`` made due has been done. False on timeout."""
    return settle(clock, timeout)


def advance(clock: FakeClock, seconds: float, step: float) -> Iterator[float]:
    """Move ``clock`` on by ``seconds`` in steps of ``step``, settling the scheduler
    after each; yields the time after each step."""
    end = clock.time() + seconds
    while clock.time() < end - 1e-9:
        clock.advance(min(step, end - clock.time()))
        assert settled(clock), "the scheduler did not settle"
        yield clock.time()


def library_threads() -> list[str]:
    """The names of pleo_auth's own threads (the emulator's are the test's)."""
    return [
        t.name
        for t in threading.enumerate()
        if t.name.startswith("pleo-auth-") and not t.name.startswith("pleo-auth-emulator")
    ]


# -- families that watch their stores -------------------------------------------------


class _CountingStore(MemoryStore):
    def __init__(self, family: CountingFamily, company: Company):
        super().__init__()
        self._family = family
        self._company = company

    def _count(self, operation: str) -> None:
        with self._family.guard:
            self._family.calls[operation] += 1
            if operation == "lock":
                self._family.lock_order.append(self._company)

    def load(self) -> TokenSet | None:
        self._count("load")
        return super().load()

    def save(self, tokens: TokenSet, *, replaces: TokenSet | None = None) -> None:
        self._count("save")
        super().save(tokens, replaces=replaces)

    def clear(self, *, only: TokenSet | None = None) -> None:
        self._count("clear")
        super().clear(only=only)

    def version(self) -> Hashable:
        self._count("version")
        return super().version()

    @contextlib.contextmanager
    def lock(self, *, timeout: float, lease: float) -> Iterator[Lease]:
        self._count("lock")
        with super().lock(timeout=timeout, lease=lease) as held:
            yield held


class CountingFamily(TokenStoreFamily):
    """A family of MemoryStores that counts every call its stores get (``calls``),
    and the order in which companies took their refresh locks (``lock_order``)."""

    def __init__(self) -> None:
        self.guard = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.lock_order: list[Company] = []
        self.built = 0
        self._stores: dict[Company, _CountingStore] = {}

    def build_store(self, company: Company) -> TokenStore:
        with self.guard:
            self.built += 1
            store = self._stores.get(company)
            if store is None:
                store = self._stores[company] = _CountingStore(self, company)
            return store

    def companies(self) -> list[Company]:
        with self.guard:
            stores = sorted(self._stores.items())
        return [company for company, store in stores if MemoryStore.load(store) is not None]

    def io(self) -> int:
        """Calls of the stores that would touch a real store's medium."""
        with self.guard:
            return sum(self.calls.values())


class LockWatch(TokenStoreFamily):
    """Another family's stores, counting the refresh locks asked of them (``locks``)."""

    def __init__(self, inner: TokenStoreFamily):
        self.inner = inner
        self.locks = 0
        self._guard = threading.Lock()

    def build_store(self, company: Company) -> TokenStore:
        store = self.inner.build_store(company)
        original = store.lock

        def lock(*, timeout: float, lease: float) -> contextlib.AbstractContextManager[Lease]:
            with self._guard:
                self.locks += 1
            return original(timeout=timeout, lease=lease)

        store.lock = lock  # type: ignore[method-assign]
        return store

    def companies(self) -> list[Company]:
        return self.inner.companies()

    def remove(self, company: Company | str) -> None:
        self.inner.remove(company)


class HeldTokenRequests:
    """A token request hook (``Emulator.set_token_request_hook``) that holds every
    token request until the test opens it; ``inside`` counts those held now."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.inside = 0
        self._open = False

    def __call__(self, grant_type: str | None) -> None:
        with self._cond:
            self.inside += 1
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._open, 30)
            self.inside -= 1

    def wait_inside(self, count: int) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.inside >= count, 10)

    def open(self) -> None:
        with self._cond:
            self._open = True
            self._cond.notify_all()
