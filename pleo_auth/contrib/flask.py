"""Flask integration: connect to Pleo, keep one shared PleoSession, recover from lost grants.

Needs the ``pleo-auth[flask]`` extra. Example::

    from flask import Flask
    from pleo_auth.contrib.flask import PleoAuth, get_session

    app = Flask(__name__)
    app.config.update(
        SECRET_KEY="...",                  # Flask's session keeps the pending login
        PLEO_CLIENT_ID="...",
        PLEO_CLIENT_SECRET="...",          # read it from the environment
        PLEO_STORE="file:/var/lib/myapp/pleo-tokens.json",
        PLEO_SCOPES="users:read",
    )
    pleo = PleoAuth(app)                   # /pleo/connect and /pleo/callback

    @app.get("/employees")
    def employees():
        return get_session().get("/v2/employees").json()

**A grant per company.** With ``PLEO_STORE="family:file:/var/lib/myapp/pleo"``
(or ``family:redis://...``, a :class:`~pleo_auth.TokenStoreFamily`), or
``PLEO_INTEGRATION`` set to your :class:`~pleo_auth.Integration`, each login is
saved as the grant of the company Pleo says it is for, which the callback keeps
in ``session["pleo_auth.company"]`` (its URN); ``/pleo/connect?company=<id>``
pre-selects a company and refuses a login for another::

    @app.get("/companies/<company>/employees")
    def company_employees(company):
        return get_session(company).get("/v2/employees").json()

When the grant dies (revoked, expired, a refresh token spent twice), the
:class:`~pleo_auth.ReauthenticationRequired` a view raises is turned into a
redirect to ``/pleo/connect?next=<this page>``; after the login the person
comes back.

Settings (``app.config``): ``PLEO_CLIENT_ID`` (required), ``PLEO_CLIENT_SECRET``,
``PLEO_STORE`` (a spec, ``keyring`` by default, or a :class:`~pleo_auth.TokenStore`),
``PLEO_ENVIRONMENT``, ``PLEO_SCOPES``, ``PLEO_TOKEN_URL``, ``PLEO_API_URL``,
``PLEO_AUTHORIZE_URL``, ``PLEO_REDIRECT_URI`` (default: the callback view's
external URL), ``PLEO_AFTER_CONNECT`` (default ``/``), ``PLEO_SUBJECT``, and every
other field of :class:`~pleo_auth.Settings` (``PLEO_REFRESH_MARGIN``,
``PLEO_CLIENT_AUTH``, ...), and ``PLEO_INTEGRATION`` (an Integration, which brings
the client, its endpoints and its store: only ``PLEO_SCOPES``, ``PLEO_SUBJECT``,
``PLEO_AUTHORIZE_URL`` and the web settings go with it). They are checked, and
the store built, by
:meth:`PleoAuth.init_app`: a mistyped setting stops the app at start-up.

Flask's default session is a *signed*, not encrypted, cookie: the person's own
browser can read the PKCE verifier in it while the login is pending. That is
what PKCE expects of a browser-held secret only for confidential clients (the
client secret still guards the code exchange); a public client should use a
server-side session (Flask-Session).

Guard the views like your admin pages, for example::

    @pleo.blueprint.before_request
    def only_admins():
        if not current_user.is_admin:
            abort(403)
"""

from __future__ import annotations

import html
import logging
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Flask, Response, current_app, redirect, request, session, url_for

from ..company import Company
from ..errors import AuthorizationError, ConfigurationError, ReauthenticationRequired
from ..flow import PendingAuthorization
from ..session import PleoSession
from . import COMPANY_KEY, NEXT_KEY, PENDING_KEY, _Lazy, _safe_next, _WebSettings

if TYPE_CHECKING:
    from ..integration import Integration

logger = logging.getLogger(__name__)

__all__ = ["PleoAuth", "get_integration", "get_session"]

_EXTENSION = "pleo_auth"


class PleoAuth:
    """The Flask extension: registers the views and the error handler.

    Args:
        app: The app, or None to call :meth:`init_app` later.
        url_prefix: Where the ``connect`` and ``callback`` views live.

    Thread safety:
        Safe to share between threads and apps. Each app gets its own settings
        and its own shared :class:`~pleo_auth.PleoSession`, built on first use
        under a lock and then shared by every request thread.
    """

    def __init__(self, app: Flask | None = None, *, url_prefix: str = "/pleo"):
        self.url_prefix = url_prefix
        self.blueprint = Blueprint("pleo_auth", __name__)
        self.blueprint.add_url_rule("/connect", "connect", _connect, methods=["GET"])
        self.blueprint.add_url_rule("/callback", "callback", _callback, methods=["GET"])
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Register the views, the error handler and the app's settings.

        The settings are read and checked here, and the store built, so a
        mistyped ``PLEO_STORE`` stops the app at start-up, not every request.

        Raises:
            ConfigurationError: A ``PLEO_*`` setting is missing or invalid.
        """
        lazy = _Lazy(lambda: _read_settings(app), lambda: f"{self.url_prefix}/connect")
        lazy.settings()
        app.extensions[_EXTENSION] = lazy
        app.register_blueprint(self.blueprint, url_prefix=self.url_prefix)
        app.register_error_handler(ReauthenticationRequired, _on_reauthentication_required)

    @staticmethod
    def reset(app: Flask) -> None:
        """Close ``app``'s shared session and forget its settings; the next use
        rebuilds both from ``app.config``. For tests, and after changing the config."""
        lazy = app.extensions.get(_EXTENSION)
        if isinstance(lazy, _Lazy):
            lazy.reset()

    @property
    def session(self) -> PleoSession:
        """The current app's shared :class:`~pleo_auth.PleoSession` (see :func:`get_session`)."""
        return get_session()


def get_session(company: Company | str | None = None) -> PleoSession:
    """The current app's shared :class:`~pleo_auth.PleoSession`; with a grant per
    company, ``company``'s session.

    Built on first use from ``app.config``, then the same object for every
    request and thread of this process. Do not close it. A company's session
    comes from the app's :func:`get_integration` and is cheap: ask per request.

    Raises:
        ConfigurationError: The settings are missing or invalid; ``company`` is
            given to an app with one grant, or missing with a grant per company,
            or names no company.
        RuntimeError: Outside an app context, or :class:`PleoAuth` was not set up.
    """
    lazy = _lazy()
    return lazy.session() if company is None else lazy.company_session(company)


def get_integration() -> Integration:
    """The current app's :class:`~pleo_auth.Integration`, with a grant per company:
    ``PLEO_INTEGRATION``, or one built on first use over the ``PLEO_STORE`` family
    (for its ``companies()`` and ``status()``).

    Raises:
        ConfigurationError: The app keeps one grant.
        RuntimeError: Outside an app context, or :class:`PleoAuth` was not set up.
    """
    return _lazy().integration()


def _lazy() -> _Lazy:
    lazy = current_app.extensions.get(_EXTENSION)
    if not isinstance(lazy, _Lazy):
        raise RuntimeError("pleo_auth is not set up on this app: call PleoAuth(app)")
    return lazy


def _read_settings(app: Flask) -> _WebSettings:
    prefix = "PLEO_"
    values = {
        key[len(prefix) :]: value
        for key, value in app.config.items()
        if key.startswith(prefix) and value is not None
    }
    return _WebSettings.from_mapping(values, where="app.config", prefix=prefix)


def _page(status: int, title: str, message: str, link: str | None = None) -> Response:
    extra = f"<p><a href='{html.escape(link)}'>Connect to Pleo again</a></p>" if link else ""
    body = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(message)}</p>{extra}</body></html>"
    )
    return Response(body, status=status, mimetype="text/html")


def _connect() -> Any:
    flow = _lazy().flow(url_for("pleo_auth.callback", _external=True))
    try:
        pending = flow.start(company=request.args.get("company"))
    except ConfigurationError as exc:
        return _page(400, "Pleo login not started", str(exc))
    session[PENDING_KEY] = pending.to_dict()
    target = _safe_next(request.args.get("next"))
    if target is not None:
        session[NEXT_KEY] = target
    else:
        session.pop(NEXT_KEY, None)
    return redirect(pending.url)


def _callback() -> Any:
    lazy = _lazy()
    settings = lazy.settings()
    saved = session.pop(PENDING_KEY, None)
    target = _safe_next(session.pop(NEXT_KEY, None))
    connect = url_for("pleo_auth.connect")
    if saved is None:
        return _page(
            400,
            "No Pleo login in progress",
            "This browser has no Pleo login waiting for this callback.",
            connect,
        )
    try:
        pending = PendingAuthorization.from_dict(saved)
        login = lazy.flow(pending.redirect_uri).finish_login(pending, request.args)
    except AuthorizationError as exc:
        logger.warning("Pleo login failed: %s", exc)
        return _page(400, "Pleo login failed", str(exc), connect)
    if login.company is not None:
        session[COMPANY_KEY] = login.company.urn
    return redirect(target or settings.after_connect)


def _on_reauthentication_required(exc: ReauthenticationRequired) -> Any:
    logger.warning("Pleo authorisation needed: %s", exc.reason)
    target = request.full_path.rstrip("?") if request.method == "GET" else None
    return redirect(url_for("pleo_auth.connect", next=target))
