"""Tests for the emulator's companies: grants per company, introspection of the
subject, per-company counters, ending an installation, and the token endpoint's
capacity. Over real HTTP on loopback."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from support.emulator_http import api, authorize, exchange, pkce_pair, refresh

from pleo_auth import Company
from pleo_auth.errors import ConfigurationError
from pleo_auth.testing import (
    DEFAULT_COMPANY,
    Emulator,
    EmulatorCounters,
    FakeClock,
    Fault,
    GrantCounters,
    TokenCapacity,
)

ACME_ID = "3f0c8a52-7d1e-4b6a-9c2f-5e8d1a2b3c4d"
ACME = "urn:pleo:company:" + ACME_ID
GLOBEX_ID = "9b1d4e7f-2a3c-4d5e-8f6a-7b8c9d0e1f2a"
GLOBEX = "urn:pleo:company:" + GLOBEX_ID
SUBJECT_URN = "urn:pleo:params:oauth:subject_urn"


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator() as emulator:
        yield emulator


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


@pytest.fixture
def clocked(clock: FakeClock) -> Iterator[Emulator]:
    with Emulator(access_token_lifetime=60, clock=clock) as emulator:
        yield emulator


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def introspect(http: requests.Session, emu: Emulator, token: str) -> dict[str, Any]:
    response = http.post(
        emu.introspect_url, data={"token": token}, auth=(emu.client_id, emu.client_secret or "")
    )
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    result: dict[str, Any] = response.json()
    return result


def company_of(http: requests.Session, emu: Emulator, token: str) -> str:
    subject: str = introspect(http, emu, token)[SUBJECT_URN]
    return subject


def login(http: requests.Session, emu: Emulator, **params: str) -> dict[str, Any]:
    verifier, challenge = pkce_pair()
    code = authorize(http, emu, code_challenge=challenge, **params)["code"]
    response = exchange(http, emu, code, verifier)
    assert response.status_code == 200
    tokens: dict[str, Any] = response.json()
    return tokens


def delete_installation(
    http: requests.Session, emu: Emulator, access_token: str
) -> requests.Response:
    return http.delete(
        emu.api_url + "/v1/installations/me", headers={"Authorization": f"Bearer {access_token}"}
    )


# -- naming a company ----------------------------------------------------------------


def test_a_grant_without_a_company_belongs_to_the_default_company(
    emu: Emulator, http: requests.Session
) -> None:
    tokens = emu.issue_tokens()

    assert emu.default_company == DEFAULT_COMPANY
    assert company_of(http, emu, tokens["access_token"]) == DEFAULT_COMPANY
    assert emu.companies() == [DEFAULT_COMPANY]


def test_a_company_id_and_its_urn_name_the_same_company(
    emu: Emulator, http: requests.Session
) -> None:
    by_id = emu.issue_tokens(company=ACME_ID.upper())
    by_urn = emu.issue_tokens(company=ACME)
    rotated = refresh(http, emu, by_id["refresh_token"]).json()

    assert company_of(http, emu, rotated["access_token"]) == ACME
    assert company_of(http, emu, by_urn["access_token"]) == ACME
    assert emu.companies() == [ACME]
    assert emu.counters_for(ACME_ID) == emu.counters_for(ACME) == GrantCounters(refresh_grants=1)


NOT_COMPANIES = [
    "",
    "*",
    "pleo-auth:*",
    "../../etc/passwd",
    "/tmp/x",
    "company-42",
    "urn:pleo:company:",
    "urn:pleo:company:*",
    "urn:pleo:organization:" + ACME_ID,
    "urn:pleo:company:urn:pleo:company:" + ACME_ID,
    ACME_ID + "\n",
    " " + ACME_ID,
    ACME_ID + "\x00",
    "{" + ACME_ID + "}",
    ACME_ID.replace("-", ""),
    "urn:uuid:" + ACME_ID,
    "3f0c8a52-7d1e-4b6a-9c2f-5e8d1a2b3c4g",  # g is not hex
    "\x1b[31m",
]


@pytest.mark.parametrize("value", NOT_COMPANIES)
def test_a_string_that_names_no_company_is_refused_everywhere(emu: Emulator, value: str) -> None:
    for call in (
        lambda: emu.issue_tokens(company=value),
        lambda: emu.counters_for(value),
        lambda: emu.set_default_company(value),
        lambda: emu.revoke(value),
        lambda: Emulator(company=value),
    ):
        with pytest.raises(ConfigurationError, match="urn:pleo:company:<uuid>") as caught:
            call()
        assert isinstance(caught.value, ValueError)
        assert repr(value) not in str(caught.value)  # never echoed: it may be a secret
    assert emu.companies() == []
    assert emu.default_company == DEFAULT_COMPANY


@pytest.mark.parametrize("value", [None, 42, b"3f0c8a52-7d1e-4b6a-9c2f-5e8d1a2b3c4d", [ACME]])
def test_a_company_that_is_not_a_string_is_refused(emu: Emulator, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=type(value).__name__):
        emu.counters_for(value)


def test_the_emulator_takes_a_company_object_and_an_upper_case_urn(emu: Emulator) -> None:
    # pleo_auth.Company decides what names a company, in the emulator as in the library.
    company = Company(GLOBEX_ID)
    upper_urn = "URN:PLEO:COMPANY:" + GLOBEX_ID.upper()
    emu.issue_tokens(company=company)
    assert emu.counters_for(upper_urn) == emu.counters_for(company.urn)
    assert emu.companies() == [company.urn]
    assert emu.revoke(company) == 1


def test_the_emulators_company_is_the_default_and_can_change(
    http: requests.Session,
) -> None:
    with Emulator(company=ACME_ID) as emu:
        first = emu.issue_tokens()
        emu.set_default_company(GLOBEX)
        second = emu.issue_tokens()

        assert company_of(http, emu, first["access_token"]) == ACME
        assert company_of(http, emu, second["access_token"]) == GLOBEX
        assert emu.default_company == GLOBEX
        assert emu.companies() == sorted([ACME, GLOBEX])


# -- logins ------------------------------------------------------------------------


def test_a_login_belongs_to_the_company_its_subject_names(
    emu: Emulator, http: requests.Session
) -> None:
    by_urn = login(http, emu, urn_pleo_params_oauth_subject=ACME)
    by_id = login(http, emu, urn_pleo_params_oauth_subject=GLOBEX_ID)

    assert company_of(http, emu, by_urn["access_token"]) == ACME
    assert company_of(http, emu, by_id["access_token"]) == GLOBEX
    assert emu.counters_for(ACME).code_exchanges == 1
    assert emu.counters_for(GLOBEX).code_exchanges == 1
    assert emu.counters.code_exchanges == 2


def test_a_login_whose_subject_is_an_upper_case_urn_is_a_grant_of_that_company(
    emu: Emulator, http: requests.Session
) -> None:
    upper_urn = "URN:PLEO:COMPANY:" + GLOBEX_ID.upper()
    assert Company(upper_urn).urn == GLOBEX  # the library says this names Globex

    tokens = login(http, emu, urn_pleo_params_oauth_subject=upper_urn)

    assert company_of(http, emu, tokens["access_token"]) == GLOBEX
    assert emu.companies() == [GLOBEX]


def test_a_login_without_a_subject_gets_the_company_the_user_picks(
    emu: Emulator, http: requests.Session
) -> None:
    emu.set_default_company(GLOBEX)

    tokens = login(http, emu)

    assert company_of(http, emu, tokens["access_token"]) == GLOBEX


def test_a_subject_that_names_no_company_is_ignored_as_a_hint(
    emu: Emulator, http: requests.Session
) -> None:
    tokens = login(http, emu, urn_pleo_params_oauth_subject="company-42")

    assert company_of(http, emu, tokens["access_token"]) == DEFAULT_COMPANY


def test_the_company_is_chosen_when_the_user_logs_in_not_at_the_exchange(
    emu: Emulator, http: requests.Session
) -> None:
    emu.set_default_company(ACME)
    verifier, challenge = pkce_pair()
    code = authorize(http, emu, code_challenge=challenge)["code"]
    emu.set_default_company(GLOBEX)

    tokens = exchange(http, emu, code, verifier).json()

    assert company_of(http, emu, tokens["access_token"]) == ACME


def test_two_companies_logging_in_at_the_same_moment_each_get_their_own_grant(
    emu: Emulator,
) -> None:
    companies = [ACME, GLOBEX]
    barrier = threading.Barrier(len(companies))
    results: dict[str, dict[str, Any]] = {}

    def log_in(company: str) -> None:
        with requests.Session() as session:
            verifier, challenge = pkce_pair()
            barrier.wait()
            code = authorize(
                session, emu, code_challenge=challenge, urn_pleo_params_oauth_subject=company
            )["code"]
            results[company] = exchange(session, emu, code, verifier).json()

    threads = [threading.Thread(target=log_in, args=(company,)) for company in companies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    with requests.Session() as http:
        for company in companies:
            assert company_of(http, emu, results[company]["access_token"]) == company
    assert results[ACME]["refresh_token"] != results[GLOBEX]["refresh_token"]
    assert emu.companies() == sorted(companies)
    assert emu.counters.code_exchanges == 2


# -- introspection -------------------------------------------------------------------


def test_introspection_answers_the_subject_urn_of_a_live_access_token(
    clocked: Emulator, clock: FakeClock, http: requests.Session
) -> None:
    tokens = clocked.issue_tokens("users:read export-jobs:read", company=ACME)
    clock.advance(10)

    reply = introspect(http, clocked, tokens["access_token"])

    assert reply == {
        "active": True,
        "scope": "users:read export-jobs:read",
        "client_id": clocked.client_id,
        "sub": ACME_ID,
        SUBJECT_URN: ACME,
        "token_type": "Bearer",
        "iat": 1000,
        "exp": 1060,
    }


def test_introspection_answers_the_subject_urn_of_a_live_refresh_token(
    emu: Emulator, http: requests.Session
) -> None:
    tokens = emu.issue_tokens(company=GLOBEX)

    reply = introspect(http, emu, tokens["refresh_token"])

    assert reply["active"] is True
    assert reply[SUBJECT_URN] == GLOBEX
    assert reply["client_id"] == emu.client_id
    assert reply["token_type"] == "refresh_token"
    assert "exp" not in reply  # the emulator's refresh tokens do not expire


def test_introspection_of_a_dead_token_is_only_inactive(
    clocked: Emulator, clock: FakeClock, http: requests.Session
) -> None:
    spent = clocked.issue_tokens(company=ACME)
    refresh(http, clocked, spent["refresh_token"])
    revoked = clocked.issue_tokens(company=GLOBEX)
    clocked.revoke(GLOBEX)
    expiring = clocked.issue_tokens(company=ACME)
    clock.advance(60)

    for token in (
        spent["access_token"],
        spent["refresh_token"],
        revoked["access_token"],
        revoked["refresh_token"],
        expiring["access_token"],
        "at_unknown",
    ):
        assert introspect(http, clocked, token) == {"active": False}


def test_introspection_needs_the_clients_basic_credentials_and_post(
    emu: Emulator, http: requests.Session
) -> None:
    tokens = emu.issue_tokens(company=ACME)

    wrong = http.post(emu.introspect_url, data={"token": tokens["access_token"]}, auth=("x", "y"))
    none = http.post(emu.introspect_url, data={"token": tokens["access_token"]})
    get = http.get(emu.introspect_url)

    assert (wrong.status_code, wrong.json()["error"]) == (401, "invalid_client")
    assert (none.status_code, none.json()["error"]) == (401, "invalid_client")
    assert get.status_code == 405
    assert SUBJECT_URN not in wrong.text


def test_v1_introspect_answers_the_bearers_company(emu: Emulator, http: requests.Session) -> None:
    tokens = emu.issue_tokens("users:read", company=ACME_ID)

    response = api(http, emu, tokens["access_token"], "/v1/introspect")

    assert response.status_code == 200
    assert response.json() == {
        "data": {
            "authMethod": "OAUTH",
            "clientId": emu.client_id,
            "scope": "users:read",
            "applicationName": "pleo-auth emulator",
            "subjectURN": ACME,
        }
    }


def test_v1_introspect_with_a_dead_token_is_401(emu: Emulator, http: requests.Session) -> None:
    tokens = emu.issue_tokens(company=ACME)
    refresh(http, emu, tokens["refresh_token"])

    response = api(http, emu, tokens["access_token"], "/v1/introspect")

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


# -- per-company counters ------------------------------------------------------------


def test_counters_for_count_each_company_apart_and_add_up_to_the_global_ones(
    emu: Emulator, http: requests.Session
) -> None:
    acme = emu.issue_tokens(company=ACME)
    globex = emu.issue_tokens(company=GLOBEX)
    rotated = refresh(http, emu, acme["refresh_token"]).json()
    refresh(http, emu, rotated["refresh_token"])
    refresh(http, emu, globex["refresh_token"])
    assert refresh(http, emu, globex["refresh_token"]).status_code == 400  # reuse: revoked
    assert refresh(http, emu, globex["refresh_token"]).status_code == 400  # revoked
    refresh(http, emu, "rt_unknown")  # no company's
    api(http, emu, acme["access_token"])  # dead: counts for no company

    assert emu.counters_for(ACME) == GrantCounters(refresh_grants=2)
    assert emu.counters_for(GLOBEX) == GrantCounters(
        refresh_grants=1, rejected_refreshes=2, reuse_detections=1
    )
    assert emu.counters == EmulatorCounters(
        refresh_grants=3,
        rejected_refreshes=3,
        reuse_detections=1,
        token_requests=6,
        api_requests=1,
        unauthorized=1,
    )


def test_counters_for_count_api_requests_with_the_companys_live_tokens(
    emu: Emulator, http: requests.Session
) -> None:
    acme = emu.issue_tokens(company=ACME)
    globex = emu.issue_tokens(company=GLOBEX)
    for _ in range(3):
        assert api(http, emu, acme["access_token"]).status_code == 200
    assert api(http, emu, globex["access_token"], "/v1/introspect").status_code == 200

    assert emu.counters_for(ACME).api_requests == 3
    assert emu.counters_for(GLOBEX).api_requests == 1


def test_counters_for_a_company_never_seen_are_zero_and_reset_clears_every_company(
    emu: Emulator, http: requests.Session
) -> None:
    assert emu.counters_for(ACME) == GrantCounters()
    tokens = emu.issue_tokens(company=ACME)
    refresh(http, emu, tokens["refresh_token"])
    assert emu.counters_for(ACME).refresh_grants == 1

    emu.reset_counters()

    assert emu.counters_for(ACME) == GrantCounters()
    assert emu.counters == EmulatorCounters()


def test_a_refused_refresh_with_bad_client_credentials_counts_for_the_company(
    emu: Emulator, http: requests.Session
) -> None:
    tokens = emu.issue_tokens(company=ACME)

    response = http.post(
        emu.token_url,
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        auth=(emu.client_id, "wrong"),
    )

    assert response.status_code == 401
    assert emu.counters_for(ACME) == GrantCounters(rejected_refreshes=1)


# -- ending an installation ----------------------------------------------------------


def test_deleting_the_installation_revokes_every_token_of_that_company_only(
    emu: Emulator, http: requests.Session
) -> None:
    first = emu.issue_tokens(company=ACME)
    second = login(http, emu, urn_pleo_params_oauth_subject=ACME)
    other = emu.issue_tokens(company=GLOBEX)

    response = delete_installation(http, emu, first["access_token"])

    assert response.status_code == 204
    assert response.content == b""
    for tokens in (first, second):
        assert api(http, emu, tokens["access_token"]).status_code == 401
        refused = refresh(http, emu, tokens["refresh_token"])
        assert (refused.status_code, refused.json()["error"]) == (400, "invalid_grant")
        assert introspect(http, emu, tokens["refresh_token"]) == {"active": False}
    assert api(http, emu, other["access_token"]).status_code == 200
    assert refresh(http, emu, other["refresh_token"]).status_code == 200
    assert emu.companies() == [GLOBEX]
    assert emu.counters.installations_deleted == 1
    assert emu.counters_for(ACME).installations_deleted == 1
    assert emu.counters_for(GLOBEX).installations_deleted == 0
    assert emu.counters.reuse_detections == 0


def test_deleting_again_with_the_dead_token_is_401_and_changes_nothing(
    emu: Emulator, http: requests.Session
) -> None:
    tokens = emu.issue_tokens(company=ACME)
    other = emu.issue_tokens(company=GLOBEX)
    assert delete_installation(http, emu, tokens["access_token"]).status_code == 204

    again = delete_installation(http, emu, tokens["access_token"])

    assert again.status_code == 401
    assert again.json() == {"error": "invalid_token"}
    assert emu.counters.installations_deleted == 1
    assert emu.companies() == [GLOBEX]
    assert api(http, emu, other["access_token"]).status_code == 200


def test_deleting_needs_a_live_bearer_token(
    clocked: Emulator, clock: FakeClock, http: requests.Session
) -> None:
    tokens = clocked.issue_tokens(company=ACME)
    clock.advance(60)

    expired = delete_installation(http, clocked, tokens["access_token"])
    anonymous = http.delete(clocked.api_url + "/v1/installations/me")

    assert expired.status_code == anonymous.status_code == 401
    assert clocked.companies() == [ACME]
    assert refresh(http, clocked, tokens["refresh_token"]).status_code == 200


def test_a_company_can_log_in_again_after_its_installation_was_deleted(
    emu: Emulator, http: requests.Session
) -> None:
    old = emu.issue_tokens(company=ACME)
    delete_installation(http, emu, old["access_token"])

    new = login(http, emu, urn_pleo_params_oauth_subject=ACME)

    assert api(http, emu, new["access_token"]).status_code == 200
    assert api(http, emu, old["access_token"]).status_code == 401
    assert emu.companies() == [ACME]


def test_revoke_kills_one_companys_grants_and_says_how_many(
    emu: Emulator, http: requests.Session
) -> None:
    acme = [emu.issue_tokens(company=ACME) for _ in range(2)]
    globex = emu.issue_tokens(company=GLOBEX)

    assert emu.revoke(ACME_ID) == 2
    assert emu.revoke(ACME) == 0

    assert all(api(http, emu, t["access_token"]).status_code == 401 for t in acme)
    assert api(http, emu, globex["access_token"]).status_code == 200
    assert emu.counters.installations_deleted == 0  # not an API request


# -- capacity --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "needs a limit"),
        ({"per_second": 0}, "per_second must be an integer >= 1"),
        ({"per_second": 2.5}, "per_second must be an integer >= 1"),
        ({"per_second": True}, "per_second must be an integer >= 1"),
        ({"concurrent": -1}, "concurrent must be an integer >= 1"),
        ({"concurrent": "4"}, "concurrent must be an integer >= 1"),
        ({"per_second": 1, "mode": "queue"}, "mode must be"),
        ({"per_second": 1, "retry_after": -1}, "retry_after must be a finite"),
        ({"per_second": 1, "retry_after": float("inf")}, "retry_after must be a finite"),
        ({"per_second": 1, "retry_after": "1"}, "retry_after must be a finite"),
        ({"per_second": 1, "mode": "delay", "retry_after": 1}, 'mode="reject" only'),
    ],
)
def test_a_token_capacity_is_checked_when_made(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TokenCapacity(**options)


def test_the_emulator_takes_only_a_token_capacity(emu: Emulator) -> None:
    with pytest.raises(ValueError, match="TokenCapacity"):
        Emulator(token_capacity={"per_second": 1})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="TokenCapacity"):
        emu.set_token_capacity(5)  # type: ignore[arg-type]
    assert emu.token_capacity is None
    capacity = TokenCapacity(per_second=3)
    emu.set_token_capacity(capacity)
    assert emu.token_capacity == capacity


def test_over_the_rate_a_refresh_is_429_with_retry_after_and_spends_nothing(
    clock: FakeClock, http: requests.Session
) -> None:
    capacity = TokenCapacity(per_second=2)
    with Emulator(clock=clock, token_capacity=capacity) as emu:
        grants = [emu.issue_tokens(company=company) for company in (ACME, ACME, GLOBEX)]
        emu.inject_fault(Fault(status=503))
        assert refresh(http, emu, grants[0]["refresh_token"]).status_code == 503  # at 0
        clock.advance(0.25)
        assert refresh(http, emu, grants[1]["refresh_token"]).status_code == 200  # at 0.25

        refused = refresh(http, emu, grants[2]["refresh_token"])

        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "1"  # 0.75 s, rounded up
        assert refused.json()["error"] == "temporarily_unavailable"
        emu.inject_fault(Fault(status=502))
        assert refresh(http, emu, grants[2]["refresh_token"]).status_code == 429
        assert emu.pending_faults == 1  # a refused request consumes no fault
        clock.advance(0.75)  # at 1, the first admission leaves the window
        assert refresh(http, emu, grants[2]["refresh_token"]).status_code == 502
        assert refresh(http, emu, grants[2]["refresh_token"]).status_code == 429
        clock.advance(1)
        assert refresh(http, emu, grants[2]["refresh_token"]).status_code == 200  # unspent

        assert emu.counters == EmulatorCounters(
            refresh_grants=2, token_requests=7, faults_served=2, throttled=3
        )
        assert emu.counters_for(GLOBEX) == GrantCounters(refresh_grants=1, throttled=3)
        assert emu.counters_for(ACME) == GrantCounters(refresh_grants=1)


def test_a_code_exchange_over_the_rate_keeps_the_code(
    clock: FakeClock, http: requests.Session
) -> None:
    with Emulator(clock=clock, token_capacity=TokenCapacity(per_second=1)) as emu:
        refresh(http, emu, emu.issue_tokens()["refresh_token"])
        verifier, challenge = pkce_pair()
        code = authorize(http, emu, code_challenge=challenge, urn_pleo_params_oauth_subject=ACME)[
            "code"
        ]

        assert exchange(http, emu, code, verifier).status_code == 429
        clock.advance(1)
        assert exchange(http, emu, code, verifier).status_code == 200
        assert emu.counters_for(ACME) == GrantCounters(code_exchanges=1, throttled=1)


def test_retry_after_is_sent_as_configured(clock: FakeClock, http: requests.Session) -> None:
    capacity = TokenCapacity(per_second=1, retry_after=0.25)
    with Emulator(clock=clock, token_capacity=capacity) as emu:
        tokens = emu.issue_tokens()
        refresh(http, emu, emu.issue_tokens()["refresh_token"])
        assert refresh(http, emu, tokens["refresh_token"]).headers["Retry-After"] == "0.25"
        emu.set_token_capacity(TokenCapacity(per_second=1, retry_after=3))
        assert refresh(http, emu, tokens["refresh_token"]).headers["Retry-After"] == "3"
        emu.set_token_capacity(None)
        assert refresh(http, emu, tokens["refresh_token"]).status_code == 200


def test_a_herd_of_32_refreshes_meets_the_rate_exactly(clock: FakeClock) -> None:
    threads = 32
    with Emulator(clock=clock, token_capacity=TokenCapacity(per_second=10)) as emu:
        grants = [emu.issue_tokens() for _ in range(threads)]
        barrier = threading.Barrier(threads)
        statuses: list[int] = []
        lock = threading.Lock()

        def refresh_once(refresh_token: str) -> None:
            with requests.Session() as session:
                barrier.wait()
                status = refresh(session, emu, refresh_token).status_code
            with lock:
                statuses.append(status)

        workers = [
            threading.Thread(target=refresh_once, args=(grant["refresh_token"],))
            for grant in grants
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()

        assert sorted(statuses) == [200] * 10 + [429] * 22
        counters = emu.counters
        assert (counters.refresh_grants, counters.throttled) == (10, 22)
        assert (counters.rejected_refreshes, counters.reuse_detections) == (0, 0)
        assert sum(emu.is_current(g["access_token"], g["refresh_token"]) for g in grants) == 22


def hold_token_requests(emu: Emulator) -> tuple[threading.Semaphore, threading.Event]:
    """A hook that holds every admitted token request until ``release`` is set; the
    semaphore is released once per request that reaches it."""
    arrived = threading.Semaphore(0)
    release = threading.Event()

    def hook(grant_type: str | None) -> None:
        arrived.release()
        assert release.wait(10)

    emu.set_token_request_hook(hook)
    return arrived, release


def test_over_the_concurrency_a_refresh_is_429_until_a_slot_frees(
    emu: Emulator, http: requests.Session
) -> None:
    emu.set_token_capacity(TokenCapacity(concurrent=2))
    grants = [emu.issue_tokens(company=c) for c in (ACME, ACME, GLOBEX)]
    arrived, release = hold_token_requests(emu)
    statuses: list[int] = []

    def refresh_in_thread(refresh_token: str) -> None:
        with requests.Session() as session:
            statuses.append(refresh(session, emu, refresh_token).status_code)

    holders = [
        threading.Thread(target=refresh_in_thread, args=(g["refresh_token"],)) for g in grants[:2]
    ]
    for holder in holders:
        holder.start()
    assert arrived.acquire(timeout=10)
    assert arrived.acquire(timeout=10)  # both slots are taken

    refused = refresh(http, emu, grants[2]["refresh_token"])

    assert (refused.status_code, refused.headers["Retry-After"]) == (429, "1")
    release.set()
    for holder in holders:
        holder.join()
    assert statuses == [200, 200]
    assert refresh(http, emu, grants[2]["refresh_token"]).status_code == 200
    assert emu.counters_for(GLOBEX) == GrantCounters(refresh_grants=1, throttled=1)
    assert emu.counters.throttled == 1


def test_in_delay_mode_a_request_over_the_rate_waits_for_the_clock(
    clock: FakeClock, http: requests.Session
) -> None:
    capacity = TokenCapacity(per_second=1, mode="delay")
    with Emulator(clock=clock, token_capacity=capacity) as emu:
        first, second = emu.issue_tokens(), emu.issue_tokens()
        assert refresh(http, emu, first["refresh_token"]).status_code == 200
        done: list[int] = []

        def refresh_second() -> None:
            with requests.Session() as session:
                done.append(refresh(session, emu, second["refresh_token"]).status_code)

        waiter = threading.Thread(target=refresh_second)
        waiter.start()
        assert emu.wait_for_held_token_requests(1)
        assert clock.wait_for_sleepers(1)  # it waits on the emulator's clock
        assert done == []

        clock.advance(1)
        waiter.join(10)

        assert done == [200]
        assert emu.held_token_requests == 0
        counters = emu.counters
        assert (counters.refresh_grants, counters.delayed, counters.throttled) == (2, 1, 0)


def test_in_delay_mode_a_request_over_the_concurrency_waits_for_a_slot(emu: Emulator) -> None:
    emu.set_token_capacity(TokenCapacity(concurrent=1, mode="delay"))
    grants = [emu.issue_tokens() for _ in range(2)]
    arrived, release = hold_token_requests(emu)
    statuses: list[int] = []

    def refresh_in_thread(refresh_token: str) -> None:
        with requests.Session() as session:
            statuses.append(refresh(session, emu, refresh_token).status_code)

    first = threading.Thread(target=refresh_in_thread, args=(grants[0]["refresh_token"],))
    first.start()
    assert arrived.acquire(timeout=10)
    second = threading.Thread(target=refresh_in_thread, args=(grants[1]["refresh_token"],))
    second.start()
    assert emu.wait_for_held_token_requests(1)
    assert not arrived.acquire(timeout=0)  # the second has not reached the hook

    release.set()
    first.join(10)
    second.join(10)

    assert statuses == [200, 200]
    assert emu.counters.delayed == 1
    assert emu.counters.refresh_grants == 2


def test_stopping_refuses_a_request_held_by_the_clock(clock: FakeClock) -> None:
    emu = Emulator(clock=clock, token_capacity=TokenCapacity(per_second=1, mode="delay"))
    emu.start()
    grants = [emu.issue_tokens() for _ in range(2)]
    with requests.Session() as http:
        assert refresh(http, emu, grants[0]["refresh_token"]).status_code == 200
    outcome: list[object] = []

    def refresh_second() -> None:
        with requests.Session() as session:
            try:
                outcome.append(refresh(session, emu, grants[1]["refresh_token"]).status_code)
            except requests.ConnectionError as exc:
                outcome.append(type(exc))

    waiter = threading.Thread(target=refresh_second)
    waiter.start()
    assert emu.wait_for_held_token_requests(1)

    emu.stop()
    waiter.join(10)

    assert not waiter.is_alive()
    assert emu.held_token_requests == 0
    assert emu.is_current(grants[1]["access_token"], grants[1]["refresh_token"])
    assert emu.counters.refresh_grants == 1
    assert len(outcome) == 1


def test_a_delayed_request_refused_by_stop_gives_its_rate_slot_back(clock: FakeClock) -> None:
    """In delay mode a held request reserves its slot in the window up front; when
    stop() refuses it, nothing of it was spent, so after start() the next request
    must not wait a second of emulator time for a slot nobody used."""
    emu = Emulator(clock=clock, token_capacity=TokenCapacity(per_second=1, mode="delay"))
    first, held, later = (emu.issue_tokens() for _ in range(3))
    results: dict[str, object] = {}

    def call(name: str, grant: dict[str, str]) -> None:
        with requests.Session() as session:
            try:
                results[name] = refresh(session, emu, grant["refresh_token"]).status_code
            except requests.ConnectionError as exc:  # stop() may close it before the 429
                results[name] = type(exc)

    emu.start()
    try:
        call("first", first)  # admitted now
        waiting = threading.Thread(target=call, args=("held", held))
        waiting.start()
        assert emu.wait_for_held_token_requests(1, timeout=10.0)  # it reserved now + 1
        emu.stop()  # refuses it: nothing of it was spent
        waiting.join(10.0)
        assert not waiting.is_alive()
        assert results["held"] in (429, requests.ConnectionError)
        assert emu.is_current(held["access_token"], held["refresh_token"])
        emu.start()
        clock.advance(1.0)  # a second after the only admitted request
        late = threading.Thread(target=call, args=("later", later))
        late.start()
        late.join(timeout=10.0)
        assert not late.is_alive(), "held for the slot of a request that stop() refused"
        assert results["later"] == 200
        assert emu.counters.refresh_grants == 2
    finally:
        emu.stop()


def test_the_index_lists_the_new_endpoints(emu: Emulator, http: requests.Session) -> None:
    endpoints = http.get(emu.url + "/").json()["endpoints"]
    assert "GET /v1/introspect" in endpoints
    assert "DELETE /v1/installations/me" in endpoints
