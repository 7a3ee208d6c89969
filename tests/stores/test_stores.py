"""The store contract for MemoryStore, FileStore and KeyringStore, and what each adds."""

from __future__ import annotations

import configparser
import contextlib
import json
import os
import stat
import threading
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import pytest

from pleo_auth import (
    AuthorizationFlow,
    FileStore,
    KeyringStore,
    Lease,
    MemoryStore,
    PleoSession,
    TokenSet,
    TokenStoreError,
)
from pleo_auth.stores import TokenStore, _files
from pleo_auth.stores.locks import FileRefreshLock, ThreadRefreshLock
from pleo_auth.testing import Emulator, MakeStore, TokenStoreContract, new_tokens


class TestMemoryStore(TokenStoreContract):
    @pytest.fixture
    def make_store(self) -> MakeStore:
        store = MemoryStore()
        return lambda: store

    def test_starts_with_the_tokens_it_was_given(self) -> None:
        tokens = new_tokens()
        assert MemoryStore(tokens).load() == tokens

    def test_separate_instances_hold_separate_tokens(self) -> None:
        first, second = MemoryStore(), MemoryStore()
        first.save(new_tokens())
        assert second.load() is None
        assert first.key != second.key


# -- FileStore ---------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


class TestFileStore(TokenStoreContract):
    @pytest.fixture
    def path(self, tmp_path: Path) -> Path:
        return tmp_path / "pleo" / "tokens.json"

    @pytest.fixture
    def make_store(self, path: Path) -> MakeStore:
        return lambda: FileStore(path)

    def test_saved_file_is_mode_0600(self, store: FileStore, path: Path) -> None:
        store.save(new_tokens())
        assert mode(path) == 0o600

    def test_file_stays_mode_0600_under_a_permissive_umask(
        self, store: FileStore, path: Path
    ) -> None:
        old = os.umask(0)
        try:
            store.save(new_tokens())
            store.save(new_tokens())
        finally:
            os.umask(old)
        assert mode(path) == 0o600

    def test_missing_directory_is_created_mode_0700(self, store: FileStore, path: Path) -> None:
        assert not path.parent.exists()
        store.save(new_tokens())
        assert mode(path.parent) == 0o700

    @pytest.mark.parametrize("file_mode", [0o640, 0o604, 0o660, 0o644, 0o606])
    def test_group_or_other_accessible_file_is_refused_with_a_chmod_600_hint(
        self, store: FileStore, path: Path, file_mode: int
    ) -> None:
        store.save(new_tokens())
        os.chmod(path, file_mode)
        with pytest.raises(TokenStoreError, match="chmod 600"):
            store.load()

    def test_save_leaves_no_temporary_files(self, store: FileStore, path: Path) -> None:
        previous = None
        for _ in range(20):
            tokens = new_tokens()
            store.save(tokens, replaces=previous)
            previous = tokens
        assert sorted(p.name for p in path.parent.iterdir()) == ["tokens.json", "tokens.json.lock"]

    def test_failed_replace_keeps_the_old_file_and_leaves_no_temporary_file(
        self, store: FileStore, path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        old = new_tokens()
        store.save(old)

        def refuse(src: Any, dst: Any) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(_files.os, "replace", refuse)
        with pytest.raises(TokenStoreError, match="cannot write"):
            store.save(new_tokens(), replaces=old)
        monkeypatch.undo()
        assert store.load() == old
        assert sorted(p.name for p in path.parent.iterdir()) == ["tokens.json", "tokens.json.lock"]

    def test_file_is_one_json_document_holding_both_tokens(
        self, store: FileStore, path: Path
    ) -> None:
        tokens = new_tokens()
        store.save(tokens)
        document = json.loads(path.read_text())
        assert document["access_token"] == tokens.access_token
        assert document["refresh_token"] == tokens.refresh_token

    def test_save_drops_the_previous_tokens_from_the_file(
        self, store: FileStore, path: Path
    ) -> None:
        old, new = new_tokens(), new_tokens()
        store.save(old)
        store.save(new, replaces=old)
        text = path.read_text()
        assert old.access_token not in text
        assert old.refresh_token not in text

    @pytest.mark.parametrize(
        "content",
        [
            b"",
            b"not json",
            b"[1, 2, 3]",
            b'"a string"',
            b'{"access_token": "", "refresh_token": "rt_x", "expires_at": 1}',
            b'{"access_token": "at_x", "expires_at": 1}',
            b"\xff\xfe\x00garbage",
        ],
    )
    def test_corrupt_file_raises_token_store_error(
        self, store: FileStore, path: Path, content: bytes
    ) -> None:
        path.parent.mkdir(mode=0o700, parents=True)
        path.write_bytes(content)
        os.chmod(path, 0o600)
        with pytest.raises(TokenStoreError, match="does not hold pleo-auth tokens"):
            store.load()

    def test_symlinked_token_file_is_refused(self, store: FileStore, path: Path) -> None:
        target = path.parent.parent / "elsewhere.json"
        FileStore(target).save(new_tokens())
        path.parent.mkdir(mode=0o700, parents=True)
        path.symlink_to(target)
        with pytest.raises(TokenStoreError, match="symlink"):
            store.load()

    def test_lock_file_lives_beside_the_token_file(self, store: FileStore, path: Path) -> None:
        with store.lock(timeout=5.0, lease=30.0):
            assert (path.parent / "tokens.json.lock").exists()

    def test_spellings_of_one_path_share_a_key(self, path: Path) -> None:
        dotted = path.parent / "." / ".." / path.parent.name / path.name
        assert FileStore(path).key == FileStore(dotted).key

    def test_spec_names_the_file_for_the_command_line(self, store: FileStore, path: Path) -> None:
        assert store.spec == f"file:{path}"


# -- KeyringStore ----------------------------------------------------------------------


class TestKeyringStore(TokenStoreContract):
    @pytest.fixture
    def state_dir(self, tmp_path: Path) -> Path:
        return tmp_path / "state"

    @pytest.fixture
    def make_store(self, keyring_backend: Any, state_dir: Path) -> MakeStore:
        return lambda: KeyringStore(
            service="pleo-auth-test", account="client-1", backend=keyring_backend,
            state_dir=state_dir,
        )  # fmt: skip

    def test_both_tokens_are_saved_in_one_keyring_entry(
        self, store: KeyringStore, keyring_backend: Any
    ) -> None:
        tokens = new_tokens()
        store.save(tokens)
        raw = keyring_backend.get_password("pleo-auth-test", "client-1")
        document = json.loads(raw)
        assert document["access_token"] == tokens.access_token
        assert document["refresh_token"] == tokens.refresh_token
        parser = configparser.RawConfigParser()
        parser.read(keyring_backend.file_path)
        entries = [(s, o) for s in parser.sections() for o in parser.options(s)]
        assert len(entries) == 1

    def test_marker_version_changes_on_every_save_and_clear(self, store: KeyringStore) -> None:
        versions = [store.version()]
        for _ in range(3):
            store.save(new_tokens())
            versions.append(store.version())
        store.clear()
        versions.append(store.version())
        assert len(set(versions)) == len(versions)
        assert store.marker_path.exists()

    def test_state_dir_holds_no_token(self, store: KeyringStore, state_dir: Path) -> None:
        tokens = new_tokens()
        with store.lock(timeout=5.0, lease=30.0):
            store.save(tokens)
        files = [p for p in state_dir.iterdir() if p.is_file()]
        assert files
        for file in files:
            content = file.read_bytes()
            assert tokens.access_token.encode() not in content
            assert tokens.refresh_token.encode() not in content

    def test_marker_is_private(self, store: KeyringStore, state_dir: Path) -> None:
        store.save(new_tokens())
        assert mode(store.marker_path) == 0o600
        assert mode(state_dir) == 0o700

    def test_corrupt_entry_raises_token_store_error(
        self, store: KeyringStore, keyring_backend: Any
    ) -> None:
        keyring_backend.set_password("pleo-auth-test", "client-1", "{not json")
        with pytest.raises(TokenStoreError, match="does not hold pleo-auth tokens"):
            store.load()

    def test_accounts_are_kept_apart(self, keyring_backend: Any, state_dir: Path) -> None:
        first = KeyringStore("pleo-auth-test", "a", backend=keyring_backend, state_dir=state_dir)
        second = KeyringStore("pleo-auth-test", "b", backend=keyring_backend, state_dir=state_dir)
        first.save(new_tokens())
        assert second.load() is None
        assert first.key != second.key
        assert first.lock_path != second.lock_path


# -- refresh locks, composed ---------------------------------------------------------


class DirectoryStore(TokenStore):
    """A new store written the way the lock split allows: it keeps the tokens in a
    file and composes an existing lock instead of writing ``lock()``."""

    fenced = True

    def __init__(self, directory: Path):
        self.path = directory / "tokens.json"
        self.refresh_lock = FileRefreshLock(directory / "tokens.lock")

    def load(self) -> TokenSet | None:
        try:
            return TokenSet.from_dict(json.loads(self.path.read_text()))
        except FileNotFoundError:
            return None

    def save(self, tokens: TokenSet, *, replaces: TokenSet | None = None) -> None:
        with self.lock(timeout=10.0, lease=10.0):  # re-entrant under a refresh
            if replaces is not None and self.load() != replaces:
                raise TokenStoreError("changed meanwhile; not saved")
            _files.atomic_write(self.path, json.dumps(tokens.to_dict()).encode())

    def clear(self, *, only: TokenSet | None = None) -> None:
        with self.lock(timeout=10.0, lease=10.0):
            if only is None or self.load() == only:
                self.path.unlink(missing_ok=True)

    def version(self) -> Hashable:
        return _files.stat_version(self.path)

    @property
    def key(self) -> Hashable:
        return ("directory", str(self.path))


class TestAStoreThatComposesAFileRefreshLock(TokenStoreContract):
    """The whole contract holds for a store whose only lock code is a FileRefreshLock."""

    @pytest.fixture
    def make_store(self, tmp_path: Path) -> MakeStore:
        return lambda: DirectoryStore(tmp_path / "store")

    def test_its_lock_is_the_composed_one(self, store: DirectoryStore) -> None:
        assert "lock" not in vars(DirectoryStore)
        with store.lock(timeout=1.0, lease=1.0):
            assert store.refresh_lock.held()
        assert not store.refresh_lock.held()


def test_a_store_without_a_lock_says_what_to_provide() -> None:
    class Lockless(TokenStore):
        def load(self) -> TokenSet | None:
            return None

        def save(self, tokens: TokenSet, *, replaces: TokenSet | None = None) -> None:
            pass

        def clear(self, *, only: TokenSet | None = None) -> None:
            pass

    with pytest.raises(NotImplementedError, match="Lockless must set refresh_lock"):
        Lockless().lock(timeout=1.0, lease=1.0)


def test_file_and_keyring_stores_compose_a_file_lock_beside_their_state(tmp_path: Path) -> None:
    file_store = FileStore(tmp_path / "tokens.json")
    keyring_store = KeyringStore(account="someone", state_dir=tmp_path / "state")
    for store in (file_store, keyring_store):
        assert isinstance(store.refresh_lock, FileRefreshLock)
        assert store.refresh_lock.path == store.lock_path
    assert "lock" not in vars(FileStore)
    assert "lock" not in vars(KeyringStore)


def test_memory_store_composes_a_thread_lock() -> None:
    assert isinstance(MemoryStore().refresh_lock, ThreadRefreshLock)


def test_a_file_lock_is_reentrant_within_a_thread_and_excludes_other_threads(
    tmp_path: Path,
) -> None:
    lock = FileRefreshLock(tmp_path / "deep" / "x.lock")
    other: list[BaseException] = []

    def try_from_another_thread() -> None:
        try:
            with lock.hold(timeout=0.0, lease=1.0):
                pass
        except TokenStoreError as exc:
            other.append(exc)

    with lock.hold(timeout=1.0, lease=1.0) as outer, lock.hold(timeout=0.0, lease=1.0):
        assert outer.deadline is None  # the OS frees it when the holder dies
        assert mode(tmp_path / "deep") == 0o700
        thread = threading.Thread(target=try_from_another_thread)
        thread.start()
        thread.join()
    assert len(other) == 1
    assert other[0].retryable
    assert "x.lock" in str(other[0])


def test_a_file_lock_whose_directory_cannot_be_made_adds_the_hint(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    lock = FileRefreshLock(tmp_path / "file" / "sub" / "x.lock", directory_hint="Pass X.")
    held = lock.hold(timeout=1.0, lease=1.0)
    with pytest.raises(TokenStoreError, match=r"cannot create directory .* Pass X\.$"):
        held.__enter__()


def test_a_thread_lock_times_out_another_thread_with_a_retryable_error() -> None:
    lock = ThreadRefreshLock()
    failures: list[TokenStoreError] = []

    def contend() -> None:
        try:
            with lock.hold(timeout=0.0, lease=1.0):
                pass
        except TokenStoreError as exc:
            failures.append(exc)

    with lock.hold(timeout=1.0, lease=1.0):
        thread = threading.Thread(target=contend)
        thread.start()
        thread.join()
    assert len(failures) == 1
    assert failures[0].retryable
    with lock.hold(timeout=0.0, lease=1.0):  # free again
        pass


# -- a store must have a refresh lock ----------------------------------------------------


class _StoreWithoutALock(TokenStore):
    """A third-party store written against 0.1's TokenStore that forgot lock()."""

    def __init__(self) -> None:
        self._tokens: TokenSet | None = None
        self._version = 0

    def load(self) -> TokenSet | None:
        return self._tokens

    def save(self, tokens: TokenSet, *, replaces: TokenSet | None = None) -> None:
        self._tokens = tokens
        self._version += 1

    def clear(self, *, only: TokenSet | None = None) -> None:
        self._tokens = None
        self._version += 1

    def version(self) -> Hashable:
        return self._version

    @property
    def key(self) -> Hashable:
        return ("no-lock", id(self))


def test_a_store_that_neither_composes_nor_implements_a_lock_is_refused_before_any_refresh(
    emulator: Emulator,
) -> None:
    """0.1's TokenStore.lock was abstract: such a store could not be built. Now that a
    store may compose a lock instead, one with neither is refused when a session or a
    login is built over it (TypeError, as 0.1), not at its first refresh."""
    store = _StoreWithoutALock()
    store.save(TokenSet.from_response(emulator.issue_tokens()))

    with pytest.raises(TypeError, match="_StoreWithoutALock has no refresh lock: set refresh_lock"):
        PleoSession(
            emulator.client_id,
            emulator.client_secret,
            store=store,
            token_url=emulator.token_url,
            api_url=emulator.api_url,
        )
    with pytest.raises(TypeError, match="has no refresh lock"):
        AuthorizationFlow(
            emulator.client_id, redirect_uri="http://127.0.0.1:1/callback", store=store
        )
    assert emulator.counters.token_requests == 0


def test_a_store_that_implements_lock_itself_needs_no_refresh_lock(emulator: Emulator) -> None:
    class OwnLock(_StoreWithoutALock):
        def __init__(self) -> None:
            super().__init__()
            self._lock = ThreadRefreshLock()

        def lock(self, *, timeout: float, lease: float) -> contextlib.AbstractContextManager[Lease]:
            return self._lock.hold(timeout=timeout, lease=lease)

    with PleoSession(emulator.client_id, store=OwnLock(), token_url=emulator.token_url) as s:
        assert s.store.refresh_lock is None
