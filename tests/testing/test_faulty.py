"""FaultyStore: a real store whose next calls fail on demand (pleo_auth/testing/_faulty.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pleo_auth import FileStore, MemoryStore, TokenStoreError
from pleo_auth.testing import FaultyStore, MakeStore, TokenStoreContract, new_tokens


class TestFaultyStoreWithoutFaults(TokenStoreContract):
    """Disarmed, the wrapper is the store it wraps: the whole contract holds."""

    @pytest.fixture
    def make_store(self, tmp_path: Path) -> MakeStore:
        return lambda: FaultyStore(FileStore(tmp_path / "tokens.json"))


@pytest.fixture
def inner(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "tokens.json")


@pytest.mark.parametrize("operation", ["load", "version", "clear"])
def test_an_armed_call_fails_count_times_then_reaches_the_store(
    inner: FileStore, operation: str
) -> None:
    store = FaultyStore(inner)
    store.save(new_tokens())
    store.fail_next(operation, count=2)  # type: ignore[arg-type]
    for _ in range(2):
        with pytest.raises(TokenStoreError, match="injected fault") as caught:
            getattr(store, operation)()
        assert caught.value.retryable is True
    getattr(store, operation)()  # the third call is the store's own
    assert store.injected == {operation: 2}
    assert store.pending() == 0


def test_a_failed_save_writes_nothing(inner: FileStore) -> None:
    old, new = new_tokens(), new_tokens()
    store = FaultyStore(inner)
    store.save(old)
    store.fail_next("save")
    with pytest.raises(TokenStoreError):
        store.save(new, replaces=old)
    assert inner.load() == old


def test_a_save_that_landed_raises_after_writing(inner: FileStore) -> None:
    old, new = new_tokens(), new_tokens()
    store = FaultyStore(inner)
    store.save(old)
    store.fail_next("save", after=True)
    with pytest.raises(TokenStoreError):
        store.save(new, replaces=old)
    assert inner.load() == new


def test_a_failed_lock_is_never_taken(inner: FileStore) -> None:
    store = FaultyStore(inner)
    store.fail_next("lock")
    with pytest.raises(TokenStoreError), store.lock(timeout=1, lease=1):
        pytest.fail("the block ran without the lock")
    # Not held: the inner store's lock is free at once.
    with inner.lock(timeout=0, lease=1):
        pass


def test_faults_of_one_operation_leave_the_others_alone(inner: FileStore) -> None:
    store = FaultyStore(inner)
    store.fail_next("save")
    assert store.load() is None
    assert store.version() == inner.version()
    assert store.pending("save") == 1


def test_clear_faults_disarms_everything(inner: FileStore) -> None:
    store = FaultyStore(inner)
    store.fail_next("save", count=3)
    store.fail_next("lock")
    store.clear_faults()
    assert store.pending() == 0
    tokens = new_tokens()
    store.save(tokens)
    assert store.load() == tokens


def test_it_has_the_identity_of_the_store_it_wraps(inner: FileStore) -> None:
    """Sessions over the wrapper share a coordinator with sessions over the same tokens."""
    store = FaultyStore(inner)
    assert store.key == FileStore(inner.path).key
    assert store.spec == inner.spec
    assert store.describe() == inner.describe()
    assert store.fenced is True
    memory = MemoryStore()
    assert FaultyStore(memory).key == memory.key


@pytest.mark.parametrize(
    ("operation", "count", "after"),
    [("nothing", 1, False), ("save", 0, False), ("load", 1, True), ("lock", 1, True)],
)
def test_a_fault_that_cannot_happen_is_refused(
    inner: FileStore, operation: str, count: int, after: bool
) -> None:
    with pytest.raises(ValueError):
        FaultyStore(inner).fail_next(operation, count, after=after)  # type: ignore[arg-type]
