"""Tests for pleo_auth.testing, over real HTTP on loopback."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from http.client import HTTPConnection
from typing import Any
from urllib.parse import quote_plus, urlencode, urlsplit

import pytest
import requests
from support.emulator_http import (
    REDIRECT_URI,
    api,
    authorize,
    code_for,
    exchange,
    pkce_pair,
    refresh,
)

from pleo_auth.testing import Emulator, EmulatorCounters, FakeClock, Fault


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


# -- rotation and reuse ------------------------------------------------------


def test_refresh_rotates_both_tokens_and_kills_the_old_ones(
    emu: Emulator, http: requests.Session
) -> None:
    first = emu.issue_tokens()

    response = refresh(http, emu, first["refresh_token"])

    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    second = response.json()
    assert set(second) == {"access_token", "refresh_token", "expires_in", "token_type", "scope"}
    assert second["token_type"] == "Bearer"
    assert second["scope"] == "users:read"
    assert second["access_token"] != first["access_token"]
    assert second["refresh_token"] != first["refresh_token"]
    assert api(http, emu, first["access_token"]).status_code == 401
    assert api(http, emu, second["access_token"]).status_code == 200
    assert emu.counters.refresh_grants == 1


def test_reusing_a_spent_refresh_token_revokes_the_whole_grant(
    emu: Emulator, http: requests.Session
) -> None:
    first = emu.issue_tokens()
    second = refresh(http, emu, first["refresh_token"]).json()

    reuse = refresh(http, emu, first["refresh_token"])

    assert reuse.status_code == 400
    assert reuse.json()["error"] == "invalid_grant"
    assert api(http, emu, second["access_token"]).status_code == 401
    after = refresh(http, emu, second["refresh_token"])
    assert after.status_code == 400
    assert after.json()["error"] == "invalid_grant"
    counters = emu.counters
    assert counters.reuse_detections == 1
    assert counters.refresh_grants == 1
    assert counters.rejected_refreshes == 2


def test_unknown_refresh_token_is_invalid_grant_but_not_reuse(
    emu: Emulator, http: requests.Session
) -> None:
    response = refresh(http, emu, "rt_never-issued")

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"
    assert emu.counters == EmulatorCounters(rejected_refreshes=1, token_requests=1)


def test_grants_are_independent(emu: Emulator, http: requests.Session) -> None:
    a = emu.issue_tokens()
    b = emu.issue_tokens()
    refresh(http, emu, a["refresh_token"])

    refresh(http, emu, a["refresh_token"])  # reuse: revokes grant a only

    assert api(http, emu, b["access_token"]).status_code == 200
    assert refresh(http, emu, b["refresh_token"]).status_code == 200


def test_sixteen_threads_refreshing_the_same_token_get_one_grant(
    emu: Emulator,
) -> None:
    # The lock decides them one at a time: the first rotates; the second
    # presents a spent token of a live grant, which is the one reuse detection
    # and revokes the grant; the other 14 present a token of a revoked grant,
    # which is only a rejected refresh.
    tokens = emu.issue_tokens()
    threads = 16
    barrier = threading.Barrier(threads)
    statuses: list[int] = []
    statuses_lock = threading.Lock()
    winners: list[dict[str, Any]] = []

    def worker() -> None:
        with requests.Session() as session:
            barrier.wait()
            response = refresh(session, emu, tokens["refresh_token"], timeout=5)
        with statuses_lock:
            statuses.append(response.status_code)
            if response.status_code == 200:
                winners.append(response.json())

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()

    assert sorted(statuses) == [200] + [400] * 15
    assert emu.counters == EmulatorCounters(
        refresh_grants=1, rejected_refreshes=15, reuse_detections=1, token_requests=16
    )
    with requests.Session() as session:
        assert api(session, emu, winners[0]["access_token"]).status_code == 401


def test_thirty_two_threads_rotating_their_own_grants_never_collide(emu: Emulator) -> None:
    threads, rounds = 32, 5
    barrier = threading.Barrier(threads)
    failures: list[int] = []

    def worker() -> None:
        refresh_token = emu.issue_tokens()["refresh_token"]
        with requests.Session() as session:
            barrier.wait()
            for _ in range(rounds):
                response = refresh(session, emu, refresh_token, timeout=5)
                if response.status_code != 200:
                    failures.append(response.status_code)
                    return
                refresh_token = response.json()["refresh_token"]
                if api(session, emu, response.json()["access_token"]).status_code != 200:
                    failures.append(401)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()

    assert failures == []
    counters = emu.counters
    assert counters.refresh_grants == threads * rounds
    assert counters.rejected_refreshes == 0
    assert counters.unauthorized == 0


# -- authorization code + PKCE ---------------------------------------------


def test_authorize_and_pkce_code_exchange_end_to_end(emu: Emulator, http: requests.Session) -> None:
    verifier, challenge = pkce_pair()
    redirect_uri = "http://127.0.0.1:54321/callback?keep=1"

    query = authorize(
        http,
        emu,
        redirect_uri=redirect_uri,
        code_challenge=challenge,
        urn_pleo_params_oauth_subject="company-42",
    )

    assert query["keep"] == "1"
    assert query["state"] == "st-123"
    response = exchange(http, emu, query["code"], verifier, redirect_uri=redirect_uri)
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    tokens = response.json()
    assert tokens["scope"] == "users:read export-jobs:read"
    assert api(http, emu, tokens["access_token"]).status_code == 200
    assert refresh(http, emu, tokens["refresh_token"]).status_code == 200
    assert emu.counters.code_exchanges == 1


def test_authorize_preserves_state_on_success_and_error(
    emu: Emulator, http: requests.Session
) -> None:
    _, challenge = pkce_pair()

    ok = authorize(http, emu, code_challenge=challenge, state="a b&c=d")
    error = authorize(http, emu, code_challenge=None, state="a b&c=d")

    assert ok["state"] == "a b&c=d"
    assert error["state"] == "a b&c=d"


def test_authorize_refuses_the_plain_challenge_method(
    emu: Emulator, http: requests.Session
) -> None:
    verifier = secrets.token_urlsafe(48)

    query = authorize(http, emu, code_challenge=verifier, code_challenge_method="plain")

    assert query["error"] == "invalid_request"
    assert "code" not in query
    assert query["state"] == "st-123"


def test_authorize_without_a_challenge_redirects_with_invalid_request(
    emu: Emulator, http: requests.Session
) -> None:
    query = authorize(http, emu, code_challenge=None)

    assert query["error"] == "invalid_request"
    assert "error_description" in query
    assert query["state"] == "st-123"


def test_authorize_without_pkce_when_not_required(http: requests.Session) -> None:
    with Emulator(require_pkce=False) as emu:
        code = authorize(http, emu, code_challenge=None, code_challenge_method=None)["code"]

        assert exchange(http, emu, code, verifier=None).status_code == 200


def test_authorize_with_an_unknown_client_answers_400_without_redirect(
    emu: Emulator, http: requests.Session
) -> None:
    _, challenge = pkce_pair()

    response = http.get(
        emu.authorize_url,
        params={
            "response_type": "code",
            "client_id": "someone-else",
            "redirect_uri": REDIRECT_URI,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        },
        allow_redirects=False,
    )

    assert response.status_code == 400
    assert "Location" not in response.headers


def test_authorize_refuses_a_non_http_redirect_uri(emu: Emulator, http: requests.Session) -> None:
    response = http.get(
        emu.authorize_url,
        params={"response_type": "code", "client_id": emu.client_id, "redirect_uri": "ftp://x/"},
        allow_redirects=False,
    )

    assert response.status_code == 400
    assert "Location" not in response.headers


def test_mismatched_verifier_is_refused(emu: Emulator, http: requests.Session) -> None:
    code, _ = code_for(http, emu)
    other_verifier, _ = pkce_pair()

    response = exchange(http, emu, code, other_verifier)

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"
    assert emu.counters.code_exchanges == 0


def test_verifier_equal_to_the_challenge_is_refused(emu: Emulator, http: requests.Session) -> None:
    # What a client using "plain" would send: the challenge itself.
    _, challenge = pkce_pair()
    code = authorize(http, emu, code_challenge=challenge)["code"]

    response = exchange(http, emu, code, challenge)

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


def test_malformed_verifier_is_refused(emu: Emulator, http: requests.Session) -> None:
    short = "a" * 42
    digest = hashlib.sha256(short.encode()).digest()
    challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    code = authorize(http, emu, code_challenge=challenge)["code"]

    response = exchange(http, emu, code, short)

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


def test_missing_verifier_is_invalid_request(emu: Emulator, http: requests.Session) -> None:
    code, _ = code_for(http, emu)

    response = exchange(http, emu, code, verifier=None)

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


def test_redirect_uri_must_match_the_authorize_request(
    emu: Emulator, http: requests.Session
) -> None:
    code, verifier = code_for(http, emu)

    response = exchange(http, emu, code, verifier, redirect_uri="http://127.0.0.1:9/other")

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


def test_a_code_is_single_use(emu: Emulator, http: requests.Session) -> None:
    code, verifier = code_for(http, emu)

    first = exchange(http, emu, code, verifier)
    second = exchange(http, emu, code, verifier)

    assert first.status_code == 200
    assert second.status_code == 400
    assert second.json()["error"] == "invalid_grant"
    assert emu.counters.code_exchanges == 1


def test_introspection_reports_exp_in_the_clocks_wall_time(
    clocked: Emulator, clock: FakeClock, http: requests.Session
) -> None:
    tokens = clocked.issue_tokens()
    clock.advance(10)
    response = http.post(
        clocked.introspect_url,
        data={"token": tokens["access_token"]},
        auth=(clocked.client_id, clocked.client_secret or ""),
    )
    assert response.json()["exp"] == 1000 + 60  # issued at 1000 on the clock, for 60 s


def test_a_bare_function_as_clock_still_works_with_a_deprecation_warning(
    http: requests.Session,
) -> None:
    now = [1000.0]
    with pytest.warns(DeprecationWarning, match=r"Emulator\(clock=<function>\) is deprecated"):
        emulator = Emulator(access_token_lifetime=60, clock=lambda: now[0])
    with emulator:
        tokens = emulator.issue_tokens()
        assert api(http, emulator, tokens["access_token"]).status_code == 200
        now[0] += 60
        assert api(http, emulator, tokens["access_token"]).status_code == 401


def test_a_code_expires_after_60_seconds(
    clocked: Emulator, clock: FakeClock, http: requests.Session
) -> None:
    code, verifier = code_for(http, clocked)

    clock.advance(60)
    response = exchange(http, clocked, code, verifier)

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


# -- client authentication ----------------------------------------------------


def test_basic_and_body_client_authentication_are_both_accepted(
    emu: Emulator, http: requests.Session
) -> None:
    tokens = emu.issue_tokens()
    assert emu.client_secret is not None

    basic = refresh(http, emu, tokens["refresh_token"])
    body = http.post(
        emu.token_url,
        data={
            "grant_type": "refresh_token",
            "refresh_token": basic.json()["refresh_token"],
            "client_id": emu.client_id,
            "client_secret": emu.client_secret,
        },
    )

    assert basic.status_code == 200
    assert body.status_code == 200
    assert emu.counters.refresh_grants == 2


def test_basic_credentials_are_form_urlencoded(http: requests.Session) -> None:
    secret = "s3cr3t with:+/%&"
    with Emulator(client_id="my app", client_secret=secret) as emu:
        tokens = emu.issue_tokens()
        credentials = f"{quote_plus('my app')}:{quote_plus(secret)}"
        header = "Basic " + base64.b64encode(credentials.encode()).decode()

        response = http.post(
            emu.token_url,
            data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
            headers={"Authorization": header},
        )

        assert response.status_code == 200


@pytest.mark.parametrize("where", ["basic", "body", "none"])
def test_wrong_or_missing_secret_is_invalid_client(
    emu: Emulator, http: requests.Session, where: str
) -> None:
    tokens = emu.issue_tokens()
    data = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    auth = None
    if where == "basic":
        auth = (emu.client_id, "wrong")
    elif where == "body":
        data.update(client_id=emu.client_id, client_secret="wrong")

    response = http.post(emu.token_url, data=data, auth=auth)

    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert response.headers["WWW-Authenticate"] == "Basic"
    assert emu.counters == EmulatorCounters(rejected_refreshes=1, token_requests=1)
    assert refresh(http, emu, tokens["refresh_token"]).status_code == 200


def test_a_public_client_authenticates_with_client_id_and_pkce(http: requests.Session) -> None:
    with Emulator(client_secret=None, require_pkce=False) as emu:
        assert authorize(http, emu, code_challenge=None)["error"] == "invalid_request"
        verifier, challenge = pkce_pair()
        code = authorize(http, emu, code_challenge=challenge)["code"]

        response = http.post(
            emu.token_url,
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": REDIRECT_URI,
                "code_verifier": verifier,
                "client_id": emu.client_id,
            },
        )

        assert response.status_code == 200
        with_secret = http.post(
            emu.token_url,
            data={
                "grant_type": "refresh_token",
                "refresh_token": response.json()["refresh_token"],
                "client_id": emu.client_id,
                "client_secret": "anything",
            },
        )
        assert with_secret.status_code == 401


# -- token endpoint errors ----------------------------------------------------


def test_unsupported_grant_type_and_missing_parameters(
    emu: Emulator, http: requests.Session
) -> None:
    auth = (emu.client_id, emu.client_secret or "")

    client_credentials = http.post(
        emu.token_url, data={"grant_type": "client_credentials"}, auth=auth
    )
    no_grant_type = http.post(emu.token_url, data={"code": "x"}, auth=auth)
    no_refresh_token = http.post(emu.token_url, data={"grant_type": "refresh_token"}, auth=auth)
    not_a_form = http.post(emu.token_url, json={"grant_type": "refresh_token"}, auth=auth)

    assert client_credentials.status_code == 400
    assert client_credentials.json()["error"] == "unsupported_grant_type"
    for response in (no_grant_type, no_refresh_token, not_a_form):
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_request"
    assert emu.counters.rejected_refreshes == 1


# -- API --------------------------------------------------------------------


def test_api_answers_401_for_an_expired_access_token(
    clocked: Emulator, clock: FakeClock, http: requests.Session
) -> None:
    tokens = clocked.issue_tokens()
    assert api(http, clocked, tokens["access_token"]).status_code == 200

    clock.advance(60)
    response = api(http, clocked, tokens["access_token"])

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert response.json() == {"error": "invalid_token"}
    assert clocked.counters == EmulatorCounters(api_requests=2, unauthorized=1)
    # The refresh token outlives the access token.
    assert refresh(http, clocked, tokens["refresh_token"]).status_code == 200


def test_api_needs_a_bearer_token(emu: Emulator, http: requests.Session) -> None:
    tokens = emu.issue_tokens()

    missing = http.get(emu.api_url + "/v2/employees")
    basic = http.get(emu.api_url + "/v2/employees", auth=("a", "b"))
    refresh_as_access = api(http, emu, tokens["refresh_token"])

    for response in (missing, basic, refresh_as_access):
        assert response.status_code == 401
    assert emu.counters == EmulatorCounters(api_requests=3, unauthorized=3)


def test_api_serves_employees_and_echoes_other_paths(emu: Emulator, http: requests.Session) -> None:
    headers = {"Authorization": f"Bearer {emu.issue_tokens()['access_token']}"}

    employees = http.get(emu.api_url + "/v2/employees", headers=headers)
    echo = http.post(emu.api_url + "/v1/expenses?x=1", json={"amount": 12}, headers=headers)
    deleted = http.delete(emu.api_url + "/v1/expenses/7", headers=headers)

    assert employees.status_code == 200
    assert employees.json()["data"][0]["firstName"] == "Ada"
    assert "pagination" in employees.json()
    assert echo.json() == {
        "ok": True,
        "method": "POST",
        "path": "/v1/expenses",
        "body_length": len(b'{"amount": 12}'),
    }
    assert deleted.json() == {"ok": True, "method": "DELETE", "path": "/v1/expenses/7"}


def test_unknown_paths_are_404_and_the_index_describes_endpoints(
    emu: Emulator, http: requests.Session
) -> None:
    missing = http.get(emu.url + "/nope")
    index = http.get(emu.url + "/")

    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found"
    assert index.status_code == 200
    assert "POST /oauth/token" in index.json()["endpoints"]


# -- faults -------------------------------------------------------------------


def test_injected_503_with_retry_after_does_not_consume_the_refresh_token(
    emu: Emulator, http: requests.Session
) -> None:
    tokens = emu.issue_tokens()
    emu.inject_fault(Fault(status=503, retry_after=2))

    faulted = refresh(http, emu, tokens["refresh_token"])
    retried = refresh(http, emu, tokens["refresh_token"])

    assert faulted.status_code == 503
    assert faulted.headers["Retry-After"] == "2"
    assert faulted.json()["error"] == "temporarily_unavailable"
    assert retried.status_code == 200
    assert emu.counters == EmulatorCounters(refresh_grants=1, token_requests=2, faults_served=1)


def test_injected_drop_is_a_connection_error_and_keeps_the_token(
    emu: Emulator, http: requests.Session
) -> None:
    tokens = emu.issue_tokens()
    emu.inject_fault(Fault(drop=True))

    with pytest.raises(requests.ConnectionError):
        refresh(http, emu, tokens["refresh_token"])

    assert refresh(http, emu, tokens["refresh_token"]).status_code == 200
    assert emu.counters.faults_served == 1


def test_injected_delay_then_normal_handling(emu: Emulator, http: requests.Session) -> None:
    tokens = emu.issue_tokens()
    emu.inject_fault(Fault(delay=0.1))

    started = time.monotonic()
    response = refresh(http, emu, tokens["refresh_token"])

    assert time.monotonic() - started >= 0.1
    assert response.status_code == 200
    assert emu.counters == EmulatorCounters(refresh_grants=1, token_requests=1, faults_served=1)


def test_injected_delay_is_a_timeout_for_an_impatient_client(
    emu: Emulator, http: requests.Session
) -> None:
    emu.inject_fault(Fault(delay=0.3, status=503))

    with pytest.raises(requests.Timeout):
        refresh(http, emu, emu.issue_tokens()["refresh_token"], timeout=0.05)


def test_injected_invalid_grant_looks_real_but_keeps_the_grant(
    emu: Emulator, http: requests.Session
) -> None:
    tokens = emu.issue_tokens()
    emu.inject_fault(Fault(error="invalid_grant"))

    faulted = refresh(http, emu, tokens["refresh_token"])

    assert faulted.status_code == 400
    assert faulted.json()["error"] == "invalid_grant"
    assert refresh(http, emu, tokens["refresh_token"]).status_code == 200
    assert emu.counters.rejected_refreshes == 0


def test_faults_are_consumed_in_order_one_per_request(
    emu: Emulator, http: requests.Session
) -> None:
    tokens = emu.issue_tokens()
    emu.inject_fault(Fault(status=500), count=2)
    emu.inject_fault(Fault(error="invalid_client"))
    assert emu.pending_faults == 3

    statuses = [refresh(http, emu, tokens["refresh_token"]).status_code for _ in range(4)]

    assert statuses == [500, 500, 401, 200]
    assert emu.pending_faults == 0
    assert emu.counters.faults_served == 3


def test_faults_do_not_apply_to_the_api(emu: Emulator, http: requests.Session) -> None:
    tokens = emu.issue_tokens()
    emu.inject_fault(Fault(status=503))

    assert api(http, emu, tokens["access_token"]).status_code == 200
    assert emu.pending_faults == 1


def test_inject_fault_rejects_a_fault_that_does_nothing(emu: Emulator) -> None:
    with pytest.raises(ValueError):
        emu.inject_fault()
    with pytest.raises(ValueError):
        emu.inject_fault(Fault(status=200))
    with pytest.raises(ValueError):
        emu.inject_fault(Fault(status=503), count=0)


def raw_refresh(emu: Emulator, refresh_token: str) -> tuple[bytes, BaseException | None]:
    """POST a refresh over a bare socket; every byte received, and how the stream ended
    (None for an orderly close, the error for a reset)."""
    body = urlencode({"grant_type": "refresh_token", "refresh_token": refresh_token}).encode()
    credentials = base64.b64encode(f"{emu.client_id}:{emu.client_secret}".encode()).decode()
    request = (
        "POST /oauth/token HTTP/1.1\r\nHost: emulator\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Authorization: Basic {credentials}\r\nConnection: close\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    port = urlsplit(emu.url).port
    assert port is not None
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError as exc:
            return received, exc
    return received, None


def test_reset_sends_part_of_the_reply_then_an_rst_and_keeps_the_token(emu: Emulator) -> None:
    tokens = emu.issue_tokens()
    emu.inject_fault(Fault(reset=True, reset_after=20))

    received, ending = raw_refresh(emu, tokens["refresh_token"])

    assert isinstance(ending, ConnectionResetError)
    assert received == b"HTTP/1.1 503 Service"  # the first 20 bytes, then the RST
    assert emu.is_current(tokens["access_token"], tokens["refresh_token"])
    assert emu.counters == EmulatorCounters(token_requests=1, faults_served=1)


def test_reset_by_default_cuts_after_the_status_line_and_is_a_connection_error(
    emu: Emulator, http: requests.Session
) -> None:
    tokens = emu.issue_tokens()
    emu.inject_fault(Fault(reset=True))
    received, ending = raw_refresh(emu, tokens["refresh_token"])
    assert isinstance(ending, ConnectionResetError)
    assert received.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert not received.endswith(b"}")

    emu.inject_fault(Fault(reset=True, reset_after=10_000))  # past the end: all but the last byte
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        refresh(http, emu, tokens["refresh_token"])
    assert refresh(http, emu, tokens["refresh_token"]).status_code == 200


def test_drop_closes_without_a_byte(emu: Emulator) -> None:
    tokens = emu.issue_tokens()
    emu.inject_fault(Fault(drop=True))
    assert raw_refresh(emu, tokens["refresh_token"]) == (b"", None)


def test_body_and_content_type_replace_the_reply_without_spending_the_token(
    emu: Emulator, http: requests.Session
) -> None:
    tokens = emu.issue_tokens()
    page = "<!doctype html><h1>502 Bad Gateway</h1>"
    emu.inject_fault(Fault(status=502, body=page, content_type="text/html"))
    emu.inject_fault(
        Fault(body=b"<html>Sign in to the hotel Wi-Fi</html>", content_type="text/html")
    )

    gateway = refresh(http, emu, tokens["refresh_token"])
    portal = refresh(http, emu, tokens["refresh_token"])

    assert (gateway.status_code, gateway.headers["Content-Type"], gateway.text) == (
        502,
        "text/html",
        page,
    )
    assert (portal.status_code, portal.headers["Content-Type"]) == (200, "text/html")
    assert emu.is_current(tokens["access_token"], tokens["refresh_token"])
    assert emu.counters.refresh_grants == 0


def test_truncate_before_the_grant_cuts_an_error_body(
    emu: Emulator, http: requests.Session
) -> None:
    emu.inject_fault(Fault(truncate=5))
    response = refresh(http, emu, emu.issue_tokens()["refresh_token"])
    assert (response.status_code, response.content) == (503, b'{"err')


def test_after_grant_truncate_rotates_and_sends_a_cut_but_well_framed_reply(
    emu: Emulator, http: requests.Session
) -> None:
    tokens = emu.issue_tokens()
    emu.inject_fault(Fault(after_grant=True, truncate=30))

    response = refresh(http, emu, tokens["refresh_token"])

    assert response.status_code == 200
    assert response.headers["Content-Length"] == "30"
    assert response.content.startswith(b'{"access_token":"at_')
    with pytest.raises(ValueError):
        response.json()
    assert not emu.is_current(tokens["access_token"], tokens["refresh_token"])
    assert emu.counters == EmulatorCounters(refresh_grants=1, token_requests=1, faults_served=1)


@pytest.mark.parametrize(
    ("fault", "failure"),
    [
        ({"drop": True}, requests.ConnectionError),
        ({"reset": True}, requests.RequestException),
        ({"delay": 0.5}, requests.Timeout),
    ],
)
def test_after_grant_the_reply_is_lost_but_the_tokens_rotated(
    emu: Emulator,
    http: requests.Session,
    fault: dict[str, Any],
    failure: type[Exception],
) -> None:
    tokens = emu.issue_tokens()
    emu.inject_fault(Fault(after_grant=True, **fault))

    with pytest.raises(failure):
        refresh(http, emu, tokens["refresh_token"], timeout=0.2)
    retry = refresh(http, emu, tokens["refresh_token"])

    assert retry.json()["error"] == "invalid_grant"
    counters = emu.counters
    assert (counters.refresh_grants, counters.reuse_detections) == (1, 1)


def test_after_grant_a_body_function_edits_the_real_reply(
    emu: Emulator, http: requests.Session
) -> None:
    tokens = emu.issue_tokens()
    seen: list[dict[str, Any]] = []

    def odd_expiry(reply: dict[str, Any]) -> str:
        seen.append(reply)
        return json.dumps({**reply, "expires_in": "soon"})

    emu.inject_fault(Fault(after_grant=True, body=odd_expiry))
    emu.inject_fault(Fault(after_grant=True, body=lambda reply: "<html>gateway</html>", status=502))

    edited = refresh(http, emu, tokens["refresh_token"]).json()
    gateway = refresh(http, emu, edited["refresh_token"])

    assert edited["expires_in"] == "soon"
    assert edited["access_token"] == seen[0]["access_token"]
    assert not emu.is_current(edited["access_token"], edited["refresh_token"])  # rotated again
    assert gateway.status_code == 502
    assert emu.counters.refresh_grants == 2


def test_after_grant_status_alone_is_a_gateway_error_after_the_rotation(
    emu: Emulator, http: requests.Session
) -> None:
    tokens = emu.issue_tokens()
    emu.inject_fault(Fault(after_grant=True, status=504))
    assert refresh(http, emu, tokens["refresh_token"]).json()["error"] == "server_error"
    assert emu.counters.refresh_grants == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"status": 200},
        {"status": 302},
        {"status": 600},
        {"status": True},
        {"delay": -1},
        {"delay": math.inf},
        {"retry_after": math.nan},
        {"body": "x", "error": "invalid_grant"},
        {"body": 42},
        {"body": lambda reply: "x"},
        {"drop": True, "reset": True},
        {"reset": True, "truncate": 3},
        {"drop": True, "truncate": 3},
        {"truncate": -1},
        {"reset_after": 3},
        {"reset": True, "reset_after": -1},
        {"error": ""},
        {"content_type": "text/html"},
        {"status": 502, "content_type": "text/html\r\nX-Evil: 1"},
        {"after_grant": True},
    ],
)
def test_a_fault_with_bad_or_contradictory_fields_is_refused_when_made(
    emu: Emulator, kwargs: dict[str, Any]
) -> None:
    with pytest.raises(ValueError):
        Fault(**kwargs)
    assert emu.pending_faults == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"drop": True, "reset": True}, "drop, reset and truncate .* pick one"),
        ({"body": "x", "error": "invalid_grant"}, "error .* or body, not both"),
        ({"body": lambda reply: "x"}, "body function needs after_grant=True"),
        ({"reset_after": 3}, "reset_after needs reset=True"),
        ({"status": 302}, "status 302 needs a body"),
        ({}, "the fault does nothing"),
    ],
)
def test_a_bad_combination_is_refused_with_a_message_naming_the_fields(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Fault(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"error": "invalid_grant"}, 400),
        ({"error": "invalid_client"}, 401),
        ({"retry_after": 2}, 503),
        ({"reset": True}, 503),
        ({"truncate": 5}, 503),
        ({"after_grant": True, "truncate": 5}, None),  # the real reply's status
        ({"body": "x"}, None),  # 200, or the real reply's
        ({"delay": 0.1}, None),  # a delay alone: the grant answers
    ],
)
def test_a_fault_fills_in_its_status_when_it_answers_with_an_error(
    kwargs: dict[str, Any], status: int | None
) -> None:
    assert Fault(**kwargs).status == status


def test_a_fault_is_an_immutable_value() -> None:
    fault = Fault(status=503, retry_after=2)
    assert fault == Fault(status=503, retry_after=2.0)
    with pytest.raises(AttributeError):
        fault.status = 500  # type: ignore[misc]


def test_the_keyword_form_of_inject_fault_still_works_with_a_deprecation_warning(
    emu: Emulator, http: requests.Session
) -> None:
    tokens = emu.issue_tokens()
    with pytest.warns(DeprecationWarning, match=r"inject_fault\(status=\.\.\., \.\.\.\) is deprec"):
        emu.inject_fault(status=503, retry_after=2, count=2)
    assert emu.pending_faults == 2
    assert refresh(http, emu, tokens["refresh_token"]).status_code == 503
    with (
        pytest.warns(DeprecationWarning, match="deprecated"),
        pytest.raises(ValueError, match="pick one"),
    ):
        emu.inject_fault(drop=True, reset=True)


@pytest.mark.parametrize("count", [0, 1.5, True])
def test_inject_fault_refuses_a_count_that_is_not_a_positive_integer(
    emu: Emulator, count: Any
) -> None:
    with pytest.raises(ValueError, match="count must be an integer >= 1"):
        emu.inject_fault(Fault(status=503), count=count)
    assert emu.pending_faults == 0


def test_inject_fault_takes_a_fault_or_its_fields_not_both(emu: Emulator) -> None:
    with pytest.raises(ValueError, match="not both"):
        emu.inject_fault(Fault(status=503), status=500)
    assert emu.pending_faults == 0


def test_the_token_request_hook_sees_every_request_before_its_fault(
    emu: Emulator, http: requests.Session
) -> None:
    tokens = emu.issue_tokens()
    seen: list[tuple[str | None, int]] = []
    emu.set_token_request_hook(lambda grant_type: seen.append((grant_type, emu.pending_faults)))
    emu.inject_fault(Fault(status=503))

    refresh(http, emu, tokens["refresh_token"])
    refresh(http, emu, tokens["refresh_token"])
    http.post(emu.token_url, data=b"\xff")
    emu.set_token_request_hook(None)
    refresh(http, emu, tokens["refresh_token"])

    assert seen == [("refresh_token", 1), ("refresh_token", 0), (None, 0)]


def test_a_failing_token_request_hook_is_answered_500(
    emu: Emulator, http: requests.Session
) -> None:
    def broken(grant_type: str | None) -> None:
        raise RuntimeError("hook failed")

    emu.set_token_request_hook(broken)
    tokens = emu.issue_tokens()
    assert refresh(http, emu, tokens["refresh_token"]).status_code == 500
    assert emu.is_current(tokens["access_token"], tokens["refresh_token"])


# -- control --------------------------------------------------------------------


def test_revoke_all_kills_every_token_of_every_grant(emu: Emulator, http: requests.Session) -> None:
    grants = [emu.issue_tokens() for _ in range(3)]

    emu.revoke_all()

    for tokens in grants:
        assert api(http, emu, tokens["access_token"]).status_code == 401
        response = refresh(http, emu, tokens["refresh_token"])
        assert response.json()["error"] == "invalid_grant"
    assert emu.counters.reuse_detections == 0
    assert emu.counters.rejected_refreshes == 3


def test_counters_are_exact_and_reset(emu: Emulator, http: requests.Session) -> None:
    tokens = emu.issue_tokens()
    rotated = refresh(http, emu, tokens["refresh_token"]).json()
    api(http, emu, rotated["access_token"])
    api(http, emu, tokens["access_token"])
    emu.inject_fault(Fault(status=502))
    refresh(http, emu, rotated["refresh_token"])

    assert emu.counters == EmulatorCounters(
        refresh_grants=1,
        api_requests=2,
        unauthorized=1,
        token_requests=2,
        faults_served=1,
    )
    emu.reset_counters()
    assert emu.counters == EmulatorCounters()


def test_expires_in_is_an_int_when_integral_else_a_float(emu: Emulator) -> None:
    assert emu.issue_tokens()["expires_in"] == 3600
    assert isinstance(emu.issue_tokens()["expires_in"], int)

    emu.set_access_token_lifetime(0.5)

    assert emu.issue_tokens()["expires_in"] == 0.5
    with pytest.raises(ValueError):
        emu.set_access_token_lifetime(-1)


def test_introspection_reports_live_and_dead_tokens(emu: Emulator, http: requests.Session) -> None:
    first = emu.issue_tokens()
    second = refresh(http, emu, first["refresh_token"]).json()
    auth = (emu.client_id, emu.client_secret or "")
    url = emu.token_url + "/introspect"

    def introspect(token: str) -> dict[str, Any]:
        response = http.post(url, data={"token": token}, auth=auth)
        assert response.status_code == 200
        result: dict[str, Any] = response.json()
        return result

    live = introspect(second["access_token"])
    assert live["active"] is True
    assert live["client_id"] == emu.client_id
    assert live["scope"] == "users:read"
    assert live["token_type"] == "Bearer"
    assert abs(live["exp"] - (time.time() + 3600)) < 5
    assert introspect(second["refresh_token"])["active"] is True
    assert introspect(first["access_token"]) == {"active": False}
    assert introspect(first["refresh_token"]) == {"active": False}
    assert http.post(url, data={"token": "x"}, auth=("x", "y")).status_code == 401
    assert emu.counters.token_requests == 1


def test_connections_are_kept_alive(emu: Emulator) -> None:
    tokens = emu.issue_tokens()
    port = urlsplit(emu.url).port
    assert port is not None
    connection = HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        sockets = []
        for _ in range(3):
            connection.request(
                "POST", "/v1/things", body=b"{}", headers={"Authorization": "Bearer nope"}
            )
            connection.getresponse().read()
            sockets.append(connection.sock)
            connection.request(
                "GET",
                "/v2/employees",
                headers={"Authorization": f"Bearer {tokens['access_token']}"},
            )
            response = connection.getresponse()
            assert response.status == 200
            assert response.read()
            sockets.append(connection.sock)
    finally:
        connection.close()

    assert len({id(sock) for sock in sockets}) == 1
    assert sockets[0] is not None


def test_stop_is_idempotent_and_closes_the_port(http: requests.Session) -> None:
    emu = Emulator().start()
    url = emu.url
    assert http.get(url + "/").status_code == 200

    emu.stop()
    emu.stop()

    with pytest.raises(requests.ConnectionError):
        http.get(url + "/", timeout=2)
    with pytest.raises(RuntimeError):
        emu.url  # noqa: B018


def test_start_twice_is_an_error(emu: Emulator) -> None:
    with pytest.raises(RuntimeError):
        emu.start()


def test_nothing_is_written_to_stderr(
    emu: Emulator, http: requests.Session, capfd: pytest.CaptureFixture[str]
) -> None:
    tokens = emu.issue_tokens()
    refresh(http, emu, tokens["refresh_token"])
    api(http, emu, tokens["access_token"])
    http.get(emu.authorize_url, params={"client_id": "x"}, allow_redirects=False)

    captured = capfd.readouterr()

    assert captured.err == ""
    assert captured.out == ""
