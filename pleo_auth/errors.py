"""The errors pleo_auth raises.

Every error derives from :class:`PleoAuthError`. Each subclass stands for one
decision a caller can make:

* :class:`ReauthenticationRequired`: the grant is gone; a person must log in again.
* :class:`RefreshError`: the token endpoint refused or failed. ``retryable`` says
  whether trying again later can help.
* :class:`TokenStoreError`: the token store could not be read or written.
* :class:`TokensUnreadable`: the store holds something that is not tokens; a
  new login replaces it.
* :class:`ConfigurationError`: the arguments are wrong; fix the code or settings.
  It is also a :class:`ValueError`.
* :class:`StoreUnusable`: the store cannot work on this machine (a keyring
  without a backend); both a store error and a configuration error.
* :class:`RateLimited`: Pleo's API rate limit had no slot for the request within
  the wait allowed; ``retry_after`` says when to try again.

Messages never contain a token, a code or a client secret.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import requests

    from .login_hint import LoginHint

__all__ = [
    "AuthorizationError",
    "ConfigurationError",
    "PleoAuthError",
    "RateLimited",
    "ReauthenticationRequired",
    "RefreshError",
    "RevocationError",
    "StoreUnusable",
    "TokenStoreError",
    "TokensUnreadable",
]


class PleoAuthError(Exception):
    """Root of every error raised by pleo_auth.

    Attributes:
        retryable: True when the same call may succeed if tried again later.
    """

    retryable: bool = False


class ConfigurationError(PleoAuthError, ValueError):
    """An argument or setting is invalid. Nothing was sent anywhere."""


class ReauthenticationRequired(PleoAuthError):
    """The refresh token is dead, or there are no tokens: a person must log in again.

    Pleo invalidates the whole authorisation when a refresh token is spent twice,
    expires or is revoked. Nothing but a new authorization-code login can recover,
    so pleo_auth stops retrying, clears the store and raises this.

    Attributes:
        reason: Why, without the hint.
        login_hint: What to do next, for a person (for example the
            ``pleo-auth login`` command with the right flags). Also part of the message.
        login: The :class:`~pleo_auth.login_hint.LoginHint` the hint was
            rendered from, when one was given: which settings, store or web view
            log in again, as data.
        error: The OAuth error code, such as ``invalid_grant``, when the token
            endpoint gave one.
    """

    def __init__(
        self,
        reason: str,
        *,
        login_hint: str | LoginHint | None = None,
        error: str | None = None,
    ):
        self.reason = reason
        self.error = error
        self.login: LoginHint | None = None if isinstance(login_hint, str | None) else login_hint
        self.login_hint = str(login_hint) if login_hint else "Log in with `pleo-auth login`."
        super().__init__(f"{reason} {self.login_hint}")

    def with_login_hint(self, login_hint: str | LoginHint) -> ReauthenticationRequired:
        """This error, telling ``login_hint`` instead: a new error whose cause is this one's."""
        copy = type(self)(self.reason, login_hint=login_hint, error=self.error)
        copy.__cause__ = self.__cause__
        copy.__suppress_context__ = True
        return copy


class RefreshError(PleoAuthError):
    """The token endpoint refused a refresh or could not be reached.

    Attributes:
        error: The OAuth ``error`` code from the reply, if any (e.g. ``invalid_client``).
        description: The OAuth ``error_description``, if any.
        status_code: The HTTP status, or None when no reply arrived.
        retryable: True for transient failures (timeouts, connection errors, 429
            and 5xx) that outlasted the retry budget.
        retry_after: Seconds the server asked us to wait (``Retry-After``), if it did.
        response: The :class:`requests.Response`, when there was one.
    """

    def __init__(
        self,
        message: str,
        *,
        error: str | None = None,
        description: str | None = None,
        status_code: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        response: requests.Response | None = None,
    ):
        self.retry_after = retry_after
        self.error = error
        self.description = description
        self.status_code = status_code
        self.retryable = retryable
        self.response = response
        detail = ", ".join(
            part
            for part in (
                f"HTTP {status_code}" if status_code is not None else "",
                error or "",
                description or "",
            )
            if part
        )
        super().__init__(f"{message} ({detail})" if detail else message)


class TokenStoreError(PleoAuthError):
    """The token store failed: unreadable, unwritable, insecure, or its lock timed out."""

    def __init__(self, message: str, *, retryable: bool = False):
        self.retryable = retryable
        super().__init__(message)


class TokensUnreadable(TokenStoreError):
    """The store holds something that is not pleo-auth tokens (a foreign or
    corrupt document). No retry helps; a new login replaces it, and a logout
    deletes it."""


class StoreUnusable(TokenStoreError, ConfigurationError):
    """The store cannot work on this machine at all, such as a keyring without a
    usable backend: no retry helps, a setting must change. Both a
    :class:`TokenStoreError` and a :class:`ConfigurationError`.

    Attributes:
        reason: What is wrong, in one sentence.
        fix: What to do instead, in one sentence (the ``pleo-auth`` command
            prints it on a line of its own).
    """

    def __init__(self, reason: str, *, fix: str = ""):
        self.reason = reason
        self.fix = fix
        super().__init__(f"{reason}. {fix}" if fix else reason)


class AuthorizationError(PleoAuthError):
    """The authorization-code flow failed: the user denied access, the state did
    not match, or the code exchange was refused.

    Attributes:
        error: The OAuth error code from the callback or token endpoint, if any.
        description: The ``error_description``, if any.
    """

    def __init__(self, message: str, *, error: str | None = None, description: str | None = None):
        self.error = error
        self.description = description
        super().__init__(message)


class RevocationError(PleoAuthError):
    """Pleo did not confirm the end of an installation (``DELETE
    /v1/installations/me``), so the grant was kept: a grant removed only locally
    would stay valid at Pleo."""


class RateLimited(PleoAuthError):
    """The request was not sent: the rate limit the client's sessions share (see
    :class:`~pleo_auth.RateLimit`) had no slot for it within the wait allowed.

    Attributes:
        retry_after: Seconds after which a slot is expected to be free; an
            estimate when many callers compete for it.
    """

    retryable = True

    def __init__(self, message: str, *, retry_after: float = 0.0):
        self.retry_after = retry_after
        super().__init__(f"{message}; retry after {retry_after:.2f}s")
