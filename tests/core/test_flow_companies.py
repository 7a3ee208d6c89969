"""Tests for pleo_auth.flow over a grant per company: each login asks Pleo (the
emulator, over real HTTP) which company it is for and saves it as that company's
grant, through an Integration or straight into a store family."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import pytest
import requests
from support.emulator_http import flow_over

from pleo_auth import (
    AuthorizationError,
    Company,
    ConfigurationError,
    FileStore,
    Integration,
    MemoryStore,
    ReauthenticationRequired,
    TokenStoreFamily,
)
from pleo_auth.flow import AuthorizationFlow, Login, PendingAuthorization
from pleo_auth.testing import Emulator

REDIRECT_URI = "http://127.0.0.1:8765/callback"
A = Company("3f2504e0-4f89-11d3-9a0c-0305e82c3301")
B = Company("9b2c1f6e-1d2a-4c3b-8e4f-5a6b7c8d9e0f")
C = Company("0a0b0c0d-0000-4000-8000-00000000000c")
D = Company("0a0b0c0d-0000-4000-8000-00000000000d")

#: Company strings no flow may take, each with what it must never echo.
BAD_COMPANIES = [
    "",
    "../etc/passwd",
    "*",
    "pleo-auth:company:*",
    "3f2504e0-4f89-11d3-9a0c-0305e82c3301\n",
    "urn:pleo:user:3f2504e0-4f89-11d3-9a0c-0305e82c3301",
    "rt_looks-like-a-refresh-token",
]


def approve(authorize_url: str) -> str:
    """Play the browser: the emulator approves; return the callback URL."""
    response = requests.get(authorize_url, allow_redirects=False, timeout=10)
    assert response.status_code == 302, response.text
    return response.headers["Location"]


def with_subject(url: str, company: Company) -> str:
    """``url`` with its subject changed: the person picked another company at Pleo."""
    parts = urlsplit(url)
    query = {name: values[0] for name, values in parse_qs(parts.query).items()}
    query["urn_pleo_params_oauth_subject"] = company.urn
    return urlunsplit(parts._replace(query=urlencode(query)))


@pytest.fixture
def family(tmp_path: Path) -> TokenStoreFamily:
    return FileStore.family(tmp_path / "grants")


@pytest.fixture
def integration(emulator: Emulator, family: TokenStoreFamily) -> Iterator[Integration]:
    with Integration(
        emulator.client_id,
        emulator.client_secret,
        store=family,
        token_url=emulator.token_url,
        api_url=emulator.api_url,
    ) as pleo:
        yield pleo


@pytest.fixture
def flow(integration: Integration) -> AuthorizationFlow:
    return AuthorizationFlow.for_integration(
        integration, redirect_uri=REDIRECT_URI, scopes="users:read"
    )


def log_in(flow: AuthorizationFlow, company: Company | None = None) -> Login:
    pending = flow.start(company=company)
    return flow.finish_login(pending, approve(pending.url))


# -- the company comes from Pleo ----------------------------------------------------


def test_a_login_is_saved_as_the_grant_of_the_company_pleo_names(
    flow: AuthorizationFlow, integration: Integration, family: TokenStoreFamily, emulator: Emulator
) -> None:
    emulator.set_default_company(A)  # the person picks A on Pleo's login page
    login = log_in(flow)
    assert login.company == A
    assert integration.companies() == [A]
    stored = family.store(A).load()
    assert stored is not None
    assert emulator.is_current(stored.access_token, stored.refresh_token)
    assert login.tokens.access_token == stored.access_token
    assert emulator.counters_for(A).code_exchanges == 1
    assert integration.session(A).get("/v2/employees").status_code == 200


def test_start_with_a_company_asks_pleo_to_preselect_it_and_remembers_it(
    flow: AuthorizationFlow,
) -> None:
    pending = flow.start(company=A.id.upper())
    query = parse_qs(urlsplit(pending.url).query)
    assert query["urn_pleo_params_oauth_subject"] == [A.urn]
    assert pending.company == A
    restored = PendingAuthorization.from_dict(pending.to_dict())
    assert restored == pending
    assert "company=urn:pleo:company:" in repr(pending)


def test_a_login_for_another_company_than_asked_is_refused_and_saves_nothing(
    flow: AuthorizationFlow, family: TokenStoreFamily, emulator: Emulator
) -> None:
    pending = flow.start(company=A)
    callback = approve(with_subject(pending.url, B))
    with pytest.raises(AuthorizationError) as caught:
        flow.finish_login(pending, callback)
    assert str(caught.value).startswith(f"this login is for {B}, not for {A} as asked")
    assert "nothing was saved" in str(caught.value)
    assert family.companies() == []
    assert emulator.counters_for(B).code_exchanges == 1


def test_a_second_login_for_a_company_replaces_its_grant_and_revives_its_session(
    flow: AuthorizationFlow, integration: Integration, family: TokenStoreFamily, emulator: Emulator
) -> None:
    first = log_in(flow, A)
    session = integration.session(A)
    assert session.get("/v2/employees").status_code == 200
    emulator.revoke(A)  # the grant dies at Pleo
    with pytest.raises(ReauthenticationRequired):
        session.get("/v2/employees")

    second = log_in(flow, A)
    stored = family.store(A).load()
    assert stored is not None
    assert stored.access_token == second.tokens.access_token != first.tokens.access_token
    assert session.get("/v2/employees").status_code == 200
    assert integration.companies() == [A]
    counters = emulator.counters_for(A)
    assert (counters.code_exchanges, counters.refresh_grants) == (2, 0)
    assert counters.rejected_refreshes == 1  # the dead grant's one refresh, then the login


def test_a_login_for_another_company_never_touches_the_first(
    flow: AuthorizationFlow, family: TokenStoreFamily, emulator: Emulator
) -> None:
    log_in(flow, A)
    before = family.store(A).load()
    log_in(flow, B)
    after = family.store(A).load()
    assert before is not None
    assert after is not None
    assert after == before
    assert emulator.is_current(after.access_token, after.refresh_token)
    assert family.companies() == [A, B]


def test_companies_logging_in_at_the_same_moment_each_get_their_own_grant(
    flow: AuthorizationFlow, family: TokenStoreFamily, emulator: Emulator
) -> None:
    companies = [A, B, C, D]
    pending = [flow.start(company=company) for company in companies]
    callbacks = [approve(each.url) for each in pending]
    barrier = threading.Barrier(len(companies))
    logins: dict[Company, Login] = {}
    failures: list[BaseException] = []

    def finish(index: int) -> None:
        barrier.wait()
        try:
            login = flow.finish_login(pending[index], callbacks[index])
        except BaseException as exc:  # reported below, with the others
            failures.append(exc)
        else:
            logins[companies[index]] = login

    threads = [threading.Thread(target=finish, args=(i,)) for i in range(len(companies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert failures == []
    assert family.companies() == sorted(companies)
    for company in companies:
        assert logins[company].company == company
        stored = family.store(company).load()
        assert stored is not None
        assert stored.access_token == logins[company].tokens.access_token
        assert emulator.is_current(stored.access_token, stored.refresh_token)
        assert emulator.counters_for(company).code_exchanges == 1
    assert emulator.counters.code_exchanges == len(companies)


def test_a_flow_straight_over_a_family_saves_under_the_company(
    emulator: Emulator, family: TokenStoreFamily
) -> None:
    flow = AuthorizationFlow(
        emulator.client_id,
        emulator.client_secret,
        redirect_uri=REDIRECT_URI,
        store=family,
        token_url=emulator.token_url,
        api_url=emulator.api_url,
    )
    emulator.set_default_company(B)
    login = log_in(flow)
    assert login.company == B
    assert family.companies() == [B]
    assert f"as {B}'s grant" in login.saved_to


# -- a flow over one store ----------------------------------------------------------


def test_a_one_store_flow_names_no_company_unless_asked(emulator: Emulator) -> None:
    store = MemoryStore()
    login = log_in(flow_over(emulator, store))
    assert login.company is None
    assert store.load() is not None


def test_a_one_store_flow_started_with_a_company_checks_it(emulator: Emulator) -> None:
    store = MemoryStore()
    flow = flow_over(emulator, store)
    assert log_in(flow, A).company == A
    assert store.load() is not None

    other = MemoryStore()
    flow = flow_over(emulator, other)
    pending = flow.start(company=A)
    with pytest.raises(AuthorizationError, match="nothing was saved"):
        flow.finish_login(pending, approve(with_subject(pending.url, B)))
    assert other.load() is None


# -- refused before anything happens -------------------------------------------------


@pytest.mark.parametrize("bad", BAD_COMPANIES)
def test_a_bad_company_string_is_refused_at_start_without_echo(
    flow: AuthorizationFlow, bad: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        flow.start(company=bad)
    assert "not a Pleo company id" in str(caught.value)
    if bad.strip():
        assert bad.strip() not in str(caught.value)


def test_a_pending_login_with_a_tampered_company_is_not_a_pending_login(
    flow: AuthorizationFlow,
) -> None:
    saved = flow.start(company=A).to_dict()
    for bad in ("../../x", 7):
        with pytest.raises(AuthorizationError, match="not a saved pending authorization"):
            PendingAuthorization.from_dict({**saved, "company": bad})


def test_subject_and_company_naming_different_companies_are_refused(
    flow: AuthorizationFlow,
) -> None:
    with pytest.raises(ConfigurationError, match="either subject or company"):
        flow.start(company=A, subject=B.urn)
    assert flow.start(company=A, subject=A.urn).company == A


def test_an_integration_of_another_client_is_refused_as_store(
    emulator: Emulator, integration: Integration
) -> None:
    with pytest.raises(ConfigurationError, match="for_integration"):
        AuthorizationFlow(
            "another-client",
            "secret",
            redirect_uri=REDIRECT_URI,
            store=integration,
            token_url=emulator.token_url,
        )
    flow = AuthorizationFlow(
        emulator.client_id,
        emulator.client_secret,
        redirect_uri=REDIRECT_URI,
        store=integration,
        token_url=emulator.token_url,
    )
    assert flow.integration is integration
    assert flow.store is integration.store


def test_for_integration_takes_the_integrations_client_and_endpoints(
    integration: Integration, emulator: Emulator
) -> None:
    flow = AuthorizationFlow.for_integration(
        integration, redirect_uri=REDIRECT_URI, scopes=["users:read", "export-jobs:read"]
    )
    assert flow.client_id == emulator.client_id
    assert flow.token_url == emulator.token_url
    assert flow.authorize_url == emulator.authorize_url
    assert flow.scope == "users:read export-jobs:read"
