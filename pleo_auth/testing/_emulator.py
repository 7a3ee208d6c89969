"""A local emulator of Pleo's OAuth 2.0 server and API, for tests and demos."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import html
import json
import math
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote_plus, urlencode, urlsplit, urlunsplit

from .._clock import Clock, as_clock
from ._server import _Request, _Response, _Running

#: Seconds an authorization code stays redeemable, on the emulator's clock.
CODE_LIFETIME = 60.0

_VERIFIER_RE = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
# BASE64URL(SHA256(verifier)) without padding is always 43 characters.
_CHALLENGE_RE = re.compile(r"[A-Za-z0-9_-]{43}")

_JSON = "application/json"
_NO_STORE = (("Cache-Control", "no-store"), ("Pragma", "no-cache"))
_API_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})


def _dumps(payload: object) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


_EMPLOYEES_BODY = _dumps(
    {
        "data": [
            {
                "id": "0b6c2f4e-6d1a-4c53-9a51-2d8f0d6c1a01",
                "firstName": "Ada",
                "lastName": "Lovelace",
                "email": "ada@example.com",
            },
            {
                "id": "5e1f3b7a-2c4d-4e8f-8a9b-0c1d2e3f4a02",
                "firstName": "Grace",
                "lastName": "Hopper",
                "email": "grace@example.com",
            },
            {
                "id": "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c03",
                "firstName": "Alan",
                "lastName": "Turing",
                "email": "alan@example.com",
            },
        ],
        "pagination": {
            "hasPreviousPage": False,
            "hasNextPage": False,
            "startCursor": None,
            "endCursor": None,
            "total": 3,
        },
    }
)

_INDEX_BODY = _dumps(
    {
        "name": "pleo_auth emulator of Pleo's OAuth 2.0 server",
        "endpoints": {
            "GET /oauth/authorize": "authorization code + PKCE (S256); auto-approves",
            "POST /oauth/token": "grant_type=authorization_code or refresh_token",
            "POST /oauth/token/introspect": "RFC 7662 introspection (form field token)",
            "GET /v2/employees": "a small fixed list; needs a Bearer access token",
            "/v...": "any other API path; needs a Bearer access token; echoes the request",
        },
    }
)

_UNAUTHORIZED = _Response(
    401,
    _dumps({"error": "invalid_token"}),
    headers=(("WWW-Authenticate", 'Bearer error="invalid_token"'),),
)


@dataclass(frozen=True)
class EmulatorCounters:
    """A snapshot of what an :class:`Emulator` has seen since its last reset.

    Attributes:
        refresh_grants: Successful ``refresh_token`` grants.
        code_exchanges: Successful ``authorization_code`` grants.
        rejected_refreshes: ``refresh_token`` grant requests refused for any
            reason: unknown, spent or revoked refresh token, bad client
            credentials, missing parameters. Injected faults are not counted.
        reuse_detections: Spent refresh tokens presented while their grant was
            still live, each of which revoked that grant. At most one per
            grant: later attempts on the revoked grant count only as
            ``rejected_refreshes``.
        api_requests: Requests to API paths (``/v...``), answered or not.
        unauthorized: API requests answered 401.
        token_requests: Requests to ``/oauth/token``, injected faults included.
        faults_served: Injected faults consumed.
    """

    refresh_grants: int = 0
    code_exchanges: int = 0
    rejected_refreshes: int = 0
    reuse_detections: int = 0
    api_requests: int = 0
    unauthorized: int = 0
    token_requests: int = 0
    faults_served: int = 0


@dataclass
class _Tally:
    """The mutable twin of :class:`EmulatorCounters`, guarded by the lock."""

    refresh_grants: int = 0
    code_exchanges: int = 0
    rejected_refreshes: int = 0
    reuse_detections: int = 0
    api_requests: int = 0
    unauthorized: int = 0
    token_requests: int = 0
    faults_served: int = 0


@dataclass(eq=False)
class _Grant:
    """One authorisation: a chain of rotated tokens, live until revoked."""

    scope: str
    subject: str | None
    access_token: str
    access_expires_at: float  # on the emulator's clock
    refresh_token: str
    revoked: bool = False


@dataclass(frozen=True)
class _Code:
    redirect_uri: str
    challenge: str | None
    scope: str
    subject: str | None
    expires_at: float  # on the emulator's clock


#: What a fault's ``body`` may be: the bytes to send, text (sent as UTF-8), or,
#: with ``after_grant=True``, a function of the real reply's JSON object.
FaultBody = bytes | str | Callable[[dict[str, Any]], bytes | str]


@dataclass(frozen=True)
class _Fault:
    status: int | None
    delay: float
    drop: bool
    retry_after: float | None
    error: str | None
    body: FaultBody | None = None
    content_type: str | None = None
    truncate: int | None = None
    reset: bool = False
    reset_after: int | None = None
    after_grant: bool = False

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


# CR, LF and other controls would split or corrupt a header line.
_UNSAFE_HEADER = re.compile(r"[\x00-\x1f\x7f]")


def _grant_type(request: _Request) -> str | None:
    """The form's grant_type, read leniently (for hooks; the grant reads it strictly)."""
    try:
        values = parse_qs(request.body.decode("utf-8")).get("grant_type")
    except UnicodeDecodeError:
        return None
    return values[0] if values else None


class _FormError(Exception):
    """A request that cannot be read as a token-endpoint form."""


def _number(value: float) -> int | float:
    """Report an integral value as an int, anything else as a float."""
    return int(value) if float(value).is_integer() else float(value)


def _check_lifetime(seconds: float) -> float:
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("access_token_lifetime must be a finite number of seconds >= 0")
    return float(seconds)


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _single_values(query: str) -> tuple[dict[str, str], set[str]]:
    """Parse a query or form body.

    Returns:
        The parameters, and the names that were repeated. Parameters without
        a value count as omitted (RFC 6749 section 3.1).
    """
    parsed = parse_qs(query, keep_blank_values=False)
    repeated = {name for name, values in parsed.items() if len(values) > 1}
    return {name: values[0] for name, values in parsed.items()}, repeated


def _parse_form(request: _Request) -> dict[str, str]:
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        raise _FormError("expected Content-Type application/x-www-form-urlencoded")
    try:
        text = request.body.decode("utf-8")
    except UnicodeDecodeError:
        raise _FormError("the form is not UTF-8") from None
    form, repeated = _single_values(text)
    if repeated:
        raise _FormError("repeated parameter: " + ", ".join(sorted(repeated)))
    return form


def _oauth_error(
    status: int, error: str, description: str, headers: tuple[tuple[str, str], ...] = ()
) -> _Response:
    body = _dumps({"error": error, "error_description": description})
    return _Response(status, body, headers=_NO_STORE + headers)


def _invalid_client(description: str) -> _Response:
    return _oauth_error(401, "invalid_client", description, (("WWW-Authenticate", "Basic"),))


def _valid_redirect_uri(uri: str) -> bool:
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and not parts.fragment


def _with_query(uri: str, params: Mapping[str, str]) -> str:
    parts = urlsplit(uri)
    extra = urlencode(params)
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit(parts._replace(query=query))


def _page(status: int, message: str) -> _Response:
    text = f"<!doctype html><title>Error</title><h1>{status}</h1><p>{html.escape(message)}</p>"
    return _Response(status, text.encode(), content_type="text/html; charset=utf-8")


class Emulator:
    """A local, in-process emulator of Pleo's OAuth 2.0 server and API.

    It is a real HTTP/1.1 server (keep-alive) on a loopback port, served from
    a daemon thread, that enforces Pleo's token rules:

    * every refresh rotates both tokens, and all earlier tokens of the grant
      die at once;
    * presenting a spent refresh token revokes the whole grant (reuse
      detection);
    * the authorization code flow needs PKCE with S256; ``plain`` is refused;
    * API paths (``/v...``) need the grant's current, unexpired access token.

    Besides ``/oauth/authorize``, ``/oauth/token`` and
    ``/oauth/token/introspect``, it serves ``GET /v2/employees`` (a small
    fixed list) and answers any other ``/v...`` path with an echo, so a client
    can be tested end to end. Faults on the token endpoint (errors,
    ``Retry-After``, delays, dropped or reset connections, HTML pages, cut
    JSON, and replies lost or spoiled after the server rotated) are injected
    with :meth:`inject_fault`; :meth:`set_token_request_hook` lets a test look
    at the client at the moment of each token request.

    Time: token and code expiry follow ``clock``'s monotonic time (the system
    clock by default), so a test can pass a
    :class:`~pleo_auth.testing.FakeClock` and expire tokens without sleeping.
    Injected delays are real sleeps. Introspection reports ``exp`` in the
    clock's wall-clock epoch seconds.

    The emulator never logs tokens, codes or secrets; request lines are not
    written to stderr.

    Thread safety:
        Every method and property may be called from any thread, at any time,
        while the server is handling requests. All grant, code, fault and
        counter state is guarded by one lock, held only for the few
        microseconds a request needs it, never across a sleep or socket I/O;
        concurrent requests are therefore decided one at a time, in the order
        they take the lock. Each connection is served by its own daemon thread.
        :meth:`start` and :meth:`stop` are serialised by a second lock.

    Example:
        >>> with Emulator() as emu:
        ...     tokens = emu.issue_tokens()
        ...     tokens["token_type"], tokens["expires_in"]
        ('Bearer', 3600)

    Args:
        access_token_lifetime: Lifetime of new access tokens, in seconds. It
            is reported as ``expires_in``: an int when integral, else a float.
        client_id: The only client the emulator knows.
        client_secret: The client's secret, or None for a public client,
            which authenticates with ``client_id`` alone and must use PKCE.
        host: Address to bind; loopback by default.
        port: Port to bind; 0 picks a free one.
        clock: The clock for token and code expiry, usually the one the client
            under test uses. (A bare function of monotonic seconds is deprecated.)
        require_pkce: Refuse authorize requests without a ``code_challenge``.
            Public clients always need PKCE.

    Raises:
        ValueError: A negative or non-finite lifetime, or an empty secret.
    """

    def __init__(
        self,
        access_token_lifetime: float = 3600.0,
        client_id: str = "pleo-auth-demo",
        client_secret: str | None = "demo-secret",
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Clock | Callable[[], float] | None = None,
        require_pkce: bool = True,
    ) -> None:
        if not client_id:
            raise ValueError("client_id must not be empty")
        if client_secret == "":
            raise ValueError("client_secret must not be empty; use None for a public client")
        self._lifetime = _check_lifetime(access_token_lifetime)
        self._client_id = client_id
        self._client_secret = client_secret
        self._host = host
        self._port = port
        self._clock = as_clock(clock, owner="Emulator")
        self._pkce_required = require_pkce or client_secret is None

        self._lock = threading.Lock()
        self._grants_by_access: dict[str, _Grant] = {}  # current tokens of live grants
        self._grants_by_refresh: dict[str, _Grant] = {}  # every refresh token issued
        self._pairs: dict[str, str] = {}  # every refresh token issued -> its access token
        self._live_grants: set[_Grant] = set()
        self._codes: dict[str, _Code] = {}
        self._faults: deque[_Fault] = deque()
        self._token_hook: Callable[[str | None], object] | None = None
        self._tally = _Tally()

        self._lifecycle_lock = threading.Lock()
        self._running: _Running | None = None

    def __repr__(self) -> str:
        where = self.url if self._running is not None else "stopped"
        return f"Emulator({where}, client_id={self._client_id!r})"

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> Emulator:
        """Bind the port and start serving in a daemon thread.

        A stopped emulator may be started again; its grants survive, but with
        ``port=0`` it may get a different port.

        Returns:
            The emulator itself, so ``emu = Emulator().start()`` works.

        Raises:
            RuntimeError: It is already running.
            OSError: The port could not be bound.
        """
        with self._lifecycle_lock:
            if self._running is not None:
                raise RuntimeError("the emulator is already running")
            self._running = _Running(self._host, self._port, self._handle)
        return self

    def stop(self) -> None:
        """Stop serving, close every socket, and join the thread.

        Open keep-alive connections are closed too. Calling it again, or on an
        emulator never started, does nothing.
        """
        with self._lifecycle_lock:
            running, self._running = self._running, None
            if running is not None:
                running.stop()

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- addresses and identity --------------------------------------------

    @property
    def url(self) -> str:
        """The base URL, ``http://127.0.0.1:PORT``.

        Raises:
            RuntimeError: The emulator is not running.
        """
        running = self._running
        if running is None:
            raise RuntimeError("the emulator is not running; call start() first")
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{running.server.port}"

    @property
    def token_url(self) -> str:
        """The token endpoint, ``url + "/oauth/token"``."""
        return self.url + "/oauth/token"

    @property
    def authorize_url(self) -> str:
        """The authorize endpoint, ``url + "/oauth/authorize"``."""
        return self.url + "/oauth/authorize"

    @property
    def introspect_url(self) -> str:
        """The introspection endpoint, ``url + "/oauth/token/introspect"``."""
        return self.url + "/oauth/token/introspect"

    @property
    def api_url(self) -> str:
        """The API base URL; the same server, so the same as :attr:`url`."""
        return self.url

    @property
    def client_id(self) -> str:
        """The client id the emulator accepts."""
        return self._client_id

    @property
    def client_secret(self) -> str | None:
        """The client secret it accepts, or None for a public client."""
        return self._client_secret

    # -- control -----------------------------------------------------------

    def issue_tokens(self, scope: str = "users:read") -> dict[str, Any]:
        """Create a grant directly, skipping the browser flow.

        It is not counted as a code exchange.

        Args:
            scope: The space-separated scope of the grant.

        Returns:
            A token-endpoint reply: ``access_token``, ``refresh_token``,
            ``expires_in``, ``token_type`` (``"Bearer"``) and ``scope``.
        """
        with self._lock:
            return self._new_grant(scope, None)

    def issued_together(self, access_token: str, refresh_token: str) -> bool:
        """Whether these two tokens were issued as one pair, by one grant or rotation.

        A store that mixes the access token of one rotation with the refresh
        token of another answers False: tests use it to prove saves are atomic.
        """
        with self._lock:
            issued = self._pairs.get(refresh_token)
        return issued is not None and hmac.compare_digest(issued, access_token)

    def is_current(self, access_token: str, refresh_token: str) -> bool:
        """Whether this is the live pair of a grant that was not revoked."""
        with self._lock:
            grant = self._grants_by_refresh.get(refresh_token)
            return (
                grant is not None
                and not grant.revoked
                and grant.refresh_token == refresh_token
                and grant.access_token == access_token
            )

    def revoke_all(self) -> None:
        """Revoke every grant, as if the user disconnected the app.

        All access and refresh tokens issued so far die. Authorization codes
        not yet exchanged still work.
        """
        with self._lock:
            for grant in list(self._live_grants):
                self._revoke(grant)

    def set_access_token_lifetime(self, seconds: float) -> None:
        """Change the lifetime of access tokens issued from now on.

        Args:
            seconds: The new lifetime; tokens already issued keep theirs.

        Raises:
            ValueError: It is negative or not finite.
        """
        lifetime = _check_lifetime(seconds)
        with self._lock:
            self._lifetime = lifetime

    @property
    def counters(self) -> EmulatorCounters:
        """A consistent snapshot of the counters."""
        with self._lock:
            return EmulatorCounters(**dataclasses.asdict(self._tally))

    def reset_counters(self) -> None:
        """Set every counter back to zero. Grants and faults are untouched."""
        with self._lock:
            self._tally = _Tally()

    def inject_fault(
        self,
        *,
        status: int | None = None,
        delay: float = 0.0,
        drop: bool = False,
        retry_after: float | None = None,
        error: str | None = None,
        count: int = 1,
        body: FaultBody | None = None,
        content_type: str | None = None,
        truncate: int | None = None,
        reset: bool = False,
        reset_after: int | None = None,
        after_grant: bool = False,
    ) -> None:
        """Queue a fault for the next ``count`` requests to ``/oauth/token``.

        Faults are consumed first in, first out, one per request, and apply to
        ``/oauth/token`` only.

        **Before or after the grant.** By default a fault answers *instead of*
        the grant: the request never touches grant state, so a refresh token
        sent with it is not spent (a delay alone delays the request, which is
        then handled as usual). With ``after_grant=True`` the request is handled
        first, so a refresh token *is* spent and the tokens rotated, and the
        fault then spoils the reply: the reply is lost (``drop``, ``reset``, or a
        ``delay`` longer than the client waits), cut (``truncate``), replaced
        (``status``, ``body``) or edited (``body`` as a function). That is how a
        reply gets lost after the server rotated.

        Examples::

            emu.inject_fault(status=503, retry_after=2)           # nothing spent
            emu.inject_fault(reset=True)                          # a cut reply, then RST
            emu.inject_fault(body="<h1>Bad gateway</h1>", status=502, content_type="text/html")
            emu.inject_fault(after_grant=True, drop=True)         # rotated, reply lost
            emu.inject_fault(after_grant=True, truncate=40)       # rotated, JSON cut
            emu.inject_fault(after_grant=True,                    # rotated, odd expires_in
                             body=lambda reply: json.dumps({**reply, "expires_in": "soon"}))

        Args:
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
            count: How many requests this fault applies to.
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
            ValueError: An argument is out of range or of the wrong type, two
                arguments contradict each other, or the fault would do nothing.
        """
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError("count must be an integer >= 1")
        if not isinstance(delay, int | float) or not math.isfinite(delay) or delay < 0:
            raise ValueError("delay must be a finite number of seconds >= 0")
        if retry_after is not None and (
            not isinstance(retry_after, int | float)
            or not math.isfinite(retry_after)
            or retry_after < 0
        ):
            raise ValueError("retry_after must be a finite number of seconds >= 0")
        if status is not None and (
            isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599
        ):
            raise ValueError("status must be an HTTP status, 200-599")
        if body is not None and not isinstance(body, bytes | str) and not callable(body):
            raise ValueError("body must be bytes, text, or a function of the reply")
        if callable(body) and not after_grant:
            raise ValueError("a body function needs after_grant=True: it edits the real reply")
        if body is not None and error is not None:
            raise ValueError("give error (for a JSON error body) or body, not both")
        if error is not None and (not isinstance(error, str) or not error):
            raise ValueError("error must be a non-empty OAuth error code")
        if content_type is not None and (
            not isinstance(content_type, str)
            or not content_type
            or _UNSAFE_HEADER.search(content_type)
        ):
            raise ValueError("content_type must be a non-empty header value on one line")
        for name, value in (("truncate", truncate), ("reset_after", reset_after)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 0
            ):
                raise ValueError(f"{name} must be an integer number of bytes >= 0")
        if reset_after is not None and not reset:
            raise ValueError("reset_after needs reset=True")
        if sum((bool(drop), bool(reset), truncate is not None)) > 1:
            raise ValueError("drop, reset and truncate each end the reply differently: pick one")
        if status is None and body is None:
            if error is not None:
                status = 401 if error == "invalid_client" else 400
            elif retry_after is not None or (not after_grant and (reset or truncate is not None)):
                status = 503
        if content_type is not None and not after_grant and status is None and body is None:
            raise ValueError("content_type needs a status or body, or after_grant=True")
        if status is not None and status < 400 and body is None:
            raise ValueError(f"status {status} needs a body: without one the reply is an error")
        fault = _Fault(
            status,
            float(delay),
            bool(drop),
            retry_after,
            error,
            body=body,
            content_type=content_type,
            truncate=truncate,
            reset=bool(reset),
            reset_after=reset_after,
            after_grant=bool(after_grant),
        )
        if not fault.replaces_reply and content_type is None and delay == 0:
            raise ValueError(
                "the fault does nothing: give status, error, body, delay, drop, reset or truncate"
            )
        with self._lock:
            self._faults.extend([fault] * count)

    def set_token_request_hook(self, hook: Callable[[str | None], object] | None) -> None:
        """Call ``hook(grant_type)`` at the start of every request to ``/oauth/token``.

        It runs on the connection's thread, before any fault or grant, without
        the emulator's lock, and may block: the request waits for it. Tests use it
        to look at the client's state at the moment of each request (for example,
        that the client still holds its store's lock). It gets the form's
        ``grant_type`` (or None), never a token. An exception it raises is
        answered with 500: record failures and assert afterwards instead.

        Args:
            hook: The callable, or None to remove it.
        """
        with self._lock:
            self._token_hook = hook

    def wait_until_idle(self, timeout: float = 30.0) -> None:
        """Block until no connection is open and none waits to be accepted.

        A request a client sent just before it was killed is still served, and
        may rotate the tokens after the client died; crash tests wait for that
        before judging the store. Keep-alive connections count as open: close
        your own sessions first.

        Raises:
            RuntimeError: The emulator is not running.
            TimeoutError: Connections stayed open for ``timeout`` seconds.
        """
        running = self._running
        if running is None:
            raise RuntimeError("the emulator is not running; call start() first")
        give_up_at = time.monotonic() + timeout
        while running.server.busy():
            if time.monotonic() > give_up_at:
                raise TimeoutError(f"connections still open after {timeout:g} s")
            time.sleep(0.001)  # a polling interval; the bound is the timeout

    @property
    def pending_faults(self) -> int:
        """How many injected faults are still waiting for a request."""
        with self._lock:
            return len(self._faults)

    # -- state changes; the caller holds self._lock ------------------------

    def _new_grant(self, scope: str, subject: str | None) -> dict[str, Any]:
        grant = _Grant(scope, subject, "", 0.0, "")
        self._live_grants.add(grant)
        return self._rotate(grant)

    def _rotate(self, grant: _Grant) -> dict[str, Any]:
        """Give the grant a new token pair; the old pair dies."""
        self._grants_by_access.pop(grant.access_token, None)
        grant.access_token = "at_" + secrets.token_urlsafe(32)
        grant.refresh_token = "rt_" + secrets.token_urlsafe(32)
        grant.access_expires_at = self._clock.monotonic() + self._lifetime
        self._grants_by_access[grant.access_token] = grant
        self._grants_by_refresh[grant.refresh_token] = grant
        self._pairs[grant.refresh_token] = grant.access_token
        return {
            "access_token": grant.access_token,
            "refresh_token": grant.refresh_token,
            "expires_in": _number(self._lifetime),
            "token_type": "Bearer",
            "scope": grant.scope,
        }

    def _revoke(self, grant: _Grant) -> None:
        grant.revoked = True
        self._grants_by_access.pop(grant.access_token, None)
        self._live_grants.discard(grant)

    # -- HTTP --------------------------------------------------------------

    def _handle(self, request: _Request) -> _Response:
        """Route one request; called from the server's connection threads."""
        path = request.path
        if path == "/oauth/token":
            return self._token_endpoint(request)
        if path == "/oauth/token/introspect":
            return self._introspect(request)
        if path == "/oauth/authorize":
            return self._authorize(request)
        if path.startswith("/v") and request.method in _API_METHODS:
            return self._api(request)
        if path == "/" and request.method == "GET":
            return _Response(200, _INDEX_BODY)
        return _Response(404, _dumps({"error": "not_found", "path": path}))

    def _authenticate(self, request: _Request, form: Mapping[str, str]) -> _Response | None:
        """Check client credentials (Basic, or in the form body).

        Returns:
            An error response, or None when the client is authenticated.
        """
        authorization = request.headers.get("authorization")
        if authorization is not None:
            scheme, _, encoded = authorization.partition(" ")
            if scheme.lower() != "basic":
                return _invalid_client("use HTTP Basic client authentication")
            try:
                decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return _invalid_client("malformed Basic credentials")
            raw_id, colon, raw_secret = decoded.partition(":")
            if not colon:
                return _invalid_client("malformed Basic credentials")
            if "client_secret" in form:
                return _oauth_error(
                    400, "invalid_request", "use one client authentication method, not two"
                )
            client_id: str | None = unquote_plus(raw_id)
            secret: str | None = unquote_plus(raw_secret)
            if "client_id" in form and form["client_id"] != client_id:
                return _invalid_client("client_id in the body differs from Basic")
        else:
            client_id = form.get("client_id")
            secret = form.get("client_secret")
        if client_id is None:
            return _invalid_client("client authentication required")
        ok = hmac.compare_digest(client_id.encode(), self._client_id.encode())
        if self._client_secret is None:
            ok = ok and not secret
        else:
            expected = self._client_secret.encode()
            ok = ok and secret is not None and hmac.compare_digest(secret.encode(), expected)
        return None if ok else _invalid_client("unknown client or wrong secret")

    def _token_endpoint(self, request: _Request) -> _Response:
        with self._lock:
            hook = self._token_hook
        if hook is not None:
            hook(_grant_type(request))
        with self._lock:
            self._tally.token_requests += 1
            fault = self._faults.popleft() if self._faults else None
            if fault is not None:
                self._tally.faults_served += 1
        if fault is None:
            return self._token_grant(request)
        if fault.after_grant:
            reply = self._token_grant(request)
            if fault.delay:
                time.sleep(fault.delay)
            return self._spoil(fault, reply)
        if fault.delay:
            time.sleep(fault.delay)
        if not fault.replaces_reply:
            return self._token_grant(request)
        return self._spoil(fault, None)

    def _spoil(self, fault: _Fault, reply: _Response | None) -> _Response:
        """The reply ``fault`` makes of the real ``reply`` (None: no grant was made)."""
        if fault.drop:
            return _Response(0, drop=True)
        if fault.body is not None:
            content = fault.body
            if callable(content):
                assert reply is not None  # inject_fault allows a function only after the grant
                content = content(json.loads(reply.body))
            if isinstance(content, str):
                content = content.encode("utf-8")
            status = fault.status or (reply.status if reply is not None else 200)
            headers = reply.headers if reply is not None else _NO_STORE
            if fault.retry_after is not None:
                headers += (("Retry-After", str(_number(fault.retry_after))),)
            reply = _Response(status, content, headers=headers)
        elif fault.status is not None:
            reply = self._fault_response(fault.status, fault.error, fault.retry_after)
        assert reply is not None  # without a grant, inject_fault always sets a status or body
        body = reply.body if fault.truncate is None else reply.body[: fault.truncate]
        return dataclasses.replace(
            reply,
            body=body,
            content_type=fault.content_type or reply.content_type,
            reset=fault.reset,
            reset_after=fault.reset_after,
        )

    @staticmethod
    def _fault_response(status: int, error: str | None, retry_after: float | None) -> _Response:
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

    def _token_grant(self, request: _Request) -> _Response:
        if request.method != "POST":
            return _oauth_error(405, "invalid_request", "use POST", (("Allow", "POST"),))
        try:
            form = _parse_form(request)
        except _FormError as exc:
            return _oauth_error(400, "invalid_request", str(exc))
        grant_type = form.get("grant_type")
        response = self._authenticate(request, form)
        if response is None:
            if grant_type == "refresh_token":
                response = self._refresh(form)
            elif grant_type == "authorization_code":
                response = self._exchange_code(form)
            elif grant_type is None:
                response = _oauth_error(400, "invalid_request", "grant_type is required")
            else:
                response = _oauth_error(
                    400, "unsupported_grant_type", "use authorization_code or refresh_token"
                )
        if grant_type == "refresh_token" and response.status != 200:
            with self._lock:
                self._tally.rejected_refreshes += 1
        return response

    def _refresh(self, form: Mapping[str, str]) -> _Response:
        token = form.get("refresh_token")
        if token is None:
            return _oauth_error(400, "invalid_request", "refresh_token is required")
        with self._lock:
            grant = self._grants_by_refresh.get(token)
            if grant is None or grant.revoked:
                return _oauth_error(400, "invalid_grant", "unknown or revoked refresh token")
            if token != grant.refresh_token:
                self._revoke(grant)
                self._tally.reuse_detections += 1
                return _oauth_error(
                    400,
                    "invalid_grant",
                    "refresh token already used; the authorisation has been revoked",
                )
            reply = self._rotate(grant)
            self._tally.refresh_grants += 1
        return _Response(200, _dumps(reply), headers=_NO_STORE)

    def _exchange_code(self, form: Mapping[str, str]) -> _Response:
        code = form.get("code")
        redirect_uri = form.get("redirect_uri")
        verifier = form.get("code_verifier")
        if code is None or redirect_uri is None:
            return _oauth_error(400, "invalid_request", "code and redirect_uri are required")
        with self._lock:
            entry = self._codes.get(code)
            if entry is not None and entry.challenge is not None and verifier is None:
                return _oauth_error(400, "invalid_request", "code_verifier is required")
            # Any attempt burns the code, so a wrong verifier cannot be retried.
            self._codes.pop(code, None)
            if entry is None:
                return _oauth_error(400, "invalid_grant", "unknown or already used code")
            if self._clock.monotonic() >= entry.expires_at:
                return _oauth_error(400, "invalid_grant", "the code has expired")
            if redirect_uri != entry.redirect_uri:
                return _oauth_error(400, "invalid_grant", "redirect_uri does not match")
            if entry.challenge is not None and not (
                verifier is not None
                and _VERIFIER_RE.fullmatch(verifier)
                and hmac.compare_digest(_s256(verifier), entry.challenge)
            ):
                return _oauth_error(400, "invalid_grant", "PKCE verification failed")
            reply = self._new_grant(entry.scope, entry.subject)
            self._tally.code_exchanges += 1
        return _Response(200, _dumps(reply), headers=_NO_STORE)

    def _authorize(self, request: _Request) -> _Response:
        if request.method != "GET":
            return _page(405, "use GET")
        params, repeated = _single_values(request.query)
        client_id = params.get("client_id")
        redirect_uri = params.get("redirect_uri")
        if client_id != self._client_id or "client_id" in repeated:
            return _page(400, "unknown client_id")
        if (
            redirect_uri is None
            or not _valid_redirect_uri(redirect_uri)
            or "redirect_uri" in repeated
        ):
            return _page(400, "redirect_uri must be one absolute http(s) URL without a fragment")

        state = params.get("state")

        def redirect(query: dict[str, str]) -> _Response:
            if state is not None:
                query["state"] = state
            location = _with_query(redirect_uri, query)
            return _Response(302, headers=(("Location", location), ("Cache-Control", "no-store")))

        def refuse(error: str, description: str) -> _Response:
            return redirect({"error": error, "error_description": description})

        if repeated:
            return refuse("invalid_request", "repeated parameter: " + ", ".join(sorted(repeated)))
        response_type = params.get("response_type")
        if response_type is None:
            return refuse("invalid_request", "response_type is required")
        if response_type != "code":
            return refuse("unsupported_response_type", "only response_type=code is supported")
        challenge = params.get("code_challenge")
        method = params.get("code_challenge_method")
        if challenge is None:
            if self._pkce_required:
                return refuse("invalid_request", "code_challenge is required (PKCE, S256)")
            if method is not None:
                return refuse("invalid_request", "code_challenge_method without code_challenge")
        else:
            # RFC 7636: an absent method means "plain", which Pleo refuses.
            if (method or "plain") != "S256":
                return refuse("invalid_request", "code_challenge_method must be S256")
            if not _CHALLENGE_RE.fullmatch(challenge):
                return refuse("invalid_request", "malformed code_challenge")

        code = "ac_" + secrets.token_urlsafe(32)
        entry = _Code(
            redirect_uri=redirect_uri,
            challenge=challenge,
            scope=params.get("scope", ""),
            subject=params.get("urn_pleo_params_oauth_subject"),
            expires_at=self._clock.monotonic() + CODE_LIFETIME,
        )
        with self._lock:
            now = self._clock.monotonic()
            for stale in [c for c, e in self._codes.items() if e.expires_at <= now]:
                del self._codes[stale]
            self._codes[code] = entry
        return redirect({"code": code})

    def _introspect(self, request: _Request) -> _Response:
        if request.method != "POST":
            return _oauth_error(405, "invalid_request", "use POST", (("Allow", "POST"),))
        try:
            form = _parse_form(request)
        except _FormError as exc:
            return _oauth_error(400, "invalid_request", str(exc))
        error = self._authenticate(request, form)
        if error is not None:
            return error
        token = form.get("token")
        if token is None:
            return _oauth_error(400, "invalid_request", "token is required")
        reply: dict[str, Any] = {"active": False}
        with self._lock:
            now = self._clock.monotonic()
            grant = self._grants_by_access.get(token)
            if grant is not None and now < grant.access_expires_at:
                reply = {
                    "active": True,
                    "scope": grant.scope,
                    "client_id": self._client_id,
                    "token_type": "Bearer",
                    "exp": int(self._clock.time() + (grant.access_expires_at - now)),
                }
            else:
                grant = self._grants_by_refresh.get(token)
                if grant is not None and not grant.revoked and grant.refresh_token == token:
                    reply = {
                        "active": True,
                        "scope": grant.scope,
                        "client_id": self._client_id,
                        "token_type": "refresh_token",
                    }
        return _Response(200, _dumps(reply), headers=_NO_STORE)

    def _api(self, request: _Request) -> _Response:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        with self._lock:
            self._tally.api_requests += 1
            grant = self._grants_by_access.get(token) if scheme.lower() == "bearer" else None
            live = grant is not None and self._clock.monotonic() < grant.access_expires_at
            if not live:
                self._tally.unauthorized += 1
        if not live:
            return _UNAUTHORIZED
        if request.path == "/v2/employees" and request.method == "GET":
            return _Response(200, _EMPLOYEES_BODY)
        echo: dict[str, Any] = {"ok": True, "method": request.method, "path": request.path}
        if request.body:
            echo["body_length"] = len(request.body)
        return _Response(200, _dumps(echo))
