"""PleoSession end to end, over real HTTP against the emulator (and small local servers):
its construction, the URLs it sends the bearer token to, the tokens and the store,
``refresh()`` and ``close()``."""

from __future__ import annotations

import base64
import math
from pathlib import Path
from typing import Any

import pytest
import requests
from support.session_doubles import CaptureServer, Seen, status_sequence
from support.session_helpers import MakeSession, bearer, issued, scheduled, stopped

from pleo_auth import (
    ConfigurationError,
    FileStore,
    MemoryStore,
    PleoSession,
    ReauthenticationRequired,
    TokenSet,
)
from pleo_auth.testing import Emulator

# -- construction -----------------------------------------------------------------------


def test_pleo_session_is_a_requests_session(emulator: Emulator, make_session: MakeSession) -> None:
    assert isinstance(make_session(emulator), requests.Session)


@pytest.mark.parametrize(
    ("environment", "token_url", "api_url"),
    [
        ("production", "https://auth.pleo.io/oauth/token", "https://external.pleo.io"),
        ("staging", "https://auth.staging.pleo.io/oauth/token", "https://external.staging.pleo.io"),
    ],
)
def test_environment_picks_the_token_and_api_urls(
    environment: Any, token_url: str, api_url: str
) -> None:
    with PleoSession("client", "secret", store=MemoryStore(), environment=environment) as session:
        assert session.token_url == token_url
        assert session.api_url == api_url
        assert session._coordinator.endpoint.token_url == token_url


def test_default_environment_is_production() -> None:
    with PleoSession("client", "secret", store=MemoryStore()) as session:
        assert session.environment == "production"
        assert session.token_url == "https://auth.pleo.io/oauth/token"
        assert session.api_url == "https://external.pleo.io"


def test_token_url_and_api_url_override_the_environment() -> None:
    with PleoSession(
        "client",
        "secret",
        store=MemoryStore(),
        environment="staging",
        token_url="http://127.0.0.1:9/oauth/token",
        api_url="http://127.0.0.1:9/api/",
    ) as session:
        assert session.token_url == "http://127.0.0.1:9/oauth/token"
        assert session.api_url == "http://127.0.0.1:9/api"


BAD_ARGUMENTS: list[dict[str, Any]] = [
    {"client_id": ""},
    {"client_id": 42},
    {"environment": "sandbox"},
    {"refresh_margin": -1.0},
    {"refresh_margin": math.nan},
    {"tokens": {"access_token": "at", "refresh_token": "rt", "expires_in": 60}},
    {"api_url": "ftp://external.pleo.io"},
    {"api_url": "external.pleo.io"},
    {"token_url": "auth.pleo.io/oauth/token"},
    {"client_auth": "digest"},
    {"max_refresh_attempts": 0},
    {"max_refresh_time": 0.0},
    {"refresh_timeout": 0.0},
    {"drain_timeout": -1.0},
    {"drain_timeout": math.nan},
]


@pytest.mark.parametrize("bad", BAD_ARGUMENTS, ids=lambda bad: "-".join(map(str, bad.items())))
def test_bad_arguments_raise_configuration_error(bad: dict[str, Any]) -> None:
    kwargs: dict[str, Any] = {"client_id": "client", "client_secret": "secret"}
    kwargs.update(bad)
    client_id = kwargs.pop("client_id")
    with pytest.raises(ConfigurationError):
        PleoSession(client_id, store=MemoryStore(), **kwargs).close()


def test_configuration_error_can_be_caught_as_value_error() -> None:
    with pytest.raises(ValueError, match="environment"):
        PleoSession("client", store=MemoryStore(), environment="sandbox")  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [{"client_auth": "digest"}, {"max_refresh_attempts": 0}])
def test_bad_arguments_are_refused_even_when_another_session_shares_the_coordinator(
    emulator: Emulator, make_session: MakeSession, bad: dict[str, Any]
) -> None:
    store = MemoryStore()
    make_session(emulator, store)
    with pytest.raises(ConfigurationError):
        make_session(emulator, store, **bad)


def test_url_with_another_scheme_raises_configuration_error(
    emulator: Emulator, make_session: MakeSession
) -> None:
    session = make_session(emulator, tokens=issued(emulator))
    with pytest.raises(ConfigurationError):
        session.get("mailto:someone@example.com")


# -- URLs and the bearer token ----------------------------------------------------------


@pytest.mark.parametrize("path", ["/v2/employees", "v2/employees"])
def test_relative_urls_resolve_against_api_url(
    emulator: Emulator, make_session: MakeSession, path: str
) -> None:
    session = make_session(emulator, tokens=issued(emulator))
    response = session.get(path)
    assert response.status_code == 200
    assert response.url == emulator.api_url + "/v2/employees"
    assert [e["firstName"] for e in response.json()["data"]] == ["Ada", "Grace", "Alan"]


def test_bearer_token_is_attached_to_requests_under_api_url(
    emulator: Emulator, make_session: MakeSession
) -> None:
    tokens = issued(emulator)
    session = make_session(emulator, tokens=tokens)
    absolute = session.get(emulator.api_url + "/v2/employees")
    relative = session.get("/v2/employees")
    assert bearer(absolute) == f"Bearer {tokens.access_token}"
    assert bearer(relative) == f"Bearer {tokens.access_token}"


def test_bearer_token_is_never_sent_to_another_host(
    emulator: Emulator, make_session: MakeSession
) -> None:
    session = make_session(emulator, tokens=issued(emulator))
    with CaptureServer(status_sequence(401)) as other:
        response = session.get(other.url + "/v2/employees")
    assert response.status_code == 401
    assert len(other.seen) == 1
    assert "authorization" not in other.seen[0].headers
    assert emulator.counters.token_requests == 0  # a foreign 401 starts no refresh


def test_bearer_token_is_not_sent_outside_the_api_url_path(
    emulator: Emulator, make_session: MakeSession
) -> None:
    tokens = issued(emulator)
    with CaptureServer() as api:
        session = make_session(emulator, api_url=api.url + "/api", tokens=tokens)
        session.get(api.url + "/api-other/x")
        session.get(api.url + "/x")
        session.get("/x")
    assert [seen.path for seen in api.seen] == ["/api-other/x", "/x", "/api/x"]
    assert "authorization" not in api.seen[0].headers
    assert "authorization" not in api.seen[1].headers
    assert api.seen[2].headers["authorization"] == f"Bearer {tokens.access_token}"


def test_bearer_token_is_dropped_when_a_redirect_leads_to_another_host(
    emulator: Emulator, make_session: MakeSession
) -> None:
    tokens = issued(emulator)
    with CaptureServer() as elsewhere:

        def redirect(seen: Seen) -> tuple[int, dict[str, str], bytes]:
            return 302, {"Location": elsewhere.url + "/landing"}, b""

        with CaptureServer(redirect) as api:
            session = make_session(emulator, api_url=api.url, tokens=tokens)
            response = session.get("/v2/redirect")
    assert response.status_code == 200
    assert api.seen[0].headers["authorization"] == f"Bearer {tokens.access_token}"
    assert [seen.path for seen in elsewhere.seen] == ["/landing"]
    assert "authorization" not in elsewhere.seen[0].headers


def test_explicit_auth_argument_is_sent_instead_of_the_bearer_token(
    emulator: Emulator, make_session: MakeSession
) -> None:
    with CaptureServer() as api:
        session = make_session(emulator, api_url=api.url, tokens=issued(emulator))
        session.get("/v2/employees", auth=("user", "pass"))
    expected = "Basic " + base64.b64encode(b"user:pass").decode()
    assert api.seen[0].headers["authorization"] == expected


# -- tokens and the store ------------------------------------------------------------------


def test_tokens_argument_seeds_the_store(emulator: Emulator, make_session: MakeSession) -> None:
    store = MemoryStore()
    tokens = issued(emulator)
    make_session(emulator, store, tokens=tokens)
    assert store.load() == tokens


def test_tokens_argument_does_not_replace_newer_tokens_in_the_store(
    emulator: Emulator, make_session: MakeSession
) -> None:
    older = issued(emulator)
    newer = TokenSet.from_response(emulator.issue_tokens(), now=older.issued_at + 10)
    store = MemoryStore(newer)
    make_session(emulator, store, tokens=older)
    assert store.load() == newer


def test_tokens_argument_never_replaces_an_unrelated_pair_in_the_store(
    emulator: Emulator, make_session: MakeSession, caplog: pytest.LogCaptureFixture
) -> None:
    # An unrelated stored pair may be a later login, or a rotated descendant of the
    # tokens written by 0.1, which kept no lineage: "newer" cannot be decided by the
    # clock (a reply rebuilt with from_response is stamped now), so the store wins.
    newer = issued(emulator)
    older = TokenSet.from_response(emulator.issue_tokens(), now=newer.issued_at - 10)
    store = MemoryStore(older)
    make_session(emulator, store, tokens=newer)
    assert store.load() == older
    assert any("already holds other tokens" in r.getMessage() for r in caplog.records)


def test_tokens_argument_replaces_its_own_ancestor_in_the_store(
    emulator: Emulator, make_session: MakeSession
) -> None:
    first = issued(emulator)
    store = MemoryStore(first)
    descendant = issued(emulator).succeeding(first)
    make_session(emulator, store, tokens=descendant)
    assert store.load() == descendant


def test_tokens_property_returns_the_current_tokens(
    emulator: Emulator, make_session: MakeSession
) -> None:
    tokens = issued(emulator)
    session = make_session(emulator, tokens=tokens)
    assert session.tokens == tokens


def test_tokens_property_is_none_when_the_store_is_empty(
    emulator: Emulator, make_session: MakeSession
) -> None:
    assert make_session(emulator).tokens is None


def test_request_with_an_empty_store_raises_reauthentication_required_saying_how_to_log_in(
    emulator: Emulator, make_session: MakeSession
) -> None:
    session = make_session(emulator)
    with pytest.raises(ReauthenticationRequired, match="pleo-auth login"):
        session.get("/v2/employees")
    assert emulator.counters.token_requests == 0
    assert emulator.counters.api_requests == 0


# -- refresh() ----------------------------------------------------------------------------


def test_refresh_forces_exactly_one_refresh_and_returns_the_new_tokens(
    emulator: Emulator, make_session: MakeSession
) -> None:
    old = issued(emulator)
    store = MemoryStore()
    session = make_session(emulator, store, tokens=old)
    new = session.refresh()
    assert emulator.counters.refresh_grants == 1
    assert new.access_token != old.access_token
    assert new.refresh_token != old.refresh_token
    assert store.load() == new
    assert session.tokens == new


def test_refresh_persists_both_new_tokens_and_drops_the_old_ones(
    emulator: Emulator, make_session: MakeSession, tmp_path: Path
) -> None:
    old = issued(emulator)
    path = tmp_path / "tokens.json"
    session = make_session(emulator, FileStore(path), tokens=old)
    new = session.refresh()
    text = path.read_text()
    assert new.access_token in text
    assert new.refresh_token in text
    assert old.access_token not in text
    assert old.refresh_token not in text
    assert FileStore(path).load() == new


def test_requests_after_a_refresh_carry_the_new_access_token(
    emulator: Emulator, make_session: MakeSession
) -> None:
    session = make_session(emulator, tokens=issued(emulator))
    new = session.refresh()
    response = session.get("/v2/employees")
    assert response.status_code == 200
    assert bearer(response) == f"Bearer {new.access_token}"


# -- close ----------------------------------------------------------------------------------


def test_close_stops_the_refresh_timer(emulator: Emulator, make_session: MakeSession) -> None:
    session = make_session(emulator, tokens=issued(emulator))
    assert scheduled(session)
    session.close()
    assert stopped(session)


def test_context_manager_closes_the_session_and_stops_the_timer(emulator: Emulator) -> None:
    with PleoSession(
        emulator.client_id,
        emulator.client_secret,
        store=MemoryStore(),
        token_url=emulator.token_url,
        api_url=emulator.api_url,
        tokens=issued(emulator),
    ) as session:
        assert session.get("/v2/employees").status_code == 200
        assert scheduled(session)
    assert stopped(session)
