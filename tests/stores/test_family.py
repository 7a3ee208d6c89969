"""The family contract (and through it the store contract, over one member) for
MemoryStore.family, FileStore.family, RedisStore.family and KeyringStore.family,
and what each family adds: real files, a real redis-server, keyrings.alt."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import stat
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from keyrings.alt.file import PlaintextKeyring
from support.session_helpers import MakeSession

from pleo_auth import (
    Company,
    ConfigurationError,
    FileStore,
    KeyringStore,
    MemoryStore,
    RedisStore,
    TokenSet,
    TokenStoreError,
)
from pleo_auth.stores import (
    FileStoreFamily,
    KeyringStoreFamily,
    MemoryStoreFamily,
    RedisStoreFamily,
)
from pleo_auth.testing import Emulator, MakeFamily, TokenStoreFamilyContract, new_tokens

A = Company("0b6e1a7c-55d2-4c1e-9a51-3f1d2c4b5a60")
B = Company("7f3c2d1e-0a9b-4c8d-8e7f-6a5b4c3d2e1f")


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# -- memory ------------------------------------------------------------------------------


class TestMemoryStoreFamily(TokenStoreFamilyContract):
    across_processes = False

    @pytest.fixture
    def make_family(self) -> MakeFamily:
        family = MemoryStore.family()
        return lambda: family

    def test_is_a_memory_store_family(self, family: MemoryStoreFamily) -> None:
        assert isinstance(family, MemoryStoreFamily)

    def test_store_gives_the_same_object_for_one_company(self, family: MemoryStoreFamily) -> None:
        assert family.store(A) is family.store(A.urn)
        assert isinstance(family.store(A), MemoryStore)

    def test_two_families_hold_separate_grants(self) -> None:
        first, second = MemoryStore.family(), MemoryStore.family()
        first.store(A).save(new_tokens())
        assert second.companies() == []


# -- files -------------------------------------------------------------------------------


class TestFileStoreFamily(TokenStoreFamilyContract):
    @pytest.fixture
    def directory(self, tmp_path: Path) -> Path:
        return tmp_path / "grants"

    @pytest.fixture
    def make_family(self, directory: Path) -> MakeFamily:
        return functools.partial(FileStore.family, directory)

    def test_each_company_is_one_file_named_from_its_uuid(
        self, family: FileStoreFamily, directory: Path
    ) -> None:
        family.store(A.urn.upper()).save(new_tokens())
        assert sorted(path.name for path in directory.iterdir()) == [
            f"{A.id}.json",
            f"{A.id}.json.lock",
        ]
        assert mode(directory / f"{A.id}.json") == 0o600
        assert mode(directory) == 0o700

    def test_a_member_is_a_file_store_a_plain_session_can_share(
        self, family: FileStoreFamily, directory: Path
    ) -> None:
        member = family.store(A)
        assert isinstance(member, FileStore)
        assert member.key == FileStore(directory / f"{A.id}.json").key

    def test_the_lock_is_per_company_and_stays_after_remove(
        self, family: FileStoreFamily, directory: Path
    ) -> None:
        family.store(A).save(new_tokens())
        family.store(B).save(new_tokens())
        family.remove(A)
        assert sorted(path.name for path in directory.iterdir()) == [
            f"{A.id}.json.lock",
            f"{B.id}.json",
            f"{B.id}.json.lock",
        ]

    def test_other_files_in_the_directory_are_not_companies(
        self, family: FileStoreFamily, directory: Path
    ) -> None:
        family.store(A).save(new_tokens())
        for name in ("notes.json", f"{B.id.upper()}.json", f".{B.id}.json.abcd1234.tmp", B.id):
            (directory / name).write_text("{}")
        (directory / f"{B.id}.json.d").mkdir()
        assert family.companies() == [A]

    def test_a_dangling_symlink_named_like_a_company_is_not_a_stored_grant(
        self, family: FileStoreFamily, directory: Path, tmp_path: Path
    ) -> None:
        family.store(A).save(new_tokens())
        (directory / f"{B.id}.json").symlink_to(tmp_path / "nowhere.json")
        # load() refuses it ("refusing to follow a symlink"): B has no usable grant.
        assert family.companies() == [A]

    def test_a_symlink_to_a_token_file_named_like_a_company_is_not_a_stored_grant(
        self, family: FileStoreFamily, directory: Path
    ) -> None:
        family.store(A).save(new_tokens())
        (directory / f"{B.id}.json").symlink_to(directory / f"{A.id}.json")
        assert family.companies() == [A]

    def test_a_directory_named_like_a_company_is_not_a_stored_grant(
        self, family: FileStoreFamily, directory: Path
    ) -> None:
        family.store(A).save(new_tokens())
        (directory / f"{B.id}.json").mkdir(mode=0o700)
        assert family.companies() == [A]

    def test_remove_refuses_a_directory_others_can_write_as_load_and_save_do(
        self, family: FileStoreFamily, directory: Path
    ) -> None:
        family.store(A).save(new_tokens())
        os.chmod(directory, 0o777)
        try:
            with pytest.raises(TokenStoreError, match="group or others can write"):
                family.store(A).load()
            with pytest.raises(TokenStoreError, match="group or others can write"):
                family.remove(A)
            with pytest.raises(TokenStoreError, match="group or others can write"):
                family.store(A).clear()
        finally:
            os.chmod(directory, 0o700)
        assert family.companies() == [A]

    def test_a_missing_directory_lists_no_companies_and_is_not_created(
        self, family: FileStoreFamily, directory: Path
    ) -> None:
        assert family.companies() == []
        family.store(A)
        assert not directory.exists()

    @pytest.mark.parametrize("directory_mode", [0o720, 0o702, 0o770, 0o777])
    def test_a_directory_others_can_write_is_refused_with_a_chmod_700_hint(
        self, family: FileStoreFamily, directory: Path, directory_mode: int
    ) -> None:
        family.store(A).save(new_tokens())
        os.chmod(directory, directory_mode)
        try:
            for call in (
                family.companies,
                family.store(A).load,
                lambda: family.store(B).save(new_tokens()),
            ):
                with pytest.raises(TokenStoreError, match="chmod 700"):
                    call()
        finally:
            os.chmod(directory, 0o700)
        assert not (directory / f"{B.id}.json").exists()

    def test_a_token_file_others_can_read_is_refused_as_file_store_refuses_it(
        self, family: FileStoreFamily, directory: Path
    ) -> None:
        family.store(A).save(new_tokens())
        os.chmod(directory / f"{A.id}.json", 0o644)
        with pytest.raises(TokenStoreError, match="chmod 600"):
            family.store(A).load()

    def test_a_path_that_is_no_directory_path_is_refused(self) -> None:
        for bad in ("", "a\0b", 42):
            with pytest.raises(ConfigurationError):
                FileStore.family(bad)  # type: ignore[arg-type]


# -- redis -------------------------------------------------------------------------------


class TestRedisStoreFamily(TokenStoreFamilyContract):
    @pytest.fixture
    def prefix(self) -> str:
        return f"test:{uuid.uuid4().hex}:"

    @pytest.fixture
    def make_family(self, redis_url: str, prefix: str) -> MakeFamily:
        return functools.partial(RedisStore.family, redis_url, prefix, check_interval=0.0)

    @pytest.fixture
    def client(self, redis_url: str) -> Any:
        with redis.Redis.from_url(redis_url) as raw:
            yield raw

    def test_each_company_is_one_hash_under_the_prefix_with_its_own_lock(
        self, family: RedisStoreFamily, prefix: str, client: Any
    ) -> None:
        member = family.store(A.id.upper())
        assert isinstance(member, RedisStore)
        assert member.redis_key == f"{prefix}company:{A.id}"
        assert member.lock_key == f"{prefix}company:{A.id}:lock"
        member.save(new_tokens())
        with member.lock(timeout=5.0, lease=30.0):
            assert sorted(client.keys(f"{prefix}*")) == [
                f"{prefix}company:{A.id}".encode(),
                f"{prefix}company:{A.id}:lock".encode(),
            ]
            assert family.companies() == [A]

    def test_a_cleared_grant_keeps_its_version_fields_but_is_not_listed(
        self, family: RedisStoreFamily, prefix: str, client: Any
    ) -> None:
        family.store(A).save(new_tokens())
        family.remove(A)
        assert client.exists(f"{prefix}company:{A.id}") == 1
        assert family.companies() == []

    def test_glob_characters_in_the_prefix_match_only_themselves(
        self, redis_url: str, prefix: str
    ) -> None:
        star = RedisStore.family(redis_url, prefix + "[x]*?\\")
        lookalike = RedisStore.family(redis_url, prefix + "x-anything\\")
        lookalike.store(B).save(new_tokens())
        assert star.companies() == []
        star.store(A).save(new_tokens())
        assert star.companies() == [A]
        assert lookalike.companies() == [B]

    def test_keys_of_other_kinds_under_the_prefix_are_not_companies(
        self, family: RedisStoreFamily, prefix: str, client: Any
    ) -> None:
        family.store(A).save(new_tokens())
        client.hset(f"{prefix}company:{B.id.upper()}", "tokens", "x")
        client.hset(f"{prefix}company:{B.id}x", "tokens", "x")
        client.set(f"{prefix}tokens", "x")
        assert family.companies() == [A]

    def test_a_key_of_another_type_under_the_pattern_does_not_hide_every_company(
        self, family: RedisStoreFamily, prefix: str, client: Any
    ) -> None:
        family.store(A).save(new_tokens())
        # Something other than a grant at B's key (another tool, a hand-made key): B
        # has no grant, and A's grant is still there to list.
        client.set(f"{prefix}company:{B.id}", "not a hash")
        assert family.companies() == [A]

    def test_the_stores_share_one_client(self, family: RedisStoreFamily) -> None:
        first, second = family.store(A), family.store(B)
        assert first._client is second._client

    def test_a_url_that_names_a_key_is_refused(self, redis_url: str) -> None:
        with pytest.raises(ConfigurationError, match="names no key"):
            RedisStore.family(redis_url + "?key=x")

    def test_a_prefix_that_is_not_a_string_is_refused(self, redis_url: str) -> None:
        with pytest.raises(ConfigurationError, match="prefix"):
            RedisStore.family(redis_url, b"x:")  # type: ignore[arg-type]

    def test_describe_names_the_server_and_the_key_pattern_never_the_password(self) -> None:
        family = RedisStore.family("redis://:hunter2@127.0.0.1:6390/3", "app:")
        assert family.describe() == "redis 127.0.0.1:6390 db 3, keys 'app:company:<uuid>'"
        assert "hunter2" not in repr(family)


# -- keyring -----------------------------------------------------------------------------

SERVICE = "pleo-auth-family-test"


def file_backend(path: Path) -> PlaintextKeyring:
    backend = PlaintextKeyring()
    backend.file_path = str(path)  # type: ignore[misc]
    return backend


class TestKeyringStoreFamily(TokenStoreFamilyContract):
    """Over keyrings.alt's file backend, which rewrites one file for every entry."""

    lock_per_company = False
    racing_saves = 40

    @pytest.fixture
    def state_dir(self, tmp_path: Path) -> Path:
        return tmp_path / "state"

    @pytest.fixture
    def make_family(self, tmp_path: Path, state_dir: Path) -> MakeFamily:
        return functools.partial(
            KeyringStore.family,
            SERVICE,
            backend=file_backend(tmp_path / "keyring.cfg"),
            state_dir=state_dir,
        )

    def index(self, family: KeyringStoreFamily) -> list[str]:
        companies: list[str] = json.loads(family.index_path.read_text())["companies"]
        return companies

    def test_each_company_is_one_entry_whose_account_is_its_urn(
        self, family: KeyringStoreFamily, tmp_path: Path
    ) -> None:
        tokens = new_tokens()
        family.store(A.id.upper()).save(tokens)
        backend = file_backend(tmp_path / "keyring.cfg")
        assert json.loads(backend.get_password(SERVICE, A.urn))["access_token"] == (
            tokens.access_token
        )
        assert backend.get_password(SERVICE, A.id) is None

    def test_the_index_is_private_and_lists_company_ids_only(
        self, family: KeyringStoreFamily
    ) -> None:
        tokens = new_tokens()
        family.store(B).save(tokens)
        family.store(A).save(new_tokens())
        assert self.index(family) == [A.id, B.id]
        assert mode(family.index_path) == 0o600
        assert tokens.refresh_token not in family.index_path.read_text()

    def test_a_company_in_the_index_without_an_entry_is_not_listed(
        self, family: KeyringStoreFamily, tmp_path: Path
    ) -> None:
        family.store(A).save(new_tokens())
        family.store(B).save(new_tokens())
        file_backend(tmp_path / "keyring.cfg").delete_password(SERVICE, B.urn)
        assert self.index(family) == [A.id, B.id]
        assert family.companies() == [A]

    def test_a_lost_index_lists_a_company_again_at_its_next_save(
        self, family: KeyringStoreFamily
    ) -> None:
        first = new_tokens()
        family.store(A).save(first)
        family.index_path.unlink()
        assert family.companies() == []
        family.store(A).save(new_tokens(), replaces=first)
        assert family.companies() == [A]

    def test_an_index_that_is_not_one_is_refused_naming_it(
        self, family: KeyringStoreFamily
    ) -> None:
        family.store(A).save(new_tokens())
        family.index_path.write_text('{"format": "something else"}')
        with pytest.raises(TokenStoreError, match="is not the index of a keyring family"):
            family.companies()

    @pytest.mark.parametrize(
        "spoil",
        [
            pytest.param(lambda path: path.write_text("{not json"), id="corrupt"),
            pytest.param(lambda path: os.chmod(path, 0o644), id="readable-by-others"),
            pytest.param(lambda path: os.chmod(path, 0o622), id="writable-by-others"),
            pytest.param(
                lambda path: os.chmod(path, 0o000),
                id="unreadable",
                marks=pytest.mark.skipif(
                    hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads any file"
                ),
            ),
        ],
    )
    def test_a_spoiled_index_does_not_stop_a_company_from_saving_its_tokens(
        self, family: KeyringStoreFamily, spoil: Any
    ) -> None:
        first = new_tokens()
        family.store(A).save(first)
        spoil(family.index_path)
        second = new_tokens()
        # The index only lists companies; the tokens are the grant. A refresh has
        # already rotated them at Pleo when it saves, so a refused save loses the grant.
        family.store(A).save(second, replaces=first)
        assert family.store(A).load() == second
        assert family.companies() == [A]

    def test_a_bad_index_is_moved_aside_with_a_warning_and_a_new_one_started(
        self, family: KeyringStoreFamily, caplog: pytest.LogCaptureFixture
    ) -> None:
        family.store(B).save(new_tokens())
        family.index_path.write_text("{not json")
        with caplog.at_level(logging.WARNING, logger="pleo_auth.stores.keyring_family"):
            family.store(A).save(new_tokens())
        assert "moved it to" in caplog.text
        aside = sorted(family.index_path.parent.glob(family.index_path.name + ".bad-*"))
        assert [path.read_text() for path in aside] == ["{not json"]
        assert self.index(family) == [A.id]
        assert mode(family.index_path) == 0o600
        # B's grant is still in the keyring, and listed again at its next save.
        assert family.store(B).load() is not None
        family.store(B).save(new_tokens())
        assert family.companies() == [A, B]

    def test_clear_under_a_corrupt_index_still_deletes_the_grant(
        self, family: KeyringStoreFamily
    ) -> None:
        family.store(A).save(new_tokens())
        family.index_path.write_text("{not json")
        family.remove(A)
        assert family.store(A).load() is None
        assert family.companies() == []

    def test_an_index_others_can_write_is_refused_by_companies_naming_it(
        self, family: KeyringStoreFamily
    ) -> None:
        family.store(A).save(new_tokens())
        os.chmod(family.index_path, 0o622)
        with pytest.raises(TokenStoreError, match="group or others can write to it"):
            family.companies()

    def test_an_index_others_can_read_is_used_since_it_holds_no_secret(
        self, family: KeyringStoreFamily
    ) -> None:
        family.store(A).save(new_tokens())
        os.chmod(family.index_path, 0o644)
        assert family.companies() == [A]

    def test_a_refresh_under_a_corrupt_index_keeps_the_grant_alive(
        self, family: KeyringStoreFamily, emulator: Emulator, make_session: MakeSession
    ) -> None:
        member = family.store(A)
        member.save(TokenSet.from_response(emulator.issue_tokens(company=A.urn)))
        family.index_path.write_text("{not json")
        session = make_session(emulator, store=member)
        with contextlib.suppress(TokenStoreError):  # whatever it reports, the grant must live
            session.refresh()
        stored = family.store(A).load()
        assert stored is not None, "the keyring holds no grant for A after its refresh"
        # Before the fix the save was refused (the index could not be read), the
        # spent pair was withdrawn, and the live pair existed only in memory.
        assert emulator.is_current(stored.access_token, stored.refresh_token), (
            "the stored refresh token was spent at the server and its successor was never saved"
        )
        assert emulator.counters.refresh_grants == 1

    def test_every_company_shares_the_familys_one_lock(self, family: KeyringStoreFamily) -> None:
        first, second = family.store(A), family.store(B)
        assert isinstance(first, KeyringStore)
        assert first.refresh_lock is second.refresh_lock is family.refresh_lock
        assert first.key != second.key

    def test_a_member_has_no_store_spec(self, family: KeyringStoreFamily) -> None:
        assert family.store(A).spec is None

    def test_an_empty_service_is_refused(self) -> None:
        with pytest.raises(ConfigurationError, match="service"):
            KeyringStore.family("")

    def test_a_too_small_entry_limit_is_refused_when_the_family_is_made(self) -> None:
        with pytest.raises(ConfigurationError, match="max_entry_bytes"):
            KeyringStore.family(SERVICE, max_entry_bytes=10)


def test_every_family_is_a_token_store_family() -> None:
    from pleo_auth import TokenStoreFamily

    for family_class in (MemoryStoreFamily, FileStoreFamily, RedisStoreFamily, KeyringStoreFamily):
        assert issubclass(family_class, TokenStoreFamily)
