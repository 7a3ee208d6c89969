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

**A grant per company.** When ``STORE`` is a store family (``family:file:DIR``,
``family:redis://...``, or a :class:`~pleo_auth.TokenStoreFamily`), or
``INTEGRATION`` is an :class:`~pleo_auth.Integration`, the app keeps a grant per
Pleo company: the callback asks Pleo which company the login is for and saves it
as that company's grant (a second login for a company replaces its grant; no
other company's is touched), and remembers the company in the framework's
session (:data:`COMPANY_KEY`). ``get_session(company)`` is that company's
session, and the connect view's ``?company=`` pre-selects a company and refuses a
login for another.

The frameworks are optional extras (``pleo-auth[flask]``, ``pleo-auth[django]``):
this package imports neither; each submodule imports its own framework.

Protect the connect and callback views as you protect your admin pages: whoever
completes a login there decides which Pleo account the whole app uses.

This module holds what both integrations share; nothing in it is public API.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from ..company import Company
from ..errors import ConfigurationError
from ..flow import AuthorizationFlow, check_redirect_uri
from ..session import PleoSession
from ..settings import Settings
from ..stores.base import TokenStore
from ..stores.family import TokenStoreFamily
from ..stores.family_spec import family_from_spec, is_family_spec

if TYPE_CHECKING:
    from ..integration import Integration

__all__: list[str] = []

#: Session keys of the pending login and of where to go after it.
PENDING_KEY = "pleo_auth.pending"
NEXT_KEY = "pleo_auth.next"
#: Session key of the company the last login was for (its URN), with a grant per company.
COMPANY_KEY = "pleo_auth.company"

#: The settings only a web app has; the rest are :class:`~pleo_auth.Settings`'.
_WEB_KEYS = ("REDIRECT_URI", "AFTER_CONNECT", "INTEGRATION")

#: What may go with INTEGRATION: what a login asks for. The rest is the Integration's.
_LOGIN_KEYS = ("SCOPES", "SUBJECT", "AUTHORIZE_URL")


@attrs.frozen(repr=False)
class _WebSettings:
    """One app's Pleo settings, with its store (or family) built once.

    Attributes:
        store: The store of the app's one grant, or None with a grant per company.
        family: The family the app's own Integration is built over, if any.
        integration: The Integration the app was given (``INTEGRATION``), if any.

    Thread safety:
        Immutable; the store it holds is shared by every request.
    """

    settings: Settings
    store: TokenStore | None
    redirect_uri: str | None = None
    after_connect: str = "/"
    family: TokenStoreFamily | None = None
    integration: Integration | None = None

    @property
    def per_company(self) -> bool:
        """Whether the app keeps a grant per company."""
        return self.store is None

    @classmethod
    def from_mapping(
        cls, values: Mapping[str, Any], *, where: str, prefix: str = ""
    ) -> _WebSettings:
        """Read settings named without prefix (``CLIENT_ID``, ``STORE``, ...).

        Everything but ``REDIRECT_URI``, ``AFTER_CONNECT`` and ``INTEGRATION`` is
        read by :meth:`pleo_auth.Settings.from_mapping`, and the store (or family)
        is built here, once, so a mistyped ``STORE`` is found when the app starts.

        Raises:
            ConfigurationError: A setting is missing or invalid; the message
                says where (``where``) it should be.
        """
        integration = _given_integration(values, where=where, prefix=prefix)
        store = values.get("STORE")
        client_id = values.get("CLIENT_ID")
        family = _family(
            store,
            where=where,
            prefix=prefix,
            client_id=client_id.strip() or None if isinstance(client_id, str) else None,
        )
        if integration is not None:
            settings = integration.settings.evolve(
                **{key.lower(): values[key] for key in _LOGIN_KEYS if values.get(key)}
            )
        else:
            settings = Settings.from_mapping(
                {
                    key: value
                    for key, value in values.items()
                    if key not in _WEB_KEYS and not (family is not None and key == "STORE")
                },
                where=where,
                prefix=prefix,
            )
        if family is not None and settings.encrypt:
            from ..stores.encrypted import encrypt_family

            family = encrypt_family(family, client_id=settings.client_id)
        web = {key: values.get(key) or None for key in _WEB_KEYS if key != "INTEGRATION"}
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
        per_company = integration is not None or family is not None
        return cls(
            settings=settings,
            store=None if per_company else settings.build_store(),
            redirect_uri=web["REDIRECT_URI"],
            after_connect=web["AFTER_CONNECT"] or "/",
            family=family,
            integration=integration,
        )

    def session(self, connect_view: str | None = None) -> PleoSession:
        """A new :class:`~pleo_auth.PleoSession` over the app's store; a dead grant
        tells to log in at ``connect_view``."""
        if self.store is None:
            raise ConfigurationError(
                "this app keeps a grant per Pleo company (its STORE is a store family, "
                "or it has an INTEGRATION): call get_session(company)"
            )
        hint = self.settings.login_hint(self.store, view=connect_view) if connect_view else None
        return PleoSession(settings=self.settings, store=self.store, login_hint=hint)

    def __repr__(self) -> str:
        where = self.store if self.store is not None else (self.family or self.integration)
        return (
            f"<_WebSettings client_id={self.settings.client_id!r} {self.settings.target()} "
            f"store={where!r}>"
        )


def _given_integration(values: Mapping[str, Any], *, where: str, prefix: str) -> Integration | None:
    """The ``INTEGRATION`` setting: an Integration, alone but for the login's keys."""
    given = values.get("INTEGRATION")
    if given is None:
        return None
    from ..integration import Integration

    if not isinstance(given, Integration):
        raise ConfigurationError(
            f"{where}: {prefix}INTEGRATION must be a pleo_auth.Integration, "
            f"not {type(given).__name__}"
        )
    extra = sorted(
        f"{prefix}{key}"
        for key, value in values.items()
        if value not in (None, "") and key not in (*_WEB_KEYS, *_LOGIN_KEYS)
    )
    if extra:
        raise ConfigurationError(
            f"{where}: {prefix}INTEGRATION brings the client, its endpoints and its store: "
            f"drop {', '.join(extra)}"
        )
    return given


def _family(
    store: object, *, where: str, prefix: str, client_id: str | None = None
) -> TokenStoreFamily | None:
    """The family ``STORE`` names, if it names one (a family spec, or a family);
    a database family's rows are keyed by ``client_id``."""
    if isinstance(store, TokenStoreFamily):
        return store
    if not is_family_spec(store):
        return None
    try:
        return family_from_spec(store, client_id=client_id)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{where}: {prefix}STORE: {exc}") from None


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
        self._integration: Integration | None = None  # built here, closed by reset()

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

    def integration(self) -> Integration:
        """The app's :class:`~pleo_auth.Integration`: ``INTEGRATION``, or one built
        on first use over the ``STORE`` family.

        Raises:
            ConfigurationError: The app keeps one grant, not a grant per company.
        """
        settings = self.settings()
        if settings.integration is not None:
            return settings.integration
        if settings.family is None:
            raise ConfigurationError(
                "this app keeps one grant: give it a store family (STORE = family:...) "
                "or an INTEGRATION to keep a grant per company, or call get_session()"
            )
        integration = self._integration
        if integration is None:
            from ..integration import Integration

            with self._lock:
                if self._integration is None:
                    self._integration = Integration(
                        settings=settings.settings, store=settings.family
                    )
                integration = self._integration
        return integration

    def company_session(self, company: Company | str) -> PleoSession:
        """``company``'s session, from the app's Integration (cheap: per request)."""
        return self.integration().session(company)

    def flow(self, redirect_uri: str) -> AuthorizationFlow:
        """An :class:`~pleo_auth.flow.AuthorizationFlow` that saves to the app's
        store, or as the grant of the company each login is for."""
        settings = self.settings()
        return AuthorizationFlow(
            settings=settings.settings,
            redirect_uri=settings.redirect_uri or redirect_uri,
            store=self.integration() if settings.per_company else settings.store,
        )

    def reset(self) -> None:
        """Forget the settings, close the shared session and the Integration built
        here (never one given as ``INTEGRATION``); the next use rebuilds."""
        with self._lock:
            session, self._session, self._settings = self._session, None, None
            integration, self._integration = self._integration, None
        if session is not None:
            session.close()
        if integration is not None:
            integration.close()


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
