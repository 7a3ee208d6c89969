"""Which Pleo company a new grant belongs to, asked of Pleo right after a login.

Pleo keeps a grant per company. Its token introspection (``POST
/oauth/token/introspect``, authenticated as the client) answers the company in
``urn:pleo:params:oauth:subject_urn``, and the API's ``GET /v1/introspect`` (with
the new access token) in ``data.subjectURN``. The first is asked first; the second
when the first cannot answer: a public client has no secret to authenticate
with, and a token URL that is not ``.../oauth/token`` gives no introspection URL
to trust with the secret. Both spend nothing, so transient failures are retried.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable
from typing import Any

import requests

from ._clock import Clock
from ._endpoint import TRANSIENT_STATUSES, TokenEndpoint, _error_fields
from ._failures import _retry_after, _Transient, _wait_generator
from .company import URN_PREFIX, Company
from .errors import AuthorizationError, ConfigurationError, RefreshError
from .settings import Settings
from .tokens import TokenSet

logger = logging.getLogger(__name__)

__all__ = ["SUBJECT_URN", "company_of"]

#: The introspection reply's field that names the grant's subject.
SUBJECT_URN = "urn:pleo:params:oauth:subject_urn"

_BACKOFF_FACTOR = 0.5
_BACKOFF_MAX = 8.0

# A URN's scheme and namespace ("urn:pleo:user"): shown, where the rest is not.
_URN_KIND = re.compile(r"urn:[A-Za-z0-9-]{1,32}(?::[A-Za-z0-9-]{1,32})?")


class _NoAnswer(Exception):
    """One way of asking gave no subject; ``reason`` says why, free of secrets."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def introspection_url(settings: Settings) -> str | None:
    """The introspection endpoint to send the client secret to, or None.

    The environment's, or the one beside an overridden ``.../oauth/token``; any
    other token URL override (a proxy at another path) names none, and the
    environment's must not be assumed for it.
    """
    if settings.token_url is not None and not settings.token_url.rstrip("/").endswith(
        "/oauth/token"
    ):
        return None
    return settings.endpoints.introspection_url


def company_of(
    tokens: TokenSet,
    settings: Settings,
    endpoint: TokenEndpoint,
    clock: Clock,
    *,
    expected: Company | None = None,
) -> Company:
    """The company whose grant ``tokens`` are, as Pleo says.

    Args:
        expected: The company the login must be for, if one was named.

    Raises:
        AuthorizationError: Neither way answered (each way's reason is in the
            message), the subject Pleo names is not a company, or it is another
            company than ``expected``. Nothing in the message is a token or a secret.
    """
    failures: list[str] = []
    url = introspection_url(settings)
    ways: list[tuple[str, Callable[[], str]]] = []
    if settings.client_secret is None:
        failures.append("token introspection: a public client cannot authenticate to it")
    elif url is None:
        failures.append("token introspection: no introspection URL beside the token URL")
    else:
        ways.append(("token introspection", lambda: _introspect(endpoint, url, tokens, clock)))
    api = settings.endpoints.api_url + "/v1/introspect"
    ways.append(("GET /v1/introspect", lambda: _introspect_api(endpoint, api, tokens, clock)))
    for name, ask in ways:
        try:
            subject = ask()
        except _NoAnswer as failed:
            logger.info("%s did not name the login's company: %s", name, failed.reason)
            failures.append(f"{name}: {failed.reason}")
            continue
        company = _company(subject, name)
        if expected is not None and company != expected:
            raise AuthorizationError(
                f"this login is for {company}, not for {expected} as asked, so nothing was "
                f"saved. Log in again, and choose {expected} at Pleo"
            )
        return company
    raise AuthorizationError(
        "the login worked, but Pleo did not say which company it belongs to ("
        + "; ".join(failures)
        + "), so nothing was saved. Log in again"
    )


def _company(subject: str, where: str) -> Company:
    try:
        return Company(subject)
    except ConfigurationError:
        kind = _URN_KIND.match(subject)
        shown = f" ({kind.group(0)}:...)" if kind and not subject.startswith(URN_PREFIX) else ""
        raise AuthorizationError(
            f"Pleo's {where} says the login belongs to a subject that is not a Pleo "
            f"company{shown}; pleo-auth keeps one grant per company, so nothing was "
            f"saved. Log in as a company"
        ) from None


def _introspect(endpoint: TokenEndpoint, url: str, tokens: TokenSet, clock: Clock) -> str:
    secrets = (tokens.access_token, tokens.refresh_token)
    body = _retrying(lambda: endpoint.introspect(url, tokens.access_token), endpoint, clock)
    reply = _object(body, secrets)
    if reply.get("active") is not True:
        raise _NoAnswer("it says the new access token is not active")
    subject = reply.get(SUBJECT_URN)
    if not isinstance(subject, str):
        raise _NoAnswer(f"its reply has no {SUBJECT_URN}")
    return subject


def _introspect_api(endpoint: TokenEndpoint, url: str, tokens: TokenSet, clock: Clock) -> str:
    secrets = (tokens.access_token, tokens.refresh_token)
    body = _retrying(lambda: endpoint.introspect_api(url, tokens.access_token), endpoint, clock)
    data = _object(body, secrets).get("data")
    subject = data.get("subjectURN") if isinstance(data, dict) else None
    if not isinstance(subject, str):
        raise _NoAnswer("its reply has no data.subjectURN")
    return subject


def _object(response: requests.Response, secrets: tuple[str, ...]) -> dict[str, Any]:
    """The 200 reply's JSON object, or why there is none."""
    status = response.status_code
    if status != 200:
        error, _description = _error_fields(response, secrets)
        detail = f", {error}" if error else ""
        if 300 <= status < 400:
            detail += ": a redirect, which pleo-auth never follows with a token"
        raise _NoAnswer(f"HTTP {status}{detail}")
    try:
        body = json.loads(response.content)
    except (ValueError, RecursionError):
        raise _NoAnswer("its reply is not JSON") from None
    if not isinstance(body, dict):
        raise _NoAnswer("its reply is not a JSON object")
    return body


def _retrying(
    send: Callable[[], requests.Response], endpoint: TokenEndpoint, clock: Clock
) -> requests.Response:
    """``send()``, tried again on transient failures as the token endpoint's
    settings allow (``max_attempts`` within ``max_time``)."""
    started = clock.monotonic()
    waits = _wait_generator(
        _BACKOFF_FACTOR,
        _BACKOFF_MAX,
        lambda: started + endpoint.max_time - clock.monotonic(),
    )
    next(waits)  # primed, as backoff primes it
    attempt = 0
    while True:
        attempt += 1
        try:
            response = send()
            if response.status_code not in TRANSIENT_STATUSES:
                return response
            failure = _Transient(
                f"HTTP {response.status_code}",
                status_code=response.status_code,
                retry_after=_retry_after(response),
            )
        except _Transient as exc:
            failure = exc
        except RefreshError as exc:
            raise _NoAnswer(str(exc)) from None
        delay = waits.send(failure)
        spent = clock.monotonic() - started
        if attempt >= endpoint.max_attempts or spent + delay >= endpoint.max_time:
            raise _NoAnswer(f"{failure.reason}, after {attempt} attempt{'s' * (attempt > 1)}")
        clock.wait(threading.Event(), delay)
