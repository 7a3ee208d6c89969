"""A local emulator of Pleo's OAuth 2.0 server and API, for tests and demos: its
HTTP endpoints. Pleo's token rules are in :mod:`._grants`, what it remembers in
:mod:`._state`, its wire format in :mod:`._wire`, its faults in :mod:`._fault`."""

from __future__ import annotations

import dataclasses
import hmac
import secrets
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any

from .._clock import Clock, as_clock
from ._fault import Fault, FaultBody
from ._grants import _TokenRules
from ._server import _Request, _Response, _Running
from ._state import EmulatorCounters, _check_lifetime, _Code, _Grant, _Tally
from ._wire import (
    _EMPLOYEES_BODY,
    _INDEX_BODY,
    _NO_STORE,
    _UNAUTHORIZED,
    _authenticate,
    _authorize_refusal,
    _dumps,
    _FormError,
    _grant_type,
    _oauth_error,
    _page,
    _parse_form,
    _single_values,
    _valid_redirect_uri,
    _with_query,
)

__all__ = ["CODE_LIFETIME", "Emulator", "EmulatorCounters", "Fault", "FaultBody"]

#: Seconds an authorization code stays redeemable, on the emulator's clock.
CODE_LIFETIME = 60.0

_API_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})


class Emulator(_TokenRules):
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
        self._faults: deque[Fault] = deque()
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

    def inject_fault(self, fault: Fault | None = None, *, count: int = 1, **options: Any) -> None:
        """Queue ``fault`` for the next ``count`` requests to ``/oauth/token``.

        Faults are consumed first in, first out, one per request, and apply to
        ``/oauth/token`` only. See :class:`~pleo_auth.testing.Fault` for what
        each can do, before or after the grant::

            emu.inject_fault(Fault(status=503, retry_after=2))      # nothing spent
            emu.inject_fault(Fault(after_grant=True, drop=True))    # rotated, reply lost
            emu.inject_fault(Fault(error="invalid_grant"), count=3)

        The keyword form of pleo-auth 0.1, ``inject_fault(status=503, ...)``, still
        works (the keywords are :class:`~pleo_auth.testing.Fault`'s fields) with a
        DeprecationWarning.

        Args:
            fault: The fault.
            count: How many requests it applies to.
            options: Deprecated: the fields of a :class:`~pleo_auth.testing.Fault`.

        Raises:
            ValueError: ``count`` is not an integer of at least 1, no fault or both
                forms were given, or (keyword form) the fault is invalid.
        """
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError("count must be an integer >= 1")
        if options:
            if fault is not None:
                raise ValueError("give a Fault or its fields as keywords, not both")
            warnings.warn(
                "Emulator.inject_fault(status=..., ...) is deprecated: pass a value, "
                "inject_fault(pleo_auth.testing.Fault(status=..., ...), count=...)",
                DeprecationWarning,
                stacklevel=2,
            )
            fault = Fault(**options)
        if not isinstance(fault, Fault):
            raise ValueError(
                "inject_fault needs a pleo_auth.testing.Fault, "
                f"not {type(fault).__name__}; a fault that does nothing is refused"
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
            return fault._spoil(reply)
        if fault.delay:
            time.sleep(fault.delay)
        if not fault.replaces_reply:
            return self._token_grant(request)
        return fault._spoil(None)

    def _token_grant(self, request: _Request) -> _Response:
        if request.method != "POST":
            return _oauth_error(405, "invalid_request", "use POST", (("Allow", "POST"),))
        try:
            form = _parse_form(request)
        except _FormError as exc:
            return _oauth_error(400, "invalid_request", str(exc))
        grant_type = form.get("grant_type")
        response = _authenticate(request, form, self._client_id, self._client_secret)
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

        refused = _authorize_refusal(params, repeated, pkce_required=self._pkce_required)
        if refused is not None:
            return refuse(*refused)

        challenge = params.get("code_challenge")
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
        error = _authenticate(request, form, self._client_id, self._client_secret)
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
