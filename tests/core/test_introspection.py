"""Unit tests of pleo_auth._introspection: how a login learns its company, with
`responses` for Pleo's token endpoint, its introspection and its API."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs

import pytest
import responses

from pleo_auth import AuthorizationError, Company, MemoryStore
from pleo_auth._clock import FakeClock
from pleo_auth.flow import AuthorizationFlow, Login
from pleo_auth.stores.family import MemoryStoreFamily

AUTH = "https://auth.example.test"
TOKEN_URL = f"{AUTH}/oauth/token"
INTROSPECT_URL = f"{AUTH}/oauth/token/introspect"
API = "https://api.example.test"
WHOAMI_URL = f"{API}/v1/introspect"
CLIENT_ID = "client-123"
SECRET = "cs_s3cret-value"
CODE = "ac_the-authorization-code"
ACCESS = "at_new-access-token"
REFRESH = "rt_new-refresh-token"
REDIRECT_URI = "http://127.0.0.1:8765/callback"
A = Company("3f2504e0-4f89-11d3-9a0c-0305e82c3301")
SUBJECT = "urn:pleo:params:oauth:subject_urn"


class SteppingClock(FakeClock):
    """Every wait passes at once and moves the clock; the waits are recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, event: threading.Event, timeout: float) -> bool:
        self.waits.append(timeout)
        self.advance(timeout)
        return event.is_set()


def token_reply() -> dict[str, Any]:
    return {
        "access_token": ACCESS,
        "refresh_token": REFRESH,
        "expires_in": 900,
        "token_type": "Bearer",
        "scope": "users:read",
    }


def introspection(subject: str = A.urn, *, active: bool = True) -> dict[str, Any]:
    return {"active": active, "client_id": CLIENT_ID, "sub": A.id, SUBJECT: subject}


def whoami(subject: str = A.urn) -> dict[str, Any]:
    return {"data": {"authMethod": "OAUTH", "clientId": CLIENT_ID, "subjectURN": subject}}


@pytest.fixture
def mocked() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.post(TOKEN_URL, json=token_reply())
        yield rsps


@pytest.fixture
def family() -> MemoryStoreFamily:
    return MemoryStoreFamily()


@pytest.fixture
def clock() -> SteppingClock:
    return SteppingClock()


def make_flow(
    store: Any, clock: FakeClock, *, secret: str | None = SECRET, **options: Any
) -> AuthorizationFlow:
    options.setdefault("token_url", TOKEN_URL)
    return AuthorizationFlow(
        CLIENT_ID,
        secret,
        redirect_uri=REDIRECT_URI,
        store=store,
        api_url=API,
        clock=clock,
        **options,
    )


def finish(flow: AuthorizationFlow) -> Login:
    pending = flow.start()
    return flow.finish_login(pending, code=CODE)


def calls_to(mocked: responses.RequestsMock, url: str) -> list[Any]:
    return [call for call in mocked.calls if call.request.url == url]


def assert_nothing_secret(text: str) -> None:
    for secret in (SECRET, CODE, ACCESS, REFRESH):
        assert secret not in text


# -- the two ways ---------------------------------------------------------------------


def test_token_introspection_is_asked_first_with_basic_auth_and_the_access_token(
    mocked: responses.RequestsMock, family: MemoryStoreFamily, clock: SteppingClock
) -> None:
    mocked.post(INTROSPECT_URL, json=introspection())
    login = finish(make_flow(family, clock))
    assert login.company == A
    assert family.companies() == [A]
    [call] = calls_to(mocked, INTROSPECT_URL)
    form = {k: v[0] for k, v in parse_qs(call.request.body).items()}
    assert form == {"token": ACCESS, "token_type_hint": "access_token"}
    basic = base64.b64encode(f"{CLIENT_ID}:{SECRET}".encode()).decode()
    assert call.request.headers["Authorization"] == f"Basic {basic}"
    assert calls_to(mocked, WHOAMI_URL) == []


def test_with_body_client_auth_introspection_sends_the_credentials_in_the_form(
    mocked: responses.RequestsMock, family: MemoryStoreFamily, clock: SteppingClock
) -> None:
    mocked.post(INTROSPECT_URL, json=introspection())
    finish(make_flow(family, clock, client_auth="body"))
    [call] = calls_to(mocked, INTROSPECT_URL)
    form = {k: v[0] for k, v in parse_qs(call.request.body).items()}
    assert (form["client_id"], form["client_secret"]) == (CLIENT_ID, SECRET)
    assert "Authorization" not in call.request.headers


@pytest.mark.parametrize(
    "reply",
    [
        {"status": 404, "json": {"error": "not_found"}},
        {"status": 401, "json": {"error": "invalid_client"}},
        {"status": 200, "json": introspection(active=False)},
        {"status": 200, "json": {"active": True}},
        {"status": 200, "body": "<html>"},
        {"status": 302, "headers": {"Location": "https://elsewhere.test/"}},
    ],
    ids=["404", "401", "inactive", "no-subject", "not-json", "redirect"],
)
def test_when_token_introspection_cannot_tell_the_api_is_asked(
    mocked: responses.RequestsMock,
    family: MemoryStoreFamily,
    clock: SteppingClock,
    reply: dict[str, Any],
) -> None:
    mocked.post(INTROSPECT_URL, **reply)
    mocked.get(WHOAMI_URL, json=whoami())
    assert finish(make_flow(family, clock)).company == A
    [call] = calls_to(mocked, WHOAMI_URL)
    assert call.request.headers["Authorization"] == f"Bearer {ACCESS}"
    assert [c.request.url for c in mocked.calls if "elsewhere" in c.request.url] == []
    assert family.companies() == [A]


def test_a_public_client_asks_only_the_api(
    mocked: responses.RequestsMock, family: MemoryStoreFamily, clock: SteppingClock
) -> None:
    mocked.get(WHOAMI_URL, json=whoami())
    assert finish(make_flow(family, clock, secret=None)).company == A
    assert calls_to(mocked, INTROSPECT_URL) == []


def test_a_token_url_not_ending_in_oauth_token_sends_the_secret_to_no_introspection(
    mocked: responses.RequestsMock, family: MemoryStoreFamily, clock: SteppingClock
) -> None:
    proxy = "https://proxy.example.test/pleo-token"
    mocked.post(proxy, json=token_reply())
    mocked.get(WHOAMI_URL, json=whoami())
    flow = make_flow(family, clock, token_url=proxy)
    assert finish(flow).company == A
    assert [c.request.url for c in mocked.calls] == [proxy, WHOAMI_URL]


def test_transient_failures_are_retried_within_the_attempts(
    mocked: responses.RequestsMock, family: MemoryStoreFamily, clock: SteppingClock
) -> None:
    mocked.post(INTROSPECT_URL, status=503, headers={"Retry-After": "2"})
    mocked.post(INTROSPECT_URL, status=502)
    mocked.post(INTROSPECT_URL, json=introspection())
    assert finish(make_flow(family, clock, max_attempts=3)).company == A
    assert len(calls_to(mocked, INTROSPECT_URL)) == 3
    assert len(clock.waits) == 2
    assert clock.waits[0] >= 2.0  # Retry-After honoured


# -- refused, and nothing saved --------------------------------------------------------


def test_when_neither_way_tells_the_login_fails_clearly_and_saves_nothing(
    mocked: responses.RequestsMock, family: MemoryStoreFamily, clock: SteppingClock
) -> None:
    mocked.post(INTROSPECT_URL, status=503, body=f"upstream said {SECRET} {ACCESS}")
    mocked.get(WHOAMI_URL, status=401, json={"error": "invalid_token", "detail": ACCESS})
    with pytest.raises(AuthorizationError) as caught:
        finish(make_flow(family, clock, max_attempts=2))
    message = str(caught.value)
    assert message.startswith("the login worked, but Pleo did not say which company")
    assert "token introspection: HTTP 503, after 2 attempts" in message
    assert "GET /v1/introspect: HTTP 401" in message
    assert "nothing was saved" in message
    assert_nothing_secret(message)
    assert family.companies() == []


@pytest.mark.parametrize(
    ("subject", "shown"),
    [
        ("urn:pleo:user:3f2504e0-4f89-11d3-9a0c-0305e82c3301", "(urn:pleo:user:...)"),
        ("urn:pleo:company:not-a-uuid", "company;"),
        ("", "company;"),
        (REFRESH, "company;"),
    ],
)
def test_a_subject_that_is_not_a_company_is_refused_without_asking_again(
    mocked: responses.RequestsMock,
    family: MemoryStoreFamily,
    clock: SteppingClock,
    subject: str,
    shown: str,
) -> None:
    mocked.post(INTROSPECT_URL, json=introspection(subject))
    mocked.get(WHOAMI_URL, json=whoami())
    with pytest.raises(AuthorizationError) as caught:
        finish(make_flow(family, clock))
    message = str(caught.value)
    assert "says the login belongs to a subject that is not a Pleo company" in message
    assert shown in message
    assert_nothing_secret(message)
    if subject.startswith("urn:pleo:company:"):
        assert subject not in message
    assert calls_to(mocked, WHOAMI_URL) == []
    assert family.companies() == []


def test_a_subject_from_the_api_that_is_not_a_company_is_refused(
    mocked: responses.RequestsMock, family: MemoryStoreFamily, clock: SteppingClock
) -> None:
    mocked.get(WHOAMI_URL, json=whoami("urn:pleo:organization:x"))
    with pytest.raises(AuthorizationError, match=r"GET /v1/introspect says .*not a Pleo company"):
        finish(make_flow(family, clock, secret=None))
    assert family.companies() == []


def test_a_one_store_flow_asks_nothing_more_than_before(
    mocked: responses.RequestsMock, clock: SteppingClock
) -> None:
    store = MemoryStore()
    tokens = make_flow(store, clock).finish(make_flow(store, clock).start(), code=CODE)
    assert tokens.access_token == ACCESS
    assert [c.request.url for c in mocked.calls] == [TOKEN_URL]
