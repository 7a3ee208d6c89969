"""A fault of the emulator's token endpoint, as one validated value."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable
from typing import Any

import attrs

from ._server import _Response
from ._wire import _NO_STORE, _number, _oauth_error

__all__ = ["Fault", "FaultBody"]

#: What a fault's ``body`` may be: the bytes to send, text (sent as UTF-8), or,
#: with ``after_grant=True``, a function of the real reply's JSON object.
FaultBody = bytes | str | Callable[[dict[str, Any]], bytes | str]

# CR, LF and other controls would split or corrupt a header line.
_UNSAFE_HEADER = re.compile(r"[\x00-\x1f\x7f]")


def _check_types(fault: Fault) -> None:
    """Each field on its own: its type and range."""
    delay = fault.delay
    if isinstance(delay, bool) or not isinstance(delay, int | float):
        raise ValueError("delay must be a finite number of seconds >= 0")
    if not math.isfinite(delay) or delay < 0:
        raise ValueError("delay must be a finite number of seconds >= 0")
    retry_after = fault.retry_after
    if retry_after is not None and (
        not isinstance(retry_after, int | float)
        or not math.isfinite(retry_after)
        or retry_after < 0
    ):
        raise ValueError("retry_after must be a finite number of seconds >= 0")
    status = fault.status
    if status is not None and (
        isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599
    ):
        raise ValueError("status must be an HTTP status, 200-599")
    body = fault.body
    if body is not None and not isinstance(body, bytes | str) and not callable(body):
        raise ValueError("body must be bytes, text, or a function of the reply")
    if fault.error is not None and (not isinstance(fault.error, str) or not fault.error):
        raise ValueError("error must be a non-empty OAuth error code")
    content_type = fault.content_type
    if content_type is not None and (
        not isinstance(content_type, str) or not content_type or _UNSAFE_HEADER.search(content_type)
    ):
        raise ValueError("content_type must be a non-empty header value on one line")
    for name, value in (("truncate", fault.truncate), ("reset_after", fault.reset_after)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 0
        ):
            raise ValueError(f"{name} must be an integer number of bytes >= 0")


def _check_combination(fault: Fault) -> None:
    """The fields together: nothing contradicts, and the fault does something."""
    if callable(fault.body) and not fault.after_grant:
        raise ValueError("a body function needs after_grant=True: it edits the real reply")
    if fault.body is not None and fault.error is not None:
        raise ValueError("give error (for a JSON error body) or body, not both")
    if fault.reset_after is not None and not fault.reset:
        raise ValueError("reset_after needs reset=True")
    if sum((fault.drop, fault.reset, fault.truncate is not None)) > 1:
        raise ValueError("drop, reset and truncate each end the reply differently: pick one")
    no_reply = fault.status is None and fault.body is None
    if fault.content_type is not None and not fault.after_grant and no_reply:
        raise ValueError("content_type needs a status or body, or after_grant=True")
    if fault.status is not None and fault.status < 400 and fault.body is None:
        raise ValueError(f"status {fault.status} needs a body: without one the reply is an error")
    if not fault.replaces_reply and fault.content_type is None and fault.delay == 0:
        raise ValueError(
            "the fault does nothing: give status, error, body, delay, drop, reset or truncate"
        )


def _default_status(fault: Fault) -> int | None:
    """The status a fault without one answers with, if it answers with an error."""
    if fault.status is not None or fault.body is not None:
        return fault.status
    if fault.error is not None:
        return 401 if fault.error == "invalid_client" else 400
    before_grant = not fault.after_grant
    if fault.retry_after is not None or (
        before_grant and (fault.reset or fault.truncate is not None)
    ):
        return 503
    return None


@attrs.frozen
class Fault:
    """What the emulator's token endpoint does to one request, instead of or after
    the grant; queue it with :meth:`Emulator.inject_fault`.

    **Before or after the grant.** By default a fault answers *instead of* the
    grant: the request never touches grant state, so a refresh token sent with it
    is not spent (a delay alone delays the request, which is then handled as
    usual). With ``after_grant=True`` the request is handled first, so a refresh
    token *is* spent and the tokens rotated, and the fault then spoils the reply:
    the reply is lost (``drop``, ``reset``, or a ``delay`` longer than the client
    waits), cut (``truncate``), replaced (``status``, ``body``) or edited (``body``
    as a function). That is how a reply gets lost after the server rotated.

    Examples::

        Fault(status=503, retry_after=2)           # nothing spent
        Fault(reset=True)                          # a cut reply, then RST
        Fault(body="<h1>Bad gateway</h1>", status=502, content_type="text/html")
        Fault(after_grant=True, drop=True)         # rotated, reply lost
        Fault(after_grant=True, truncate=40)       # rotated, JSON cut
        Fault(after_grant=True,                    # rotated, odd expires_in
              body=lambda reply: json.dumps({**reply, "expires_in": "soon"}))

    Attributes:
        status: The HTTP status of the reply (200-599). Without ``body`` the
            reply is a JSON OAuth error, so the status must be 400-599; it
            defaults to 400 when ``error`` is given (401 for
            ``"invalid_client"``) and to 503 when only ``retry_after``, or
            only ``truncate`` or ``reset`` before the grant, is. With ``body``
            it defaults to 200 (before the grant) or the real reply's status.
        delay: Sleep this many real seconds before answering: before the
            grant, or with ``after_grant`` after it (a client that gives up
            sooner never sees the reply the server made).
        drop: Close the connection without a reply (a FIN, no bytes). Wins
            over ``status``.
        retry_after: Add a ``Retry-After`` header with this many seconds.
            A fractional value is sent as written (not standard, but it
            keeps tests fast).
        error: The OAuth error code of a JSON error body, e.g.
            ``"invalid_grant"``. Defaults to ``"temporarily_unavailable"``
            for 429 and 503, ``"server_error"`` for other 5xx,
            ``"invalid_client"`` for 401, and ``"invalid_request"`` for
            other 4xx. Not with ``body``.
        body: The reply body instead of the usual one: bytes, or text sent
            as UTF-8 (an HTML error page, a captive portal, JSON without
            ``access_token``). With ``after_grant`` it may be a function
            that takes the real reply's JSON object (new tokens included)
            and returns the body to send.
        content_type: The ``Content-Type`` of the reply (default
            ``application/json``), e.g. ``"text/html; charset=utf-8"``.
        truncate: Send only the first ``truncate`` bytes of the body, with a
            matching ``Content-Length``: a well-framed reply whose JSON is
            cut mid-document.
        reset: Send the start of the reply (the status line and about half
            of the rest, so the cut falls in the headers or the body), then
            abort the connection with a TCP RST (``SO_LINGER`` 0).
        reset_after: With ``reset``: how many bytes of the raw reply, status
            line and headers included, to send first (never all of them).
        after_grant: Handle the request first, then apply the fault to its
            reply (see above).

    Raises:
        ValueError: A field is out of range or of the wrong type, two fields
            contradict each other, or the fault would do nothing. The message
            names the fields.

    Thread safety:
        Immutable; share it freely.
    """

    status: int | None = None
    delay: float = 0.0
    drop: bool = False
    retry_after: float | None = None
    error: str | None = None
    body: FaultBody | None = None
    content_type: str | None = None
    truncate: int | None = None
    reset: bool = False
    reset_after: int | None = None
    after_grant: bool = False

    def __attrs_post_init__(self) -> None:
        _check_types(self)
        for name in ("drop", "reset", "after_grant"):
            object.__setattr__(self, name, bool(getattr(self, name)))
        object.__setattr__(self, "delay", float(self.delay))
        object.__setattr__(self, "status", _default_status(self))
        _check_combination(self)

    @property
    def replaces_reply(self) -> bool:
        """Whether it answers in place of the grant (anything beyond a delay)."""
        return (
            self.status is not None
            or self.body is not None
            or self.drop
            or self.reset
            or self.truncate is not None
        )

    def _spoil(self, reply: _Response | None) -> _Response:
        """The reply this fault makes of the real ``reply`` (None: no grant was made)."""
        if self.drop:
            return _Response(0, drop=True)
        if self.body is not None:
            reply = self._replace_body(reply)
        elif self.status is not None:
            reply = _error_reply(self.status, self.error, self.retry_after)
        assert reply is not None  # without a grant, a fault always has a status or body
        body = reply.body if self.truncate is None else reply.body[: self.truncate]
        return dataclasses.replace(
            reply,
            body=body,
            content_type=self.content_type or reply.content_type,
            reset=self.reset,
            reset_after=self.reset_after,
        )

    def _replace_body(self, reply: _Response | None) -> _Response:
        content = self.body
        if callable(content):
            assert reply is not None  # a body function is allowed only after the grant
            content = content(json.loads(reply.body))
        if isinstance(content, str):
            content = content.encode("utf-8")
        assert content is not None
        status = self.status or (reply.status if reply is not None else 200)
        headers = reply.headers if reply is not None else _NO_STORE
        if self.retry_after is not None:
            headers += (("Retry-After", str(_number(self.retry_after))),)
        return _Response(status, content, headers=headers)


def _error_reply(status: int, error: str | None, retry_after: float | None) -> _Response:
    if error is None:
        if status in (429, 503):
            error = "temporarily_unavailable"
        elif status >= 500:
            error = "server_error"
        elif status == 401:
            error = "invalid_client"
        else:
            error = "invalid_request"
    headers: tuple[tuple[str, str], ...] = ()
    if retry_after is not None:
        headers += (("Retry-After", str(_number(retry_after))),)
    if status == 401:
        headers += (("WWW-Authenticate", "Basic"),)
    return _oauth_error(status, error, "injected fault", headers)
