"""The client for Pleo's token endpoint: refresh and code exchange, with retries."""

from __future__ import annotations

import logging
import math
import random
import urllib.parse
from collections.abc import Generator, Mapping
from typing import Any, Literal, cast

import requests

from ._clock import SYSTEM_CLOCK, Clock
from ._urls import check_secure_url
from .errors import AuthorizationError, ConfigurationError, ReauthenticationRequired, RefreshError
from .tokens import TokenSet

logger = logging.getLogger(__name__)

ClientAuth = Literal["basic", "body"]

#: Statuses that mean "try again later" rather than "this will never work".
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})

#: OAuth error codes that mean the refresh token (and so the grant) is dead.
DEAD_GRANT_ERRORS = frozenset({"invalid_grant", "invalid_token", "expired_token"})


class _Transient(Exception):
    """A failure worth retrying. Internal: it never leaves this module."""

    def __init__(
        self,
        reason: str,
        *,
        status_code: int | None = None,
        retry_after: float | None = None,
        response: requests.Response | None = None,
    ):
        super().__init__(reason)
        self.reason = reason
        self.status_code = status_code
        self.retry_after = retry_after
        self.response = response


class _LeaseExpired(Exception):
    """The lease on the refresh lock would run out before another attempt could finish."""


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    import email.utils  # deferred: only a Retry-After given as a date needs it

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    import datetime

    now = datetime.datetime.now(tz=when.tzinfo or datetime.UTC)
    return max(0.0, (when - now).total_seconds())


def _error_fields(response: requests.Response) -> tuple[str | None, str | None]:
    try:
        body = response.json()
    except ValueError:
        return None, None
    if not isinstance(body, dict):
        return None, None
    error = body.get("error")
    description = body.get("error_description")
    return (
        str(error) if error else None,
        str(description)[:300] if description else None,
    )


def _wait_generator(factor: float, cap: float) -> Generator[float, Any, None]:
    """Exponential backoff with full jitter, never shorter than a server's Retry-After.

    backoff sends each failure into the generator, which is how Retry-After gets in.
    """
    failure = yield 0.0  # backoff primes the generator; this value is discarded
    attempt = 0
    while True:
        delay = random.uniform(0, min(cap, factor * 2**attempt))
        retry_after = getattr(failure, "retry_after", None)
        if retry_after is not None:
            delay = max(delay, retry_after)
        attempt += 1
        failure = yield delay


def check_settings(
    token_url: str, *, client_auth: str, timeout: float, max_attempts: int, max_time: float
) -> None:
    """Refuse settings no token endpoint client can work with.

    Raises:
        ConfigurationError: Which setting is wrong, and why.
    """
    if client_auth not in ("basic", "body"):
        raise ConfigurationError(f"client_auth must be 'basic' or 'body', not {client_auth!r}")
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise ConfigurationError("max_refresh_attempts must be an integer of at least 1")
    for name, value in (("max_refresh_time", max_time), ("refresh_timeout", timeout)):
        if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
            raise ConfigurationError(f"{name} must be a positive number of seconds")
    check_secure_url("token_url", token_url)


class TokenEndpoint:
    """Talks to the token endpoint through its own private ``requests.Session``.

    Never through the user's session: that would recurse into the user's auth and
    run the user's mounted adapters and hooks on secret-bearing requests.

    Thread safety:
        Calls may run from several threads at once; each call keeps its state in locals.
    """

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str | None,
        *,
        client_auth: ClientAuth = "basic",
        timeout: float = 10.0,
        max_attempts: int = 5,
        max_time: float = 30.0,
        backoff_factor: float = 0.5,
        backoff_max: float = 8.0,
        clock: Clock = SYSTEM_CLOCK,
    ):
        check_settings(
            token_url,
            client_auth=client_auth,
            timeout=timeout,
            max_attempts=max_attempts,
            max_time=max_time,
        )
        self.token_url = token_url
        self.client_id = client_id
        self._client_secret = client_secret
        self.client_auth: ClientAuth = client_auth
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.max_time = max_time
        self.backoff_factor = backoff_factor
        self.backoff_max = backoff_max
        self._clock = clock
        self._http = requests.Session()
        self._http.headers["Accept"] = "application/json"

    @property
    def budget(self) -> float:
        """The longest one refresh can take, every retry included."""
        return self.max_time + self.timeout + self.backoff_max

    def reset_connections(self) -> None:
        """Forget pooled connections: a forked child must not share its parent's sockets."""
        self._http = requests.Session()
        self._http.headers["Accept"] = "application/json"

    def close(self) -> None:
        self._http.close()

    def refresh(self, refresh_token: str, *, deadline: float | None = None) -> TokenSet:
        """Spend ``refresh_token`` for a new :class:`TokenSet`.

        Args:
            refresh_token: The refresh token read from the store just now.
            deadline: Monotonic time by which the caller's lease runs out. No attempt
                starts that could not finish before it.

        Raises:
            ReauthenticationRequired: The grant is dead (``invalid_grant`` and kin).
            RefreshError: Any other refusal, or transient failures that outlasted
                the retry budget (then ``retryable`` is True).
        """
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        try:
            return self._request_tokens(form, deadline)
        except _Refused as refused:
            if refused.error in DEAD_GRANT_ERRORS:
                raise ReauthenticationRequired(
                    "Pleo refused the refresh token: the authorisation has expired or was revoked.",
                    error=refused.error,
                ) from None
            raise RefreshError(
                "the token endpoint refused the refresh",
                error=refused.error,
                description=refused.description,
                status_code=refused.response.status_code,
                response=refused.response,
            ) from None

    def exchange_code(self, code: str, *, redirect_uri: str, code_verifier: str) -> TokenSet:
        """Exchange an authorization code (with its PKCE verifier) for tokens.

        Raises:
            AuthorizationError: The code was refused (used, expired, wrong verifier).
            RefreshError: Transient failures outlasted the retry budget.
        """
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": code_verifier,
        }
        try:
            return self._request_tokens(form, None)
        except _Refused as refused:
            raise AuthorizationError(
                f"Pleo refused the authorization code (HTTP {refused.response.status_code}"
                f"{', ' + refused.error if refused.error else ''})",
                error=refused.error,
                description=refused.description,
            ) from None

    def _request_tokens(self, form: Mapping[str, str], deadline: float | None) -> TokenSet:
        max_time = self.max_time
        if deadline is not None:
            max_time = min(max_time, deadline - self._clock.monotonic())
            if max_time <= 0:
                raise RefreshError(
                    "the refresh lock's lease ran out before the refresh", retryable=True
                )

        def give_up(details: Any) -> None:
            failure = details.get("exception")
            logger.warning(
                "token endpoint: giving up after %d attempts in %.1fs (%s)",
                details["tries"],
                details["elapsed"],
                getattr(failure, "reason", type(failure).__name__),
            )

        def on_backoff(details: Any) -> None:
            failure = details.get("exception")
            logger.info(
                "token endpoint: %s; retry %d in %.2fs",
                getattr(failure, "reason", type(failure).__name__),
                details["tries"],
                details["wait"],
            )

        started = self._clock.monotonic()

        def retry_after_too_long(failure: Exception) -> bool:
            # Waiting out the server's Retry-After would overrun the budget: stop now
            # rather than retry early against the server's wishes.
            retry_after = getattr(failure, "retry_after", None)
            if retry_after is None:
                return False
            return bool(self._clock.monotonic() - started + retry_after > max_time)

        import backoff  # deferred: it costs more to import than it does to run once

        attempt = backoff.on_exception(
            cast(Any, _wait_generator),
            _Transient,
            max_tries=self.max_attempts,
            max_time=max_time,
            jitter=None,
            giveup=retry_after_too_long,
            on_backoff=on_backoff,
            on_giveup=give_up,
            logger=None,
            factor=self.backoff_factor,
            cap=self.backoff_max,
        )(self._attempt)
        try:
            return attempt(form, deadline)
        except _Transient as failure:
            raise RefreshError(
                f"the token endpoint did not answer usefully: {failure.reason}",
                status_code=failure.status_code,
                retryable=True,
                retry_after=failure.retry_after,
                response=failure.response,
            ) from failure.__cause__
        except _LeaseExpired:
            raise RefreshError(
                "gave up: the refresh lock's lease would expire before the token endpoint answered",
                retryable=True,
            ) from None

    def _attempt(self, form: Mapping[str, str], deadline: float | None) -> TokenSet:
        timeout = self.timeout
        if deadline is not None:
            remaining = deadline - self._clock.monotonic()
            if remaining <= 0.05:
                raise _LeaseExpired
            timeout = min(timeout, remaining)
        data = dict(form)
        auth: tuple[str, str] | None = None
        if self.client_auth == "basic" and self._client_secret is not None:
            # RFC 6749 §2.3.1: form-encode both halves before Basic encoding.
            auth = (
                urllib.parse.quote_plus(self.client_id),
                urllib.parse.quote_plus(self._client_secret),
            )
        else:
            data["client_id"] = self.client_id
            if self._client_secret is not None:
                data["client_secret"] = self._client_secret
        sent_at = self._clock.time()
        try:
            # Never follow a redirect: a 307 would re-send the refresh token and
            # the client secret in the body to wherever the Location points.
            response = self._http.post(
                self.token_url, data=data, auth=auth, timeout=timeout, allow_redirects=False
            )
        except requests.Timeout as exc:
            raise _Transient("timed out") from exc
        except requests.ConnectionError as exc:
            raise _Transient("connection failed") from exc
        except requests.RequestException as exc:
            raise RefreshError(f"cannot call the token endpoint: {type(exc).__name__}") from exc
        status = response.status_code
        if status in TRANSIENT_STATUSES:
            raise _Transient(
                f"HTTP {status}",
                status_code=status,
                retry_after=_retry_after(response),
                response=response,
            )
        if 300 <= status < 400:
            raise RefreshError(
                "the token endpoint answered with a redirect, which pleo_auth never follows "
                "(it would carry the refresh token elsewhere); check token_url",
                status_code=status,
            )
        if status != 200:
            error, description = _error_fields(response)
            raise _Refused(response, error, description)
        try:
            body = response.json()
        except ValueError as exc:
            raise RefreshError(
                "the token endpoint answered 200 without JSON", status_code=200
            ) from exc
        if not isinstance(body, dict):
            raise RefreshError(
                "the token endpoint answered 200 with unexpected JSON", status_code=200
            )
        # Expiry counts from when the request was sent: never later than the server's view.
        return TokenSet.from_response(body, now=sent_at)


class _Refused(Exception):
    """A definite, non-transient refusal from the token endpoint. Internal."""

    def __init__(self, response: requests.Response, error: str | None, description: str | None):
        super().__init__(error or f"HTTP {response.status_code}")
        self.response = response
        self.error = error
        self.description = description
