"""Tests for pleo_auth.tokens: the immutable TokenSet."""

from __future__ import annotations

import json
import logging
import math
import re
from typing import Any

import attrs
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from pleo_auth import RefreshError, TokenSet
from pleo_auth.tokens import DEFAULT_EXPIRES_IN, MAX_EXPIRES_IN, MIN_EXPIRES_IN

# Opaque tokens as Pleo (and the emulator) issue them: a prefix and url-safe text.
_URLSAFE = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
access_tokens = st.text(_URLSAFE, min_size=8, max_size=64).map(lambda s: "at_" + s)
refresh_tokens = st.text(_URLSAFE, min_size=8, max_size=64).map(lambda s: "rt_" + s)
scopes = st.none() | st.lists(
    st.sampled_from(["users:read", "export-jobs:read", "expenses:write", "cards:read"]),
    min_size=1,
    max_size=4,
).map(" ".join)
epochs = st.floats(min_value=0, max_value=4e9, allow_nan=False, allow_infinity=False)
lifetimes = st.integers(min_value=1, max_value=86_400) | st.floats(
    min_value=1.0, max_value=86_400.0, allow_nan=False, allow_infinity=False
)


@st.composite
def token_sets(draw: st.DrawFn) -> TokenSet:
    return TokenSet(
        access_token=draw(access_tokens),
        refresh_token=draw(refresh_tokens),
        expires_at=draw(epochs),
        token_type=draw(st.sampled_from(["Bearer", "bearer"])),
        scope=draw(scopes),
        issued_at=draw(st.none() | epochs),
    )


@st.composite
def any_token_sets(draw: st.DrawFn) -> TokenSet:
    """Any valid TokenSet, with arbitrary text wherever the model allows it."""
    finite = st.floats(allow_nan=False, allow_infinity=False)
    return TokenSet(
        access_token=draw(st.text(min_size=1)),
        refresh_token=draw(st.text(min_size=1)),
        expires_at=draw(finite),
        token_type=draw(st.text(min_size=1)),
        scope=draw(st.none() | st.text()),
        issued_at=draw(st.none() | finite),
    )


def reply(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "access_token": "at_abc",
        "refresh_token": "rt_def",
        "expires_in": 900,
        "token_type": "Bearer",
        "scope": "users:read",
    }
    data.update(overrides)
    return {key: value for key, value in data.items() if value is not None}


# -- from_response -------------------------------------------------------------


def test_from_response_expires_expires_in_seconds_after_now() -> None:
    tokens = TokenSet.from_response(reply(expires_in=900), now=1000.0)
    assert tokens.expires_at == 1900.0
    assert tokens.issued_at == 1000.0
    assert tokens.expires_in(now=1500.0) == 400.0


def test_from_response_keeps_both_tokens_token_type_and_scope() -> None:
    tokens = TokenSet.from_response(reply(scope="users:read export-jobs:read"), now=0.0)
    assert tokens.access_token == "at_abc"
    assert tokens.refresh_token == "rt_def"
    assert tokens.token_type == "Bearer"
    assert tokens.scope == "users:read export-jobs:read"


def test_from_response_defaults_token_type_to_bearer_and_scope_to_none() -> None:
    tokens = TokenSet.from_response(reply(token_type=None, scope=None), now=0.0)
    assert tokens.token_type == "Bearer"
    assert tokens.scope is None


@pytest.mark.parametrize("field", ["access_token", "refresh_token"])
def test_from_response_without_a_token_raises_refresh_error_naming_it(field: str) -> None:
    data = reply()
    del data[field]
    with pytest.raises(RefreshError, match=f"{field} is missing"):
        TokenSet.from_response(data, now=0.0)


def test_from_response_without_either_token_names_both() -> None:
    with pytest.raises(RefreshError, match="access_token is missing; refresh_token is missing"):
        TokenSet.from_response({"expires_in": 60}, now=0.0)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "is empty"),
        (None, "is missing"),
        (123, "is not a string (a number)"),
        (["at"], "is not a string (an array)"),
        ({"t": "x"}, "is not a string (an object)"),
        (True, "is not a string (a boolean)"),
    ],
)
@pytest.mark.parametrize("field", ["access_token", "refresh_token"])
def test_from_response_with_an_unusable_token_raises_refresh_error_naming_it(
    field: str, value: object, problem: str
) -> None:
    with pytest.raises(RefreshError, match=re.escape(f"{field} {problem}")):
        TokenSet.from_response({**reply(), field: value}, now=0.0)


@pytest.mark.parametrize("access", ["at with space", "at\r\nX-Evil: 1", "at_\u00e9", "at\x00"])
def test_from_response_refuses_an_access_token_no_authorization_header_can_carry(
    access: str,
) -> None:
    with pytest.raises(RefreshError, match="Authorization header") as caught:
        TokenSet.from_response(reply(access_token=access), now=0.0)
    assert access not in str(caught.value)


def test_from_response_accepts_any_non_empty_string_as_the_refresh_token() -> None:
    # It travels in a form body, which can carry anything.
    assert TokenSet.from_response(reply(refresh_token="rt with space é"), now=0.0).refresh_token


# -- the expires_in policy: keep the tokens, assume or clamp the lifetime ---------------------


@pytest.mark.parametrize(
    ("expires_in", "lifetime", "warning"),
    [
        (900, 900.0, None),
        (0.5 + 1, 1.5, None),
        ("3600", 3600.0, None),
        (" 60 ", 60.0, None),
        ("1e3", 1000.0, None),
        (_ABSENT := object(), DEFAULT_EXPIRES_IN, "is missing"),
        (None, DEFAULT_EXPIRES_IN, "is missing"),
        (0, DEFAULT_EXPIRES_IN, "is zero"),
        (-5, DEFAULT_EXPIRES_IN, "is negative"),
        ("-60", DEFAULT_EXPIRES_IN, "is negative"),
        ("soon", DEFAULT_EXPIRES_IN, "not a number (a non-numeric string)"),
        ("", DEFAULT_EXPIRES_IN, "not a number (a non-numeric string)"),
        (True, DEFAULT_EXPIRES_IN, "not a number (a boolean)"),
        ([60], DEFAULT_EXPIRES_IN, "not a number (an array)"),
        ({"s": 60}, DEFAULT_EXPIRES_IN, "not a number (an object)"),
        (float("nan"), DEFAULT_EXPIRES_IN, "not a number (NaN)"),
        ("nan", DEFAULT_EXPIRES_IN, "not a number (NaN)"),
        (0.001, MIN_EXPIRES_IN, "out of range"),
        (1e12, MAX_EXPIRES_IN, "out of range"),
        (float("inf"), MAX_EXPIRES_IN, "out of range"),
        ("inf", MAX_EXPIRES_IN, "out of range"),
        (10**400, MAX_EXPIRES_IN, "out of range"),
    ],
)
def test_from_response_keeps_the_tokens_whatever_expires_in_says(
    caplog: pytest.LogCaptureFixture, expires_in: object, lifetime: float, warning: str | None
) -> None:
    data = reply()
    del data["expires_in"]
    if expires_in is not _ABSENT:
        data["expires_in"] = expires_in
    with caplog.at_level(logging.WARNING, logger="pleo_auth.tokens"):
        tokens = TokenSet.from_response(data, now=1000.0)
    assert (tokens.access_token, tokens.refresh_token) == ("at_abc", "rt_def")
    assert tokens.expires_at - tokens.issued_at == lifetime  # type: ignore[operator]
    messages = [record.getMessage() for record in caplog.records]
    if warning is None:
        assert messages == []
    else:
        assert len(messages) == 1
        assert warning in messages[0]
        assert "at_abc" not in messages[0]
        assert "rt_def" not in messages[0]


def test_from_response_parses_1e309_json_as_infinity_and_clamps_it_to_a_day() -> None:
    raw = '{"access_token": "at_abc", "refresh_token": "rt_def", "expires_in": 1e309}'
    tokens = TokenSet.from_response(json.loads(raw), now=1000.0)
    assert tokens.expires_at == 1000.0 + MAX_EXPIRES_IN


def test_from_response_warning_never_shows_a_non_numeric_expires_in(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="pleo_auth.tokens"):
        TokenSet.from_response(reply(expires_in="rt_def"), now=0.0)
    assert "rt_def" not in caplog.text


def test_from_response_takes_a_list_scope_as_space_separated_and_ignores_junk() -> None:
    assert TokenSet.from_response(reply(scope=["a:read", "b:write"]), now=0.0).scope == (
        "a:read b:write"
    )
    assert TokenSet.from_response(reply(scope={"x": 1}), now=0.0).scope is None


@pytest.mark.parametrize("token_type", ["bearer", "BEARER", "mac", 7, ["Bearer"], "rt_def"])
def test_from_response_token_type_is_always_bearer_and_never_echoes_the_reply(
    caplog: pytest.LogCaptureFixture, token_type: object
) -> None:
    with caplog.at_level(logging.WARNING, logger="pleo_auth.tokens"):
        tokens = TokenSet.from_response(reply(token_type=token_type), now=0.0)
    assert tokens.token_type == "Bearer"
    assert "rt_def" not in repr(tokens)
    assert "rt_def" not in caplog.text
    assert ("not Bearer" in caplog.text) is (str(token_type).lower() != "bearer")


def test_from_response_error_message_never_contains_a_token() -> None:
    with pytest.raises(RefreshError) as caught:
        TokenSet.from_response(reply(access_token=["at_abc"], refresh_token=""), now=0.0)
    assert "at_abc" not in str(caught.value)
    assert "at_abc" not in repr(caught.value)


# -- token dicts saved by requests-oauthlib and Authlib -------------------------------

# Written as those libraries keep a Pleo reply received at epoch 10_000 with
# expires_in 3600, read back at NOW, twenty minutes before it expires.
RECEIVED = 10_000.0
NOW = RECEIVED + 3600 - 1200


def requests_oauthlib_token() -> dict[str, Any]:
    """``OAuth2Session.token`` after ``fetch_token``: oauthlib's parse_token_response
    adds ``expires_at = time.time() + expires_in`` (a float) and splits ``scope``
    into a list; ``expires_in`` stays what the server said."""
    return {
        "access_token": "at_abc",
        "refresh_token": "rt_def",
        "token_type": "Bearer",
        "expires_in": 3600,
        "scope": ["users:read", "export-jobs:read"],
        "expires_at": RECEIVED + 3600 + 0.25,
    }


def authlib_token() -> dict[str, Any]:
    """Authlib's ``OAuth2Token``: ``expires_at = int(time.time()) + int(expires_in)``,
    ``scope`` as the server sent it."""
    return {
        "access_token": "at_abc",
        "refresh_token": "rt_def",
        "token_type": "bearer",
        "expires_in": 3600,
        "scope": "users:read export-jobs:read",
        "expires_at": int(RECEIVED) + 3600,
    }


@pytest.mark.parametrize("saved", [requests_oauthlib_token, authlib_token])
def test_from_response_takes_expires_at_of_a_saved_token_dict_over_its_stale_expires_in(
    saved: Any,
) -> None:
    data = saved()
    tokens = TokenSet.from_response(data, now=NOW)
    assert tokens.expires_at == data["expires_at"]
    assert tokens.expires_in(now=NOW) == pytest.approx(1200, abs=1)  # not 3600
    assert tokens.issued_at == data["expires_at"] - 3600  # when the old library got it
    assert (tokens.access_token, tokens.refresh_token) == ("at_abc", "rt_def")
    assert tokens.token_type == "Bearer"
    assert tokens.scope == "users:read export-jobs:read"


def test_from_response_keeps_a_saved_token_that_already_expired_as_expired() -> None:
    data = authlib_token()
    tokens = TokenSet.from_response(data, now=RECEIVED + 7200)
    assert tokens.expires_at == RECEIVED + 3600
    assert tokens.expires_in(now=RECEIVED + 7200) == -3600


def test_from_response_with_expires_at_and_no_expires_in_leaves_issued_at_unknown() -> None:
    data = authlib_token()
    del data["expires_in"]
    tokens = TokenSet.from_response(data, now=NOW)
    assert tokens.expires_at == RECEIVED + 3600
    assert tokens.issued_at is None


def test_from_response_takes_a_numeric_string_expires_at() -> None:
    tokens = TokenSet.from_response(reply(expires_at="4600"), now=1000.0)
    assert tokens.expires_at == 4600.0
    assert tokens.issued_at == 4600.0 - 900


@pytest.mark.parametrize(
    ("expires_at", "kind"),
    [("soon", "a string"), (True, "a boolean"), ("nan", "a string"), (float("inf"), "a number")],
)
def test_from_response_warns_about_an_unusable_expires_at_and_counts_expires_in_from_now(
    caplog: pytest.LogCaptureFixture, expires_at: object, kind: str
) -> None:
    with caplog.at_level(logging.WARNING, logger="pleo_auth.tokens"):
        tokens = TokenSet.from_response(reply(expires_at=expires_at, expires_in=900), now=1000.0)
    assert (tokens.expires_at, tokens.issued_at) == (1900.0, 1000.0)
    assert [record.getMessage() for record in caplog.records] == [
        f"token dict: expires_at is not a finite number ({kind}); using expires_in"
    ]


def test_from_response_clamps_an_expires_at_more_than_a_day_away_to_a_day(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="pleo_auth.tokens"):
        tokens = TokenSet.from_response(reply(expires_at=1e12), now=1000.0)
    assert (tokens.expires_at, tokens.issued_at) == (1000.0 + MAX_EXPIRES_IN, 1000.0)
    assert "more than 86400 s away" in caplog.text


def test_from_response_with_a_null_expires_at_uses_expires_in_silently(
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = reply(expires_in=900)
    data["expires_at"] = None
    with caplog.at_level(logging.WARNING, logger="pleo_auth.tokens"):
        tokens = TokenSet.from_response(data, now=1000.0)
    assert (tokens.expires_at, tokens.issued_at) == (1900.0, 1000.0)
    assert caplog.records == []


# -- the model -------------------------------------------------------------------


def test_tokenset_is_immutable() -> None:
    tokens = TokenSet("at_1", "rt_1", expires_at=100.0)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        tokens.access_token = "at_2"  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        tokens.expires_at = 0.0  # type: ignore[misc]
    assert tokens.access_token == "at_1"


def test_tokensets_with_equal_fields_are_equal_and_hash_alike() -> None:
    first = TokenSet("at_1", "rt_1", expires_at=100.0)
    second = TokenSet("at_1", "rt_1", expires_at=100)
    assert first == second
    assert hash(first) == hash(second)
    assert first != TokenSet("at_1", "rt_2", expires_at=100.0)


@pytest.mark.parametrize(
    ("access", "refresh"), [("", "rt_1"), ("at_1", ""), (None, "rt_1"), ("at_1", 7)]
)
def test_tokenset_rejects_empty_or_non_string_tokens_with_value_error(
    access: Any, refresh: Any
) -> None:
    with pytest.raises(ValueError, match="non-empty string"):
        TokenSet(access, refresh, expires_at=100.0)


@pytest.mark.parametrize("expires_at", [float("inf"), float("-inf"), float("nan")])
def test_tokenset_rejects_non_finite_expires_at_with_value_error(expires_at: float) -> None:
    with pytest.raises(ValueError, match="expires_at"):
        TokenSet("at_1", "rt_1", expires_at=expires_at)


def test_expires_in_is_negative_once_expired() -> None:
    assert TokenSet("at_1", "rt_1", expires_at=100.0).expires_in(now=160.0) == -60.0


def test_fingerprint_is_short_stable_hex_and_free_of_the_token() -> None:
    tokens = TokenSet("at_1", "rt_secret_refresh", expires_at=1.0)
    again = TokenSet("at_other", "rt_secret_refresh", expires_at=2.0)
    rotated = TokenSet("at_1", "rt_next_refresh", expires_at=1.0)
    assert len(tokens.fingerprint) == 12
    assert set(tokens.fingerprint) <= set("0123456789abcdef")
    assert tokens.fingerprint == again.fingerprint
    assert tokens.fingerprint != rotated.fingerprint
    assert "rt_secret" not in tokens.fingerprint


def test_to_dict_holds_every_field() -> None:
    tokens = TokenSet("at_1", "rt_1", 100.0, "Bearer", "users:read", 50.0)
    assert tokens.to_dict() == {
        "access_token": "at_1",
        "refresh_token": "rt_1",
        "expires_at": 100.0,
        "token_type": "Bearer",
        "scope": "users:read",
        "issued_at": 50.0,
        "lineage": [],
        "after_401": False,
    }


@pytest.mark.parametrize(
    "data",
    [
        {"refresh_token": "rt_1", "expires_at": 1.0},
        {"access_token": "at_1", "expires_at": 1.0},
        {"access_token": "at_1", "refresh_token": "rt_1"},
        {"access_token": "at_1", "refresh_token": "rt_1", "expires_at": "later"},
        {"access_token": "at_1", "refresh_token": "rt_1", "expires_at": None},
    ],
)
def test_from_dict_rejects_malformed_data_with_value_error_free_of_tokens(
    data: dict[str, Any],
) -> None:
    with pytest.raises(ValueError) as caught:
        TokenSet.from_dict(data)
    assert "at_1" not in str(caught.value)
    assert "rt_1" not in str(caught.value)


# -- properties ------------------------------------------------------------------


@given(token_sets())
def test_repr_and_str_never_show_a_token(tokens: TokenSet) -> None:
    for text in (repr(tokens), str(tokens), f"{tokens}", repr([tokens]), repr({"t": tokens})):
        assert tokens.access_token not in text
        assert tokens.refresh_token not in text


@given(any_token_sets(), st.text(min_size=1), st.text(min_size=1))
# A token that is a word of the repr itself: the leak guard must not take the repr's
# own "expires_at" for the token (a CI run once drew exactly this).
@example(
    TokenSet(access_token="expires_at", refresh_token="token_type", expires_at=0.0),
    "expires_at",
    "TokenSet(token_type",
)
def test_repr_does_not_depend_on_the_tokens(tokens: TokenSet, access: str, refresh: str) -> None:
    other = attrs.evolve(tokens, access_token=access, refresh_token=refresh)
    assert repr(tokens) == repr(other)
    assert str(tokens) == str(other)


@given(any_token_sets())
def test_to_dict_from_dict_round_trip_through_json_is_lossless(tokens: TokenSet) -> None:
    assert TokenSet.from_dict(json.loads(json.dumps(tokens.to_dict()))) == tokens


@given(access_tokens, refresh_tokens, lifetimes, scopes, epochs)
def test_from_response_round_trips_through_to_dict(
    access: str, refresh: str, expires_in: float, scope: str | None, now: float
) -> None:
    data: dict[str, Any] = {
        "access_token": access,
        "refresh_token": refresh,
        "expires_in": expires_in,
        "token_type": "Bearer",
    }
    if scope is not None:
        data["scope"] = scope
    tokens = TokenSet.from_response(data, now=now)
    assert tokens.access_token == access
    assert tokens.refresh_token == refresh
    assert tokens.scope == scope
    assert tokens.issued_at == now
    assert math.isclose(tokens.expires_at - now, float(expires_in), rel_tol=1e-9, abs_tol=1e-6)
    assert TokenSet.from_dict(json.loads(json.dumps(tokens.to_dict()))) == tokens
