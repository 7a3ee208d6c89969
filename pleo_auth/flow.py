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
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
import urllib.parse
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any, cast

import attrs

from ._clock import SYSTEM_CLOCK, Clock
from ._endpoint import TokenEndpoint
from ._text import one_line
from ._urls import parse_http_url
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
from .stores.base import TokenStore, require_refresh_lock, save_login
from .tokens import TokenSet

logger = logging.getLogger(__name__)

__all__ = [
    "AUTHORIZE_URLS",
    "AuthorizationFlow",
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
# RFC 6749 appendix A.11: a code is visible ASCII and spaces.
_CODE_RE = re.compile(r"[\x20-\x7e]+")
_DESCRIPTION_LIMIT = 300
_ERROR_LIMIT = 64
_CALLBACK_PARAMETERS = ("state", "code", "error", "error_description")


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


def _callback_parameters(callback: object) -> dict[str, str]:
    """The callback's ``state``, ``code``, ``error`` and ``error_description``.

    Raises:
        AuthorizationError: The URL is malformed, or repeats one of them (RFC 6749
            section 3.1 forbids it; a repeat is how a forged value is smuggled in).
        ConfigurationError: ``callback`` is neither a URL nor a mapping, or a value
            is not a string.
    """
    found: dict[str, list[object]]
    if isinstance(callback, str):
        try:
            query = urllib.parse.urlsplit(callback).query
        except ValueError:
            raise AuthorizationError(
                "the callback is not a valid URL. Start the login again."
            ) from None
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        found = {
            name: [value for key, value in pairs if key == name] for name in _CALLBACK_PARAMETERS
        }
    elif isinstance(callback, Mapping):
        # Web frameworks' multi-value dicts (Flask's request.args, Django's
        # request.GET) give one value by key; only getlist shows a repeat.
        getlist = getattr(callback, "getlist", None)
        found = {
            name: list(getlist(name)) if callable(getlist) else [callback[name]]
            for name in _CALLBACK_PARAMETERS
            if name in callback
        }
    else:
        raise ConfigurationError(
            "the callback must be the callback URL (a string) or its query parameters "
            f"(a mapping), not {type(callback).__name__}"
        )
    params: dict[str, str] = {}
    for name, values in found.items():
        if len(values) > 1:
            raise AuthorizationError(
                f"the callback repeats its {name} parameter, so it cannot be trusted. "
                "Start the login again."
            )
        if values:
            value = values[0]
            if not isinstance(value, str):
                raise ConfigurationError(
                    f"the callback's {name} must be a string, not {type(value).__name__}"
                )
            params[name] = value
    return params


def _check_code(code: str) -> None:
    # Never echo the code: it is a credential until it is spent.
    if not code:
        raise AuthorizationError("the authorization code is empty")
    if not _CODE_RE.fullmatch(code):
        raise AuthorizationError(
            "the authorization code is malformed (not printable ASCII). Start the login again."
        )


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

    Thread safety:
        Immutable; share it freely.
    """

    url: str
    state: str
    code_verifier: str
    redirect_uri: str
    scope: str | None = None

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
        except (KeyError, TypeError, AttributeError):
            raise AuthorizationError("not a saved pending authorization") from None
        if not all(isinstance(value, str) for value in values.values()) or not (
            scope is None or isinstance(scope, str)
        ):
            raise AuthorizationError("not a saved pending authorization")
        if not _VERIFIER_RE.fullmatch(values["code_verifier"]) or not _STATE_RE.fullmatch(
            values["state"]
        ):
            raise AuthorizationError("not a saved pending authorization")
        try:
            _check_http_url("redirect_uri", values["redirect_uri"])
        except ConfigurationError:
            raise AuthorizationError("not a saved pending authorization") from None
        return cls(scope=scope, **values)

    def __repr__(self) -> str:
        return f"PendingAuthorization(redirect_uri={self.redirect_uri!r}, scope={self.scope!r})"


class AuthorizationFlow:
    """Logs a person in to Pleo with the authorization code grant and PKCE (S256).

    Args:
        client_id: The OAuth client id of your Pleo integration.
        client_secret: Its secret; None for a public (PKCE-only) client.
        redirect_uri: Where Pleo sends the person back; it must be registered
            with your Pleo integration exactly as written here.
        scopes: The scopes to ask for: ``"users:read export-jobs:read"`` or a list.
        store: Where :meth:`finish` saves the tokens. Defaults to
            ``KeyringStore(account=client_id)``, like :class:`~pleo_auth.PleoSession`.
        environment: ``"production"`` or ``"staging"``; picks the URLs below.
        authorize_url: Overrides the ``/oauth/authorize`` URL (see :func:`authorize_url_for`).
        token_url: Overrides the token endpoint.
        subject: Pleo's optional ``urn_pleo_params_oauth_subject``, to pre-select
            what the person authorises.
        client_auth: ``"basic"`` (HTTP Basic, Pleo's documented method) or ``"body"``.
        timeout: Seconds to wait for the token endpoint per attempt.
        max_attempts: Attempts at the code exchange on transient failures.
        max_time: Seconds the exchange may spend on retries.
        clock: Time source, for tests.

    Raises:
        ConfigurationError: An argument is invalid.

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
        store: TokenStore | None = None,
        environment: Environment = default("production"),  # noqa: B008
        authorize_url: str | None = None,
        token_url: str | None = None,
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
        self.store = store if store is not None else settings.build_store()
        require_refresh_lock(self.store)
        self._clock = clock or SYSTEM_CLOCK

    def _endpoint(self) -> TokenEndpoint:
        return TokenEndpoint.for_settings(self.settings, clock=self._clock)

    def start(
        self,
        *,
        scopes: str | Iterable[str] | None = None,
        subject: str | None = None,
    ) -> PendingAuthorization:
        """Begin a login: a fresh verifier and state, and the URL to send the person to.

        Args:
            scopes: Overrides the flow's scopes for this login.
            subject: Overrides the flow's ``urn_pleo_params_oauth_subject``.

        Returns:
            The pending login. Redirect the person to its ``url`` and keep the
            rest (``to_dict()``) until the callback.
        """
        scope = normalize_scopes(scopes) if scopes is not None else self.scope
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
            The new tokens, already saved to the store.

        Raises:
            AuthorizationError: Pleo reported an error (the person denied
                access, ...), the state did not match, there was no code, or the
                token endpoint refused the code.
            RefreshError: The token endpoint could not be reached (transient
                failures outlasted the retries).
            TokenStoreError: The tokens could not be saved.
        """
        if not isinstance(pending, PendingAuthorization):
            pending = PendingAuthorization.from_dict(pending)
        if (callback is None) == (code is None):
            raise ConfigurationError("give either the callback or code, not both or neither")
        if callback is not None:
            code = self._code_from_callback(pending, callback)
        elif not isinstance(code, str):
            raise ConfigurationError(f"code must be a string, not {type(code).__name__}")
        _check_code(code)
        tokens = self._exchange(code, pending)
        # Recorded, so `pleo-auth status` and `refresh` find where the tokens belong.
        issuer = self.settings.endpoints
        self._save(attrs.evolve(tokens, token_url=issuer.token_url, api_url=issuer.api_url))
        logger.info(
            "logged in: tokens %s saved to %s, scope %r",
            tokens.fingerprint,
            self.store.describe(),
            tokens.scope,
        )
        return tokens

    def _exchange(self, code: str, pending: PendingAuthorization) -> TokenSet:
        endpoint = self._endpoint()
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
        finally:
            endpoint.close()

    @staticmethod
    def _code_from_callback(pending: PendingAuthorization, callback: object) -> str:
        params = _callback_parameters(callback)
        state = params.get("state")
        # surrogatepass: a percent-encoded lone surrogate must compare unequal, not crash.
        if state is not None and not hmac.compare_digest(
            state.encode("utf-8", "surrogatepass"), pending.state.encode("utf-8", "surrogatepass")
        ):
            raise AuthorizationError(
                "the callback's state does not match this login: it belongs to another "
                "login attempt, or was forged. Start the login again."
            )
        if "error" in params:
            # Both come from the browser: cut them short and keep them on one line.
            error = one_line(params["error"], _ERROR_LIMIT) or "no error code"
            description = one_line(params.get("error_description", ""), _DESCRIPTION_LIMIT)
            detail = f": {description}" if description else ""
            raise AuthorizationError(
                f"Pleo did not authorise the login ({error}){detail}",
                error=error,
                description=description or None,
            )
        if state is None:
            raise AuthorizationError(
                "the callback has no state, so it cannot be matched to this login. "
                "Start the login again."
            )
        code = params.get("code")
        if code is None:
            raise AuthorizationError("the callback carries no authorization code")
        return code

    def _save(self, tokens: TokenSet) -> None:
        save_login(self.store, tokens)

    def __repr__(self) -> str:
        return (
            f"<AuthorizationFlow client_id={self.client_id!r} {self.settings.target()} "
            f"redirect_uri={self.redirect_uri!r} store={self.store!r}>"
        )
