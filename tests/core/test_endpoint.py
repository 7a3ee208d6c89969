"""Unit tests of the HTTP layer: pleo_auth._endpoint.TokenEndpoint, with `responses`."""

from __future__ import annotations

import base64
import datetime
import email.utils
import logging
import random
import time
import types
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs

import backoff._sync
import pytest
import requests
import responses
import urllib3.exceptions

from pleo_auth import (
    AuthorizationError,
    ConfigurationError,
    PleoAuthError,
    ReauthenticationRequired,
    RefreshError,
)
from pleo_auth._clock import FakeClock
from pleo_auth._endpoint import MAX_RETRY_AFTER, TokenEndpoint, _retry_after, _wait_generator

TOKEN_URL = "https://auth.example.test/oauth/token"
CLIENT_ID = "client-123"
SECRET = "s3cret-value"
OLD_REFRESH = "rt_old_refresh_token"


def token_reply(n: int = 1, expires_in: float = 900) -> dict[str, Any]:
    return {
        "access_token": f"at_new_{n}",
        "refresh_token": f"rt_new_{n}",
        "expires_in": expires_in,
        "token_type": "Bearer",
        "scope": "users:read",
    }


def form_of(call: Any) -> dict[str, str]:
    body = call.request.body
    text = body.decode() if isinstance(body, bytes) else body
    return {key: values[0] for key, values in parse_qs(text).items()}


@pytest.fixture
def mocked() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record backoff's waits instead of sleeping them."""
    recorded: list[float] = []
    monkeypatch.setattr(backoff._sync, "time", types.SimpleNamespace(sleep=recorded.append))
    return recorded


def endpoint(**kwargs: Any) -> TokenEndpoint:
    kwargs.setdefault("backoff_factor", 0.001)
    kwargs.setdefault("backoff_max", 0.01)
    secret = kwargs.pop("client_secret", SECRET)
    return TokenEndpoint(TOKEN_URL, CLIENT_ID, secret, **kwargs)


# -- the request -----------------------------------------------------------------


def test_refresh_posts_the_refresh_token_grant(mocked: responses.RequestsMock) -> None:
    mocked.add(responses.POST, TOKEN_URL, json=token_reply())
    endpoint().refresh(OLD_REFRESH)
    assert len(mocked.calls) == 1
    form = form_of(mocked.calls[0])
    assert form["grant_type"] == "refresh_token"
    assert form["refresh_token"] == OLD_REFRESH
    assert mocked.calls[0].request.headers["Content-Type"] == "application/x-www-form-urlencoded"


def test_refresh_returns_new_tokens_expiring_expires_in_after_the_request_was_sent(
    mocked: responses.RequestsMock,
) -> None:
    clock = FakeClock(start=5000.0)
    mocked.add(responses.POST, TOKEN_URL, json=token_reply(expires_in=900))
    tokens = endpoint(clock=clock).refresh(OLD_REFRESH)
    assert tokens.access_token == "at_new_1"
    assert tokens.refresh_token == "rt_new_1"
    assert tokens.issued_at == 5000.0
    assert tokens.expires_at == 5900.0
    assert tokens.scope == "users:read"


def test_refresh_ignores_an_expires_at_in_a_live_reply_and_counts_expires_in_from_sending(
    mocked: responses.RequestsMock,
) -> None:
    clock = FakeClock(start=5000.0)
    mocked.add(responses.POST, TOKEN_URL, json={**token_reply(expires_in=900), "expires_at": 1.0})
    tokens = endpoint(clock=clock).refresh(OLD_REFRESH)
    assert (tokens.issued_at, tokens.expires_at) == (5000.0, 5900.0)


def test_client_auth_defaults_to_http_basic_with_no_secret_in_the_body(
    mocked: responses.RequestsMock,
) -> None:
    mocked.add(responses.POST, TOKEN_URL, json=token_reply())
    endpoint().refresh(OLD_REFRESH)
    request = mocked.calls[0].request
    expected = base64.b64encode(f"{CLIENT_ID}:{SECRET}".encode()).decode()
    assert request.headers["Authorization"] == f"Basic {expected}"
    assert "client_secret" not in form_of(mocked.calls[0])


def test_basic_credentials_are_form_encoded_before_base64(
    mocked: responses.RequestsMock,
) -> None:
    mocked.add(responses.POST, TOKEN_URL, json=token_reply())
    TokenEndpoint(TOKEN_URL, "id:with space", "p@ss:wörd").refresh(OLD_REFRESH)
    header = mocked.calls[0].request.headers["Authorization"]
    decoded = base64.b64decode(header.removeprefix("Basic ")).decode()
    assert decoded == "id%3Awith+space:p%40ss%3Aw%C3%B6rd"


def test_client_auth_body_sends_id_and_secret_in_the_form_without_authorization(
    mocked: responses.RequestsMock,
) -> None:
    mocked.add(responses.POST, TOKEN_URL, json=token_reply())
    endpoint(client_auth="body").refresh(OLD_REFRESH)
    form = form_of(mocked.calls[0])
    assert form["client_id"] == CLIENT_ID
    assert form["client_secret"] == SECRET
    assert "Authorization" not in mocked.calls[0].request.headers


def test_public_client_sends_only_its_client_id_in_the_form(
    mocked: responses.RequestsMock,
) -> None:
    mocked.add(responses.POST, TOKEN_URL, json=token_reply())
    endpoint(client_secret=None).refresh(OLD_REFRESH)
    form = form_of(mocked.calls[0])
    assert form["client_id"] == CLIENT_ID
    assert "client_secret" not in form
    assert "Authorization" not in mocked.calls[0].request.headers


def test_each_attempt_waits_at_most_timeout_seconds(mocked: responses.RequestsMock) -> None:
    mocked.add(responses.POST, TOKEN_URL, json=token_reply())
    endpoint(timeout=7.5).refresh(OLD_REFRESH)
    assert mocked.calls[0].request.req_kwargs["timeout"] == 7.5


def test_an_attempt_starts_only_if_its_whole_timeout_fits_before_the_lease_deadline(
    mocked: responses.RequestsMock,
) -> None:
    clock = FakeClock()
    mocked.add(responses.POST, TOKEN_URL, json=token_reply())
    ep = endpoint(timeout=10.0, clock=clock)
    with pytest.raises(RefreshError, match="lease") as caught:
        ep.refresh(OLD_REFRESH, deadline=clock.monotonic() + 9.9)
    assert len(mocked.calls) == 0
    assert caught.value.retryable is True
    ep.refresh(OLD_REFRESH, deadline=clock.monotonic() + 10.0)
    assert mocked.calls[0].request.req_kwargs["timeout"] == 10.0


# -- transient failures ------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_transient_status_is_retried_then_succeeds(
    mocked: responses.RequestsMock, sleeps: list[float], status: int
) -> None:
    mocked.add(responses.POST, TOKEN_URL, status=status, json={"error": "server_error"})
    mocked.add(responses.POST, TOKEN_URL, json=token_reply())
    tokens = endpoint().refresh(OLD_REFRESH)
    assert tokens.access_token == "at_new_1"
    assert len(mocked.calls) == 2
    assert len(sleeps) == 1
    assert [form_of(call)["refresh_token"] for call in mocked.calls] == [OLD_REFRESH] * 2


@pytest.mark.parametrize(
    "failure",
    [
        requests.ConnectionError("connection refused"),
        requests.ConnectTimeout("connect timed out"),
        requests.ReadTimeout("read timed out"),
    ],
)
def test_connection_errors_and_timeouts_are_retried_then_succeed(
    mocked: responses.RequestsMock, sleeps: list[float], failure: Exception
) -> None:
    mocked.add(responses.POST, TOKEN_URL, body=failure)
    mocked.add(responses.POST, TOKEN_URL, json=token_reply())
    assert endpoint().refresh(OLD_REFRESH).access_token == "at_new_1"
    assert len(mocked.calls) == 2
    assert len(sleeps) == 1


def test_transient_failures_give_up_after_max_attempts_with_retryable_refresh_error(
    mocked: responses.RequestsMock, sleeps: list[float]
) -> None:
    mocked.add(responses.POST, TOKEN_URL, status=503, json={"error": "temporarily_unavailable"})
    with pytest.raises(RefreshError) as caught:
        endpoint(max_attempts=3).refresh(OLD_REFRESH)
    assert len(mocked.calls) == 3
    assert len(sleeps) == 2
    assert caught.value.retryable is True
    assert caught.value.status_code == 503


def test_connection_failures_give_up_after_max_attempts_with_retryable_refresh_error(
    mocked: responses.RequestsMock, sleeps: list[float]
) -> None:
    mocked.add(responses.POST, TOKEN_URL, body=requests.ConnectionError("refused"))
    with pytest.raises(RefreshError) as caught:
        endpoint(max_attempts=4).refresh(OLD_REFRESH)
    assert len(mocked.calls) == 4
    assert caught.value.retryable is True
    assert caught.value.status_code is None
    assert isinstance(caught.value.__cause__, requests.ConnectionError)


def test_transient_failures_give_up_when_max_time_runs_out_before_max_attempts(
    mocked: responses.RequestsMock,
) -> None:
    # Real (short) waits: backoff measures max_time on the wall clock. Every wait
    # but the last is at least Retry-After (0.1 s), so 0.3 s allows at most 5 attempts.
    mocked.add(
        responses.POST, TOKEN_URL, status=503, headers={"Retry-After": "0.1"}, json={"error": "x"}
    )
    with pytest.raises(RefreshError) as caught:
        endpoint(max_attempts=1000, max_time=0.3, backoff_max=0.05).refresh(OLD_REFRESH)
    assert caught.value.retryable is True
    assert 2 <= len(mocked.calls) <= 5


def test_retry_after_seconds_is_the_minimum_wait(
    mocked: responses.RequestsMock, sleeps: list[float]
) -> None:
    mocked.add(responses.POST, TOKEN_URL, status=429, headers={"Retry-After": "7"})
    mocked.add(responses.POST, TOKEN_URL, json=token_reply())
    endpoint(backoff_factor=0.001, backoff_max=8.0).refresh(OLD_REFRESH)
    assert sleeps == [7.0]


def test_retry_after_http_date_is_the_minimum_wait(
    mocked: responses.RequestsMock, sleeps: list[float]
) -> None:
    when = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=20)
    header = email.utils.format_datetime(when, usegmt=True)  # whole seconds
    mocked.add(responses.POST, TOKEN_URL, status=503, headers={"Retry-After": header})
    mocked.add(responses.POST, TOKEN_URL, json=token_reply())
    endpoint(backoff_max=8.0).refresh(OLD_REFRESH)
    assert len(sleeps) == 1
    assert 15.0 <= sleeps[0] <= 20.0


def test_retry_after_longer_than_the_backoff_cap_is_still_the_minimum_wait(
    mocked: responses.RequestsMock, sleeps: list[float]
) -> None:
    mocked.add(responses.POST, TOKEN_URL, status=429, headers={"Retry-After": "20"})
    mocked.add(responses.POST, TOKEN_URL, json=token_reply())
    endpoint(backoff_max=2.0, max_time=30.0).refresh(OLD_REFRESH)
    assert len(sleeps) == 1
    assert sleeps[0] >= 20.0


def test_retry_after_beyond_the_time_budget_gives_up_without_retrying_early(
    mocked: responses.RequestsMock, sleeps: list[float]
) -> None:
    mocked.add(responses.POST, TOKEN_URL, status=503, headers={"Retry-After": "3600"})
    mocked.add(responses.POST, TOKEN_URL, json=token_reply())
    with pytest.raises(RefreshError) as caught:
        endpoint(backoff_max=8.0, max_time=30.0).refresh(OLD_REFRESH)
    assert caught.value.retryable is True
    assert len(mocked.calls) == 1
    assert sleeps == []


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("12", 12.0),
        ("0.25", 0.25),
        ("-3", 0.0),
        ("soon", None),
        ("", None),
        ("nan", None),
        ("inf", MAX_RETRY_AFTER),
        ("1e400", MAX_RETRY_AFTER),
        ("86400", MAX_RETRY_AFTER),
        ("Mon, 99 Foo 2024 99:99:99 GMT", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
    ],
)
def test_retry_after_header_parsing(header: str, expected: float | None) -> None:
    response = requests.Response()
    response.headers["Retry-After"] = header
    assert _retry_after(response) == expected


def test_backoff_waits_use_full_jitter_under_an_exponential_cap() -> None:
    random.seed(1234)
    factor, cap = 0.5, 8.0
    for _ in range(50):
        waits = _wait_generator(factor, cap)
        next(waits)  # backoff primes the generator
        for attempt in range(8):
            delay = waits.send(None)
            assert 0.0 <= delay <= min(cap, factor * 2**attempt)


def test_backoff_waits_are_randomised() -> None:
    random.seed(99)
    firsts = set()
    for _ in range(20):
        waits = _wait_generator(0.5, 8.0)
        next(waits)
        firsts.add(waits.send(None))
    assert len(firsts) == 20


# -- refusals ------------------------------------------------------------------------


@pytest.mark.parametrize("error", ["invalid_grant", "invalid_token", "expired_token"])
def test_dead_grant_raises_reauthentication_required_without_retry(
    mocked: responses.RequestsMock, sleeps: list[float], error: str
) -> None:
    mocked.add(responses.POST, TOKEN_URL, status=400, json={"error": error})
    with pytest.raises(ReauthenticationRequired) as caught:
        endpoint().refresh(OLD_REFRESH)
    assert len(mocked.calls) == 1
    assert sleeps == []
    assert caught.value.error == error


@pytest.mark.parametrize("status", [201, 202, 299])
def test_a_2xx_that_names_invalid_grant_is_not_a_dead_grant(
    mocked: responses.RequestsMock, status: int
) -> None:
    mocked.add(responses.POST, TOKEN_URL, status=status, json={"error": "invalid_grant"})
    with pytest.raises(RefreshError) as caught:
        endpoint().refresh(OLD_REFRESH)
    assert not isinstance(caught.value, ReauthenticationRequired)
    assert caught.value.status_code == status


def test_invalid_client_raises_refresh_error_with_error_and_description_without_retry(
    mocked: responses.RequestsMock, sleeps: list[float]
) -> None:
    mocked.add(
        responses.POST,
        TOKEN_URL,
        status=401,
        json={"error": "invalid_client", "error_description": "unknown client"},
    )
    with pytest.raises(RefreshError) as caught:
        endpoint().refresh(OLD_REFRESH)
    assert len(mocked.calls) == 1
    assert sleeps == []
    error = caught.value
    assert not isinstance(error, ReauthenticationRequired)
    assert error.error == "invalid_client"
    assert error.description == "unknown client"
    assert error.status_code == 401
    assert error.retryable is False
    assert "invalid_client" in str(error)
    assert "unknown client" in str(error)


@pytest.mark.parametrize(
    ("status", "error"),
    [(400, "invalid_request"), (400, "unsupported_grant_type"), (403, "access_denied")],
)
def test_other_4xx_raise_refresh_error_without_retry(
    mocked: responses.RequestsMock, sleeps: list[float], status: int, error: str
) -> None:
    mocked.add(responses.POST, TOKEN_URL, status=status, json={"error": error})
    with pytest.raises(RefreshError) as caught:
        endpoint().refresh(OLD_REFRESH)
    assert len(mocked.calls) == 1
    assert caught.value.error == error
    assert caught.value.status_code == status
    assert caught.value.retryable is False


def test_4xx_without_json_raises_refresh_error_with_the_status(
    mocked: responses.RequestsMock,
) -> None:
    mocked.add(responses.POST, TOKEN_URL, status=404, body="<html>not found</html>")
    with pytest.raises(RefreshError) as caught:
        endpoint().refresh(OLD_REFRESH)
    assert len(mocked.calls) == 1
    assert caught.value.status_code == 404
    assert caught.value.error is None


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        "[1, 2]",
        '{"access_token": "at_x", "expires_in": 60}',
        '{"refresh_token": "rt_x", "expires_in": 60}',
        '{"access_token": "at_x", "refresh_token": "rt_x", "expires_in": 60',
        "<!doctype html><title>Welcome to the hotel Wi-Fi</title>",
        "",
        "[" * 100_000,
    ],
)
def test_unusable_200_reply_raises_refresh_error_without_retry(
    mocked: responses.RequestsMock, body: str
) -> None:
    mocked.add(responses.POST, TOKEN_URL, status=200, body=body)
    with pytest.raises(RefreshError) as caught:
        endpoint().refresh(OLD_REFRESH)
    assert len(mocked.calls) == 1
    assert not isinstance(caught.value, ReauthenticationRequired)
    assert caught.value.retryable is False
    assert caught.value.status_code == 200
    assert caught.value.response is None  # it may hold new tokens
    assert "refresh token is spent" in str(caught.value)


@pytest.mark.parametrize(
    ("body", "content_type", "named"),
    [
        ("<html><body>Bad gateway</body></html>", "text/html; charset=utf-8", "an HTML page"),
        ('{"access_token": "at_x", "refresh_', "application/json", "not valid JSON"),
        ("", "application/json", "an empty body"),
        ("[1, 2]", "application/json", "JSON that is not an object"),
        ('{"refresh_token": "rt_x"}', "application/json", "access_token is missing"),
        ('{"access_token": "at_x"}', "application/json", "refresh_token is missing"),
    ],
)
def test_unusable_200_reply_message_names_the_problem(
    mocked: responses.RequestsMock, body: str, content_type: str, named: str
) -> None:
    mocked.add(responses.POST, TOKEN_URL, status=200, body=body, content_type=content_type)
    with pytest.raises(RefreshError, match=named):
        endpoint().refresh(OLD_REFRESH)


def test_200_reply_with_an_odd_expires_in_is_kept(mocked: responses.RequestsMock) -> None:
    mocked.add(responses.POST, TOKEN_URL, json=token_reply(expires_in="never"))  # type: ignore[arg-type]
    tokens = endpoint().refresh(OLD_REFRESH)
    assert tokens.refresh_token == "rt_new_1"
    assert tokens.issued_at is not None
    assert tokens.expires_at - tokens.issued_at == 900.0


# -- the lease -----------------------------------------------------------------------


def test_expired_lease_raises_retryable_refresh_error_without_calling(
    mocked: responses.RequestsMock,
) -> None:
    clock = FakeClock()
    with pytest.raises(RefreshError) as caught:
        endpoint(clock=clock).refresh(OLD_REFRESH, deadline=clock.monotonic() - 1.0)
    assert len(mocked.calls) == 0
    assert caught.value.retryable is True


def test_lease_too_short_for_another_attempt_raises_without_calling(
    mocked: responses.RequestsMock,
) -> None:
    clock = FakeClock()
    with pytest.raises(RefreshError, match="lease") as caught:
        endpoint(clock=clock).refresh(OLD_REFRESH, deadline=clock.monotonic() + 0.01)
    assert len(mocked.calls) == 0
    assert caught.value.retryable is True


def test_no_retry_starts_when_the_lease_would_run_out_before_it_could_finish(
    mocked: responses.RequestsMock, sleeps: list[float]
) -> None:
    clock = FakeClock()
    deadline = clock.monotonic() + 20.0

    def slow_503(request: Any) -> tuple[int, dict[str, str], str]:
        clock.advance(12.0)  # 8 s of lease left: less than one 10 s attempt
        return 503, {}, "{}"

    mocked.add_callback(responses.POST, TOKEN_URL, callback=slow_503)
    mocked.add(responses.POST, TOKEN_URL, json=token_reply())
    with pytest.raises(RefreshError, match="lease runs out before another attempt") as caught:
        endpoint(timeout=10.0, max_time=60.0, clock=clock).refresh(OLD_REFRESH, deadline=deadline)
    assert len(mocked.calls) == 1
    assert sleeps == []
    assert caught.value.retryable is True


def test_no_retry_starts_when_retry_after_would_push_it_past_the_lease(
    mocked: responses.RequestsMock, sleeps: list[float]
) -> None:
    clock = FakeClock()
    mocked.add(responses.POST, TOKEN_URL, status=429, headers={"Retry-After": "15"})
    mocked.add(responses.POST, TOKEN_URL, json=token_reply())
    with pytest.raises(RefreshError, match="lease"):
        endpoint(timeout=10.0, max_time=60.0, clock=clock).refresh(
            OLD_REFRESH, deadline=clock.monotonic() + 20.0
        )
    assert len(mocked.calls) == 1
    assert sleeps == []


def test_no_attempt_is_sent_once_the_lease_is_no_longer_known_to_be_held(
    mocked: responses.RequestsMock, caplog: pytest.LogCaptureFixture
) -> None:
    """A holder frozen past its lease (its renewals stopped with it) may have lost the
    lock to a process that spent the refresh token already: presenting it again would
    revoke the grant. The renewals' last confirmation is asked before each attempt."""
    mocked.add(responses.POST, TOKEN_URL, json=token_reply())
    lapsed = time.monotonic() - 0.001
    with caplog.at_level(logging.WARNING, "pleo_auth"), pytest.raises(RefreshError) as caught:
        endpoint().refresh(OLD_REFRESH, deadline=None, held_until=lambda: lapsed)
    assert len(mocked.calls) == 0
    assert caught.value.retryable is True
    assert "may have run out" in str(caught.value)
    assert "was not sent" in str(caught.value)
    assert any("not sending the refresh token" in r.getMessage() for r in caplog.records)


def test_the_lease_is_asked_again_before_each_retry(
    mocked: responses.RequestsMock, sleeps: list[float]
) -> None:
    confirmed = [time.monotonic() + 3600.0]

    def lapse_then_503(request: Any) -> tuple[int, dict[str, str], str]:
        confirmed[0] = time.monotonic() - 0.001  # the renewals stopped meanwhile
        return 503, {}, "{}"

    mocked.add_callback(responses.POST, TOKEN_URL, callback=lapse_then_503)
    mocked.add(responses.POST, TOKEN_URL, json=token_reply())
    with pytest.raises(RefreshError, match=r"was not sent \(after 1 attempts\)") as caught:
        endpoint(max_attempts=3).refresh(OLD_REFRESH, held_until=lambda: confirmed[0])
    assert len(mocked.calls) == 1
    assert caught.value.retryable is True


def test_a_lease_known_to_be_held_sends_as_before(mocked: responses.RequestsMock) -> None:
    mocked.add(responses.POST, TOKEN_URL, json=token_reply())
    held = time.monotonic() + 3600.0
    tokens = endpoint().refresh(OLD_REFRESH, held_until=lambda: held)
    assert len(mocked.calls) == 1
    assert tokens.refresh_token == "rt_new_1"


# -- the time budget ------------------------------------------------------------------


def test_no_attempt_starts_after_max_time_even_when_one_attempt_ran_long(
    mocked: responses.RequestsMock, sleeps: list[float]
) -> None:
    clock = FakeClock()

    def timing_out(request: Any) -> Exception:
        clock.advance(6.0)  # as long as a read timeout would take
        return requests.ReadTimeout("read timed out")

    def slow_timeout(request: Any) -> tuple[int, dict[str, str], str]:
        raise timing_out(request)

    mocked.add_callback(responses.POST, TOKEN_URL, callback=slow_timeout)
    with pytest.raises(RefreshError) as caught:
        endpoint(timeout=6.0, max_time=10.0, max_attempts=10, clock=clock).refresh(OLD_REFRESH)
    # Attempts start at 0 and 6 s; the third would start at 12 s, past max_time.
    assert len(mocked.calls) == 2
    message = str(caught.value)
    assert "gave up after 2 attempts" in message
    assert "max_refresh_time of 10s spent" in message
    assert "timed out waiting for the reply" in message


def test_backoff_waits_never_outlast_the_remaining_budget() -> None:
    left = [0.25]
    waits = _wait_generator(10.0, 60.0, remaining=lambda: left[0])
    next(waits)
    for _ in range(20):
        assert 0.0 <= waits.send(None) <= 0.25
    left[0] = -1.0
    assert waits.send(None) == 0.0


def test_the_final_error_names_the_failure_and_the_attempts(
    mocked: responses.RequestsMock, sleeps: list[float]
) -> None:
    mocked.add(responses.POST, TOKEN_URL, status=502, body="<html>Bad gateway</html>")
    with pytest.raises(RefreshError) as caught:
        endpoint(max_attempts=3).refresh(OLD_REFRESH)
    message = str(caught.value)
    assert "HTTP 502" in message
    assert "gave up after 3 attempts" in message
    assert "max_refresh_attempts of 3 made" in message
    # A gateway's 502 may hide a reply Pleo did send.
    assert "An attempt went unanswered" in message


def test_chunked_encoding_errors_mid_reply_are_retried(
    mocked: responses.RequestsMock, sleeps: list[float]
) -> None:
    mocked.add(
        responses.POST,
        TOKEN_URL,
        body=requests.exceptions.ChunkedEncodingError("Connection broken: IncompleteRead"),
    )
    mocked.add(responses.POST, TOKEN_URL, json=token_reply())
    assert endpoint().refresh(OLD_REFRESH).access_token == "at_new_1"
    assert len(mocked.calls) == 2


# -- a lost reply ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lost", "reason"),
    [
        (requests.ReadTimeout("read timed out"), "timed out waiting for the reply"),
        (
            requests.ConnectionError(ConnectionResetError(104, "Connection reset by peer")),
            "connection reset before the reply was complete",
        ),
        (
            requests.exceptions.ChunkedEncodingError("IncompleteRead"),
            "connection closed before the reply was complete",
        ),
    ],
)
def test_invalid_grant_after_an_unanswered_attempt_explains_the_lost_reply(
    mocked: responses.RequestsMock, sleeps: list[float], lost: Exception, reason: str
) -> None:
    mocked.add(responses.POST, TOKEN_URL, body=lost)
    mocked.add(responses.POST, TOKEN_URL, status=400, json={"error": "invalid_grant"})
    with pytest.raises(ReauthenticationRequired) as caught:
        endpoint().refresh(OLD_REFRESH)
    message = str(caught.value)
    assert f"never got Pleo's reply ({reason})" in message
    assert "the reply carrying the new ones was lost" in message
    assert "the retry counted as reuse" in message
    assert caught.value.error == "invalid_grant"


@pytest.mark.parametrize("status", [502, 504])
def test_invalid_grant_after_a_gateway_error_explains_the_lost_reply(
    mocked: responses.RequestsMock, sleeps: list[float], status: int
) -> None:
    mocked.add(responses.POST, TOKEN_URL, status=status)
    mocked.add(responses.POST, TOKEN_URL, status=400, json={"error": "invalid_grant"})
    with pytest.raises(
        ReauthenticationRequired, match=f"never got Pleo's reply \\(HTTP {status}\\)"
    ):
        endpoint().refresh(OLD_REFRESH)


@pytest.mark.parametrize(
    "never_sent",
    [
        requests.ConnectTimeout("connect timed out"),
        requests.ConnectionError(
            urllib3.exceptions.MaxRetryError(
                None,  # type: ignore[arg-type]
                "/oauth/token",
                urllib3.exceptions.NewConnectionError(None, "Connection refused"),  # type: ignore[arg-type]
            )
        ),
    ],
)
def test_invalid_grant_after_attempts_that_never_connected_is_a_plain_dead_grant(
    mocked: responses.RequestsMock, sleeps: list[float], never_sent: Exception
) -> None:
    mocked.add(responses.POST, TOKEN_URL, status=503)
    mocked.add(responses.POST, TOKEN_URL, body=never_sent)
    mocked.add(responses.POST, TOKEN_URL, status=400, json={"error": "invalid_grant"})
    with pytest.raises(ReauthenticationRequired) as caught:
        endpoint().refresh(OLD_REFRESH)
    assert "never got Pleo's reply" not in str(caught.value)
    assert "expired or was revoked" in str(caught.value)


# -- what the server says never carries a secret into a message ---------------------------


def test_an_error_description_echoing_a_secret_is_redacted(mocked: responses.RequestsMock) -> None:
    mocked.add(
        responses.POST,
        TOKEN_URL,
        status=400,
        json={
            "error": f"invalid_request {SECRET}",
            "error_description": f"bad token {OLD_REFRESH} for \x1b[31m{SECRET}\n",
        },
    )
    with pytest.raises(RefreshError) as caught:
        endpoint().refresh(OLD_REFRESH)
    error = caught.value
    for text in (str(error), repr(error), error.description or "", error.error or ""):
        assert OLD_REFRESH not in text
        assert SECRET not in text
        assert "\x1b" not in text
        assert "\n" not in text
    assert error.description == "bad token [redacted] for ?[31m[redacted]?"


def test_error_fields_that_are_not_strings_are_ignored(mocked: responses.RequestsMock) -> None:
    mocked.add(
        responses.POST,
        TOKEN_URL,
        status=400,
        json={"error": {"refresh_token": OLD_REFRESH}, "error_description": [OLD_REFRESH]},
    )
    with pytest.raises(RefreshError) as caught:
        endpoint().refresh(OLD_REFRESH)
    assert caught.value.error is None
    assert caught.value.description is None
    assert OLD_REFRESH not in str(caught.value)


# -- code exchange -----------------------------------------------------------------


def test_exchange_code_posts_code_redirect_uri_and_verifier(
    mocked: responses.RequestsMock,
) -> None:
    mocked.add(responses.POST, TOKEN_URL, json=token_reply())
    tokens = endpoint().exchange_code(
        "ac_code", redirect_uri="http://127.0.0.1:8765/callback", code_verifier="v" * 43
    )
    assert tokens.refresh_token == "rt_new_1"
    form = form_of(mocked.calls[0])
    assert form == {
        "grant_type": "authorization_code",
        "code": "ac_code",
        "redirect_uri": "http://127.0.0.1:8765/callback",
        "code_verifier": "v" * 43,
    }


def test_refused_code_raises_authorization_error(mocked: responses.RequestsMock) -> None:
    mocked.add(responses.POST, TOKEN_URL, status=400, json={"error": "invalid_grant"})
    with pytest.raises(AuthorizationError) as caught:
        endpoint().exchange_code("ac_code", redirect_uri="http://x/cb", code_verifier="v" * 43)
    assert caught.value.error == "invalid_grant"
    assert len(mocked.calls) == 1


# -- configuration and secrets ---------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"client_auth": "digest"},
        {"max_attempts": 0},
        {"max_time": 0},
        {"timeout": 0},
        {"timeout": -1},
    ],
)
def test_bad_arguments_raise_configuration_error(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        TokenEndpoint(TOKEN_URL, CLIENT_ID, SECRET, **kwargs)


@pytest.mark.parametrize("url", ["ftp://auth.example.test/token", "auth.example.test/token", ""])
def test_token_url_that_is_not_http_raises_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError):
        TokenEndpoint(url, CLIENT_ID, SECRET)


def test_endpoint_logs_and_errors_never_contain_a_token_or_the_secret(
    mocked: responses.RequestsMock, sleeps: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    mocked.add(responses.POST, TOKEN_URL, status=503, headers={"Retry-After": "1"})
    mocked.add(responses.POST, TOKEN_URL, body=requests.ConnectionError("refused"))
    mocked.add(responses.POST, TOKEN_URL, json=token_reply())
    mocked.add(responses.POST, TOKEN_URL, status=401, json={"error": "invalid_client"})
    mocked.add(responses.POST, TOKEN_URL, status=400, json={"error": "invalid_grant"})
    texts: list[str] = []
    ep = endpoint()
    tokens = ep.refresh(OLD_REFRESH)
    for _ in range(2):
        with pytest.raises(PleoAuthError) as caught:
            ep.refresh(tokens.refresh_token)
        texts += [str(caught.value), repr(caught.value)]
    texts += [repr(ep), repr(tokens)]
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    texts += [formatter.format(record) for record in caplog.records]
    assert len(caplog.records) >= 2  # the retries were logged
    for secret in (SECRET, OLD_REFRESH, tokens.access_token, tokens.refresh_token):
        for text in texts:
            assert secret not in text
