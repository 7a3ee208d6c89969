"""Tests for pleo_auth.settings: one validated settings object, built three ways."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pleo_auth import (
    AuthorizationFlow,
    ConfigurationError,
    FileStore,
    KeyringStore,
    LoginHint,
    MemoryStore,
    PleoSession,
    ReauthenticationRequired,
    RedisStore,
    Settings,
)
from pleo_auth.cli import login_command
from pleo_auth.flow import AUTHORIZE_URLS
from pleo_auth.session import ENVIRONMENTS
from pleo_auth.settings import ENDPOINTS

EMULATOR_TOKEN_URL = "http://127.0.0.1:8080/oauth/token"


def test_one_table_gives_every_url_of_each_environment() -> None:
    staging = ENDPOINTS["staging"]
    assert staging.token_url == "https://auth.staging.pleo.io/oauth/token"
    assert staging.authorize_url == "https://auth.staging.pleo.io/oauth/authorize"
    assert staging.introspection_url == "https://auth.staging.pleo.io/oauth/token/introspect"
    assert staging.api_url == "https://external.staging.pleo.io"
    # The 0.1 tables are views of it, not copies.
    assert ENVIRONMENTS["production"] == (
        ENDPOINTS["production"].token_url,
        ENDPOINTS["production"].api_url,
    )
    assert AUTHORIZE_URLS["staging"] == staging.authorize_url


def test_an_overridden_token_url_brings_the_endpoints_beside_it() -> None:
    urls = Settings("c", token_url=EMULATOR_TOKEN_URL).endpoints
    assert urls.authorize_url == "http://127.0.0.1:8080/oauth/authorize"
    assert urls.introspection_url == "http://127.0.0.1:8080/oauth/token/introspect"
    assert urls.api_url == "https://external.pleo.io"


def test_the_secret_is_in_no_repr() -> None:
    settings = Settings("client-1", "s3cr3t-value")
    assert "s3cr3t-value" not in repr(settings)
    assert "s3cr3t-value" not in str(settings)


def test_from_env_reads_pleo_variables_and_given_values_win() -> None:
    env = {
        "PLEO_CLIENT_ID": " client-1 ",
        "PLEO_ENVIRONMENT": "staging",
        "PLEO_REFRESH_MARGIN": "30",
        "PLEO_MAX_REFRESH_ATTEMPTS": "2",
        "PLEO_SCOPES": "users:read  users:read",
        "PLEO_TOKEN_URL": "",  # blank is unset
    }
    settings = Settings.from_env(env, environment="production")
    assert settings.client_id == "client-1"
    assert settings.environment == "production"
    assert settings.refresh_margin == 30.0
    assert settings.max_refresh_attempts == 2
    assert settings.scopes == "users:read"
    assert settings.token_url is None


def test_from_env_names_the_variable_a_bad_value_came_from() -> None:
    with pytest.raises(
        ConfigurationError, match=r"token_url must use https://.*\(PLEO_TOKEN_URL\)"
    ):
        Settings.from_env({"PLEO_CLIENT_ID": "c", "PLEO_TOKEN_URL": "http://pleo.example/t"})
    with pytest.raises(ConfigurationError, match="PLEO_REFRESH_MARGIN must be a number"):
        Settings.from_env({"PLEO_CLIENT_ID": "c", "PLEO_REFRESH_MARGIN": "soon"})
    with pytest.raises(ConfigurationError, match=r"unknown environment 'dev'.*\(--environment\)"):
        Settings.from_env({}, labels={"environment": "--environment"}, environment="dev")


def test_from_mapping_names_where_and_the_key() -> None:
    with pytest.raises(ConfigurationError, match=r"^app\.config: PLEO_REFRESH_MARGIN must be"):
        Settings.from_mapping(
            {"CLIENT_ID": "c", "REFRESH_MARGIN": -1}, where="app.config", prefix="PLEO_"
        )
    with pytest.raises(
        ConfigurationError, match=r"^settings\.PLEO_AUTH: STORE: unknown token store"
    ):
        Settings.from_mapping({"CLIENT_ID": "c", "STORE": "mongodb:x"}, where="settings.PLEO_AUTH")
    with pytest.raises(ConfigurationError, match=r"unknown setting.*PLEO_SCOPE"):
        Settings.from_mapping({"CLIENT_ID": "c", "SCOPE": "x"}, where="app.config", prefix="PLEO_")


def test_the_environment_is_named_before_a_bad_client_id() -> None:
    with pytest.raises(ConfigurationError, match="unknown environment"):
        Settings("\x1b", environment="dev")  # type: ignore[arg-type]


def test_the_default_store_is_the_keyring_of_the_client_and_built_in_one_place() -> None:
    store = Settings("client-1").build_store()
    assert isinstance(store, KeyringStore)
    assert store.account == "client-1"


def test_a_session_and_a_flow_take_settings(tmp_path: Path) -> None:
    settings = Settings("client-1", "secret", token_url=EMULATOR_TOKEN_URL, scopes=["users:read"])
    store = FileStore(tmp_path / "tokens.json")
    with PleoSession(settings=settings, store=store) as session:
        assert session.settings is settings
        assert session.token_url == EMULATOR_TOKEN_URL
    flow = AuthorizationFlow(
        settings=settings, redirect_uri="http://127.0.0.1:1/callback", store=store
    )
    assert flow.authorize_url == "http://127.0.0.1:8080/oauth/authorize"
    assert flow.scope == "users:read"


def test_settings_and_a_differing_keyword_argument_are_refused() -> None:
    settings = Settings("client-1")
    with pytest.raises(ConfigurationError, match="either settings or refresh_margin"):
        PleoSession(settings=settings, store=MemoryStore(), refresh_margin=5)
    with pytest.raises(ConfigurationError, match="either settings or client_id"):
        AuthorizationFlow("other", settings=settings, redirect_uri="http://127.0.0.1:1/c")


def test_a_session_at_the_emulator_does_not_call_itself_production() -> None:
    session = PleoSession(
        "client-1",
        store=MemoryStore(),
        token_url=EMULATOR_TOKEN_URL,
        api_url="http://127.0.0.1:8080",
    )
    with session:
        text = repr(session)
    assert "production" not in text
    assert EMULATOR_TOKEN_URL in text
    with PleoSession("client-1", store=MemoryStore(), environment="staging") as staging:
        assert "environment='staging'" in repr(staging)


def test_an_empty_secret_still_means_none_for_a_session_as_in_0_1() -> None:
    with PleoSession("client-1", "", store=MemoryStore()) as session:
        assert session.settings.client_secret is None


@pytest.mark.parametrize(
    ("keyword", "value"),
    [("environment", "production"), ("refresh_margin", 60.0), ("client_auth", "basic")],
)
def test_settings_and_a_keyword_given_equal_to_its_default_are_refused(
    keyword: str, value: object
) -> None:
    """``PleoSession(settings=staging, environment="production")`` names two
    environments: refused, never silently staging. The defaults are sentinels, so
    a keyword given explicitly is told apart from one left out."""
    staging = Settings("client-1", environment="staging")
    with pytest.raises(ConfigurationError, match=f"either settings or {keyword}"):
        PleoSession(settings=staging, store=MemoryStore(), **{keyword: value})  # type: ignore[arg-type]
    with PleoSession(settings=staging, store=MemoryStore()) as session:
        assert session.environment == "staging"


def test_a_flow_with_settings_and_an_explicit_default_environment_is_refused() -> None:
    staging = Settings("client-1", environment="staging")
    with pytest.raises(ConfigurationError, match="either settings or environment"):
        AuthorizationFlow(
            settings=staging,
            environment="production",
            redirect_uri="http://127.0.0.1:1/c",
            store=MemoryStore(),
        )


def test_the_signature_still_shows_the_real_defaults() -> None:
    # In a fresh interpreter: the leak guard wraps PleoSession.__init__ in this one.
    code = (
        "import inspect\n"
        "from pleo_auth import PleoSession\n"
        "parameters = inspect.signature(PleoSession.__init__).parameters\n"
        "print(repr(parameters['environment'].default), repr(parameters['refresh_margin'].default))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "'production' 60.0"


# -- no secret in a repr or message ----------------------------------------------------

REDIS_PASSWORD = "hunter2-Redis-pw"


@pytest.mark.parametrize(
    "store",
    [
        f"redis://:{REDIS_PASSWORD}@127.0.0.1:6379/0",
        f"rediss://app:{REDIS_PASSWORD}@cache.example:6380/2?key=myapp:tokens",
        f"unix:///run/redis.sock?password={REDIS_PASSWORD}&db=1",
    ],
)
def test_the_repr_of_settings_never_shows_a_redis_password_in_the_store(store: str) -> None:
    """The store spec is kept as written, and a Redis URL's password is a secret:
    a repr (a debugger, a log line, Django's technical 500 page) shows it redacted."""
    settings = Settings("client-1", "secret-1", store=store)

    assert REDIS_PASSWORD not in repr(settings)
    assert REDIS_PASSWORD not in str(settings)
    assert REDIS_PASSWORD not in repr(
        Settings.from_env({"PLEO_CLIENT_ID": "c", "PLEO_STORE": store})
    )
    assert "***" in repr(settings)
    assert settings.store == store  # only the repr is redacted


@pytest.mark.parametrize(
    "spec",
    [f"redis//:{REDIS_PASSWORD}@cache:6379/0", f"rediss//user:{REDIS_PASSWORD}@cache:6380/0"],
)
def test_a_mistyped_redis_url_never_echoes_its_password(spec: str) -> None:
    """Missing its colon (``redis//``), the URL is an unknown store; the message
    quotes it without the user information."""
    with pytest.raises(ConfigurationError, match="unknown token store") as caught:
        Settings("client-1", store=spec)

    assert REDIS_PASSWORD not in str(caught.value)


def test_a_session_without_a_client_id_is_not_told_about_command_line_flags() -> None:
    """The core names its argument; only the command names --client-id."""
    with pytest.raises(ConfigurationError, match="client_id is required") as caught:
        PleoSession("", store=MemoryStore())

    assert "--client-id" not in str(caught.value)
    assert "PLEO_CLIENT_ID" not in str(caught.value)


def test_from_mapping_reports_a_key_that_is_not_a_string() -> None:
    with pytest.raises(ConfigurationError, match=r"^settings\.X: setting names must be strings"):
        Settings.from_mapping({"CLIENT_ID": "client-1", 1: "x"}, where="settings.X")


# -- each setting checked once ---------------------------------------------------------


def test_a_session_built_from_settings_checks_the_endpoint_settings_no_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """TokenEndpoint checks what it is given when built directly; built from a
    Settings (checked when made), it does not check again."""
    import pleo_auth._endpoint

    calls: list[str] = []
    real = pleo_auth._endpoint.check_settings

    def counting(*args: Any, **kwargs: Any) -> None:
        calls.append("check")
        real(*args, **kwargs)

    monkeypatch.setattr(pleo_auth._endpoint, "check_settings", counting)
    settings = Settings("client-1", token_url=EMULATOR_TOKEN_URL)
    with PleoSession(settings=settings, store=MemoryStore()):
        pass
    AuthorizationFlow(
        settings=settings, redirect_uri="http://127.0.0.1:1/c", store=MemoryStore()
    )._endpoint()
    assert calls == []
    pleo_auth._endpoint.TokenEndpoint(EMULATOR_TOKEN_URL, "client-1", None)
    assert calls == ["check"]


def test_the_keyring_store_of_settings_checks_the_client_id_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pleo_auth.settings

    calls: list[object] = []
    real = pleo_auth.settings.check_client_id

    def counting(client_id: object) -> str:
        calls.append(client_id)
        return real(client_id)

    monkeypatch.setattr(pleo_auth.settings, "check_client_id", counting)
    store = Settings("client-1", store="keyring").build_store()

    assert isinstance(store, KeyringStore)
    assert calls == ["client-1"]


# -- the login hint -----------------------------------------------------------------------


def test_the_hint_is_data_and_only_the_cli_renders_the_command(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "tokens.json")
    settings = Settings("client-7", token_url=EMULATOR_TOKEN_URL, environment="staging")
    hint = settings.login_hint(store)
    assert hint == LoginHint(
        client_id="client-7",
        environment="staging",
        token_url=EMULATOR_TOKEN_URL,
        store=f"file:{store.path}",
        where=store.describe(),
    )
    assert str(hint) == f"Log in with `{login_command(hint)}`."
    assert login_command(hint) == (
        f"pleo-auth login --client-id client-7 --store file:{store.path} "
        f"--environment staging --token-url {EMULATOR_TOKEN_URL}"
    )


@pytest.mark.parametrize(
    "url", ["redis://:s3cret-pw@127.0.0.1:1/0", "redis://app:s3cret-pw@127.0.0.1:1/0?key=k"]
)
def test_a_store_given_a_password_is_left_to_pleo_store_in_the_hint(url: str) -> None:
    """--store wins over PLEO_STORE, and no spec holds a password: a hint that
    named the store would log in without it. The command names none, and says why."""
    store = RedisStore(url)  # connects at its first use, not here
    assert store.spec_omits_password
    hint = Settings("client-7").login_hint(store)
    assert hint.store_in_env
    assert login_command(hint) == "pleo-auth login --client-id client-7"
    assert str(hint) == (
        "Log in with `pleo-auth login --client-id client-7`, with PLEO_STORE set to the "
        f"spec of {store.describe()} and its password."
    )
    assert "s3cret-pw" not in str(hint) + repr(hint)
    plain = Settings("client-7").login_hint(RedisStore("redis://app@127.0.0.1:1/0"))
    assert not plain.store_in_env
    assert " --store 'redis://app@127.0.0.1:1/0?key=" in login_command(plain)


def test_a_web_apps_hint_names_its_view_and_a_memory_store_names_no_command() -> None:
    assert str(LoginHint(view="/pleo/connect")) == "Log in at /pleo/connect."
    hint = Settings("c").login_hint(MemoryStore())
    assert hint.store is None
    assert "save the new tokens to memory" in str(hint)
    assert "in in memory" not in str(hint)


def test_an_empty_store_says_log_in_not_log_in_again(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "tokens.json")
    with (
        PleoSession("client-1", store=store) as session,
        pytest.raises(ReauthenticationRequired) as caught,
    ):
        session.get("/v2/employees")
    assert "again" not in str(caught.value)
    assert caught.value.login == Settings("client-1").login_hint(store)
    assert f"pleo-auth login --client-id client-1 --store file:{store.path}" in str(caught.value)


def test_a_session_carries_the_hint_it_is_given() -> None:
    hint = LoginHint(view="https://app.example/pleo/connect")
    with (
        PleoSession("client-1", store=MemoryStore(), login_hint=hint) as session,
        pytest.raises(ReauthenticationRequired) as caught,
    ):
        session.get("/v2/employees")
    assert caught.value.login is hint
    assert str(caught.value).endswith("Log in at https://app.example/pleo/connect.")
