"""Token-endpoint replies, fuzzed with hypothesis: only PleoAuthErrors, never a secret.

Whatever comes back from the token endpoint (any status, any Content-Type, any
Retry-After, any body: JSON of any shape, cut JSON, HTML, bytes, or a transport
error instead of a reply), ``TokenEndpoint.refresh``, ``TokenEndpoint.exchange_code``
and ``TokenSet.from_response`` end in one of two ways:

* a ``TokenSet`` fit to use: a header-safe access token, a non-empty refresh token,
  and a lifetime between ``MIN_EXPIRES_IN`` and ``MAX_EXPIRES_IN``; or
* a ``PleoAuthError`` subclass the operation documents, with a non-empty message
  in which no secret appears: not the refresh token, code or verifier sent, not the
  client secret (even when the server echoes them back), and not a token of the reply.
  Log records are held to the same rule.

Replies are served through ``responses`` (the HTTP layer), so no socket is opened.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from unittest import mock

import backoff._sync
import requests
import responses
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pleo_auth import (
    AuthorizationError,
    PleoAuthError,
    ReauthenticationRequired,
    RefreshError,
    TokenSet,
)
from pleo_auth._endpoint import DEAD_GRANT_ERRORS, MAX_RETRY_AFTER, TokenEndpoint, _retry_after
from pleo_auth.tokens import MAX_EXPIRES_IN, MIN_EXPIRES_IN

TOKEN_URL = "https://auth.example.test/oauth/token"
CLIENT_ID = "client-fuzz"
SECRET = "cs_SECRET-q8Vw2LxT5nRb7Kd"
OLD_REFRESH = "rt_SECRET-3fHj9PzQ1mWc6Ys"
CODE = "ac_SECRET-7Gt4NvB2xKe8Ld"
VERIFIER = "vf_SECRET-" + "Zk5Rq9Wm2Tx7Hb3Nc6Jd1Fg4Ls8Pv0"
SENT = (SECRET, OLD_REFRESH, CODE, VERIFIER)
NEW = "at_NEW-SECRET-"  # the mark of every token a fuzzed reply carries
REFRESHING = (SECRET, OLD_REFRESH, NEW)  # what a refresh must never show
EXCHANGING = (SECRET, CODE, VERIFIER, NEW)  # what a code exchange must never show

# Deterministic in CI, quick by default.
FUZZ = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

_TOKEN_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/="

# -- strategies ---------------------------------------------------------------------------

# Tokens a reply may carry: marked, so any that shows up in a message is a leak.
new_tokens = st.text(_TOKEN_CHARS, min_size=1, max_size=40).map(lambda s: NEW + s)
# Text that echoes what the client sent, as a careless server might.
echoes = st.builds(
    lambda before, secret, after: before + secret + after,
    st.text(max_size=6),
    st.sampled_from(SENT),
    st.text(max_size=6),
)
numbers = (
    st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats()
)


def _nested(leaves: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves,
        lambda children: (
            st.lists(children, max_size=3)
            | st.dictionaries(st.text(max_size=8), children, max_size=3)
        ),
        max_leaves=8,
    )


# Any JSON; "leaky" JSON may also echo what the client sent.
json_values = _nested(st.none() | numbers | st.text(max_size=20))
leaky_values = _nested(st.none() | numbers | st.text(max_size=20) | echoes)
expires_ins = leaky_values | st.sampled_from(
    [0, -1, 0.5, 3600, "3600", " 60 ", "soon", "", "nan", "inf", 1e12, 1e309, -1e309, True]
)
# Any string a reply offers as a token is marked; anything else is not a string.
token_values = new_tokens | st.just("") | _nested(st.none() | numbers)
reply_objects = st.fixed_dictionaries(
    {},
    optional={
        "access_token": token_values,
        "refresh_token": token_values,
        "expires_in": expires_ins,
        "token_type": leaky_values,
        "scope": json_values,  # TokenSet's repr shows the scope a server grants, as sent
        "error": st.sampled_from(["invalid_grant", "invalid_client", "server_error"])
        | leaky_values,
        "error_description": leaky_values,
        "extra": leaky_values,
    },
)


def _dumps(value: object) -> str:
    # allow_nan: Python writes NaN/Infinity, which Python's json reads back.
    return json.dumps(value, allow_nan=True)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["object", "value", "cut", "bytes", "html", "special"]))
    if kind == "object":
        return _dumps(draw(reply_objects)).encode()
    if kind == "value":
        return _dumps(draw(leaky_values)).encode()
    if kind == "cut":
        text = _dumps(draw(reply_objects)).encode()
        return text[: draw(st.integers(0, max(0, len(text) - 1)))]
    if kind == "html":
        return f"<!doctype html><h1>{draw(echoes)}</h1>".encode()
    if kind == "special":
        return draw(
            st.sampled_from(
                [
                    b"",
                    b"[" * 5000,  # deeper than the parser recurses
                    b'{"expires_in": ' + b"9" * 5000 + b"}",  # past int's digit limit
                    b'{"access_token": "a", "refresh_token": "r", "expires_in": 1e309}',
                    '{"access_token": "at_é", "refresh_token": "r"}'.encode("utf-16"),
                    b"\xff\xfe\x00garbage",
                ]
            )
        )
    return draw(st.binary(max_size=64))


header_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40
)  # what responses can put in a header
content_types = (
    st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "application/json; charset=bogus",
            "text/html; charset=utf-8",
            "text/plain",
            "",
        ]
    )
    | header_text
)
retry_afters = (
    st.none()
    | header_text
    | st.sampled_from(
        ["0", "0.01", "-5", "nan", "inf", "1e400", "Wed, 21 Oct 2015 07:28:00 GMT", "Fri, 99 Foo"]
    )
)
statuses = st.sampled_from([200, 201, 204, 301, 302, 307, 308, 400, 401, 403, 404, 429]) | (
    st.sampled_from([500, 502, 503, 504]) | st.integers(min_value=200, max_value=599)
)
transport_errors = st.sampled_from(
    [
        requests.ConnectionError("refused"),
        requests.ConnectTimeout("connect timed out"),
        requests.ReadTimeout("read timed out"),
        requests.exceptions.ChunkedEncodingError("IncompleteRead"),
        requests.exceptions.ContentDecodingError("bad gzip"),
        requests.exceptions.InvalidHeader("bad header"),
        requests.exceptions.TooManyRedirects("loop"),
        requests.RequestException("something"),
        UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
        ValueError("deep in the stack"),
    ]
)


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str
    retry_after: str | None
    error: Exception | None  # raised instead of a reply

    def add_to(self, mocked: responses.RequestsMock) -> None:
        if self.error is not None:
            mocked.add(responses.POST, TOKEN_URL, body=self.error)
            return
        headers = {} if self.retry_after is None else {"Retry-After": self.retry_after}
        mocked.add(
            responses.POST,
            TOKEN_URL,
            status=self.status,
            # HTTP gives 204 and 304 no body: urllib3 would take one for a broken stream.
            body=b"" if self.status in (204, 304) else self.body,
            headers=headers,
            content_type=self.content_type or None,
        )


replies = st.builds(
    Reply,
    status=statuses,
    body=bodies(),
    content_type=content_types,
    retry_after=retry_afters,
    error=st.none() | st.none() | st.none() | transport_errors,
)

# -- checks ------------------------------------------------------------------------------


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append(record.getMessage())


@contextlib.contextmanager
def logged() -> Iterator[list[str]]:
    handler = _Records()
    logger = logging.getLogger("pleo_auth")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler.texts
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def assert_no_secret(secrets: tuple[str, ...], *texts: str) -> None:
    for text in texts:
        for secret in secrets:
            assert secret not in text, f"a secret leaked into: {text[:200]!r}"


def assert_usable(tokens: TokenSet) -> None:
    assert isinstance(tokens.access_token, str)
    assert tokens.access_token
    assert all(0x21 <= ord(char) <= 0x7E for char in tokens.access_token)
    assert isinstance(tokens.refresh_token, str)
    assert tokens.refresh_token
    assert tokens.issued_at is not None
    assert MIN_EXPIRES_IN <= tokens.expires_at - tokens.issued_at <= MAX_EXPIRES_IN
    assert isinstance(tokens.token_type, str)
    assert tokens.token_type
    assert tokens.scope is None or isinstance(tokens.scope, str)


def endpoint() -> TokenEndpoint:
    return TokenEndpoint(TOKEN_URL, CLIENT_ID, SECRET, max_attempts=2, max_time=10.0, timeout=5.0)


@contextlib.contextmanager
def served(reply: Reply) -> Iterator[responses.RequestsMock]:
    # No real waits: backoff's sleeps are recorded, not slept.
    no_sleep = types.SimpleNamespace(sleep=lambda seconds: None)
    with (
        responses.RequestsMock(assert_all_requests_are_fired=False) as mocked,
        mock.patch.object(backoff._sync, "time", no_sleep),
    ):
        reply.add_to(mocked)
        yield mocked


def check_failure(error: PleoAuthError, reply: Reply, secrets: tuple[str, ...]) -> None:
    message = str(error)
    assert message.strip()
    assert_no_secret(secrets, message, repr(error), *(str(v) for v in vars(error).values()))
    if isinstance(error, ReauthenticationRequired):
        assert error.error in DEAD_GRANT_ERRORS
        assert 400 <= reply.status < 500
        assert reply.error is None
    if isinstance(error, RefreshError) and error.retryable:
        assert reply.error is not None or reply.status in (429, 500, 502, 503, 504)


# -- the tests ---------------------------------------------------------------------------


def outcome(call: Callable[[], TokenSet]) -> TokenSet | PleoAuthError:
    """What ``call`` returns, or the PleoAuthError it raises; anything else propagates."""
    try:
        return call()
    except PleoAuthError as exc:
        return exc


@FUZZ
@given(replies)
@example(Reply(200, b'{"access_token": "at_x", "refresh_', "application/json", None, None))
@example(Reply(200, b"<html>portal</html>", "text/html", None, None))
@example(Reply(503, b"", "", "inf", None))
@example(Reply(400, b'{"error": "invalid_grant"}', "application/json", None, None))
def test_refresh_survives_any_reply(reply: Reply) -> None:
    with served(reply) as mocked, logged() as logs:
        result = outcome(lambda: endpoint().refresh(OLD_REFRESH))
        attempts = len(mocked.calls)
    if isinstance(result, PleoAuthError):
        check_failure(result, reply, REFRESHING)
    else:
        assert reply.error is None
        assert reply.status == 200
        assert_usable(result)
    assert 1 <= attempts <= 2
    assert_no_secret(REFRESHING, *logs)


@FUZZ
@given(replies)
def test_exchange_code_survives_any_reply(reply: Reply) -> None:
    with served(reply), logged() as logs:
        result = outcome(
            lambda: endpoint().exchange_code(
                CODE, redirect_uri="http://127.0.0.1:8765/callback", code_verifier=VERIFIER
            )
        )
    if isinstance(result, PleoAuthError):
        assert isinstance(result, RefreshError | AuthorizationError)
        assert not isinstance(result, ReauthenticationRequired)
        check_failure(result, reply, EXCHANGING)
    else:
        assert reply.status == 200
        assert_usable(result)
    assert_no_secret(EXCHANGING, *logs)


@FUZZ
@given(st.dictionaries(st.text(max_size=16), json_values, max_size=4) | reply_objects)
def test_from_response_survives_any_object(data: dict[str, Any]) -> None:
    with logged() as logs:
        result = outcome(lambda: TokenSet.from_response(data, now=1_000_000.0))
    if isinstance(result, PleoAuthError):
        assert isinstance(result, RefreshError)
        assert str(result).strip()
        assert_no_secret((NEW, *SENT), str(result), repr(result))
    else:
        assert_usable(result)
        assert result.access_token == data["access_token"]
        assert result.refresh_token == data["refresh_token"]
    assert_no_secret((NEW, *SENT), *logs)


@FUZZ
@given(header_text | retry_afters.filter(lambda value: value is not None))
def test_retry_after_never_raises_and_stays_within_an_hour(value: str) -> None:
    response = requests.Response()
    response.headers["Retry-After"] = value
    seconds = _retry_after(response)
    assert seconds is None or (0.0 <= seconds <= MAX_RETRY_AFTER and not math.isnan(seconds))
