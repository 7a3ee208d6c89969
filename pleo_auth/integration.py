"""``Integration``: one OAuth client, one grant per Pleo company.

A technology partner's integration holds a grant per customer company (Pleo's
installations are per company), from tens to thousands of them, behind one
OAuth client. An :class:`Integration` serves them all from one process-wide
scheduler and one bounded refresh pool, with a cheap :class:`~pleo_auth.PleoSession`
per company.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
import weakref
from collections.abc import Callable, Hashable
from types import TracebackType
from typing import Any

import attrs
import requests
import requests.adapters

from ._clock import SYSTEM_CLOCK, Clock
from ._coordinator import Coordinator
from ._endpoint import TokenEndpoint
from ._gate import RefreshGate
from ._registry import REGISTRY
from ._schedule import RefreshSchedule
from ._scheduler import scheduler_for
from ._urls import ApiScope
from ._warmup import warm_up
from .company import Company
from .errors import (
    ConfigurationError,
    PleoAuthError,
    ReauthenticationRequired,
    RevocationError,
)
from .events import Subscriber
from .login_hint import LoginHint
from .ratelimit import RateLimit, limiter_for
from .session import PleoSession, track_pools
from .settings import ClientAuth, Environment, Settings, default, settings_from_arguments
from .stores.base import TokenStore, save_login
from .stores.family import TokenStoreFamily
from .stores.family_spec import family_spec_of
from .tokens import TokenSet

logger = logging.getLogger("pleo_auth")

__all__ = ["GrantStatus", "Integration"]

#: Refresh a grant nobody used at least this often: Pleo lets a refresh token
#: that is never spent die after 60 days at the earliest.
DEFAULT_KEEP_ALIVE = 7 * 86_400.0

#: The keep-alive sweep lists the family at least this often, to take up grants
#: that other processes added; and never more often than _MIN_SWEEP.
_SWEEPS_PER_KEEP_ALIVE = 8
_MIN_SWEEP = 1.0

_POOL_SIZE = 64

#: How long remove() waits for, and may hold, a company's refresh lock: as a login.
_REMOVE_TIMEOUT = 60.0


@attrs.frozen
class GrantStatus:
    """What the store holds of one company's grant, read without refreshing.

    Attributes:
        company: The company.
        needs_login: No grant is stored: a person must log in for this company.
        expires_at: When the stored access token expires (epoch seconds), or None.
        refreshed_at: When the stored pair was issued (epoch seconds), if known.
        scope: The scopes the grant carries, as Pleo sent them.
    """

    company: Company
    needs_login: bool
    expires_at: float | None = None
    refreshed_at: float | None = None
    scope: str | None = None


@attrs.define
class _Grant:
    """The integration's hold on one company's coordinator."""

    key: Hashable
    coordinator: Coordinator
    handle: int
    pinned: bool = False  # a session was made: kept until remove() or close()
    borrowers: int = 0  # keep-alives under way


class Integration:
    """One Pleo OAuth client holding a grant per company.

    ::

        pleo = Integration(client_id, client_secret, store=FileStore.family("/var/lib/app/pleo"))
        for company in pleo.companies():
            employees = pleo.session(company).get("/v2/employees").json()

    * ``store`` is a :class:`~pleo_auth.TokenStoreFamily`: :meth:`MemoryStore.family()
      <pleo_auth.MemoryStore.family>`, :meth:`FileStore.family(directory)
      <pleo_auth.FileStore.family>`, :meth:`RedisStore.family(url)
      <pleo_auth.RedisStore.family>` or :meth:`KeyringStore.family(service)
      <pleo_auth.KeyringStore.family>`.
    * :meth:`session` is cheap (no thread, no I/O, no socket until its first
      request), and every session of a company shares one coordinator, so a web app
      may call it per request.
    * Every grant of every integration in the process is refreshed by one scheduler
      thread and at most two workers. At most ``max_concurrent_refreshes`` token
      requests of this integration are in flight at once; a request that needs a
      refresh waits its turn, ahead of any proactive refresh.
    * A grant a request used within its last access-token lifetime is refreshed ahead
      of expiry; any other is refreshed when next used. Every grant is refreshed at
      least every ``keep_alive`` seconds, so its refresh token never dies of disuse.
    * Processes and hosts coordinate through the family's stores, exactly as
      :class:`~pleo_auth.PleoSession` does: each company's grant has its own lock.

    Args:
        client_id: The OAuth client id of your Pleo integration.
        client_secret: Its secret; None for a public (PKCE-only) client.
        store: The family of token stores, one per company.
        environment: As for :class:`~pleo_auth.PleoSession`, for every company's
            grant; so are ``token_url``, ``api_url``, ``refresh_margin``,
            ``client_auth``, ``max_refresh_attempts``, ``max_refresh_time``,
            ``refresh_timeout`` and ``drain_timeout``.
        max_concurrent_refreshes: Token requests in flight at once, at most.
        on_reauthentication_required: Called once per dead grant, with its
            :class:`~pleo_auth.Company`, on whichever thread found out.
        keep_alive: Seconds after which an unused grant is refreshed anyway.
        on_event: Called with every grant's :mod:`pleo_auth.events`, on the events'
            dispatcher thread, never holding up a refresh.
        settings: A :class:`~pleo_auth.Settings` instead of the arguments above.
        clock: Time source, for tests (see :class:`pleo_auth.testing.FakeClock`).
        rate_limit: Hold API requests to Pleo's rate limit, in requests a minute or a
            :class:`~pleo_auth.RateLimit`, shared by every company's sessions (or per
            company, with ``scope="company"``) and every process of the client; None
            (the default) for no limit. See :mod:`pleo_auth.ratelimit`.

    Raises:
        ConfigurationError: An argument is invalid.

    Thread safety:
        Every method may be called from any thread.
    """

    def __init__(
        self,
        client_id: str | None = None,
        client_secret: str | None = None,
        *,
        store: TokenStoreFamily,
        environment: Environment = default("production"),  # noqa: B008
        token_url: str | None = None,
        api_url: str | None = None,
        refresh_margin: float = default(60.0),
        max_concurrent_refreshes: int = 4,
        on_reauthentication_required: Callable[[Company], object] | None = None,
        keep_alive: float = DEFAULT_KEEP_ALIVE,
        client_auth: ClientAuth = default("basic"),  # noqa: B008
        max_refresh_attempts: int = default(5),
        max_refresh_time: float = default(30.0),
        refresh_timeout: float = default(10.0),
        drain_timeout: float = default(5.0),
        settings: Settings | None = None,
        clock: Clock | None = None,
        on_event: Subscriber | None = None,
        rate_limit: RateLimit | float | None = None,
    ):
        settings = settings_from_arguments(
            settings,
            client_id=client_id,
            client_secret=client_secret or None,
            environment=environment,
            token_url=token_url,
            api_url=api_url,
            refresh_margin=refresh_margin,
            client_auth=client_auth,
            max_refresh_attempts=max_refresh_attempts,
            max_refresh_time=max_refresh_time,
            refresh_timeout=refresh_timeout,
            drain_timeout=drain_timeout,
        )
        if not isinstance(store, TokenStoreFamily):
            raise ConfigurationError(
                "store must be a family of token stores, one per company, such as "
                "FileStore.family(directory) or RedisStore.family(url), not "
                f"{type(store).__name__}; for a single grant, use PleoSession"
            )
        if on_reauthentication_required is not None and not callable(on_reauthentication_required):
            raise ConfigurationError("on_reauthentication_required must be callable")
        if on_event is not None and not callable(on_event):
            raise ConfigurationError("on_event must be callable")
        self._on_event = on_event
        self._rate_limit = None if rate_limit is None else RateLimit.of(rate_limit)
        if (
            isinstance(keep_alive, bool)
            or not isinstance(keep_alive, int | float)
            or not math.isfinite(keep_alive)
            or keep_alive <= 0
        ):
            raise ConfigurationError(
                f"keep_alive must be a positive number of seconds, not {keep_alive!r}"
            )
        #: The settings every company's grant uses.
        self.settings = settings
        self.client_id = settings.require_client_id()
        self.environment = settings.environment
        self._urls = settings.endpoints
        self.token_url = self._urls.token_url
        self.api_url = self._urls.api_url
        self.store = store
        self.keep_alive = float(keep_alive)
        self.max_concurrent_refreshes = max_concurrent_refreshes
        self._callback = on_reauthentication_required
        self._clock = clock or SYSTEM_CLOCK
        self._gate = RefreshGate(max_concurrent_refreshes, clock=self._clock)
        warm_up()  # here, not on a worker: see pleo_auth._warmup
        # The connection pool every company's sessions share, and the network
        # settings (verify, proxies, trust_env) the token requests take.
        self._template = requests.Session()
        for prefix in ("https://", "http://"):
            self._template.mount(prefix, requests.adapters.HTTPAdapter(pool_maxsize=_POOL_SIZE))
        self._endpoint = TokenEndpoint.for_settings(settings, clock=self._clock)
        self._endpoint.on_throttled = self._gate.throttled
        self._endpoint.serve(self._template)
        track_pools(self._template)
        self._schedule = RefreshSchedule.for_margin(settings.refresh_margin)
        self._api_scope = ApiScope(self.api_url)
        self._lock = threading.Lock()
        self._grants: dict[Company, _Grant] = {}
        self._removing: dict[Company, int] = {}  # remove() calls under way
        self._closed = False
        self._sweeper = _KeepAlive(self)
        self._sweep = scheduler_for(self._clock).register(self._sweeper)
        self._sweep.wake()
        _LIVE.add(self)
        # Dropped without close(), it lets go of its grants, as a session does.
        weakref.finalize(self, _release_grants, self.__dict__).atexit = False

    # -- grants ---------------------------------------------------------------------------

    def session(self, company: Company | str) -> PleoSession:
        """A :class:`~pleo_auth.PleoSession` over ``company``'s grant.

        Cheap: no thread, no I/O, no socket until its first request. Sessions of
        one company share one coordinator; closing one leaves the others, and the
        integration's connection pool, open.

        Raises:
            ConfigurationError: ``company`` is not a company id or URN, or the
                integration is closed.
        """
        company = Company(company)
        grant = self._grants.get(company)
        if grant is None or not grant.pinned:
            grant = self._hold(company, pin=True)
        session = PleoSession._over(
            self._template, self.settings, self._urls, self._api_scope, grant.coordinator, company
        )
        if self._rate_limit is not None:  # see pleo_auth.ratelimit
            session._limiter = limiter_for(
                self._rate_limit, grant.coordinator.store, self.client_id, self.api_url, company
            )
        return session

    def add(self, company: Company | str, tokens: TokenSet) -> None:
        """Store ``tokens`` as ``company``'s grant, as after a login.

        They replace whatever grant the company had; no other company's grant is
        touched. Sessions of the company take them up at their next request.

        Raises:
            ConfigurationError: ``company`` or ``tokens`` is invalid.
            TokenStoreError: The store failed, or could not be read for now (then
                nothing is saved: see :func:`~pleo_auth.stores.base.save_login`).
        """
        self._add(company, tokens)

    def _add(self, company: Company | str, tokens: TokenSet, *, fresh: bool = False) -> None:
        company = Company(company)
        if not isinstance(tokens, TokenSet):
            raise ConfigurationError("tokens must be a TokenSet (see TokenSet.from_response)")
        self._check_open()
        # Through the store this process's sessions of the company use, if any: a
        # store that caches its version (Redis) then shows them the login at once.
        grant = self._grants.get(company)
        store = grant.coordinator.store if grant else self.store.store(company)
        save_login(store, tokens, fresh=fresh)

    def companies(self) -> list[Company]:
        """The companies with a stored grant, sorted.

        Raises:
            TokenStoreError: The family could not be read.
        """
        return self.store.companies()

    def status(self, company: Company | str) -> GrantStatus:
        """What is stored for ``company``, read without refreshing or locking.

        Raises:
            ConfigurationError: ``company`` is not a company id or URN.
            TokenStoreError: The store could not be read.
        """
        company = Company(company)
        tokens = self.store.store(company).load()
        if tokens is None:
            return GrantStatus(company=company, needs_login=True)
        return GrantStatus(
            company=company,
            needs_login=False,
            expires_at=tokens.expires_at,
            refreshed_at=tokens.issued_at,
            scope=tokens.scope,
        )

    def remove(self, company: Company | str, *, revoke: bool = False) -> None:
        """Forget ``company``'s grant; other companies keep theirs.

        Args:
            revoke: Also end the installation at Pleo (``DELETE
                /v1/installations/me``, which revokes all its tokens) first. Without
                it the grant stays valid at Pleo until it expires.

        Raises:
            ConfigurationError: ``company`` is not a company id or URN.
            RevocationError: Pleo did not confirm the revocation; the grant is kept.
            TokenStoreError: The store failed.
        """
        company = Company(company)
        with self._lock:
            self._removing[company] = self._removing.get(company, 0) + 1
        try:
            if revoke:
                self._revoke(company)
            grant = self._release(company)
            try:
                # Under the company's refresh lock: a refresh under way (here or in
                # another process) saves its pair first, and is then removed with it,
                # instead of saving (or writing back) the pair over the removal.
                store = self.store.store(company)
                with store.lock(timeout=_REMOVE_TIMEOUT, lease=_REMOVE_TIMEOUT):
                    self.store.remove(company)
                    # A pair a failed save left in memory must not bring the grant back.
                    coordinator = REGISTRY.get((store.key, self.token_url, self.client_id))
                    if coordinator is not None:
                        coordinator.abandon_unsaved()
            finally:
                # Even when the store failed: the integration no longer knows the
                # grant, so nothing else would ever detach (and stop) it.
                if grant is not None:
                    REGISTRY.detach(grant.key, grant.coordinator, grant.handle)
        finally:
            with self._lock:
                self._removing[company] -= 1
                if not self._removing[company]:
                    del self._removing[company]

    def _revoke(self, company: Company) -> None:
        session = self.session(company)
        try:
            response = session.delete("/v1/installations/me")
        except ReauthenticationRequired:
            return  # no live grant: nothing left to end at Pleo
        except (requests.RequestException, PleoAuthError) as exc:
            raise RevocationError(
                f"could not reach Pleo to end the installation of {company}: "
                f"{type(exc).__name__}; the grant is kept"
            ) from exc
        finally:
            session.close()
        if response.status_code not in (200, 202, 204, 404):
            raise RevocationError(
                f"Pleo answered {response.status_code} to ending the installation of "
                f"{company}; the grant is kept"
            )

    def close(self) -> None:
        """Stop refreshing; a refresh under way finishes and saves. Sessions made by
        this integration must not be used afterwards."""
        with self._lock:
            self._closed = True
            grants, self._grants = self._grants, {}
        self._sweep.close()
        for grant in grants.values():
            REGISTRY.detach(grant.key, grant.coordinator, grant.handle)
        self._endpoint.forget(self._template)
        self._endpoint.close()
        self._template.close()

    def __enter__(self) -> Integration:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<Integration client_id={self.client_id!r} {self.settings.target()} "
            f"store={self.store!r}>"
        )

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("Integration cannot be pickled: build one in each process")

    # -- the coordinators -----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ConfigurationError("this Integration is closed")

    def _hold(self, company: Company, *, pin: bool = False, borrow: bool = False) -> _Grant:
        """The company's grant, attached to its coordinator if it was not."""
        store = self.store.build_store(company)  # company is checked: a Company
        key = (store.key, self.token_url, self.client_id)
        with self._lock:
            self._check_open()
            grant = self._grants.get(company)
        if grant is None:
            build = functools.partial(self._coordinator, store, company)
            coordinator, handle = REGISTRY.attach(key, build, self._callback_for(company))
            if self._on_event is not None:
                coordinator.observers.add(handle, self._on_event)
            with self._lock:
                grant = self._grants.get(company)
                if grant is None and not self._closed:
                    grant = self._grants[company] = _Grant(key, coordinator, handle)
                    coordinator = None  # type: ignore[assignment]
            if coordinator is not None:  # another thread was first, or we closed
                REGISTRY.detach(key, coordinator, handle)
                self._check_open()
            assert grant is not None
        with self._lock:
            grant.pinned |= pin
            grant.borrowers += borrow
        return grant

    def _release(self, company: Company, *, borrowed: bool = False) -> _Grant | None:
        """Let go of the company's grant: all of it, or one keep-alive's borrow.
        Returns the grant to detach, if this was the last hold on it."""
        with self._lock:
            grant = self._grants.get(company)
            if grant is None:
                return None
            if borrowed:
                grant.borrowers -= 1
                if grant.pinned or grant.borrowers:
                    return None
            del self._grants[company]
            return grant

    def _callback_for(self, company: Company) -> Callable[[], object] | None:
        if self._callback is None:
            return None
        # Weakly: the registry keeps the callback, and must not keep the integration.
        return functools.partial(_tell, weakref.ref(self), self._callback, company)

    def _reauthentication_required(self, company: Company) -> None:
        """Tell the app that ``company`` needs a login, unless it is being removed:
        nobody should be asked to log in again a company the app disconnects."""
        with self._lock:
            removing = company in self._removing
        if not removing and self._callback is not None:
            self._callback(company)

    def _coordinator(self, store: TokenStore, company: Company) -> Coordinator:
        return Coordinator(
            store,
            self._endpoint,
            schedule=self._schedule,
            clock=self._clock,
            drain_timeout=self.settings.drain_timeout,
            # Built when first needed; over the settings and the family, never the
            # integration, which the registry's coordinator must not keep alive.
            login_hint=functools.partial(_login_hint, self.settings, self.store, store, company),
            policy="when-used",
            gate=self._gate,
            owns_endpoint=False,
            company=company.id,
        )

    def _keep_alive(self, company: Company, basis: TokenSet) -> None:
        """Refresh ``company``'s unused grant (see :class:`_KeepAlive`)."""
        try:
            grant = self._hold(company, borrow=True)
        except ConfigurationError:
            return  # closed meanwhile
        try:
            failure = grant.coordinator.keep_alive(basis)
            if failure is not None:
                logger.warning("keep-alive refresh for %s failed: %s", company, failure)
        finally:
            done = self._release(company, borrowed=True)
            if done is not None:
                REGISTRY.detach(done.key, done.coordinator, done.handle)


def _login_hint(
    settings: Settings, family: TokenStoreFamily, store: TokenStore, company: Company
) -> LoginHint:
    """A login for ``company`` through the family (``--store family:...
    --company``): never a one-grant login into the company's own store, which
    would save whichever company the person picks at Pleo as this one."""
    return attrs.evolve(
        settings.login_hint(store),
        store=family_spec_of(family),
        where=f"{family.describe()}, as {company}'s grant",
        company=company.id,
    )


class _KeepAlive:
    """The integration's keep-alive sweep, a scheduled item of its own: it reads
    every stored grant and refreshes those not refreshed for ``keep_alive``
    seconds, then sleeps until the next one is due (but lists the family again
    within ``keep_alive / 8``, to take up grants other processes added)."""

    def __init__(self, integration: Integration):
        self._integration = weakref.ref(integration)

    def tick(self) -> float | None:
        integration = self._integration()
        if integration is None or integration._closed:
            return None
        clock = integration._clock
        keep_alive = integration.keep_alive
        now = clock.time()
        upcoming = now + max(_MIN_SWEEP, keep_alive / _SWEEPS_PER_KEEP_ALIVE)
        try:
            companies = integration.companies()
        except PleoAuthError as exc:
            logger.warning("keep-alive: cannot list %s: %s", integration.store.describe(), exc)
            return upcoming
        for company in companies:
            if integration._closed:
                return None
            try:
                tokens = integration.store.store(company).load()
            except PleoAuthError as exc:
                logger.warning("keep-alive: cannot read %s's grant: %s", company, exc)
                continue
            if tokens is None:
                continue
            due = (tokens.issued_at if tokens.issued_at is not None else -math.inf) + keep_alive
            if due <= clock.time():
                integration._keep_alive(company, tokens)
            else:
                upcoming = min(upcoming, due)
        return max(upcoming, clock.time() + _MIN_SWEEP)


def _tell(
    integration: weakref.ref[Integration], callback: Callable[[Company], object], company: Company
) -> None:
    """``on_reauthentication_required`` for ``company``, through its integration."""
    live = integration()
    if live is not None:
        live._reauthentication_required(company)
    else:
        callback(company)


def _release_grants(state: dict[str, Any]) -> None:
    """The finaliser of an integration collected without close(): its grants are
    let go at the registry's next safe point, as a collected session's are (a
    finaliser may run inside any allocation, even one holding the registry's lock)."""
    for grant in list(state["_grants"].values()):
        REGISTRY.release_later(grant.key, grant.coordinator, grant.handle)


_LIVE: weakref.WeakSet[Integration] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for integration in list(_LIVE):
        integration._lock = threading.Lock()
        integration._gate._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
