"""The client for Pleo's token endpoint: refresh and code exchange, with retries."""

from __future__ import annotations

import functools
import json
import logging
import urllib.parse
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal, cast

import requests

from ._checks import check_attempts, check_seconds
from ._clock import SYSTEM_CLOCK, Clock
from ._failures import MAX_RETRY_AFTER as MAX_RETRY_AFTER  # where callers found it in 0.1
from ._failures import _retry_after, _Transient, _transport_failure, _wait_generator
from ._lease_check import LeaseStop, check_lease
from ._network import SharedNetwork
from ._urls import check_secure_url
from .errors import AuthorizationError, ConfigurationError, ReauthenticationRequired, RefreshError
from .tokens import TokenSet

if TYPE_CHECKING:
    from .settings import Settings

logger = logging.getLogger(__name__)

ClientAuth = Literal["basic", "body"]

#: Backoff between attempts: full jitter up to factor * 2**attempt, capped.
_BACKOFF_FACTOR = 0.5
_BACKOFF_MAX = 8.0

#: Statuses that mean "try again later" rather than "this will never work".
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})

#: OAuth error codes that mean the refresh token (and so the grant) is dead.
DEAD_GRANT_ERRORS = frozenset({"invalid_grant", "invalid_token", "expired_token"})


# Appended to every "200 but unusable" error: by the time a 200 arrives, Pleo has
# probably rotated the tokens, so the refresh token that was sent is spent.
_SPENT = (
    ". Pleo has probably rotated the tokens already: if so, the refresh token is spent, "
    "the next refresh will be refused and a new login will be needed"
)


def _scrub(text: str, secrets: tuple[str, ...], limit: int) -> str:
    """``text`` fit for a message: no secret, no control character, at most ``limit`` long."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    text = "".join(char if char.isprintable() else "?" for char in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json(response: requests.Response) -> object:
    """The decoded body. Raises ValueError for anything that is not JSON.

    Not ``response.json()``: it trusts a declared charset, and a deeply nested
    document raises RecursionError, which is not a ValueError.
    """
    try:
        return json.loads(response.content)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _error_fields(
    response: requests.Response, secrets: tuple[str, ...]
) -> tuple[str | None, str | None]:
    try:
        body = _json(response)
    except ValueError:
        return None, None
    if not isinstance(body, dict):
        return None, None
    error = body.get("error")
    description = body.get("error_description")
    return (
        _scrub(error, secrets, 80) if isinstance(error, str) and error else None,
        _scrub(description, secrets, 300) if isinstance(description, str) and description else None,
    )


def _media_type(response: requests.Response, secrets: tuple[str, ...]) -> str:
    value = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    return _scrub(value, secrets, 60) if value else "no Content-Type"


def _not_a_token_reply(response: requests.Response, secrets: tuple[str, ...]) -> str:
    """What a 200 body that is not a JSON object looks like, for the message."""
    media = _media_type(response, secrets)
    if not response.content:
        return f"an empty body ({media})"
    if "html" in media:
        return f"an HTML page ({media}), not a token reply"
    return f"a body that is not valid JSON ({media}, {len(response.content)} bytes: truncated?)"


def check_settings(
    token_url: str, *, client_auth: str, timeout: float, max_attempts: int, max_time: float
) -> None:
    """Refuse settings no token endpoint client can work with.

    Raises:
        ConfigurationError: Which setting is wrong, and why.
    """
    if not isinstance(client_auth, str) or client_auth not in ("basic", "body"):
        raise ConfigurationError(f"client_auth must be 'basic' or 'body', not {client_auth!r}")
    check_attempts("max_refresh_attempts", max_attempts)
    check_seconds("max_refresh_time", max_time, positive=True)
    check_seconds("refresh_timeout", timeout, positive=True)
    check_secure_url("token_url", token_url)


class TokenEndpoint:
    """Talks to the token endpoint through its own private ``requests.Session``.

    Never through the user's session: that would recurse into the user's auth and
    run the user's mounted adapters and hooks on secret-bearing requests. It takes
    only the network settings (``verify``, ``proxies``, ``cert``, ``trust_env``) of
    the sessions it serves (:meth:`serve`), read at every attempt; see
    :mod:`pleo_auth._network` for the rule when they disagree.

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
        backoff_factor: float = _BACKOFF_FACTOR,
        backoff_max: float = _BACKOFF_MAX,
        clock: Clock = SYSTEM_CLOCK,
    ):
        check_settings(
            token_url,
            client_auth=client_auth,
            timeout=timeout,
            max_attempts=max_attempts,
            max_time=max_time,
        )
        self._configure(
            token_url, client_id, client_secret, client_auth, timeout, max_attempts, max_time,
            backoff_factor, backoff_max, clock,
        )  # fmt: skip

    @classmethod
    def for_settings(cls, settings: Settings, *, clock: Clock = SYSTEM_CLOCK) -> TokenEndpoint:
        """The endpoint ``settings`` name, built without checking them again: a
        :class:`~pleo_auth.Settings` was checked when it was made."""
        endpoint = cls.__new__(cls)
        endpoint._configure(
            settings.endpoints.token_url, settings.client_id, settings.client_secret,
            settings.client_auth, settings.refresh_timeout, settings.max_refresh_attempts,
            settings.max_refresh_time, _BACKOFF_FACTOR, _BACKOFF_MAX, clock,
        )  # fmt: skip
        return endpoint

    def _configure(
        self, token_url: str, client_id: str, client_secret: str | None, client_auth: ClientAuth,
        timeout: float, max_attempts: int, max_time: float, backoff_factor: float,
        backoff_max: float, clock: Clock,
    ) -> None:  # fmt: skip
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
        self._network = SharedNetwork(token_url)
        #: Told when the server refuses a request as over its capacity (the pool's pace).
        self.on_throttled: Callable[[], object] | None = None

    @property
    def budget(self) -> float:
        """An upper bound on how long one refresh takes, every retry included.

        No attempt starts after ``max_time``, and each lasts at most ``timeout``,
        so a refresh ends within ``max_time + timeout``; ``backoff_max`` is margin.
        """
        return self.max_time + self.timeout + self.backoff_max

    def serve(self, session: requests.Session) -> None:
        """Send with ``session``'s network settings, while it is open.

        Only ``verify``, ``proxies``, ``cert`` and ``trust_env``: never its adapters,
        hooks, auth, headers or cookies.
        """
        self._network.serve(session)

    def forget(self, session: requests.Session) -> None:
        """Stop taking network settings from ``session`` (it was closed)."""
        self._network.forget(session)

    def reset_connections(self) -> None:
        """Forget pooled connections: a forked child must not share its parent's sockets."""
        self._network.reset_connections()

    def close(self) -> None:
        self._network.close()

    def refresh(
        self,
        refresh_token: str,
        *,
        deadline: float | None = None,
        held_until: Callable[[], float] | None = None,
        tally: list[int] | None = None,
        access_token: str | None = None,
    ) -> TokenSet:
        """Spend ``refresh_token`` for a new :class:`TokenSet`.

        Transient failures (connection refused or lost, timeouts, 429 and 5xx) are
        retried with backoff, up to ``max_attempts`` attempts, none started after
        ``max_time`` seconds. A reply that is 200 but unusable is never retried:
        Pleo has probably rotated the tokens already.

        Args:
            refresh_token: The refresh token read from the store just now.
            deadline: Monotonic time by which the caller's lease runs out. An
                attempt starts only if its whole ``timeout`` fits before it, so no
                reply is still on its way when another process may take the lock.
            held_until: The lease's :attr:`~pleo_auth.Lease.held_until`, asked before
                each attempt: no attempt is sent once the lease may have run out.
            tally: Gets one item per attempt sent (for the refresh events).
            access_token: The access token paired with ``refresh_token``: scrubbed,
                as the refresh token and the client secret are, from the reply's
                text that an error quotes (a gateway may quote the bearer it saw).

        Raises:
            ReauthenticationRequired: The grant is dead (``invalid_grant`` and kin).
                When an earlier attempt of this refresh went unanswered, the message
                says that its reply was lost after Pleo had rotated the tokens, so the
                retry was refused as reuse.
            RefreshError: Any other refusal, an unusable 200 reply, or transient
                failures that outlasted the retry budget (then ``retryable`` is True).
        """
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        secrets = (refresh_token, self._client_secret or "", access_token or "")
        unanswered: list[str] = []
        try:
            return self._request_tokens(form, deadline, held_until, secrets, unanswered, tally)
        except _Refused as refused:
            # Only a client error says the grant is dead: a 2xx that names one is not
            # worth a forced login.
            if refused.error in DEAD_GRANT_ERRORS and 400 <= refused.response.status_code < 500:
                raise ReauthenticationRequired(
                    _dead_grant_reason(unanswered), error=refused.error
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
            RefreshError: An unusable 200 reply, or transient failures that
                outlasted the retry budget.
        """
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": code_verifier,
        }
        secrets = (code, code_verifier, self._client_secret or "")
        try:
            return self._request_tokens(form, None, None, secrets, [])
        except _Refused as refused:
            raise AuthorizationError(
                f"Pleo refused the authorization code (HTTP {refused.response.status_code}"
                f"{', ' + refused.error if refused.error else ''})",
                error=refused.error,
                description=refused.description,
            ) from None

    def _note(self, failure: _Transient, unanswered: list[str]) -> None:
        if failure.unanswered:
            unanswered.append(failure.reason)
        if failure.throttled and self.on_throttled is not None:
            self.on_throttled()

    def _request_tokens(
        self,
        form: Mapping[str, str],
        deadline: float | None,
        held_until: Callable[[], float] | None,
        secrets: tuple[str, ...],
        unanswered: list[str],
        tally: list[int] | None = None,
    ) -> TokenSet:
        """Post ``form`` with retries.

        Args:
            unanswered: Filled with the reason of each attempt that may have reached
                the server without its reply reaching us (per call, never on self).
        """
        started = self._clock.monotonic()
        max_time = self.max_time
        if deadline is not None:
            max_time = min(max_time, deadline - started)
            if max_time <= 0:
                raise RefreshError(
                    "the refresh lock's lease ran out before the refresh", retryable=True
                )
        tries = 0

        def attempt() -> TokenSet:
            nonlocal tries
            tries += 1
            if tally is not None:
                tally.append(tries)
            try:
                return self._attempt(form, deadline, held_until, secrets)
            except _Transient as failure:
                self._note(failure, unanswered)
                raise

        def stop(failure: Exception) -> bool:
            # Decided afresh after each failure, on the injected clock: backoff's own
            # max_time is measured before the attempt, so it would let a slow attempt
            # be followed by one more.
            assert isinstance(failure, _Transient)
            now = self._clock.monotonic()
            retry_after = failure.retry_after or 0.0
            if deadline is not None and deadline - (now + retry_after) < self.timeout:
                failure.stopped_by = (
                    "the refresh lock's lease runs out before another attempt could finish"
                )
            elif now - started >= max_time:
                failure.stopped_by = f"max_refresh_time of {self.max_time:g}s spent"
            elif now - started + retry_after > max_time:
                # Waiting out the server's Retry-After would overrun the budget: stop
                # now rather than retry early against the server's wishes.
                failure.stopped_by = (
                    f"Retry-After {retry_after:g}s is beyond max_refresh_time of {self.max_time:g}s"
                )
            return failure.stopped_by is not None

        def remaining() -> float:
            return started + max_time - self._clock.monotonic()

        def on_backoff(details: Any) -> None:
            failure = details.get("exception")
            logger.info(
                "token endpoint: %s; retry %d in %.2fs",
                getattr(failure, "reason", type(failure).__name__),
                details["tries"],
                details["wait"],
            )

        import backoff  # deferred: it costs more to import than it does to run once

        retrying = backoff.on_exception(
            # Bound here: backoff would call a callable keyword argument once, up front.
            cast(Any, functools.partial(_wait_generator, remaining=remaining)),
            _Transient,
            max_tries=self.max_attempts,
            max_time=max_time,
            jitter=None,
            giveup=stop,
            on_backoff=on_backoff,
            logger=None,
            factor=self.backoff_factor,
            cap=self.backoff_max,
        )(attempt)
        try:
            return retrying()
        except _Transient as failure:
            elapsed = self._clock.monotonic() - started
            why = failure.stopped_by or (
                f"max_refresh_attempts of {self.max_attempts} made"
                if tries >= self.max_attempts
                else f"max_refresh_time of {self.max_time:g}s spent"
            )
            logger.warning(
                "token endpoint: giving up after %d attempts in %.1fs (%s; %s)",
                tries,
                elapsed,
                failure.reason,
                why,
            )
            message = (
                f"the token endpoint did not answer usefully: {failure.reason}; gave up after "
                f"{tries} attempt{'s' if tries != 1 else ''} in {elapsed:.1f}s ({why})"
            )
            if unanswered:
                message += (
                    ". An attempt went unanswered: if Pleo handled it, the refresh token is "
                    "spent and the next refresh will be refused"
                )
            raise RefreshError(
                message,
                status_code=failure.status_code,
                retryable=True,
                retry_after=failure.retry_after,
                response=failure.response,
            ) from failure.__cause__
        except LeaseStop as stopped:
            raise stopped.refusal(tries - 1) from None

    def _attempt(
        self,
        form: Mapping[str, str],
        deadline: float | None,
        held_until: Callable[[], float] | None,
        secrets: tuple[str, ...],
    ) -> TokenSet:
        check_lease(deadline, held_until, self._clock, self.timeout)
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
        network = self._network.settings()  # read now: a user may have changed them
        http = self._network.session(network)
        sent_at = self._clock.time()
        try:
            # Never follow a redirect: a 307 would re-send the refresh token and
            # the client secret in the body to wherever the Location points.
            response = http.post(
                self.token_url,
                data=data,
                auth=auth,
                timeout=self.timeout,
                allow_redirects=False,
                **network.request_arguments(),
            )
        except requests.RequestException as exc:
            transient = _transport_failure(exc)
            if transient is not None:
                raise transient from exc
            raise RefreshError(f"cannot call the token endpoint: {type(exc).__name__}") from exc
        except Exception as exc:  # a foreign error from deep in the HTTP stack
            raise RefreshError(f"cannot call the token endpoint: {type(exc).__name__}") from exc
        # Errors carry the response; its request must not carry the refresh token
        # (the body) or the client secret (the body, or Basic auth) along with it.
        response.request = _without_secrets(response.request)
        status = response.status_code
        if status in TRANSIENT_STATUSES:
            raise _Transient(
                f"HTTP {status}",
                status_code=status,
                retry_after=_retry_after(response),
                response=response,
                # A gateway's 502 or 504 may come after Pleo handled the request.
                unanswered=status in (502, 504),
            )
        if 300 <= status < 400:
            raise RefreshError(
                "the token endpoint answered with a redirect, which pleo_auth never follows "
                "(it would carry the refresh token elsewhere); check token_url",
                status_code=status,
            )
        if status != 200:
            error, description = _error_fields(response, secrets)
            raise _Refused(response, error, description)
        # From here on, the reply carries new tokens or garbage, never an error: the
        # response (which may hold new tokens) is not attached to any exception.
        try:
            body = _json(response)
        except ValueError:
            raise RefreshError(
                f"the token endpoint answered 200 with {_not_a_token_reply(response, secrets)}"
                + _SPENT,
                status_code=200,
            ) from None
        if not isinstance(body, dict):
            raise RefreshError(
                "the token endpoint answered 200 with JSON that is not an object" + _SPENT,
                status_code=200,
            )
        # A live reply's expiry is its expires_in. An expires_at is no part of OAuth:
        # from_response honours it for token dicts saved by other libraries, but from
        # a server it would be a clock this process does not share.
        body.pop("expires_at", None)
        try:
            # Expiry counts from when the request was sent: never later than the server's view.
            return TokenSet.from_response(body, now=sent_at)
        except RefreshError as exc:
            raise RefreshError(f"{exc}{_SPENT}", status_code=200) from None

    # -- beside the token endpoint: who a grant belongs to (pleo_auth._introspection) ------

    def introspect(
        self, url: str, token: str, *, token_type_hint: str = "access_token"
    ) -> requests.Response:
        """One POST of ``token`` to the introspection endpoint at ``url`` (RFC 7662),
        with this client's authentication, as the token endpoint takes it.

        Raises:
            _Transient: A failure worth trying again: it spends nothing.
            RefreshError: The request could not be sent at all.
        """
        data = {"token": token, "token_type_hint": token_type_hint}
        auth: tuple[str, str] | None = None
        if self.client_auth == "basic" and self._client_secret is not None:
            auth = (
                urllib.parse.quote_plus(self.client_id),
                urllib.parse.quote_plus(self._client_secret),
            )
        else:
            data["client_id"] = self.client_id
            if self._client_secret is not None:
                data["client_secret"] = self._client_secret
        return self._send("POST", url, data=data, auth=auth)

    def introspect_api(self, url: str, access_token: str) -> requests.Response:
        """One ``GET`` of the API's introspection (``/v1/introspect``) at ``url``,
        with ``access_token`` as the bearer. Raises as :meth:`introspect`."""
        return self._send("GET", url, headers={"Authorization": f"Bearer {access_token}"})

    def _send(self, method: str, url: str, **arguments: Any) -> requests.Response:
        """One request through the private session, never following a redirect (it
        would carry the token and the secret elsewhere); the response's request is
        stripped of both."""
        network = self._network.settings()
        http = self._network.session(network)
        try:
            response = http.request(
                method,
                url,
                timeout=self.timeout,
                allow_redirects=False,
                **network.request_arguments(),
                **arguments,
            )
        except requests.RequestException as exc:
            transient = _transport_failure(exc)
            if transient is not None:
                raise transient from exc
            raise RefreshError(f"cannot call {url}: {type(exc).__name__}") from exc
        response.request = _without_secrets(response.request)
        return response


def _without_secrets(request: requests.PreparedRequest) -> requests.PreparedRequest:
    """A copy of a token request with its form body and Authorization header removed."""
    scrubbed = request.copy()
    scrubbed.body = None
    scrubbed.headers.pop("Authorization", None)
    return scrubbed


def _dead_grant_reason(unanswered: list[str]) -> str:
    if not unanswered:
        return "Pleo refused the refresh token: the authorisation has expired or was revoked."
    return (
        "Pleo refused the refresh token as already used, and revoked the authorisation. "
        "An earlier attempt of this same refresh never got Pleo's reply "
        f"({unanswered[0]}): Pleo had rotated the tokens on it, but the reply carrying the "
        "new ones was lost, so the retry counted as reuse."
    )


class _Refused(Exception):
    """A definite, non-transient refusal from the token endpoint. Internal."""

    def __init__(self, response: requests.Response, error: str | None, description: str | None):
        super().__init__(error or f"HTTP {response.status_code}")
        self.response = response
        self.error = error
        self.description = description
