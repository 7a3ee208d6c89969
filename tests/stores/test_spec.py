"""Tests for pleo_auth.stores.spec: the ``--store`` / ``PLEO_STORE`` parser."""

from __future__ import annotations

from pathlib import Path

import pytest

from pleo_auth import ConfigurationError, FileStore, KeyringStore
from pleo_auth.stores.spec import redact_spec, store_from_spec


def test_keyring_spec_builds_a_keyring_store_for_the_client() -> None:
    store = store_from_spec("keyring", client_id="client-1")
    assert isinstance(store, KeyringStore)
    assert (store.service, store.account) == ("pleo-auth", "client-1")
    assert store.spec == "keyring"


def test_keyring_spec_without_client_id_names_the_argument_not_a_flag() -> None:
    """The core names its argument; the command adds its flag and variable."""
    with pytest.raises(ConfigurationError, match=r"needs the client_id$"):
        store_from_spec("keyring", client_id="")


def test_file_spec_builds_a_file_store_at_that_path(tmp_path: Path) -> None:
    store = store_from_spec(f"file:{tmp_path}/tokens.json", client_id="")
    assert isinstance(store, FileStore)
    assert store.path == tmp_path / "tokens.json"


def test_file_spec_expands_the_home_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    store = store_from_spec("file:~/.pleo/tokens.json", client_id="c")
    assert isinstance(store, FileStore)
    assert store.path == tmp_path / ".pleo" / "tokens.json"


def test_file_url_with_three_slashes_is_an_absolute_path(tmp_path: Path) -> None:
    store = store_from_spec(f"file://{tmp_path}/tokens.json", client_id="c")
    assert isinstance(store, FileStore)
    assert store.path == tmp_path / "tokens.json"


@pytest.mark.parametrize("spec", ["file:", "file:   ", "file://otherhost/tokens.json"])
def test_malformed_file_specs_are_configuration_errors(spec: str) -> None:
    with pytest.raises(ConfigurationError, match="file"):
        store_from_spec(spec, client_id="c")


@pytest.mark.parametrize("spec", ["", "memory", "mongodb:///x.db", "keyrings", "File:/x"])
def test_unknown_specs_list_the_valid_forms(spec: str) -> None:
    with pytest.raises(
        ConfigurationError, match=r"keyring, file:PATH, redis://.* or a database URL"
    ):
        store_from_spec(spec, client_id="c")


def test_a_bad_spec_error_is_also_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown token store"):
        store_from_spec("nonsense", client_id="c")


def test_a_bad_spec_error_never_shows_a_password() -> None:
    with pytest.raises(ConfigurationError) as caught:
        store_from_spec("memcache://admin:hunter2@cache:11211", client_id="c")
    assert "hunter2" not in str(caught.value)
    assert "admin:***@cache:11211" in str(caught.value)


def test_redis_spec_builds_a_redis_store_under_the_named_key() -> None:
    from pleo_auth.stores.redis import RedisStore

    store = store_from_spec("redis://127.0.0.1:6390/3?key=myapp:tokens", client_id="c")
    assert isinstance(store, RedisStore)
    assert store.redis_key == "myapp:tokens"
    assert store.spec == "redis://127.0.0.1:6390/3?key=myapp:tokens"


def test_redis_spec_error_hides_the_password() -> None:
    with pytest.raises(ConfigurationError) as caught:
        store_from_spec("redis://:hunter2@127.0.0.1:6379/notanumber", client_id="c")
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    "spec",
    ["keyring", "file:/var/lib/app/tokens.json", "redis://127.0.0.1:6391/0?key=app:pleo"],
)
def test_a_stores_spec_names_the_same_tokens_again(spec: str) -> None:
    store = store_from_spec(spec, client_id="client-1")
    assert store.spec is not None
    again = store_from_spec(store.spec, client_id="client-1")
    assert again.key == store.key


def test_redact_spec_masks_passwords_in_userinfo_and_query() -> None:
    assert redact_spec("rediss://user:pw@h:1/0") == "rediss://user:***@h:1/0"
    assert redact_spec("unix:///s.sock?password=pw&db=2") == "unix:///s.sock?password=***&db=2"
    assert redact_spec("file:/a:b@c") == "file:/a:b@c"
