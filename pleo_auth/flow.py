"""The authorization code grant with PKCE: how a person logs in to Pleo.

A login takes two requests, often served by two different processes:

1. :meth:`AuthorizationFlow.start` makes a fresh PKCE verifier and ``state`` and
   builds the ``/oauth/authorize`` URL to send the person to. The verifier and
   state stay on your side, in a :class:`PendingAuthorization` that a web app
   keeps in its session (:meth:`PendingAuthorization.to_dict`).
2. Pleo sends the person back to ``redirect_uri`` with ``code`` and ``state``.
   :meth:`AuthorizationFlow.finish` checks the state, exchanges the code and
   saves the new :class:`~pleo_auth.TokenSet` to the store, where every
   :class:`~pleo_auth.PleoSession` over that store picks it up.

Example::

    flow = AuthorizationFlow(client_id, client_secret, redirect_uri=REDIRECT_URI,
                             scopes="users:read", store=FileStore("~/.pleo/tokens.json"))
    pending = flow.start()
    session["pleo"] = pending.to_dict()          # then redirect to pending.url
    ...
    pending = PendingAuthorization.from_dict(session.pop("pleo"))
    tokens = flow.finish(pending, request.url)   # checks state, exchanges, saves

**A grant per company.** Over an :class:`~pleo_auth.Integration` (or a
:class:`~pleo_auth.TokenStoreFamily`), the flow asks Pleo which company the new
grant belongs to and saves it as that company's grant::

    flow = AuthorizationFlow.for_integration(pleo, redirect_uri=REDIRECT_URI, scopes="users:read")
    pending = flow.start()                       # or start(company=...) to pre-select one
    ...
    login = flow.finish_login(pending, request.url)
    login.company                                # the Company whose grant it now is
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import secrets
import urllib.parse
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, cast

import attrs

from ._callback import check_code, code_from_callback
from ._clock import SYSTEM_CLOCK, Clock
from ._endpoint import TokenEndpoint
from ._introspection import company_of
from ._login_target import LoginTarget
from ._urls import parse_http_url
from .company import Company
from .errors import AuthorizationError, ConfigurationError
from .settings import (
    ENDPOINTS,
    ClientAuth,
    Environment,
    Settings,
    default,
    normalize_scopes,
    settings_from_arguments,
)
from .stores.base import TokenStore
from .stores.family import TokenStoreFamily
from .tokens import TokenSet

if TYPE_CHECKING:
    from .integration import Integration

logger = logging.getLogger(__name__)

__all__ = [
    "AUTHORIZE_URLS",
    "AuthorizationFlow",
    "Login",
    "PendingAuthorization",
    "authorize_url_for",
    "check_redirect_uri",
    "normalize_scopes",
]


#: The ``/oauth/authorize`` endpoint of each Pleo environment, as 0.1 had them:
#: derived from :data:`pleo_auth.settings.ENDPOINTS`, the one table.
AUTHORIZE_URLS: Mapping[str, str] = MappingProxyType(
    {env: urls.authorize_url for env, urls in ENDPOINTS.items()}
)

#: The query parameter Pleo reads to pre-select the subject (company) to authorise.
SUBJECT_PARAMETER = "urn_pleo_params_oauth_subject"

_VERIFIER_RE = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
_STATE_RE = re.compile(r"[A-Za-z0-9\-._~]{16,256}")


def authorize_url_for(
    environment: str = "production",
    *,
    authorize_url: str | None = None,
    token_url: str | None = None,
) -> str:
    """The ``/oauth/authorize`` URL to use (see :attr:`pleo_auth.Settings.endpoints`).

    An explicit ``authorize_url`` wins. Otherwise, when only ``token_url`` is
    overridden and ends in ``/oauth/token`` (the emulator, a proxy), the
    authorize endpoint beside it is used, so one override is enough. Otherwise
    the environment's.

    Raises:
        ConfigurationError: An unknown environment, or a URL that is not http(s).

    >>> authorize_url_for("staging")
    'https://auth.staging.pleo.io/oauth/authorize'
    >>> authorize_url_for(token_url="http://127.0.0.1:8080/oauth/token")
    'http://127.0.0.1:8080/oauth/authorize'
    """
    # No client id: these settings only name URLs.
    settings = Settings(
        "",
        environment=cast(Environment, environment),
        authorize_url=authorize_url,
        token_url=token_url,
    )
    return settings.endpoints.authorize_url


def _check_http_url(name: str, url: object) -> urllib.parse.SplitResult:
    """Refuse anything but an absolute http(s) URL with a host, a valid port and no fragment."""
    parts = parse_http_url(name, url)
    if parts.fragment:
        raise ConfigurationError(f"{name} must not have a #fragment")
    return parts


def check_redirect_uri(redirect_uri: object) -> str:
    """Refuse a redirect URI no login could use: anything but an absolute http(s)
    URL with a host, a valid port and no fragment.

    Raises:
        ConfigurationError: Which rule it breaks (the URL itself is not echoed).
    """
    _check_http_url("redirect_uri", redirect_uri)
    assert isinstance(redirect_uri, str)
    return redirect_uri


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@attrs.frozen(repr=False)
class PendingAuthorization:
    """A login that was started and awaits its callback.

    It holds the PKCE verifier, so keep it on the server side (a web
    framework's session) and never put it in a URL. :meth:`to_dict` gives a
    JSON-safe dict for that; :meth:`from_dict` rebuilds it. Its ``repr`` hides
    the verifier.

    Attributes:
        url: The ``/oauth/authorize`` URL to send the person to.
        state: The random value Pleo echoes back, checked by
            :meth:`AuthorizationFlow.finish`.
        code_verifier: The PKCE secret; its S256 hash is in ``url``.
        redirect_uri: Where Pleo sends the person back; the code exchange repeats it.
        scope: The space-separated scopes asked for, if any.
        company: The company this login must be for, if one was named: a login
            for another company is refused, and nothing is saved.

    Thread safety:
        Immutable; share it freely.
    """

    url: str
    state: str
    code_verifier: str
    redirect_uri: str
    scope: str | None = None
    company: Company | None = attrs.field(
        default=None, converter=attrs.converters.optional(Company)
    )

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-safe dict of strings, for a server-side session.

        It holds the PKCE verifier: keep it out of URLs and logs.
        """
        return {
            "url": self.url,
            "state": self.state,
            "code_verifier": self.code_verifier,
            "redirect_uri": self.redirect_uri,
            "scope": self.scope,
            "company": self.company.urn if self.company is not None else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PendingAuthorization:
        """Rebuild a :class:`PendingAuthorization` saved with :meth:`to_dict`.

        Raises:
            AuthorizationError: ``data`` is not a saved pending authorization
                (for example an old or tampered session).
        """
        try:
            values = {
                name: data[name] for name in ("url", "state", "code_verifier", "redirect_uri")
            }
            scope = data.get("scope")
            company = data.get("company")
        except (KeyError, TypeError, AttributeError):
            raise AuthorizationError("not a saved pending authorization") from None
        if not all(isinstance(value, str) for value in values.values()) or not all(
            value is None or isinstance(value, str) for value in (scope, company)
        ):
            raise AuthorizationError("not a saved pending authorization")
        if not _VERIFIER_RE.fullmatch(values["code_verifier"]) or not _STATE_RE.fullmatch(
            values["state"]
        ):
            raise AuthorizationError("not a saved pending authorization")
        try:
            _check_http_url("redirect_uri", values["redirect_uri"])
            return cls(scope=scope, company=company, **values)
        except ConfigurationError:
            raise AuthorizationError("not a saved pending authorization") from None

    def __repr__(self) -> str:
        company = f", company={self.company}" if self.company is not None else ""
        return (
            f"PendingAuthorization(redirect_uri={self.redirect_uri!r}, scope={self.scope!r}"
            f"{company})"
        )


@attrs.frozen(repr=False)
class Login:
    """What :meth:`AuthorizationFlow.finish_login` did: the new tokens, saved, and
    the company whose grant they are.

    Attributes:
        tokens: The new tokens, as :meth:`AuthorizationFlow.finish` returns them.
        company: The company Pleo says the grant belongs to; None for a flow over
            one store that was not asked to check (no ``company`` at start).
        saved_to: Where they were saved, for a message.

    Thread safety:
        Immutable; share it freely.
    """

    tokens: TokenSet
    company: Company | None
    saved_to: str

    def __repr__(self) -> str:
        return f"Login(company={self.company}, tokens={self.tokens.fingerprint})"


class AuthorizationFlow:
    """Logs a person in to Pleo with the authorization code grant and PKCE (S256).

    Args:
        client_id: The OAuth client id of your Pleo integration.
        client_secret: Its secret; None for a public (PKCE-only) client.
        redirect_uri: Where Pleo sends the person back; it must be registered
            with your Pleo integration exactly as written here.
        scopes: The scopes to ask for: ``"users:read export-jobs:read"`` or a list.
        store: Where :meth:`finish` saves the tokens. A
            :class:`~pleo_auth.TokenStore` holds the one grant. Defaults to
            ``KeyringStore(account=client_id)``, like :class:`~pleo_auth.PleoSession`.
            An :class:`~pleo_auth.Integration` (see :meth:`for_integration`) or a
            :class:`~pleo_auth.TokenStoreFamily` holds a grant per company: each
            login asks Pleo which company it is for, and replaces that company's
            grant only.
        environment: ``"production"`` or ``"staging"``; picks the URLs below.
        authorize_url: Overrides the ``/oauth/authorize`` URL (see :func:`authorize_url_for`).
        token_url: Overrides the token endpoint.
        api_url: Overrides the API base URL: recorded with the tokens, and where
            ``GET /v1/introspect`` asks which company a login is for.
        subject: Pleo's optional ``urn_pleo_params_oauth_subject``, to pre-select
            what the person authorises.
        client_auth: ``"basic"`` (HTTP Basic, Pleo's documented method) or ``"body"``.
        timeout: Seconds to wait for the token endpoint per attempt.
        max_attempts: Attempts at the code exchange on transient failures.
        max_time: Seconds the exchange may spend on retries.
        clock: Time source, for tests.

    Raises:
        ConfigurationError: An argument is invalid, or an Integration given as
            ``store`` has another client id or token endpoint.

    Thread safety:
        Safe to share between threads: :meth:`start` and :meth:`finish` keep all
        per-login state in the :class:`PendingAuthorization` they return or
        take, never on the flow. A web app may build one flow per request or
        share one.
    """

    def __init__(
        self,
        client_id: str | None = None,
        client_secret: str | None = None,
        *,
        redirect_uri: str,
        scopes: str | Iterable[str] | None = None,
        store: TokenStore | TokenStoreFamily | Integration | None = None,
        environment: Environment = default("production"),  # noqa: B008
        authorize_url: str | None = None,
        token_url: str | None = None,
        api_url: str | None = None,
        subject: str | None = None,
        client_auth: ClientAuth = default("basic"),  # noqa: B008
        timeout: float = default(10.0),
        max_attempts: int = default(3),
        max_time: float = default(30.0),
        clock: Clock | None = None,
        settings: Settings | None = None,
    ):
        settings = settings_from_arguments(
            settings,
            client_id=client_id,
            client_secret=client_secret,
            environment=environment,
            authorize_url=authorize_url,
            token_url=token_url,
            api_url=api_url,
            scopes=scopes,
            subject=subject,
            client_auth=client_auth,
            refresh_timeout=timeout,
            max_refresh_attempts=max_attempts,
            max_refresh_time=max_time,
        )
        _check_http_url("redirect_uri", redirect_uri)
        #: The settings this flow was built with (see :class:`~pleo_auth.Settings`).
        self.settings = settings
        urls = settings.endpoints
        self.client_id = settings.require_client_id()
        self.redirect_uri = redirect_uri
        self.scope = settings.scopes
        self.environment = settings.environment
        self.token_url = urls.token_url
        self.authorize_url = urls.authorize_url
        self.subject = settings.subject
        self._target = LoginTarget(store, settings)
        #: The Integration whose ``add`` saves each login, if one was given.
        self.integration = self._target.integration
        #: Where logins are saved: a store, or a family with a grant per company.
        self.store = self._target.store
        self._clock = clock or SYSTEM_CLOCK

    @classmethod
    def for_integration(
        cls,
        integration: Integration,
        *,
        redirect_uri: str,
        scopes: str | Iterable[str] | None = None,
        subject: str | None = None,
        authorize_url: str | None = None,
        clock: Clock | None = None,
    ) -> AuthorizationFlow:
        """A flow that logs companies in to ``integration``: its client, its
        endpoints, and :meth:`~pleo_auth.Integration.add` for each new grant.

        Args:
            integration: The integration that keeps the grants.
            redirect_uri, scopes, subject, authorize_url, clock: As for the
                constructor; the integration's settings give the rest.

        Raises:
            ConfigurationError: An argument is invalid.
        """
        changes: dict[str, Any] = {
            name: value
            for name, value in (
                ("scopes", scopes),
                ("subject", subject),
                ("authorize_url", authorize_url),
            )
            if value is not None
        }
        settings = integration.settings.evolve(**changes) if changes else integration.settings
        return cls(settings=settings, redirect_uri=redirect_uri, store=integration, clock=clock)

    def _endpoint(self) -> TokenEndpoint:
        return TokenEndpoint.for_settings(self.settings, clock=self._clock)

    def start(
        self,
        *,
        scopes: str | Iterable[str] | None = None,
        subject: str | None = None,
        company: Company | str | None = None,
    ) -> PendingAuthorization:
        """Begin a login: a fresh verifier and state, and the URL to send the person to.

        Args:
            scopes: Overrides the flow's scopes for this login.
            subject: Overrides the flow's ``urn_pleo_params_oauth_subject``.
            company: The company this login must be for: Pleo is asked to
                pre-select it (as the subject), and :meth:`finish` refuses a login
                for any other company and saves nothing.

        Returns:
            The pending login. Redirect the person to its ``url`` and keep the
            rest (``to_dict()``) until the callback.

        Raises:
            ConfigurationError: ``company`` is not a company id or URN, or
                ``subject`` names another company.
        """
        scope = normalize_scopes(scopes) if scopes is not None else self.scope
        expected = Company(company) if company is not None else None
        if expected is not None:
            if subject is not None and subject != expected.urn and subject != expected.id:
                raise ConfigurationError("give either subject or company, not both")
            subject = expected.urn
        subject = subject if subject is not None else self.subject
        # 64 random bytes make an 86-character verifier of [A-Za-z0-9_-].
        verifier = secrets.token_urlsafe(64)
        state = secrets.token_urlsafe(32)
        params = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": self.redirect_uri,
            "state": state,
            "code_challenge": _s256(verifier),
            "code_challenge_method": "S256",
        }
        if scope:
            params["scope"] = scope
        if subject:
            params[SUBJECT_PARAMETER] = subject
        parts = urllib.parse.urlsplit(self.authorize_url)
        query = urllib.parse.urlencode(params, quote_via=urllib.parse.quote)
        if parts.query:
            query = f"{parts.query}&{query}"
        url = urllib.parse.urlunsplit(parts._replace(query=query))
        logger.debug("starting a login for client %s, scope %r", self.client_id, scope)
        return PendingAuthorization(
            url=url,
            state=state,
            code_verifier=verifier,
            redirect_uri=self.redirect_uri,
            scope=scope,
            company=expected,
        )

    def finish(
        self,
        pending: PendingAuthorization | Mapping[str, Any],
        callback: str | Mapping[str, str] | None = None,
        *,
        code: str | None = None,
    ) -> TokenSet:
        """Complete a login: check the callback, exchange the code, save the tokens.

        Give either the callback (the full URL Pleo redirected to, or its query
        parameters as a mapping, such as Flask's ``request.args``) or, when a
        person pasted only the code, ``code``. The callback's ``state`` must
        match the pending login's.

        Args:
            pending: The pending login from :meth:`start`, or its ``to_dict()``.
            callback: The callback URL or its query parameters.
            code: The authorization code alone, instead of ``callback``.

        Returns:
            The new tokens, already saved to the store (see :meth:`finish_login`
            for the company too).

        Raises:
            AuthorizationError: Pleo reported an error (the person denied
                access, ...), the state did not match, there was no code, or the
                token endpoint refused the code; over a grant per company, Pleo
                did not say which company the login is for, or named another
                company than the pending login's.
            RefreshError: The token endpoint could not be reached (transient
                failures outlasted the retries).
            TokenStoreError: The tokens could not be saved.
        """
        return self.finish_login(pending, callback, code=code).tokens

    def finish_login(
        self,
        pending: PendingAuthorization | Mapping[str, Any],
        callback: str | Mapping[str, str] | None = None,
        *,
        code: str | None = None,
    ) -> Login:
        """:meth:`finish`, telling also which company's grant the login is.

        The company is asked of Pleo after the code exchange (its token
        introspection, else ``GET /v1/introspect``) when the flow keeps a grant per
        company, or the pending login names one. The tokens are saved as that
        company's grant, replacing its previous one and no other company's.
        Nothing is saved when Pleo does not say, names a subject that is not a
        company, or names another company than the pending login's.

        Raises:
            PleoAuthError: As :meth:`finish` raises.
        """
        if not isinstance(pending, PendingAuthorization):
            pending = PendingAuthorization.from_dict(pending)
        if (callback is None) == (code is None):
            raise ConfigurationError("give either the callback or code, not both or neither")
        if callback is not None:
            code = code_from_callback(pending.state, callback)
        elif not isinstance(code, str):
            raise ConfigurationError(f"code must be a string, not {type(code).__name__}")
        check_code(code)
        endpoint = self._endpoint()
        try:
            tokens = self._exchange(endpoint, code, pending)
            company = None
            if pending.company is not None or self._target.per_company:
                company = company_of(
                    tokens, self.settings, endpoint, self._clock, expected=pending.company
                )
        finally:
            endpoint.close()
        # Recorded, so `pleo-auth status` and `refresh` find where the tokens belong.
        issuer = self.settings.endpoints
        saved_to = self._target.save(
            attrs.evolve(tokens, token_url=issuer.token_url, api_url=issuer.api_url), company
        )
        logger.info(
            "logged in%s: tokens %s saved to %s, scope %r",
            f" to {company}" if company is not None else "",
            tokens.fingerprint,
            saved_to,
            tokens.scope,
        )
        return Login(tokens=tokens, company=company, saved_to=saved_to)

    def _exchange(
        self, endpoint: TokenEndpoint, code: str, pending: PendingAuthorization
    ) -> TokenSet:
        try:
            return endpoint.exchange_code(
                code, redirect_uri=pending.redirect_uri, code_verifier=pending.code_verifier
            )
        except AuthorizationError as exc:
            if exc.error != "invalid_client":
                raise
            # The code was never judged: the client itself was refused.
            raise AuthorizationError(
                "Pleo refused the client: the client id is unknown or the client secret is "
                "wrong (invalid_client). Check PLEO_CLIENT_ID and PLEO_CLIENT_SECRET",
                error=exc.error,
                description=exc.description,
            ) from None

    def __repr__(self) -> str:
        return (
            f"<AuthorizationFlow client_id={self.client_id!r} {self.settings.target()} "
            f"redirect_uri={self.redirect_uri!r} store={self.store!r}>"
        )
