"""A local emulator of Pleo's OAuth 2.0 server and API, for tests and demos: its
public face. Its OAuth endpoints are in :mod:`._oauth`, introspection and the API
in :mod:`._api`, Pleo's token rules in :mod:`._grants`, what it remembers in
:mod:`._state`, its wire format in :mod:`._wire`, its faults in :mod:`._fault`,
its capacity in :mod:`._capacity`, and what names a company in :mod:`._companies`."""

from __future__ import annotations

import dataclasses
import hmac
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any

from .._clock import Clock, as_clock
from ..company import Company
from ._capacity import TokenCapacity, _Admission
from ._companies import DEFAULT_COMPANY, company_urn
from ._fault import Fault, FaultBody
from ._oauth import CODE_LIFETIME, _OAuthEndpoints
from ._server import _Running
from ._state import (
    EmulatorCounters,
    GrantCounters,
    _check_lifetime,
    _Code,
    _Grant,
    _GrantTally,
    _Tally,
)

__all__ = [
    "CODE_LIFETIME",
    "DEFAULT_COMPANY",
    "Emulator",
    "EmulatorCounters",
    "Fault",
    "FaultBody",
    "GrantCounters",
    "TokenCapacity",
]


def _check_capacity(capacity: object) -> TokenCapacity | None:
    if capacity is not None and not isinstance(capacity, TokenCapacity):
        raise ValueError(
            "token_capacity must be a pleo_auth.testing.TokenCapacity or None, "
            f"not {type(capacity).__name__}"
        )
    return capacity


class Emulator(_OAuthEndpoints):
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
    fixed list), ``GET /v1/introspect``, ``DELETE /v1/installations/me``, and
    answers any other ``/v...`` path with an echo, so a client can be tested
    end to end.

    Companies: every grant belongs to one Pleo company, named as
    :class:`pleo_auth.Company` names one: its id (a UUID), ``urn:pleo:company:<uuid>``
    or a Company. :meth:`issue_tokens` takes
    ``company=``; a login takes the company the authorize request names in
    ``urn_pleo_params_oauth_subject`` (a subject that names no company is
    ignored, as a hint the login page cannot use), else the one the emulated
    user "picks" on the login page, :attr:`default_company`. Introspection answers the company as
    ``urn:pleo:params:oauth:subject_urn`` (and ``GET /v1/introspect`` as
    ``subjectURN``); ``DELETE /v1/installations/me`` revokes every grant of
    the token's company and no other; :meth:`counters_for` counts one
    company's grants. A token endpoint with a :class:`TokenCapacity` answers
    429 (or delays) beyond it. Faults on the token endpoint (errors,
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
        :meth:`start` and :meth:`stop` are serialised by a second lock. A
        :class:`TokenCapacity` keeps its own lock, and a request it delays waits
        on the clock (or for a free slot) holding neither.

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
        company: The company of grants that name none: of :meth:`issue_tokens`
            without ``company=``, and of logins whose authorize request names
            none. A company id or ``urn:pleo:company:<uuid>``; None is
            :data:`~pleo_auth.testing.DEFAULT_COMPANY`.
        token_capacity: The token endpoint's capacity, or None (the default)
            for none: it takes any number of requests.

    Raises:
        ValueError: A negative or non-finite lifetime, an empty secret, a
            company that is not a company id or URN (a ConfigurationError), or
            a ``token_capacity`` that is not a :class:`TokenCapacity`.
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
        *,
        company: str | Company | None = None,
        token_capacity: TokenCapacity | None = None,
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
        self._company = DEFAULT_COMPANY if company is None else company_urn(company)
        self._capacity = _check_capacity(token_capacity)
        self._admission = _Admission(self._clock)

        self._lock = threading.Lock()
        self._grants_by_access: dict[str, _Grant] = {}  # current tokens of live grants
        self._grants_by_refresh: dict[str, _Grant] = {}  # every refresh token issued
        self._pairs: dict[str, str] = {}  # every refresh token issued -> its access token
        self._live_grants: set[_Grant] = set()
        self._codes: dict[str, _Code] = {}
        self._faults: deque[Fault] = deque()
        self._token_hook: Callable[[str | None], object] | None = None
        self._tally = _Tally()
        self._company_tallies: dict[str, _GrantTally] = {}
        self._grants_by_company: dict[str, set[_Grant]] = {}  # live grants

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
            self._admission.reopen()
            self._running = _Running(self._host, self._port, self._handle)
        return self

    def stop(self) -> None:
        """Stop serving, close every socket, and join the thread.

        Open keep-alive connections are closed too, and token requests held back
        by a ``mode="delay"`` capacity are refused. Calling it again, or on an
        emulator never started, does nothing.
        """
        self._admission.close()
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

    def issue_tokens(
        self, scope: str = "users:read", *, company: str | Company | None = None
    ) -> dict[str, Any]:
        """Create a grant directly, skipping the browser flow.

        It is not counted as a code exchange.

        Args:
            scope: The space-separated scope of the grant.
            company: The company the grant belongs to: its id (a UUID) or
                ``urn:pleo:company:<uuid>``, both naming the same company.
                None: :attr:`default_company`.

        Returns:
            A token-endpoint reply: ``access_token``, ``refresh_token``,
            ``expires_in``, ``token_type`` (``"Bearer"``) and ``scope``. (The
            company is not in it, as it is not in Pleo's: introspect a token
            to learn it.)

        Raises:
            ConfigurationError: (a ValueError) ``company`` is not a company id
                or URN.
        """
        urn = None if company is None else company_urn(company)
        with self._lock:
            return self._new_grant(scope, urn or self._company)

    @property
    def default_company(self) -> str:
        """The URN of the company of grants that name none (see the ``company`` argument)."""
        with self._lock:
            return self._company

    def set_default_company(self, company: str | Company) -> None:
        """Change :attr:`default_company`: the company the emulated user picks at
        the next logins whose authorize request names none, and the company of
        :meth:`issue_tokens` without ``company=``. Grants already made keep theirs.

        Raises:
            ConfigurationError: (a ValueError) ``company`` is not a company id
                or URN.
        """
        urn = company_urn(company)
        with self._lock:
            self._company = urn

    def companies(self) -> list[str]:
        """The URNs of the companies with a live grant, sorted."""
        with self._lock:
            return sorted(self._grants_by_company)

    def revoke(self, company: str | Company) -> int:
        """Revoke every grant of one company, as if its user disconnected the app
        in Pleo; other companies' grants are untouched.

        Returns:
            How many live grants the company had.

        Raises:
            ConfigurationError: (a ValueError) ``company`` is not a company id
                or URN.
        """
        urn = company_urn(company)
        with self._lock:
            return self._revoke_company(urn)

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
        """A consistent snapshot of the counters, every company's together."""
        with self._lock:
            return EmulatorCounters(**dataclasses.asdict(self._tally))

    def counters_for(self, company: str | Company) -> GrantCounters:
        """A consistent snapshot of one company's counters (all zero for a
        company the emulator has not seen).

        Args:
            company: A company id or ``urn:pleo:company:<uuid>``.

        Raises:
            ConfigurationError: (a ValueError) ``company`` is not a company id
                or URN.
        """
        urn = company_urn(company)
        with self._lock:
            tally = self._company_tallies.get(urn)
            return GrantCounters() if tally is None else GrantCounters(**dataclasses.asdict(tally))

    def reset_counters(self) -> None:
        """Set every counter, every company's too, back to zero. Grants and
        faults are untouched."""
        with self._lock:
            self._tally = _Tally()
            self._company_tallies = {}

    @property
    def token_capacity(self) -> TokenCapacity | None:
        """The token endpoint's capacity, or None for none."""
        with self._lock:
            return self._capacity

    @property
    def held_token_requests(self) -> int:
        """How many token requests a ``mode="delay"`` capacity holds back right now."""
        return self._admission.held

    def wait_for_held_token_requests(self, count: int = 1, timeout: float = 10.0) -> bool:
        """Block until a ``mode="delay"`` capacity holds back at least ``count``
        token requests, so a test knows a request is waiting before it moves the
        clock or frees a slot.

        Returns:
            True, or False if ``timeout`` real seconds passed first.
        """
        return self._admission.wait_for_held(count, timeout)

    def set_token_capacity(self, capacity: TokenCapacity | None) -> None:
        """Change the token endpoint's capacity for requests that arrive from now on.

        Args:
            capacity: The new capacity, or None to take any number of requests.

        Raises:
            ValueError: ``capacity`` is not a :class:`TokenCapacity` or None.
        """
        checked = _check_capacity(capacity)
        with self._lock:
            self._capacity = checked

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
