"""Web framework integrations: :mod:`pleo_auth.contrib.flask` and :mod:`pleo_auth.contrib.django`.

Each gives a web app:

* a *connect* view that sends the person to Pleo, keeping the pending login
  (PKCE verifier and state) in the framework's session;
* a *callback* view that checks the state, exchanges the code and saves the
  tokens to the app's store;
* one shared :class:`~pleo_auth.PleoSession` per app and process, built on first
  use (``get_session()``);
* handling of :class:`~pleo_auth.ReauthenticationRequired` anywhere in a view:
  the person is redirected to the connect view.

The frameworks are optional extras (``pleo-auth[flask]``, ``pleo-auth[django]``):
this package imports neither; each submodule imports its own framework.

Protect the connect and callback views as you protect your admin pages: whoever
completes a login there decides which Pleo account the whole app uses.

This module holds what both integrations share; nothing in it is public API.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any, cast

import attrs

from .._store_spec import DEFAULT_SPEC, store_from_spec
from ..errors import ConfigurationError
from ..flow import AuthorizationFlow, normalize_scopes
from ..session import ENVIRONMENTS, Environment, PleoSession
from ..stores.base import TokenStore

__all__: list[str] = []

#: Session keys of the pending login and of where to go after it.
PENDING_KEY = "pleo_auth.pending"
NEXT_KEY = "pleo_auth.next"

_KNOWN_KEYS = frozenset(
    {
        "CLIENT_ID",
        "CLIENT_SECRET",
        "STORE",
        "ENVIRONMENT",
        "SCOPES",
        "TOKEN_URL",
        "API_URL",
        "AUTHORIZE_URL",
        "REDIRECT_URI",
        "AFTER_CONNECT",
        "SUBJECT",
        "REFRESH_MARGIN",
    }
)


@attrs.frozen(repr=False)
class _WebSettings:
    """One app's Pleo settings, with its store built once.

    Thread safety:
        Immutable; the store it holds is shared by every request.
    """

    client_id: str
    client_secret: str | None
    store: TokenStore
    environment: Environment = "production"
    scopes: str | None = None
    token_url: str | None = None
    api_url: str | None = None
    authorize_url: str | None = None
    redirect_uri: str | None = None
    after_connect: str = "/"
    subject: str | None = None
    refresh_margin: float = 60.0

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, where: str) -> _WebSettings:
        """Read settings named without prefix (``CLIENT_ID``, ``STORE``, ...).

        ``STORE`` is a spec string (``keyring``, ``file:PATH``, ``redis://...``)
        or a :class:`~pleo_auth.TokenStore`. ``SCOPES`` is a space-separated
        string or a list.

        Raises:
            ConfigurationError: A setting is missing or invalid; the message
                says where (``where``) it should be.
        """
        unknown = sorted(set(values) - _KNOWN_KEYS)
        if unknown:
            raise ConfigurationError(f"{where}: unknown setting(s) {', '.join(unknown)}")
        client_id = values.get("CLIENT_ID")
        if not isinstance(client_id, str) or not client_id:
            raise ConfigurationError(f"{where}: CLIENT_ID is required")
        secret = values.get("CLIENT_SECRET") or None
        if secret is not None and not isinstance(secret, str):
            raise ConfigurationError(f"{where}: CLIENT_SECRET must be a string")
        environment = values.get("ENVIRONMENT") or "production"
        if environment not in ENVIRONMENTS:
            raise ConfigurationError(
                f"{where}: ENVIRONMENT must be one of {sorted(ENVIRONMENTS)}, not {environment!r}"
            )
        store = values.get("STORE") or DEFAULT_SPEC
        if isinstance(store, str):
            store = store_from_spec(store, client_id=client_id)
        elif not isinstance(store, TokenStore):
            raise ConfigurationError(f"{where}: STORE must be a store spec or a TokenStore")
        strings = {}
        for key in ("TOKEN_URL", "API_URL", "AUTHORIZE_URL", "REDIRECT_URI", "SUBJECT"):
            value = values.get(key) or None
            if value is not None and not isinstance(value, str):
                raise ConfigurationError(f"{where}: {key} must be a string")
            strings[key.lower()] = value
        after_connect = values.get("AFTER_CONNECT") or "/"
        if not isinstance(after_connect, str):
            raise ConfigurationError(f"{where}: AFTER_CONNECT must be a string")
        margin = values.get("REFRESH_MARGIN", 60.0)
        if not isinstance(margin, int | float) or margin < 0:
            raise ConfigurationError(f"{where}: REFRESH_MARGIN must be seconds >= 0")
        return cls(
            client_id=client_id,
            client_secret=secret,
            store=store,
            environment=cast(Environment, environment),
            scopes=normalize_scopes(values.get("SCOPES") or None),
            after_connect=after_connect,
            refresh_margin=float(margin),
            **strings,
        )

    def session(self) -> PleoSession:
        """A new :class:`~pleo_auth.PleoSession` over the app's store."""
        return PleoSession(
            self.client_id,
            self.client_secret,
            store=self.store,
            environment=self.environment,
            token_url=self.token_url,
            api_url=self.api_url,
            refresh_margin=self.refresh_margin,
        )

    def flow(self, redirect_uri: str) -> AuthorizationFlow:
        """An :class:`~pleo_auth.flow.AuthorizationFlow` that saves to the app's store."""
        return AuthorizationFlow(
            self.client_id,
            self.client_secret,
            redirect_uri=self.redirect_uri or redirect_uri,
            scopes=self.scopes,
            store=self.store,
            environment=self.environment,
            authorize_url=self.authorize_url,
            token_url=self.token_url,
            subject=self.subject,
        )

    def __repr__(self) -> str:
        return (
            f"<_WebSettings client_id={self.client_id!r} environment={self.environment!r} "
            f"store={self.store!r}>"
        )


class _Lazy:
    """Builds settings and one shared :class:`~pleo_auth.PleoSession` on first use.

    Thread safety:
        :meth:`settings` and :meth:`session` may be called from any thread;
        the first caller builds, the others wait and get the same objects.
    """

    def __init__(self, read: Callable[[], _WebSettings]):
        self._read = read
        self._lock = threading.Lock()
        self._settings: _WebSettings | None = None
        self._session: PleoSession | None = None

    def settings(self) -> _WebSettings:
        settings = self._settings
        if settings is None:
            with self._lock:
                if self._settings is None:
                    self._settings = self._read()
                settings = self._settings
        return settings

    def session(self) -> PleoSession:
        session = self._session
        if session is None:
            settings = self.settings()
            with self._lock:
                if self._session is None:
                    self._session = settings.session()
                session = self._session
        return session

    def reset(self) -> None:
        """Forget the settings and close the shared session; the next use rebuilds."""
        with self._lock:
            session, self._session, self._settings = self._session, None, None
        if session is not None:
            session.close()


def _safe_next(target: object) -> str | None:
    """``target`` if it is a path on this site, else None (no open redirects).

    >>> _safe_next("/reports?month=3"), _safe_next("//evil.example/"), _safe_next("https://x")
    ('/reports?month=3', None, None)
    """
    if not isinstance(target, str) or not target.startswith("/"):
        return None
    if target.startswith(("//", "/\\")) or any(ch in target for ch in "\r\n\t\\"):
        return None
    return target
