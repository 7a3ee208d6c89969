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
from typing import Any

import attrs

from ..errors import ConfigurationError
from ..flow import AuthorizationFlow, check_redirect_uri
from ..session import PleoSession
from ..settings import Settings
from ..stores.base import TokenStore

__all__: list[str] = []

#: Session keys of the pending login and of where to go after it.
PENDING_KEY = "pleo_auth.pending"
NEXT_KEY = "pleo_auth.next"

#: The settings only a web app has; the rest are :class:`~pleo_auth.Settings`'.
_WEB_KEYS = ("REDIRECT_URI", "AFTER_CONNECT")


@attrs.frozen(repr=False)
class _WebSettings:
    """One app's Pleo settings, with its store built once.

    Thread safety:
        Immutable; the store it holds is shared by every request.
    """

    settings: Settings
    store: TokenStore
    redirect_uri: str | None = None
    after_connect: str = "/"

    @classmethod
    def from_mapping(
        cls, values: Mapping[str, Any], *, where: str, prefix: str = ""
    ) -> _WebSettings:
        """Read settings named without prefix (``CLIENT_ID``, ``STORE``, ...).

        Everything but ``REDIRECT_URI`` and ``AFTER_CONNECT`` is read by
        :meth:`pleo_auth.Settings.from_mapping`, and the store is built here, once,
        so a mistyped ``STORE`` is found when the app starts.

        Raises:
            ConfigurationError: A setting is missing or invalid; the message
                says where (``where``) it should be.
        """
        settings = Settings.from_mapping(
            {key: value for key, value in values.items() if key not in _WEB_KEYS},
            where=where,
            prefix=prefix,
        )
        web = {key: values.get(key) or None for key in _WEB_KEYS}
        for key, value in web.items():
            if value is not None and not isinstance(value, str):
                raise ConfigurationError(f"{where}: {prefix}{key} must be a string")
        if web["REDIRECT_URI"] is not None:
            # At start-up, as STORE is: not at the first connect, as a 500.
            try:
                check_redirect_uri(web["REDIRECT_URI"])
            except ConfigurationError as exc:
                reason = str(exc).removeprefix("redirect_uri ")
                raise ConfigurationError(f"{where}: {prefix}REDIRECT_URI {reason}") from None
        return cls(
            settings=settings,
            store=settings.build_store(),
            redirect_uri=web["REDIRECT_URI"],
            after_connect=web["AFTER_CONNECT"] or "/",
        )

    def session(self, connect_view: str | None = None) -> PleoSession:
        """A new :class:`~pleo_auth.PleoSession` over the app's store; a dead grant
        tells to log in at ``connect_view``."""
        hint = self.settings.login_hint(self.store, view=connect_view) if connect_view else None
        return PleoSession(settings=self.settings, store=self.store, login_hint=hint)

    def flow(self, redirect_uri: str) -> AuthorizationFlow:
        """An :class:`~pleo_auth.flow.AuthorizationFlow` that saves to the app's store."""
        return AuthorizationFlow(
            settings=self.settings,
            redirect_uri=self.redirect_uri or redirect_uri,
            store=self.store,
        )

    def __repr__(self) -> str:
        return (
            f"<_WebSettings client_id={self.settings.client_id!r} {self.settings.target()} "
            f"store={self.store!r}>"
        )


class _Lazy:
    """Builds settings and one shared :class:`~pleo_auth.PleoSession` on first use.

    Thread safety:
        :meth:`settings` and :meth:`session` may be called from any thread;
        the first caller builds, the others wait and get the same objects.
    """

    def __init__(
        self,
        read: Callable[[], _WebSettings],
        connect_view: Callable[[], str | None] | None = None,
    ):
        self._read = read
        #: The path of the app's connect view, named in a dead grant's login hint.
        self._connect_view = connect_view or (lambda: None)
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
                    self._session = settings.session(self._connect_view())
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
