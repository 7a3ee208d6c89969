"""Tests for pleo_auth.flow: the authorization code grant with PKCE, against the emulator."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
from support.emulator_http import flow_over
from support.session_doubles import ReadFailsOnce

from pleo_auth import (
    AuthorizationError,
    ConfigurationError,
    FileStore,
    MemoryStore,
    PleoSession,
    ReauthenticationRequired,
)
from pleo_auth.flow import (
    AUTHORIZE_URLS,
    AuthorizationFlow,
    PendingAuthorization,
    authorize_url_for,
    normalize_scopes,
)
from pleo_auth.testing import Emulator

REDIRECT_URI = "http://127.0.0.1:8765/callback"


def query(url: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(urlsplit(url).query).items()}


def approve(authorize_url: str) -> str:
    """Play the browser: the emulator auto-approves; return the callback URL it redirects to."""
    response = requests.get(authorize_url, allow_redirects=False, timeout=10)
    assert response.status_code == 302, response.text
    return response.headers["Location"]


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def flow(emulator: Emulator, store: MemoryStore) -> AuthorizationFlow:
    return AuthorizationFlow(
        emulator.client_id,
        emulator.client_secret,
        redirect_uri=REDIRECT_URI,
        scopes="users:read",
        store=store,
        token_url=emulator.token_url,
        authorize_url=emulator.authorize_url,
    )


# -- the authorize URL -------------------------------------------------------------


def test_start_builds_an_s256_authorize_url_without_the_verifier(
    flow: AuthorizationFlow, emulator: Emulator
) -> None:
    pending = flow.start()
    params = query(pending.url)
    assert pending.url.startswith(emulator.authorize_url + "?")
    assert params == {
        "response_type": "code",
        "client_id": emulator.client_id,
        "redirect_uri": REDIRECT_URI,
        "scope": "users:read",
        "state": pending.state,
        "code_challenge": s256(pending.code_verifier),
        "code_challenge_method": "S256",
    }
    assert pending.code_verifier not in pending.url


def test_verifier_is_43_to_128_unreserved_characters(flow: AuthorizationFlow) -> None:
    verifier = flow.start().code_verifier
    assert re.fullmatch(r"[A-Za-z0-9\-._~]{43,128}", verifier)


def test_each_start_has_its_own_state_and_verifier(flow: AuthorizationFlow) -> None:
    first, second = flow.start(), flow.start()
    assert first.state != second.state
    assert first.code_verifier != second.code_verifier


def test_subject_is_sent_as_pleos_parameter(flow: AuthorizationFlow) -> None:
    params = query(flow.start(subject="company-42").url)
    assert params["urn_pleo_params_oauth_subject"] == "company-42"


def test_scopes_given_to_start_replace_the_flows(flow: AuthorizationFlow) -> None:
    pending = flow.start(scopes=["users:read", "export-jobs:read"])
    assert query(pending.url)["scope"] == "users:read export-jobs:read"
    assert pending.scope == "users:read export-jobs:read"


def test_scopes_are_space_separated_in_the_url_not_plus_signs(flow: AuthorizationFlow) -> None:
    url = flow.start(scopes="users:read export-jobs:read").url
    assert "scope=users%3Aread%20export-jobs%3Aread" in url


def test_normalize_scopes_splits_joins_and_deduplicates() -> None:
    assert normalize_scopes(" users:read  export-jobs:read users:read ") == (
        "users:read export-jobs:read"
    )
    assert normalize_scopes([]) is None
    with pytest.raises(ConfigurationError, match="invalid scope"):
        normalize_scopes('users"read')


def test_default_authorize_urls_are_pleos() -> None:
    assert authorize_url_for("production") == "https://auth.pleo.io/oauth/authorize"
    assert authorize_url_for("staging") == "https://auth.staging.pleo.io/oauth/authorize"
    assert AUTHORIZE_URLS["production"] == "https://auth.pleo.io/oauth/authorize"


def test_a_flow_uses_its_environments_authorize_url() -> None:
    flow = AuthorizationFlow(
        "c", redirect_uri=REDIRECT_URI, environment="staging", store=MemoryStore()
    )
    assert flow.start().url.startswith("https://auth.staging.pleo.io/oauth/authorize?")


def test_authorize_url_defaults_to_the_one_beside_an_overridden_token_url() -> None:
    url = authorize_url_for(token_url="http://127.0.0.1:9/oauth/token")
    assert url == "http://127.0.0.1:9/oauth/authorize"


def test_an_explicit_authorize_url_wins() -> None:
    url = authorize_url_for(
        token_url="http://127.0.0.1:9/oauth/token", authorize_url="http://127.0.0.1:8/login"
    )
    assert url == "http://127.0.0.1:8/login"


@pytest.mark.parametrize("redirect_uri", ["/callback", "ftp://host/cb", "http://h/cb#frag"])
def test_a_bad_redirect_uri_is_a_configuration_error(redirect_uri: str) -> None:
    with pytest.raises(ConfigurationError, match="redirect_uri"):
        AuthorizationFlow("c", redirect_uri=redirect_uri, store=MemoryStore())


# -- the pending state -------------------------------------------------------------


def test_pending_state_survives_a_json_round_trip(flow: AuthorizationFlow) -> None:
    pending = flow.start()
    again = PendingAuthorization.from_dict(json.loads(json.dumps(pending.to_dict())))
    assert again == pending


def test_pending_repr_hides_verifier_and_state(flow: AuthorizationFlow) -> None:
    pending = flow.start()
    assert pending.code_verifier not in repr(pending)
    assert pending.state not in repr(pending)


@pytest.mark.parametrize(
    "change", [{"code_verifier": "short"}, {"state": None}, {"url": 3}, {"redirect_uri": None}]
)
def test_a_tampered_pending_state_is_refused(
    flow: AuthorizationFlow, change: dict[str, object]
) -> None:
    data = {**flow.start().to_dict(), **change}
    with pytest.raises(AuthorizationError, match="not a saved pending authorization"):
        PendingAuthorization.from_dict(data)


# -- the callback --------------------------------------------------------------------


def test_finish_with_the_callback_url_saves_the_tokens(
    flow: AuthorizationFlow, store: MemoryStore, emulator: Emulator
) -> None:
    pending = flow.start()
    tokens = flow.finish(pending, approve(pending.url))
    assert store.load() == tokens
    assert tokens.scope == "users:read"
    assert emulator.counters.code_exchanges == 1


def test_finish_with_the_query_parameters_saves_the_tokens(
    flow: AuthorizationFlow, store: MemoryStore
) -> None:
    pending = flow.start()
    tokens = flow.finish(pending.to_dict(), query(approve(pending.url)))
    assert store.load() == tokens


def test_finish_with_the_code_alone_saves_the_tokens(
    flow: AuthorizationFlow, store: MemoryStore
) -> None:
    pending = flow.start()
    code = query(approve(pending.url))["code"]
    tokens = flow.finish(pending, code=code)
    assert store.load() == tokens


def test_finish_needs_exactly_one_of_callback_and_code(flow: AuthorizationFlow) -> None:
    pending = flow.start()
    with pytest.raises(ConfigurationError):
        flow.finish(pending)
    with pytest.raises(ConfigurationError):
        flow.finish(pending, "http://127.0.0.1/cb?code=x", code="x")


def test_a_state_mismatch_is_refused_before_any_exchange(
    flow: AuthorizationFlow, store: MemoryStore, emulator: Emulator
) -> None:
    pending = flow.start()
    params = query(approve(pending.url))
    params["state"] = "x" * 43
    with pytest.raises(AuthorizationError, match="state does not match"):
        flow.finish(pending, params)
    assert emulator.counters.token_requests == 0
    assert store.load() is None


def test_a_callback_of_another_login_is_refused(flow: AuthorizationFlow) -> None:
    mine, theirs = flow.start(), flow.start()
    with pytest.raises(AuthorizationError, match="state does not match"):
        flow.finish(mine, approve(theirs.url))


def test_a_callback_without_state_is_refused(flow: AuthorizationFlow) -> None:
    pending = flow.start()
    params = query(approve(pending.url))
    del params["state"]
    with pytest.raises(AuthorizationError, match="no state"):
        flow.finish(pending, params)


def test_an_error_callback_raises_with_pleos_error_and_description(
    flow: AuthorizationFlow, emulator: Emulator
) -> None:
    pending = flow.start()
    callback = f"{REDIRECT_URI}?" + urlencode(
        {"error": "access_denied", "error_description": "The user said no", "state": pending.state}
    )
    with pytest.raises(AuthorizationError, match="access_denied") as caught:
        flow.finish(pending, callback)
    assert caught.value.error == "access_denied"
    assert caught.value.description == "The user said no"
    assert emulator.counters.token_requests == 0


def test_an_error_from_the_emulators_authorize_endpoint_is_reported(
    emulator: Emulator, store: MemoryStore
) -> None:
    flow = AuthorizationFlow(
        emulator.client_id,
        emulator.client_secret,
        redirect_uri=REDIRECT_URI,
        store=store,
        authorize_url=emulator.authorize_url + "?response_type=token",
        token_url=emulator.token_url,
    )
    pending = flow.start()
    with pytest.raises(AuthorizationError, match="invalid_request") as caught:
        flow.finish(pending, approve(pending.url))
    assert caught.value.error == "invalid_request"


def test_a_code_used_twice_is_refused_by_the_token_endpoint(
    flow: AuthorizationFlow, emulator: Emulator
) -> None:
    pending = flow.start()
    callback = approve(pending.url)
    flow.finish(pending, callback)
    with pytest.raises(AuthorizationError, match="refused the authorization code") as caught:
        flow.finish(pending, callback)
    assert caught.value.error == "invalid_grant"
    assert emulator.counters.code_exchanges == 1


def test_the_exchange_proves_possession_of_the_verifier(
    flow: AuthorizationFlow, emulator: Emulator
) -> None:
    pending = flow.start()
    callback = approve(pending.url)
    other_verifier = flow.start().code_verifier
    forged = PendingAuthorization.from_dict({**pending.to_dict(), "code_verifier": other_verifier})
    with pytest.raises(AuthorizationError, match="invalid_grant"):
        flow.finish(forged, callback)
    assert emulator.counters.code_exchanges == 0


def test_a_public_client_logs_in_with_pkce_alone() -> None:
    with Emulator(client_secret=None) as emulator:
        store = MemoryStore()
        flow = AuthorizationFlow(
            emulator.client_id,
            redirect_uri=REDIRECT_URI,
            store=store,
            token_url=emulator.token_url,
        )
        pending = flow.start()
        flow.finish(pending, approve(pending.url))
        assert store.load() is not None
        assert emulator.counters.code_exchanges == 1


# -- log in, and log in again -------------------------------------------------------


@pytest.fixture
def file_session(emulator: Emulator, tmp_path: Path) -> Iterator[PleoSession]:
    store = FileStore(tmp_path / "tokens.json")
    with PleoSession(
        emulator.client_id,
        emulator.client_secret,
        store=store,
        token_url=emulator.token_url,
        api_url=emulator.api_url,
    ) as session:
        yield session


def test_a_session_over_the_store_uses_tokens_from_a_login(
    emulator: Emulator, file_session: PleoSession
) -> None:
    flow = AuthorizationFlow(
        emulator.client_id,
        emulator.client_secret,
        redirect_uri=REDIRECT_URI,
        store=file_session.store,
        token_url=emulator.token_url,
    )
    pending = flow.start()
    flow.finish(pending, approve(pending.url))
    assert file_session.get("/v2/employees").status_code == 200


def test_after_the_grant_dies_a_new_login_brings_the_session_back(
    emulator: Emulator, file_session: PleoSession
) -> None:
    flow = AuthorizationFlow(
        emulator.client_id,
        emulator.client_secret,
        redirect_uri=REDIRECT_URI,
        store=file_session.store,
        token_url=emulator.token_url,
    )
    pending = flow.start()
    flow.finish(pending, approve(pending.url))
    assert file_session.get("/v2/employees").status_code == 200

    emulator.revoke_all()
    with pytest.raises(ReauthenticationRequired):
        file_session.get("/v2/employees")
    with pytest.raises(ReauthenticationRequired):
        file_session.get("/v2/employees")

    pending = flow.start()
    flow.finish(pending, approve(pending.url))
    assert file_session.get("/v2/employees").status_code == 200
    counters = emulator.counters
    assert counters.code_exchanges == 2
    assert counters.rejected_refreshes == 1
    assert counters.reuse_detections == 0


def test_a_login_replaces_unreadable_leftovers_in_the_store(
    emulator: Emulator, tmp_path: Path
) -> None:
    path = tmp_path / "tokens.json"
    path.write_text("not json")
    path.chmod(0o600)
    store = FileStore(path)
    flow = flow_over(emulator, store)
    pending = flow.start()
    tokens = flow.finish(pending, approve(pending.url))
    assert store.load() == tokens


def test_a_login_just_made_is_saved_though_the_stores_read_fails_for_now(
    emulator: Emulator, tmp_path: Path
) -> None:
    """No stored pair can descend from tokens the code exchange just issued, so a read
    that fails for a moment does not cost the person their login (an old login passed
    again is another matter: tests/core/test_integration_add.py)."""
    store = ReadFailsOnce(tmp_path / "tokens.json")
    flow = flow_over(emulator, store)
    pending = flow.start()
    store.fail_next_load = True
    tokens = flow.finish(pending, approve(pending.url))
    assert not store.fail_next_load  # the read was tried, and failed
    assert store.load() == tokens


# -- issue 11 ----------------------------------------------------------------------------


def test_a_wrong_client_secret_at_login_says_so_not_the_code(
    emulator: Emulator, store: MemoryStore
) -> None:
    flow = AuthorizationFlow(
        emulator.client_id,
        "not-the-secret",
        redirect_uri=REDIRECT_URI,
        store=store,
        token_url=emulator.token_url,
    )
    pending = flow.start()
    with pytest.raises(AuthorizationError) as caught:
        flow.finish(pending, approve(pending.url))
    message = str(caught.value)
    assert "client secret is wrong" in message
    assert "authorization code" not in message
    assert caught.value.error == "invalid_client"
    assert "not-the-secret" not in message
    assert store.load() is None


def test_a_login_records_the_token_endpoint_and_api_that_issued_the_tokens(
    flow: AuthorizationFlow, store: MemoryStore, emulator: Emulator
) -> None:
    pending = flow.start()
    flow.finish(pending, approve(pending.url))
    saved = store.load()
    assert saved is not None
    assert saved.token_url == emulator.token_url
    assert saved.api_url == "https://external.pleo.io"  # the flow was given no api_url


def test_a_flows_repr_names_its_urls_when_they_are_overridden(flow: AuthorizationFlow) -> None:
    assert "production" not in repr(flow)
    assert flow.token_url in repr(flow)
