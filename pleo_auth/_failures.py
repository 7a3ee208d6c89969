"""How a token request that went wrong is told apart: worth retrying, and possibly
handled by the server without its reply reaching us, or definitely never sent."""

from __future__ import annotations

import http.client
import math
import random
import ssl
from collections.abc import Callable, Generator
from typing import Any

import requests
import urllib3.exceptions

#: The longest Retry-After honoured, in seconds: a server that asks for more (or
#: for infinity) must not stop this process from ever refreshing again.
MAX_RETRY_AFTER = 3600.0


class _Transient(Exception):
    """A failure worth retrying. It never leaves the token endpoint client.

    Attributes:
        unanswered: The request may have reached the server, but no reply reached
            us (a read timeout, a connection lost after sending, a gateway's 502
            or 504). If the server handled it, it rotated the tokens.
        stopped_by: Why the retries stopped here, when they did (set by the loop).
    """

    def __init__(
        self,
        reason: str,
        *,
        status_code: int | None = None,
        retry_after: float | None = None,
        response: requests.Response | None = None,
        unanswered: bool = False,
    ):
        super().__init__(reason)
        self.reason = reason
        self.status_code = status_code
        self.retry_after = retry_after
        self.response = response
        self.unanswered = unanswered
        self.stopped_by: str | None = None

    @property
    def throttled(self) -> bool:
        """The server refused the request as over its capacity, spending nothing."""
        return self.status_code == 429 or (self.status_code == 503 and self.retry_after is not None)


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    seconds: float | None
    try:
        seconds = float(value)
    except ValueError:
        seconds = _retry_after_date(value)
    if seconds is None or math.isnan(seconds):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER)


def _retry_after_date(value: str) -> float | None:
    import datetime
    import email.utils  # deferred: only a Retry-After given as a date needs it

    try:
        when = email.utils.parsedate_to_datetime(value)
        now = datetime.datetime.now(tz=when.tzinfo or datetime.UTC)
        return (when - now).total_seconds()
    except (TypeError, ValueError, OverflowError, IndexError):
        return None


def _chain(exc: BaseException) -> list[object]:
    """``exc`` and what it wraps: causes, contexts, urllib3 reasons and arguments."""
    seen: list[object] = []
    pending: list[object] = [exc]
    while pending and len(seen) < 32:
        item = pending.pop()
        if any(item is known for known in seen):
            continue
        seen.append(item)
        if isinstance(item, BaseException):
            pending.extend(arg for arg in item.args if isinstance(arg, BaseException))
            for link in (item.__cause__, item.__context__, getattr(item, "reason", None)):
                if isinstance(link, BaseException):
                    pending.append(link)
    return seen


def _transport_failure(exc: requests.RequestException) -> _Transient | None:
    """The transient failure a transport error stands for, or None if it is not one."""
    chain = _chain(exc)

    def has(*kinds: type[BaseException]) -> bool:
        return any(isinstance(item, kinds) for item in chain)

    if isinstance(exc, requests.ConnectTimeout):
        return _Transient("connecting timed out")
    if has(ssl.SSLCertVerificationError):
        # Refused in the handshake, so nothing was sent and nothing spent. Retried:
        # each attempt reads the session's verify afresh, and a refresh that began
        # (on the timer) just before the user set it succeeds on the next attempt.
        return _Transient(
            "its TLS certificate is not trusted (nothing was sent; behind a private CA, "
            "set verify on the session to the CA bundle)"
        )
    if isinstance(exc, requests.ConnectionError) and has(urllib3.exceptions.NewConnectionError):
        return _Transient("connection refused" if has(ConnectionRefusedError) else "cannot connect")
    if isinstance(exc, requests.ConnectionError | requests.exceptions.ChunkedEncodingError):
        if has(urllib3.exceptions.ReadTimeoutError):
            return _Transient("timed out waiting for the reply", unanswered=True)
        if has(http.client.RemoteDisconnected):  # a subclass of ConnectionResetError
            return _Transient("connection closed without a reply", unanswered=True)
        if has(ConnectionResetError):
            return _Transient("connection reset before the reply was complete", unanswered=True)
        return _Transient("connection closed before the reply was complete", unanswered=True)
    if isinstance(exc, requests.Timeout):
        return _Transient("timed out waiting for the reply", unanswered=True)
    return None


def _wait_generator(
    factor: float, cap: float, remaining: Callable[[], float] | None = None
) -> Generator[float, Any, None]:
    """Exponential backoff with full jitter, never shorter than a server's Retry-After,
    and never longer than the ``remaining`` time budget.

    backoff sends each failure into the generator, which is how Retry-After gets in.
    """
    failure = yield 0.0  # backoff primes the generator; this value is discarded
    attempt = 0
    while True:
        delay = random.uniform(0, min(cap, factor * 2**attempt))
        retry_after = getattr(failure, "retry_after", None)
        if retry_after is not None:
            delay = max(delay, retry_after)
        if remaining is not None:
            delay = max(0.0, min(delay, remaining()))
        attempt += 1
        failure = yield delay
