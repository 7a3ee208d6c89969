"""``PleoSession``: a drop-in ``requests.Session`` that keeps Pleo tokens fresh."""

from __future__ import annotations

import collections
import functools
import logging
import os
import urllib.parse
import weakref
from collections.abc import Callable, Mapping, MutableMapping
from types import MappingProxyType
from typing import Any

import requests
import requests.adapters
import requests.cookies
import requests.hooks
import requests.structures
from requests.auth import AuthBase

from ._bodies import replayable as _replayable
from ._clock import SYSTEM_CLOCK, Clock
from ._coordinator import Coordinator
from ._endpoint import TokenEndpoint
from ._registry import REGISTRY
from ._schedule import RefreshSchedule
from ._urls import ApiScope
from ._warmup import warm_up
from .company import Company
from .errors import ConfigurationError
from .events import Replayed401, Subscriber
from .login_hint import LoginHint
from .ratelimit import Limiter, RateLimit, limiter_for
from .settings import (
    ENDPOINTS,
    ClientAuth,
    Endpoints,
    Environment,
    Settings,
    default,
    settings_from_arguments,
)
from .stores.base import TokenStore, require_refresh_lock
from .tokens import TokenSet

logger = logging.getLogger(__name__)

__all__ = ["ENVIRONMENTS", "PleoSession"]


#: Token endpoint and API base URL of each Pleo environment, as 0.1 had them:
#: derived from :data:`pleo_auth.settings.ENDPOINTS`, the one table.
ENVIRONMENTS: Mapping[str, tuple[str, str]] = MappingProxyType(
    {env: (urls.token_url, urls.api_url) for env, urls in ENDPOINTS.items()}
)


_POOL_SIZE = 64


class _NotAttached:
    """The registry handle of a session an Integration made: its coordinator
    belongs to the integration, which detaches it."""

    def detach(self) -> None:
        return None


_NOT_ATTACHED = _NotAttached()


class _Bearer(AuthBase):
    """Sets the Authorization header on one request, if it is under ``api_url``.

    The check runs here, on the prepared request, so that it sees the URL
    exactly as it will be sent: after urllib3 removed dot-segments and requests
    decoded ``%2e``. One instance per call, so ``sent`` is per-call state. Its
    repr hides the token.
    """

    __slots__ = ("_scope", "header", "sent")

    def __init__(self, token: str, scope: ApiScope):
        self.header = f"Bearer {token}"
        self._scope = scope
        #: Whether the token went on the request; a 401 means nothing otherwise.
        self.sent = False

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        if self._scope.covers(request.url):
            request.headers["Authorization"] = self.header
            self.sent = True
        return request

    def __repr__(self) -> str:
        return "<Bearer auth>"


def _copy_headers(headers: MutableMapping[str, str | bytes]) -> MutableMapping[str, str | bytes]:
    """A copy of a session's headers: requests' own dict, copied by its store when it
    is one (a sixth of the time of building it anew, and Integration.session makes one
    per call)."""
    store = getattr(headers, "_store", None)
    if type(headers) is not requests.structures.CaseInsensitiveDict or not isinstance(
        store, collections.OrderedDict
    ):
        return requests.structures.CaseInsensitiveDict(headers)
    copy: requests.structures.CaseInsensitiveDict[str | bytes] = (
        requests.structures.CaseInsensitiveDict.__new__(requests.structures.CaseInsensitiveDict)
    )
    copy._store = store.copy()  # type: ignore[attr-defined]
    return copy


class PleoSession(requests.Session):
    #: The company whose grant an :class:`~pleo_auth.Integration`'s session uses;
    #: None for a session of its own.
    company: Company | None = None
    _shared_adapters: tuple[requests.adapters.BaseAdapter, ...] = ()
    _limiter: Limiter | None = None

    """A :class:`requests.Session` that authenticates to Pleo's API and never loses the grant.

    Use it wherever a ``requests.Session`` goes::

        with PleoSession(client_id, client_secret, store=FileStore("~/.pleo/tokens.json")) as s:
            employees = s.get("/v2/employees").json()

    * Relative URLs are resolved against ``api_url``. The bearer token is attached
      only to URLs under ``api_url``: never to another host, and never across a
      redirect that leaves ``api_url``. The URL is judged as it is sent, so a
      path whose dot-segments (``..``, ``%2e%2e``, ``..%2f``, ``..\\`` and the
      like) could lead out of ``api_url`` gets no token.
    * ``token_url`` and ``api_url`` must be ``https://``; plain ``http://`` is
      accepted only for loopback addresses (the emulator).
    * A timer refreshes the tokens ``refresh_margin`` seconds before they expire,
      even while idle; a request that finds them inside the margin refreshes first.
    * Refreshes are serialised: one at a time in this process (a Condition shared
      by every session over the same store) and across processes and hosts (the
      store's lock). Whoever arrives during a refresh waits for its result.
    * A 401 for tokens that were replaced meanwhile is replayed once with the
      current ones; a 401 for the current tokens triggers one refresh and one
      replay, at most once per rotation across all processes: a token that a
      401-forced refresh issued, refused again, is not refreshed before it is due
      (a warning says so). Requests whose body cannot be re-sent (streams, files)
      are not replayed: you get the 401, and the next request carries the new tokens.
    * When the grant is dead (``invalid_grant``), the store is cleared,
      ``on_reauthentication_required`` is called once, and every call raises
      :class:`~pleo_auth.ReauthenticationRequired` until someone logs in again.

    Args:
        client_id: The OAuth client id of your Pleo integration.
        client_secret: Its secret; None for a public (PKCE-only) client.
        store: Where the tokens live. Defaults to ``KeyringStore(account=client_id)``.
        environment: ``"production"`` or ``"staging"``; picks the URLs below.
        token_url: Overrides the environment's token endpoint.
        api_url: Overrides the environment's API base URL.
        refresh_margin: Seconds before expiry to refresh (at most half the token's life).
        tokens: Tokens to seed an empty store with. A store that holds tokens keeps
            them, unless they are an ancestor of these (:attr:`TokenSet.lineage`):
            they may be a rotated descendant of these, so passing your first login's
            reply at every start is safe. To replace a grant, save the new login with
            :class:`~pleo_auth.AuthorizationFlow`, or log out first.
        on_reauthentication_required: Called once, with no arguments, when the
            grant dies. It runs on whichever thread found out; keep it short.
        client_auth: ``"basic"`` (HTTP Basic, Pleo's documented method) or ``"body"``
            (client id and secret in the form body).
        max_refresh_attempts: Attempts per refresh on transient failures.
        max_refresh_time: Seconds one refresh may spend on retries.
        refresh_timeout: Seconds to wait for the token endpoint per attempt.
        drain_timeout: Seconds a refresh waits for requests already in flight.
        clock: Time source, for tests (see :class:`pleo_auth.testing.FakeClock`).
        on_event: Called with this grant's :mod:`pleo_auth.events` (whichever session
            of the process caused them), on the events' thread, never holding one up.
        rate_limit: Hold API requests to Pleo's rate limit, shared with every session
            of this client, in requests a minute (Pleo asks for at most 500), or a
            :class:`~pleo_auth.RateLimit`; None (the default) for no limit. See
            :mod:`pleo_auth.ratelimit`.

    Raises:
        ConfigurationError: An argument is invalid.

    Thread safety:
        Safe to share between threads, like the rest of ``requests.Session`` for
        plain requests (do not change ``headers``, ``adapters`` or ``cookies`` while
        other threads send). Sessions over the same store share their refresh
        state, so a web app may build one per request and still refresh once.
        After ``os.fork()`` the child gets a fresh Condition and timer and new
        connection pools, and keeps coordinating through the store.
    """

    def __init__(
        self,
        client_id: str | None = None,
        client_secret: str | None = None,
        *,
        store: TokenStore | None = None,
        environment: Environment = default("production"),  # noqa: B008
        token_url: str | None = None,
        api_url: str | None = None,
        refresh_margin: float = default(60.0),
        tokens: TokenSet | None = None,
        on_reauthentication_required: Callable[[], object] | None = None,
        client_auth: ClientAuth = default("basic"),  # noqa: B008
        max_refresh_attempts: int = default(5),
        max_refresh_time: float = default(30.0),
        refresh_timeout: float = default(10.0),
        drain_timeout: float = default(5.0),
        clock: Clock | None = None,
        settings: Settings | None = None,
        login_hint: LoginHint | str | None = None,
        on_event: Subscriber | None = None,
        rate_limit: RateLimit | float | None = None,
    ):
        super().__init__()
        # Meant to be shared by many threads: requests' default pool of 10
        # connections per host would open and throw away one per extra thread.
        for prefix in ("https://", "http://"):
            self.mount(prefix, requests.adapters.HTTPAdapter(pool_maxsize=_POOL_SIZE))
        settings = settings_from_arguments(
            settings,
            client_id=client_id,
            # 0.1 took an empty secret as none; a Settings refuses it.
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
        if tokens is not None and not isinstance(tokens, TokenSet):
            raise ConfigurationError("tokens must be a TokenSet (see TokenSet.from_response)")
        #: The settings this session was built with (see :class:`~pleo_auth.Settings`).
        self.settings = settings
        urls = settings.endpoints
        self.client_id = settings.require_client_id()
        self.environment = settings.environment
        self.token_url = urls.token_url
        self.api_url = urls.api_url
        self._api_prefix = self.api_url + "/"
        self._api_scope = ApiScope(self.api_url)
        # Here, not on the timer thread: a fork (gunicorn --preload) must never catch
        # a thread of ours inside an import. See pleo_auth._warmup.
        warm_up()
        self.store = store if store is not None else settings.build_store()
        require_refresh_lock(self.store)
        hint = login_hint or settings.login_hint(self.store)
        build = functools.partial(_coordinator, settings, self.store, clock or SYSTEM_CLOCK, hint)
        key = (self.store.key, self.token_url, self.client_id)
        self._coordinator, handle = REGISTRY.attach(key, build, on_reauthentication_required)
        if on_event is not None:  # see pleo_auth.events
            self._coordinator.observers.add(handle, on_event)
        # Collected without close(): the finaliser may run inside any allocation, so
        # it only queues the release (see _Registry).
        self._detach: weakref.finalize[Any, PleoSession] | _NotAttached = weakref.finalize(
            self, REGISTRY.release_later, key, self._coordinator, handle
        )
        _LIVE_SESSIONS.add(self)
        # Refreshes take this session's verify, proxies, cert and trust_env (read at
        # each attempt), never its adapters or hooks: see pleo_auth._network.
        self._coordinator.endpoint.serve(self)
        if tokens is not None:
            self._coordinator.seed(tokens)
        self._limiter = limiter_for(rate_limit, self.store, self.client_id, self.api_url)
        self._coordinator.start()

    @classmethod
    def _over(
        cls, template: requests.Session, settings: Settings, urls: Endpoints,
        scope: ApiScope, coordinator: Coordinator, company: Company,
    ) -> PleoSession:  # fmt: skip
        """A session over an :class:`~pleo_auth.Integration`'s grant for ``company``:
        no thread, no I/O, no pool of its own. It shares ``template``'s adapters
        (the integration's connection pool) and the integration's coordinator,
        which outlives it: closing it closes only adapters mounted on it."""
        session = cls.__new__(cls)
        # What requests.Session.__init__ sets, but for the adapters, which are shared.
        session.headers = _copy_headers(template.headers)
        session.auth = None
        session.proxies = {}
        session.hooks = requests.hooks.default_hooks()
        session.params = {}
        session.stream = False
        session.verify = template.verify
        session.cert = template.cert
        session.max_redirects = template.max_redirects
        session.trust_env = template.trust_env
        session.cookies = requests.cookies.RequestsCookieJar()
        session.adapters = collections.OrderedDict(template.adapters)
        session._shared_adapters = tuple(template.adapters.values())
        session.settings = settings
        session.client_id = settings.require_client_id()
        session.environment = settings.environment
        session.token_url = urls.token_url
        session.api_url = urls.api_url
        session._api_prefix = session.api_url + "/"
        session._api_scope = scope
        session.store = coordinator.store
        session.company = company
        session._coordinator = coordinator
        session._detach = _NOT_ATTACHED
        _LIVE_SESSIONS.add(session)
        return session

    # -- public API -----------------------------------------------------------

    @property
    def tokens(self) -> TokenSet | None:
        """The current tokens, or None when there are none (log in first)."""
        return self._coordinator.current()

    def refresh(self) -> TokenSet:
        """Refresh now, coordinated like every other refresh, and return the new tokens.

        If another thread or process rotated the tokens since this session last
        looked, their new tokens are returned and no refresh is sent.

        Raises:
            ReauthenticationRequired: The grant is dead.
            RefreshError: The token endpoint refused or could not be reached.
            TokenStoreError: The store failed.
        """
        return self._coordinator.refresh()

    def close(self) -> None:
        """Close connections and stop this session's share of the refresh timer."""
        released = self._detach.detach()  # None once released: close() twice is fine
        if released is not None:
            _session, _release_later, (key, coordinator, handle), _kwargs = released
            REGISTRY.detach(key, coordinator, handle)
        self._coordinator.endpoint.forget(self)
        if self._shared_adapters:
            for adapter in self.adapters.values():
                if adapter not in self._shared_adapters:
                    adapter.close()
        else:
            super().close()

    def request(
        self,
        method: str | bytes,
        url: str | bytes,
        params: Any = None,
        data: Any = None,
        headers: Any = None,
        cookies: Any = None,
        files: Any = None,
        auth: Any = None,
        timeout: Any = None,
        allow_redirects: bool = True,
        proxies: Any = None,
        hooks: Any = None,
        stream: bool | None = None,
        verify: Any = None,
        cert: Any = None,
        json: Any = None,
    ) -> requests.Response:
        """Send a request, resolving a relative ``url`` against ``api_url``.

        Requests under ``api_url`` carry the Pleo bearer token unless ``auth`` is
        given. See :class:`requests.Session` for the arguments.

        Raises:
            ReauthenticationRequired: There are no live tokens; log in again.
            RefreshError, TokenStoreError: The token had expired and could not be
                refreshed.
        """
        url = self._resolve(url.decode() if isinstance(url, bytes) else url)
        send = super().request
        kwargs: dict[str, Any] = {
            "params": params, "data": data, "headers": headers, "cookies": cookies,
            "files": files, "timeout": timeout, "allow_redirects": allow_redirects,
            "proxies": proxies, "hooks": hooks, "stream": stream, "verify": verify,
            "cert": cert, "json": json,
        }  # fmt: skip
        scope = self._api_scope
        # A cheap first look at the URL as written; _Bearer decides on the URL as sent.
        if auth is not None or not (
            url.startswith(self._api_prefix) or url.startswith(scope.prefix)
        ):
            return send(method, url, auth=auth, **kwargs)
        if self._limiter is not None:  # see pleo_auth.ratelimit
            return self._limiter.send(
                self._send_api, send, method, url, data, files, kwargs, self._coordinator.observers
            )
        return self._send_api(send, method, url, data, files, kwargs)

    def _send_api(
        self, send: Callable[..., requests.Response], method: str | bytes, url: str,
        data: Any, files: Any, kwargs: dict[str, Any],
    ) -> requests.Response:  # fmt: skip
        """Send an API request with the grant's token; replay it once after a 401."""
        scope = self._api_scope
        coordinator = self._coordinator
        tokens = coordinator.acquire()
        bearer = _Bearer(tokens.access_token, scope)
        try:
            response = send(method, url, auth=bearer, **kwargs)
        finally:
            coordinator.release()
        if response.status_code != 401 or not bearer.sent:
            return response
        if response.request.headers.get("Authorization") != bearer.header:
            return response  # a redirect left api_url: the token was not what was refused
        # Recover even when the body cannot be sent again: the caller then gets
        # this 401, and the next request carries what the recovery found.
        try:
            replacement = coordinator.recover_from_unauthorized(tokens)
        except BaseException:
            response.close()
            raise
        if replacement is None or not _replayable(data, files):
            return response
        response.close()
        if coordinator.observers:
            coordinator.observers.emit(Replayed401(company=coordinator.observers.company))
        if self._limiter is not None:  # the replay is an API request of its own
            self._limiter.slot(coordinator.observers)
        tokens = coordinator.acquire()
        try:
            return send(method, url, auth=_Bearer(tokens.access_token, scope), **kwargs)
        finally:
            coordinator.release()

    def rebuild_auth(
        self, prepared_request: requests.PreparedRequest, response: requests.Response
    ) -> None:
        """Strip the bearer token from a redirect that leaves ``api_url``.

        requests already drops ``Authorization`` when a redirect changes host or
        port, or goes from https to http. This goes further: the token follows a
        redirect only while it stays under ``api_url``, so a redirect to another
        path prefix, scheme or port on the same host does not carry it either.
        Both URLs are judged as sent, dot-segments included (see :class:`ApiScope`).
        """
        super().rebuild_auth(prepared_request, response)  # type: ignore[no-untyped-call]
        scope = self._api_scope
        if scope.covers(response.request.url) and not scope.covers(prepared_request.url):
            prepared_request.headers.pop("Authorization", None)

    def _resolve(self, url: str) -> str:
        if "://" in url[:12]:
            return url
        if urllib.parse.urlsplit(url).scheme:
            raise ConfigurationError(f"unsupported URL {url!r}")
        return self._api_prefix + url.lstrip("/")

    def __repr__(self) -> str:
        return (
            f"<PleoSession client_id={self.client_id!r} {self.settings.target()} "
            f"store={self.store!r}>"
        )

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("PleoSession cannot be pickled: build one in each process")


_LIVE_SESSIONS: weakref.WeakSet[requests.Session] = weakref.WeakSet()


def track_pools(session: requests.Session) -> None:
    """Give ``session`` new connection pools in a forked child, as a PleoSession gets."""
    _LIVE_SESSIONS.add(session)


def _coordinator(
    settings: Settings, store: TokenStore, clock: Clock, login_hint: LoginHint | str
) -> Coordinator:
    """The coordinator sessions over ``store`` share, built by the first of them."""
    return Coordinator(
        store,
        TokenEndpoint.for_settings(settings, clock=clock),
        schedule=RefreshSchedule.for_margin(settings.refresh_margin),
        clock=clock,
        drain_timeout=settings.drain_timeout,
        login_hint=login_hint,
    )


def _reset_pools_after_fork() -> None:
    # A child must not share its parent's keep-alive sockets: two processes
    # writing to one connection would interleave their requests.
    # New pool managers, not clear(): clearing takes a pool lock that a parent
    # thread may have held at the fork, and would hang the child for ever.
    for session in list(_LIVE_SESSIONS):
        for adapter in session.adapters.values():
            if isinstance(adapter, requests.adapters.HTTPAdapter):
                adapter.init_poolmanager(
                    getattr(adapter, "_pool_connections", requests.adapters.DEFAULT_POOLSIZE),
                    getattr(adapter, "_pool_maxsize", requests.adapters.DEFAULT_POOLSIZE),
                    block=getattr(adapter, "_pool_block", requests.adapters.DEFAULT_POOLBLOCK),
                )
                adapter.proxy_manager = {}


os.register_at_fork(after_in_child=_reset_pools_after_fork)
