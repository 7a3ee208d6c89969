"""The contract every :class:`~pleo_auth.TokenStore` honours, as one test class
that each backend's tests subclass (keyring's ``keyring.testing.backend`` is the model).

A store written outside pleo-auth gets the whole suite with one fixture::

    import pytest
    from pleo_auth.testing import TokenStoreContract

    class TestMyStore(TokenStoreContract):
        @pytest.fixture
        def make_store(self, tmp_path):
            return lambda: MyStore(tmp_path / "tokens")

``make_store`` returns a callable; every call gives a store over the SAME stored
tokens: a fresh handle where the backend can have two (as two processes would),
else the same object. The class name does not start with ``Test``, so pytest
collects it only through its subclasses. A store that cannot take this many
racing calls in good time lowers :attr:`TokenStoreContract.racing_saves` and
:attr:`TokenStoreContract.increments_per_thread`.

This module imports pytest, which pleo-auth does not depend on: it is loaded only
when :class:`TokenStoreContract` is first read from :mod:`pleo_auth.testing`.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Hashable

import pytest

from pleo_auth import Lease, TokenSet, TokenStore, TokenStoreError

__all__ = ["MakeStore", "TokenStoreContract", "new_tokens"]

#: What a subclass's ``make_store`` fixture returns: each call gives a handle on the
#: same stored tokens.
MakeStore = Callable[[], TokenStore]

_serial = itertools.count(1)


def new_tokens(tag: str | None = None, expires_at: float = 2_000_000_000.0) -> TokenSet:
    """A distinct TokenSet for store tests; its access and refresh tokens share one tag.

    Args:
        tag: Ends both tokens; a fresh serial number when omitted.
        expires_at: The tokens' expiry, as a UNIX time.

    Returns:
        Tokens that no other call returns, unless it was given the same tag.
    """
    tag = tag or f"{next(_serial):06d}"
    return TokenSet(
        access_token=f"at_contract_{tag}",
        refresh_token=f"rt_contract_{tag}",
        expires_at=expires_at,
        scope="users:read",
        issued_at=expires_at - 900.0,
    )


class TokenStoreContract:
    """Tests that hold for every :class:`~pleo_auth.TokenStore`."""

    #: Seconds a thread that should stay blocked is watched before the test moves on.
    #: A correct store never wakes it, so this bounds only how hard a bug is looked for.
    blocked_watch = 0.3
    #: Saves in the atomicity race, and lock-guarded increments per thread (of six)
    #: in the read-modify-write race. A store whose calls cost milliseconds (a
    #: real keyring daemon) runs fewer of each.
    racing_saves = 100
    increments_per_thread = 10

    @pytest.fixture
    def make_store(self) -> MakeStore:
        raise NotImplementedError("subclasses override the make_store fixture")

    @pytest.fixture
    def store(self, make_store: MakeStore) -> TokenStore:
        return make_store()

    # -- load, save, clear ------------------------------------------------------

    def test_load_returns_none_when_nothing_is_stored(self, store: TokenStore) -> None:
        assert store.load() is None

    def test_save_then_load_returns_equal_tokens(self, store: TokenStore) -> None:
        tokens = new_tokens()
        store.save(tokens)
        assert store.load() == tokens

    def test_save_keeps_every_field(self, store: TokenStore) -> None:
        tokens = TokenSet("at_f", "rt_f", 1234.5, "Bearer", "users:read cards:read", 334.5)
        store.save(tokens)
        loaded = store.load()
        assert loaded is not None
        assert loaded.to_dict() == tokens.to_dict()

    def test_save_replaces_both_tokens_together(self, store: TokenStore) -> None:
        first, second = new_tokens(), new_tokens()
        store.save(first)
        store.save(second, replaces=first)
        assert store.load() == second

    def test_another_handle_sees_saved_tokens(self, make_store: MakeStore) -> None:
        tokens = new_tokens()
        make_store().save(tokens)
        assert make_store().load() == tokens

    def test_clear_removes_the_tokens(self, store: TokenStore) -> None:
        store.save(new_tokens())
        store.clear()
        assert store.load() is None

    def test_clear_on_an_empty_store_leaves_it_empty(self, store: TokenStore) -> None:
        store.clear()
        assert store.load() is None

    def test_clear_only_the_stored_tokens_clears_them(self, store: TokenStore) -> None:
        tokens = new_tokens()
        store.save(tokens)
        store.clear(only=tokens)
        assert store.load() is None

    def test_clear_only_other_tokens_keeps_the_stored_ones(self, store: TokenStore) -> None:
        tokens = new_tokens()
        store.save(tokens)
        store.clear(only=new_tokens())
        assert store.load() == tokens

    # -- version ------------------------------------------------------------------

    def test_version_is_hashable_and_stable_without_changes(self, store: TokenStore) -> None:
        store.save(new_tokens())
        first = store.version()
        hash(first)
        store.load()
        assert store.version() == first

    def test_version_changes_on_every_save(self, store: TokenStore) -> None:
        versions = [store.version()]
        previous = None
        for _ in range(5):
            tokens = new_tokens()
            store.save(tokens, replaces=previous)
            previous = tokens
            versions.append(store.version())
        assert all(a != b for a, b in itertools.pairwise(versions))

    def test_version_changes_on_clear(self, store: TokenStore) -> None:
        store.save(new_tokens())
        before = store.version()
        store.clear()
        assert store.version() != before

    def test_version_change_is_seen_by_another_handle(self, make_store: MakeStore) -> None:
        watcher, writer = make_store(), make_store()
        writer.save(new_tokens())
        before = watcher.version()
        writer.save(new_tokens())
        assert watcher.version() != before

    # -- fenced saves -------------------------------------------------------------

    def test_fenced_save_refuses_when_the_stored_tokens_are_not_the_replaced_ones(
        self, store: TokenStore
    ) -> None:
        if not store.fenced:
            pytest.skip(f"{type(store).__name__} does not fence saves")
        stored = new_tokens()
        store.save(stored)
        with pytest.raises(TokenStoreError):
            store.save(new_tokens(), replaces=new_tokens())
        assert store.load() == stored

    def test_fenced_save_accepts_the_replaced_tokens(self, store: TokenStore) -> None:
        if not store.fenced:
            pytest.skip(f"{type(store).__name__} does not fence saves")
        stored, successor = new_tokens(), new_tokens()
        store.save(stored)
        store.save(successor, replaces=stored)
        assert store.load() == successor

    # -- the lock -------------------------------------------------------------------

    def test_lock_grants_a_lease_that_has_not_run_out(self, store: TokenStore) -> None:
        with store.lock(timeout=5.0, lease=30.0) as lease:
            assert isinstance(lease, Lease)
            assert lease.deadline is None or lease.deadline > time.monotonic()

    def test_lock_held_by_one_thread_times_out_another_with_retryable_error(
        self, make_store: MakeStore
    ) -> None:
        holder, contender = make_store(), make_store()
        outcome: list[BaseException | None] = []
        with holder.lock(timeout=5.0, lease=30.0):

            def contend() -> None:
                try:
                    with contender.lock(timeout=0.2, lease=30.0):
                        outcome.append(None)
                except BaseException as exc:
                    outcome.append(exc)

            thread = threading.Thread(target=contend)
            thread.start()
            thread.join(30)
        assert len(outcome) == 1
        error = outcome[0]
        assert isinstance(error, TokenStoreError)
        assert error.retryable is True

    def test_lock_waiter_gets_the_lock_only_when_the_holder_lets_go(
        self, make_store: MakeStore
    ) -> None:
        holder, waiter = make_store(), make_store()
        acquired = threading.Event()

        def wait_for_lock() -> None:
            with waiter.lock(timeout=30.0, lease=30.0):
                acquired.set()

        with holder.lock(timeout=5.0, lease=30.0):
            thread = threading.Thread(target=wait_for_lock)
            thread.start()
            assert not acquired.wait(self.blocked_watch)
        assert acquired.wait(30)
        thread.join(30)

    def test_lock_is_released_when_its_block_raises(self, store: TokenStore) -> None:
        with contextlib.suppress(KeyError), store.lock(timeout=5.0, lease=30.0):
            raise KeyError("boom")
        with store.lock(timeout=0.5, lease=30.0) as lease:
            assert isinstance(lease, Lease)

    def test_lock_serialises_read_modify_write_across_threads(self, make_store: MakeStore) -> None:
        make_store().save(new_tokens("count-0", expires_at=0.0))
        threads, rounds = 6, self.increments_per_thread
        barrier = threading.Barrier(threads)
        errors: list[BaseException] = []

        def bump() -> None:
            store = make_store()
            try:
                barrier.wait()
                for _ in range(rounds):
                    with store.lock(timeout=60.0, lease=60.0):
                        current = store.load()
                        assert current is not None
                        count = int(current.expires_at) + 1
                        store.save(new_tokens(f"count-{count}", expires_at=count), replaces=current)
            except BaseException as exc:
                errors.append(exc)

        workers = [threading.Thread(target=bump) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(120)
        assert errors == []
        final = make_store().load()
        assert final is not None
        assert final.expires_at == threads * rounds

    # -- atomicity ------------------------------------------------------------------

    def test_concurrent_readers_see_the_old_or_the_new_pair_never_none_or_a_mix(
        self, make_store: MakeStore
    ) -> None:
        """A save is atomic for readers: pleo_auth reads without the lock between refreshes."""
        make_store().save(new_tokens("pair-0"))
        stop = threading.Event()
        missing = [0]
        torn: list[tuple[str, str]] = []
        errors: list[BaseException] = []
        reads = [0]

        def read() -> None:
            store = make_store()
            try:
                while not stop.is_set():
                    tokens = store.load()
                    reads[0] += 1
                    if tokens is None:
                        missing[0] += 1
                        continue
                    access_tag = tokens.access_token.removeprefix("at_contract_")
                    refresh_tag = tokens.refresh_token.removeprefix("rt_contract_")
                    if access_tag != refresh_tag:
                        torn.append((access_tag, refresh_tag))
            except BaseException as exc:
                errors.append(exc)

        readers = [threading.Thread(target=read) for _ in range(3)]
        for reader in readers:
            reader.start()
        writer = make_store()
        try:
            previous = writer.load()
            for n in range(1, self.racing_saves + 1):
                with writer.lock(timeout=30.0, lease=30.0):
                    tokens = new_tokens(f"pair-{n}")
                    writer.save(tokens, replaces=previous)
                    previous = tokens
        finally:
            stop.set()
            for reader in readers:
                reader.join(60)
        assert errors == []
        assert reads[0] > 0
        assert missing[0] == 0, f"{missing[0]} of {reads[0]} reads found no tokens mid-save"
        assert torn == []

    # -- secrets --------------------------------------------------------------------

    def test_repr_and_describe_never_show_a_token(self, store: TokenStore) -> None:
        tokens = new_tokens()
        store.save(tokens)
        for text in (repr(store), str(store), store.describe()):
            assert tokens.access_token not in text
            assert tokens.refresh_token not in text

    # -- identity -------------------------------------------------------------------

    def test_handles_over_the_same_tokens_have_equal_hashable_keys(
        self, make_store: MakeStore
    ) -> None:
        first, second = make_store(), make_store()
        key: Hashable = first.key
        hash(key)
        assert key == second.key
