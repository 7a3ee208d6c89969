"""Tests for pleo_auth.errors: one root, one subclass per decision a caller makes."""

from __future__ import annotations

import pytest

import pleo_auth
from pleo_auth import (
    AuthorizationError,
    ConfigurationError,
    PleoAuthError,
    ReauthenticationRequired,
    RefreshError,
    TokenStoreError,
)

ALL_ERRORS = [
    AuthorizationError,
    ConfigurationError,
    ReauthenticationRequired,
    RefreshError,
    TokenStoreError,
]


@pytest.mark.parametrize("error", ALL_ERRORS)
def test_every_error_derives_from_pleo_auth_error(error: type[Exception]) -> None:
    assert issubclass(error, PleoAuthError)


@pytest.mark.parametrize("error", [PleoAuthError, *ALL_ERRORS])
def test_every_error_is_exported_from_the_package(error: type[Exception]) -> None:
    assert error.__name__ in pleo_auth.__all__
    assert getattr(pleo_auth, error.__name__) is error


def test_configuration_error_is_also_a_value_error() -> None:
    with pytest.raises(ValueError, match="bad"):
        raise ConfigurationError("bad")


@pytest.mark.parametrize("error", [ReauthenticationRequired, RefreshError, TokenStoreError])
def test_runtime_errors_are_not_value_errors(error: type[Exception]) -> None:
    assert not issubclass(error, ValueError)


def test_root_error_is_not_retryable_by_default() -> None:
    assert PleoAuthError("x").retryable is False


def test_reauthentication_required_default_hint_says_to_run_pleo_auth_login() -> None:
    error = ReauthenticationRequired("The grant is dead.")
    assert "pleo-auth login" in str(error)
    assert str(error).startswith("The grant is dead.")
    assert error.login_hint in str(error)
    assert error.retryable is False


def test_reauthentication_required_keeps_reason_error_and_custom_hint() -> None:
    error = ReauthenticationRequired(
        "Refused.", login_hint="Run `pleo-auth login --client-id abc`.", error="invalid_grant"
    )
    assert error.reason == "Refused."
    assert error.error == "invalid_grant"
    assert error.login_hint == "Run `pleo-auth login --client-id abc`."
    assert str(error) == "Refused. Run `pleo-auth login --client-id abc`."


def test_refresh_error_message_carries_status_error_and_description() -> None:
    error = RefreshError(
        "the token endpoint refused the refresh",
        error="invalid_client",
        description="unknown client",
        status_code=401,
    )
    assert str(error) == (
        "the token endpoint refused the refresh (HTTP 401, invalid_client, unknown client)"
    )
    assert error.error == "invalid_client"
    assert error.description == "unknown client"
    assert error.status_code == 401
    assert error.response is None


def test_refresh_error_without_details_keeps_the_bare_message() -> None:
    error = RefreshError("connection failed")
    assert str(error) == "connection failed"
    assert error.error is None
    assert error.description is None
    assert error.status_code is None


def test_refresh_error_is_retryable_only_when_told() -> None:
    assert RefreshError("refused").retryable is False
    assert RefreshError("timed out", retryable=True).retryable is True


def test_token_store_error_is_retryable_only_when_told() -> None:
    assert TokenStoreError("unreadable").retryable is False
    assert TokenStoreError("lock timed out", retryable=True).retryable is True


def test_authorization_error_keeps_error_and_description() -> None:
    error = AuthorizationError("denied", error="access_denied", description="the user said no")
    assert str(error) == "denied"
    assert error.error == "access_denied"
    assert error.description == "the user said no"
