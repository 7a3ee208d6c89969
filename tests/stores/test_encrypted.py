"""EncryptedStore over real stores: the store and family contracts over file, memory,
Redis (a private redis-server) and families; what lands at rest in the file, the
Redis hash, the PostgreSQL row and the keyring entry; wrong keys, truncated and
moved ciphertext; key sources; key rotation."""

from __future__ import annotations

import functools
import logging
import os
import pickle
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy
from keyrings.alt.file import PlaintextKeyring
from support.databases import dispose_engines, shared_engine, unique_name
from support.session_helpers import MakeSession

from pleo_auth import (
    Company,
    ConfigurationError,
    EncryptedStore,
    FileStore,
    Integration,
    KeyringStore,
    MemoryStore,
    RedisStore,
    TokenSet,
    TokenStoreError,
)
from pleo_auth.stores import EncryptedStoreFamily, EncryptedTokenStore, SQLStore
from pleo_auth.stores._keys import Keys, find_keys, keys_from_file, keys_from_keyring
from pleo_auth.stores.encrypted import PREFIX, rotate_key, rotate_keys
from pleo_auth.testing import (
    Emulator,
    MakeFamily,
    MakeStore,
    TokenStoreContract,
    TokenStoreFamilyContract,
    new_tokens,
)

# Test keys only (Fernet.generate_key()); constants, so spawned children share them.
OLD = "BvFGZy42bxMERr7Sg2gITFfnTz4knMvquk6LrGwkAAg="
NEW = "2tPJmcelxaODDqGQdyi9wD2JSUbMC8bhRsGs2iraMf8="
OTHER = "guxMUaoOt1oksiT53jt2zdzv6ZlqfRUzYpu0BpB1SSU="
CLIENT = "client-encrypted-tests"
A = Company("0b6e1a7c-55d2-4c1e-9a51-3f1d2c4b5a60")
B = Company("7f3c2d1e-0a9b-4c8d-8e7f-6a5b4c3d2e1f")


def encrypted_file_family(directory: Path, keys: tuple[str, ...] = (OLD,)) -> Any:
    """An encrypted FileStore family (importable, so picklable in a partial)."""
    return EncryptedStore(FileStore.family(directory), list(keys), client_id=CLIENT)


def encrypted_redis_family(url: str, prefix: str) -> Any:
    return EncryptedStore(
        RedisStore.family(url, prefix, check_interval=0.0), [OLD], client_id=CLIENT
    )


def secret_pieces(tokens: TokenSet, size: int = 8) -> set[str]:
    """Every substring of ``size`` characters of either token."""
    pieces: set[str] = set()
    for token in (tokens.access_token, tokens.refresh_token):
        pieces.update(token[i : i + size] for i in range(len(token) - size + 1))
    return pieces


def long_tokens() -> TokenSet:
    """Tokens as opaque and long as real ones, so that no 8 characters of them are
    an accident of the format."""
    return TokenSet(
        access_token="at-" + uuid.uuid4().hex + uuid.uuid4().hex,
        refresh_token="rt-" + uuid.uuid4().hex + uuid.uuid4().hex,
        expires_at=2_000_000_000.0,
        scope="users:read",
    )


def assert_no_piece_of(tokens: TokenSet, data: bytes | str) -> None:
    text = data.decode("latin-1") if isinstance(data, bytes) else data
    leaked = [piece for piece in secret_pieces(tokens) if piece in text]
    assert leaked == [], f"{len(leaked)} pieces of a token are stored in the clear"


# -- the contracts -----------------------------------------------------------------------


class TestEncryptedFileStoreContract(TokenStoreContract):
    @pytest.fixture
    def make_store(self, tmp_path: Path) -> MakeStore:
        return lambda: EncryptedStore(FileStore(tmp_path / "tokens.json"), [OLD])


class TestEncryptedMemoryStoreContract(TokenStoreContract):
    @pytest.fixture
    def make_store(self) -> MakeStore:
        store = EncryptedStore(MemoryStore(), [OLD])
        return lambda: store


@pytest.mark.redis
class TestEncryptedRedisStoreContract(TokenStoreContract):
    @pytest.fixture
    def make_store(self, redis_url: str) -> MakeStore:
        key = f"test:{uuid.uuid4().hex}"
        return lambda: EncryptedStore(RedisStore(redis_url, key, check_interval=0.0), [OLD])


class TestEncryptedFileFamilyContract(TokenStoreFamilyContract):
    @pytest.fixture
    def make_family(self, tmp_path: Path) -> MakeFamily:
        return functools.partial(encrypted_file_family, tmp_path / "grants")


@pytest.mark.redis
@pytest.mark.soak  # the default run has the Redis store's contract and the file family's
class TestEncryptedRedisFamilyContract(TokenStoreFamilyContract):
    @pytest.fixture
    def make_family(self, redis_url: str) -> MakeFamily:
        return functools.partial(encrypted_redis_family, redis_url, f"test:{uuid.uuid4().hex}:")


def test_encrypted_store_of_a_family_is_a_family_whose_members_are_encrypted(
    tmp_path: Path,
) -> None:
    family = encrypted_file_family(tmp_path / "grants")
    assert isinstance(family, EncryptedStoreFamily)
    member = family.for_company(A.urn)
    assert isinstance(member, EncryptedTokenStore)
    assert (member.company, member.client_id) == (A, CLIENT)
    assert isinstance(EncryptedStore(FileStore(tmp_path / "t.json"), [OLD]), EncryptedTokenStore)


# -- nothing of a token at rest ----------------------------------------------------------


def test_the_file_holds_no_piece_of_either_token(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    tokens = long_tokens()
    EncryptedStore(FileStore(path), [OLD]).save(tokens)
    raw = path.read_bytes()
    assert raw.startswith(PREFIX.encode())
    assert_no_piece_of(tokens, raw)
    assert EncryptedStore(FileStore(path), [OLD]).load() == tokens


@pytest.mark.redis
def test_the_redis_hash_holds_no_piece_of_either_token(redis_url: str) -> None:
    key = f"test:{uuid.uuid4().hex}"
    tokens = long_tokens()
    store = EncryptedStore(RedisStore(redis_url, key), [OLD])
    store.save(tokens)
    with redis.Redis.from_url(redis_url) as client:
        fields = client.hgetall(key)
        assert fields[b"tokens"].startswith(PREFIX.encode())
        for name, value in fields.items():
            assert_no_piece_of(tokens, name + b"=" + value)
        for other in client.keys(f"{key}*"):
            assert_no_piece_of(tokens, other)
    assert store.load() == tokens


@pytest.fixture
def postgres_family(postgres_url: str) -> Iterator[SQLStore]:
    family = SQLStore(shared_engine(postgres_url), client_id=CLIENT, table=unique_name("enc"))
    family.create_table()
    yield family
    dispose_engines()


def row_of(family: SQLStore, company: Company) -> dict[str, Any]:
    t = family.table
    with family.engine.connect() as connection:
        row = connection.execute(
            sqlalchemy.select(t).where(t.c.client_id == CLIENT, t.c.company == company.id)
        ).one()
    return dict(row._mapping)


def test_the_postgresql_row_holds_no_piece_of_either_token(postgres_family: SQLStore) -> None:
    tokens = long_tokens()
    family = EncryptedStore(postgres_family, [OLD])
    family.for_company(A).save(tokens)
    row = row_of(postgres_family, A)
    assert str(row["tokens"]).startswith(PREFIX)
    assert_no_piece_of(tokens, repr(row))
    assert family.for_company(A).load() == tokens


def test_the_keyring_entry_holds_no_piece_of_either_token(
    tmp_path: Path, keyring_backend: PlaintextKeyring
) -> None:
    tokens = long_tokens()
    store = EncryptedStore(
        KeyringStore("pleo-auth-enc", CLIENT, backend=keyring_backend, state_dir=tmp_path / "s"),
        [OLD],
    )
    store.save(tokens)
    entry = keyring_backend.get_password("pleo-auth-enc", CLIENT)
    assert entry is not None
    assert entry.startswith(PREFIX)
    assert_no_piece_of(tokens, Path(keyring_backend.file_path).read_bytes())
    assert store.load() == tokens


# -- what cannot be opened: a clear error, and the store untouched ------------------------


def _message(exc: pytest.ExceptionInfo[TokenStoreError]) -> str:
    return str(exc.value)


def test_a_wrong_key_is_a_clear_error_that_leaves_the_file_byte_identical(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    EncryptedStore(FileStore(path), [OLD]).save(long_tokens())
    before = path.read_bytes()
    wrong = EncryptedStore(FileStore(path), [OTHER])
    for attempt in (wrong.load, lambda: wrong.clear(only=new_tokens())):
        with pytest.raises(TokenStoreError) as caught:
            attempt()
        assert "none of the 1 encryption key(s) given opens them" in _message(caught)
        assert not caught.value.retryable
    with pytest.raises(TokenStoreError, match=r"changed during|none of the"):
        wrong.save(new_tokens(), replaces=new_tokens())
    assert path.read_bytes() == before


def test_no_key_at_all_is_a_clear_error_and_never_no_tokens(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    EncryptedStore(FileStore(path), [OLD]).save(long_tokens())
    before = path.read_bytes()
    with pytest.raises(TokenStoreError, match="holds encrypted tokens, and this store was given"):
        FileStore(path).load()
    assert path.read_bytes() == before


def test_a_truncated_ciphertext_is_a_clear_error_that_leaves_the_file_byte_identical(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tokens.json"
    store = EncryptedStore(FileStore(path), [OLD])
    store.save(long_tokens())
    cut = path.read_bytes()[:-7]
    path.write_bytes(cut)
    with pytest.raises(TokenStoreError, match="truncated or malformed") as caught:
        store.load()
    assert not caught.value.retryable
    assert path.read_bytes() == cut


@pytest.mark.redis
def test_ciphertext_moved_to_another_company_is_refused_in_redis_untouched(redis_url: str) -> None:
    prefix = f"test:{uuid.uuid4().hex}:"
    family = encrypted_redis_family(redis_url, prefix)
    family.store(A).save(long_tokens())
    family.store(B).save(long_tokens())
    with redis.Redis.from_url(redis_url) as client:
        stolen = client.hget(f"{prefix}company:{A.id}", "tokens")
        client.hset(f"{prefix}company:{B.id}", "tokens", stolen)
        before = client.hgetall(f"{prefix}company:{B.id}")
        with pytest.raises(TokenStoreError) as caught:
            family.store(B).load()
        assert f"were encrypted for company {A.id}" in _message(caught)
        assert f"not for company {B.id}" in _message(caught)
        assert client.hgetall(f"{prefix}company:{B.id}") == before


def test_ciphertext_moved_to_another_company_is_refused_in_postgresql_untouched(
    postgres_family: SQLStore,
) -> None:
    family = EncryptedStore(postgres_family, [OLD])
    family.for_company(A).save(long_tokens())
    family.for_company(B).save(long_tokens())
    t = postgres_family.table
    stolen = row_of(postgres_family, A)["tokens"]
    with postgres_family.engine.begin() as connection:
        connection.execute(sqlalchemy.update(t).where(t.c.company == B.id).values(tokens=stolen))
    before = row_of(postgres_family, B)
    with pytest.raises(TokenStoreError, match=f"encrypted for company {A.id}"):
        family.for_company(B).load()
    assert row_of(postgres_family, B) == before


def test_a_file_moved_to_another_company_or_client_is_refused(tmp_path: Path) -> None:
    family = encrypted_file_family(tmp_path / "grants")
    family.store(A).save(long_tokens())
    moved = (tmp_path / "grants" / f"{A.id}.json").read_bytes()
    (tmp_path / "grants" / f"{B.id}.json").write_bytes(moved)
    os.chmod(tmp_path / "grants" / f"{B.id}.json", 0o600)
    with pytest.raises(TokenStoreError, match="copied from another grant"):
        family.store(B).load()
    other_client = EncryptedStore(FileStore.family(tmp_path / "grants"), [OLD], client_id="x")
    with pytest.raises(TokenStoreError, match="client 'client-encrypted-tests'"):
        other_client.store(A).load()
    assert (tmp_path / "grants" / f"{B.id}.json").read_bytes() == moved


def test_plain_tokens_are_refused_until_rotate_key_encrypts_them(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    tokens = long_tokens()
    FileStore(path).save(tokens)
    store = EncryptedStore(FileStore(path), [OLD])
    with pytest.raises(TokenStoreError, match="not encrypted"):
        store.load()
    assert rotate_key(store) == "encrypted"
    assert_no_piece_of(tokens, path.read_bytes())
    assert store.load() == tokens


def test_a_session_over_a_wrong_key_never_asks_for_a_login_nor_touches_the_store(
    tmp_path: Path, emulator: Emulator, make_session: MakeSession
) -> None:
    path = tmp_path / "tokens.json"
    login = TokenSet.from_response(emulator.issue_tokens())
    EncryptedStore(FileStore(path), [OLD], client_id=emulator.client_id).save(login)
    before = path.read_bytes()
    hooks: list[object] = []
    session = make_session(
        emulator,
        store=EncryptedStore(FileStore(path), [OTHER], client_id=emulator.client_id),
        on_reauthentication_required=hooks.append,
    )
    for _ in range(3):
        with pytest.raises(TokenStoreError, match="none of the 1 encryption key"):
            session.get("/v2/employees")
    assert hooks == []
    assert emulator.counters.refresh_grants == 0
    assert path.read_bytes() == before


# -- keys ------------------------------------------------------------------------------------


def test_no_key_or_a_malformed_one_is_a_configuration_error_that_never_shows_it() -> None:
    with pytest.raises(ConfigurationError, match="at least one Fernet key"):
        Keys([])
    bad = NEW[:-6] + "!"
    with pytest.raises(ConfigurationError, match="key 2 of 2 is not a Fernet key") as caught:
        Keys([OLD, bad])
    assert bad not in str(caught.value)
    assert caught.value.__cause__ is None


def test_no_key_appears_in_a_repr_a_log_or_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "tokens.json"
    store = EncryptedStore(FileStore(path), [NEW, OLD], client_id=CLIENT)
    store.save(long_tokens())
    family = encrypted_file_family(tmp_path / "grants", (NEW, OLD))
    shown = [repr(store), store.describe(), repr(family), family.describe(), repr(store._keys)]
    for attempt in [
        EncryptedStore(FileStore(path), [OTHER]).load,
        EncryptedStore(FileStore(path), [OLD]).load,
    ]:
        with pytest.raises(TokenStoreError) as caught:
            attempt()
        shown += [str(caught.value), repr(caught.value), repr(caught.value.__cause__)]
    shown.append(caplog.text)
    for key in (OLD, NEW, OTHER):
        for text in shown:
            assert key not in text
            assert key[:12] not in text
    with pytest.raises(TypeError):
        pickle.dumps(store._keys)


def test_keys_come_from_the_environment_newest_first() -> None:
    assert find_keys({"PLEO_AUTH_KEYS": f" {NEW}, {OLD} "}) == [NEW, OLD]


def test_a_key_file_is_read_only_when_private(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"{NEW}\n{OLD}\n")
    os.chmod(path, 0o644)
    with pytest.raises(ConfigurationError, match=r"mode 0644.*chmod 600") as caught:
        find_keys({"PLEO_AUTH_KEYS_FILE": str(path)})
    assert NEW not in str(caught.value)
    os.chmod(path, 0o600)
    assert keys_from_file(path) == [NEW, OLD]
    assert find_keys({"PLEO_AUTH_KEYS_FILE": str(path)}) == [NEW, OLD]


def test_keys_come_from_the_keyring(keyring_backend: PlaintextKeyring) -> None:
    assert keys_from_keyring(backend=keyring_backend) is None
    keyring_backend.set_password("pleo-auth", "encryption-keys", f"{NEW},{OLD}")
    assert keys_from_keyring(backend=keyring_backend) == [NEW, OLD]


def test_no_source_of_keys_is_a_configuration_error_naming_all_three(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    with pytest.raises(ConfigurationError, match=r"PLEO_AUTH_KEYS.*PLEO_AUTH_KEYS_FILE.*keyring"):
        find_keys({})


# -- rotation --------------------------------------------------------------------------------


def test_rotation_re_encrypts_every_grant_of_a_family_under_the_new_key(tmp_path: Path) -> None:
    old_family = encrypted_file_family(tmp_path / "grants", (OLD,))
    saved = {company: long_tokens() for company in (A, B)}
    for company, tokens in saved.items():
        old_family.store(company).save(tokens)
    family = encrypted_file_family(tmp_path / "grants", (NEW, OLD))
    result = rotate_keys(family)
    assert result.done == {A.id: "rotated", B.id: "rotated"}
    assert result.failed == {}
    only_new = encrypted_file_family(tmp_path / "grants", (NEW,))
    for company, tokens in saved.items():
        assert only_new.store(company).load() == tokens
        with pytest.raises(TokenStoreError):
            old_family.store(company).load()


def test_each_save_encrypts_under_the_first_key(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    EncryptedStore(FileStore(path), [OLD]).save(long_tokens())
    store = EncryptedStore(FileStore(path), [NEW, OLD])
    tokens = store.load()
    assert tokens is not None
    store.save(long_tokens(), replaces=tokens)
    token = path.read_text()[len(PREFIX) :].encode()
    assert store._keys.which(token) == 0


def test_an_integration_runs_over_an_encrypted_family(tmp_path: Path, emulator: Emulator) -> None:
    family = EncryptedStore(FileStore.family(tmp_path / "grants"), [OLD])
    with Integration(
        emulator.client_id,
        emulator.client_secret,
        store=family,
        token_url=emulator.token_url,
        api_url=emulator.api_url,
    ) as pleo:
        pleo.add(A, TokenSet.from_response(emulator.issue_tokens()))
        assert pleo.session(A).get("/v2/employees").status_code == 200
        assert pleo.companies() == [A]
    assert (tmp_path / "grants" / f"{A.id}.json").read_text().startswith(PREFIX)


# -- settings, web settings and the command line ---------------------------------------------


def test_settings_encrypt_wraps_the_store_with_the_keys_of_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pleo_auth import Settings

    monkeypatch.setenv("PLEO_AUTH_KEYS", f"{NEW},{OLD}")
    env = {"PLEO_CLIENT_ID": CLIENT, "PLEO_STORE": f"file:{tmp_path}/t.json", "PLEO_ENCRYPT": "1"}
    store = Settings.from_env(env).build_store()
    assert isinstance(store, EncryptedTokenStore)
    assert (store.client_id, store.key_count) == (CLIENT, 2)
    plain = Settings.from_env({**env, "PLEO_ENCRYPT": "0"}).build_store()
    assert isinstance(plain, FileStore)
    with pytest.raises(ConfigurationError, match="PLEO_ENCRYPT must be 1 or 0"):
        Settings.from_env({**env, "PLEO_ENCRYPT": "maybe"})


def test_a_web_apps_encrypt_setting_encrypts_its_family(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pleo_auth.contrib import _WebSettings

    monkeypatch.setenv("PLEO_AUTH_KEYS", NEW)
    web = _WebSettings.from_mapping(
        {"CLIENT_ID": CLIENT, "STORE": f"family:file:{tmp_path}/g", "ENCRYPT": True},
        where="settings.PLEO_AUTH",
    )
    assert isinstance(web.family, EncryptedStoreFamily)
    assert web.family.client_id == CLIENT


def test_the_command_line_reads_an_encrypted_family_with_encrypt_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pleo_auth.cli import main

    encrypted_file_family(tmp_path / "g").store(A).save(long_tokens())
    env = {"PLEO_CLIENT_ID": CLIENT, "PLEO_AUTH_KEYS": OLD}
    spec = f"family:file:{tmp_path}/g"
    assert main(["status", "--encrypt", "--store", spec], env=env) == 0
    assert A.id in capsys.readouterr().out
    assert main(["status", "--store", spec], env=env) == 3
    assert "holds encrypted tokens" in capsys.readouterr().out
    assert main(["rotate-key", "--store", spec], env={**env, "PLEO_AUTH_KEYS": f"{NEW},{OLD}"}) == 0
    assert "1 grant(s) re-encrypted" in capsys.readouterr().out
    assert main(["status", "--encrypt", "--store", spec], env={**env, "PLEO_AUTH_KEYS": NEW}) == 0


def test_the_login_a_hint_asks_for_fills_an_encrypted_store_encrypted(tmp_path: Path) -> None:
    from pleo_auth import LoginHint, Settings
    from pleo_auth.stores.family_spec import family_spec_of

    settings = Settings(CLIENT)
    store = EncryptedStore(FileStore(tmp_path / "t.json"), [OLD], client_id=CLIENT)
    hint = LoginHint.for_settings(settings, store)
    assert hint.encrypt
    assert f"--store file:{tmp_path}/t.json --encrypt" in str(hint)
    assert "encrypted" in hint.where
    family = encrypted_file_family(tmp_path / "g")
    assert family_spec_of(family) == f"family:file:{tmp_path}/g"
    assert "--encrypt" in str(LoginHint.for_settings(settings, family.store(A)))
