"""Django integration: connect to Pleo, keep one shared PleoSession, recover from lost grants.

Needs the ``pleo-auth[django]`` extra. In ``settings.py``::

    MIDDLEWARE = [
        "django.contrib.sessions.middleware.SessionMiddleware",   # keeps the pending login
        ...,
        "pleo_auth.contrib.django.PleoAuthMiddleware",
    ]
    PLEO_AUTH = {
        "CLIENT_ID": "...",
        "CLIENT_SECRET": os.environ["PLEO_CLIENT_SECRET"],
        "STORE": "file:/var/lib/myapp/pleo-tokens.json",   # or keyring, redis://..., django
        "SCOPES": "users:read",
    }

In ``urls.py``::

    path("pleo/", include("pleo_auth.contrib.django")),    # pleo_auth:connect, pleo_auth:callback

In a view::

    from pleo_auth.contrib.django import get_session

    def employees(request):
        return JsonResponse(get_session().get("/v2/employees").json())

**A grant per company.** With ``"STORE": "family:file:/var/lib/myapp/pleo"`` (or
``family:redis://...``, a :class:`~pleo_auth.TokenStoreFamily`), or
``"INTEGRATION"`` set to your :class:`~pleo_auth.Integration`, each login is saved
as the grant of the company Pleo says it is for, which the callback keeps in
``request.session["pleo_auth.company"]`` (its URN); ``connect/?company=<id>``
pre-selects a company and refuses a login for another. In a view,
``get_session(company)`` is that company's session.

When the grant dies, the :class:`~pleo_auth.ReauthenticationRequired` a view
raises is turned by the middleware into a redirect to the connect view, which
brings the person back afterwards.

**Grants in the project's own database.** Add ``"pleo_auth.contrib.django"`` to
``INSTALLED_APPS``, run ``manage.py migrate pleo_auth``, and set ``"STORE": "django"``
(``"django:<alias>"`` for another database): each company's grant is then a
:class:`~pleo_auth.contrib.django.models.PleoGrant` row, kept by the model store
(:class:`~pleo_auth.contrib.django.store.DjangoStoreFamily`), and the admin lists
the companies, their access tokens' expiry and who needs a login, never a token.

With the app in ``INSTALLED_APPS`` (``"pleo_auth.contrib.django"``, or its
``"pleo_auth.contrib.django.PleoAuthConfig"``), ``manage.py check`` checks
``PLEO_AUTH`` (error ``pleo_auth.E001``); the middleware checks it when the app starts.

``PLEO_AUTH`` keys: ``CLIENT_ID`` (required), ``CLIENT_SECRET``, ``STORE``,
``ENVIRONMENT``, ``SCOPES``, ``TOKEN_URL``, ``API_URL``, ``AUTHORIZE_URL``,
``REDIRECT_URI`` (default: the callback view's absolute URL), ``AFTER_CONNECT``
(default ``/``), ``SUBJECT``, and every other field of :class:`~pleo_auth.Settings`
in capitals (``REFRESH_MARGIN``, ``CLIENT_AUTH``, ``REFRESH_TIMEOUT``, ...), and
``INTEGRATION`` (an Integration, which brings the client, its endpoints and its
store: only ``SCOPES``, ``SUBJECT``, ``AUTHORIZE_URL`` and the web keys go with it).

Guard the two views like your admin pages: include them under a path your
authentication protects, or wrap :func:`connect` and :func:`callback` yourself
(``staff_member_required(connect)``) instead of including this module.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from django.conf import settings as django_settings
from django.core import checks
from django.core.signals import setting_changed
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, HttpResponseRedirect
from django.urls import NoReverseMatch, path, reverse

from ...company import Company
from ...errors import AuthorizationError, ConfigurationError, ReauthenticationRequired
from ...flow import PendingAuthorization
from ...session import PleoSession
from .. import COMPANY_KEY, NEXT_KEY, PENDING_KEY, _Lazy, _safe_next, _WebSettings
from .apps import PleoAuthConfig
from .store import DjangoGrantStore, DjangoStoreFamily

if TYPE_CHECKING:
    from ...integration import Integration

logger = logging.getLogger(__name__)

__all__ = [
    "DjangoGrantStore",
    "DjangoStoreFamily",
    "PleoAuthConfig",
    "PleoAuthMiddleware",
    "app_name",
    "callback",
    "check_settings",
    "connect",
    "get_integration",
    "get_session",
    "urlpatterns",
]


def _read_settings() -> _WebSettings:
    values = getattr(django_settings, "PLEO_AUTH", None)
    if not isinstance(values, dict):
        raise ConfigurationError("settings.PLEO_AUTH must be a dict with at least CLIENT_ID")
    store = values.get("STORE")
    if isinstance(store, str) and (store == "django" or store.startswith("django:")):
        values = {**values, "STORE": _model_store(store, values.get("CLIENT_ID"))}
    return _WebSettings.from_mapping(values, where="settings.PLEO_AUTH")


def _model_store(spec: str, client_id: object) -> DjangoStoreFamily | None:
    """The family ``STORE = "django"`` (or ``"django:<alias>"``) names: the model
    store over the client's rows; None without a client id (reported as missing)."""
    from django.apps import apps

    where = "settings.PLEO_AUTH: STORE"
    if apps.ready and not apps.is_installed("pleo_auth.contrib.django"):
        raise ConfigurationError(
            f'{where} is "django": add "pleo_auth.contrib.django" to INSTALLED_APPS '
            "and run `python manage.py migrate pleo_auth`"
        )
    alias = spec.removeprefix("django").removeprefix(":") or "default"
    if alias not in django_settings.DATABASES:
        raise ConfigurationError(f"{where} names database {alias!r}, which DATABASES lacks")
    if not isinstance(client_id, str) or not client_id:
        return None
    try:
        return DjangoStoreFamily(client_id, using=alias)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{where}: {exc}") from None


def _connect_view() -> str | None:
    try:
        return str(reverse("pleo_auth:connect"))
    except NoReverseMatch:
        return None  # the views are not included: the hint names the command instead


_LAZY = _Lazy(_read_settings, _connect_view)


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """The system check behind ``manage.py check``: ``PLEO_AUTH`` is complete and
    valid, and its ``STORE`` names a store (``pleo_auth.E001`` otherwise)."""
    try:
        _read_settings()
    except ConfigurationError as exc:
        return [
            checks.Error(
                str(exc),
                hint="Fix settings.PLEO_AUTH (see pleo_auth.contrib.django).",
                id="pleo_auth.E001",
            )
        ]
    return []


checks.register(check_settings, "pleo_auth")


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == "PLEO_AUTH":
        _LAZY.reset()


setting_changed.connect(_on_setting_changed, dispatch_uid="pleo_auth.contrib.django")


def get_session(company: Company | str | None = None) -> PleoSession:
    """The process's shared :class:`~pleo_auth.PleoSession`, built from
    ``settings.PLEO_AUTH``; with a grant per company, ``company``'s session.

    Built on first use, then the same object for every request and thread of
    this process. Do not close it. A change of ``PLEO_AUTH`` (``override_settings``
    in tests) builds a new one. A company's session comes from the app's
    :func:`get_integration` and is cheap: ask per request.

    Raises:
        ConfigurationError: ``PLEO_AUTH`` is missing or invalid; ``company`` is
            given with one grant, or missing with a grant per company, or names
            no company.
    """
    return _LAZY.session() if company is None else _LAZY.company_session(company)


def get_integration() -> Integration:
    """The process's :class:`~pleo_auth.Integration`, with a grant per company:
    ``INTEGRATION``, or one built on first use over the ``STORE`` family.

    Raises:
        ConfigurationError: ``PLEO_AUTH`` keeps one grant, or is invalid.
    """
    return _LAZY.integration()


def _page(status: int, title: str, message: str, link: str | None = None) -> HttpResponse:
    extra = f"<p><a href='{html.escape(link)}'>Connect to Pleo again</a></p>" if link else ""
    body = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(message)}</p>{extra}</body></html>"
    )
    return HttpResponseBadRequest(body) if status == 400 else HttpResponse(body, status=status)


def connect(request: HttpRequest) -> HttpResponse:
    """Start a Pleo login: keep the pending login in the session, redirect to Pleo.

    A ``next`` query parameter (a path on this site) is where the callback
    sends the person afterwards; a ``company`` one (a company id or URN) is the
    company the login must be for.
    """
    flow = _LAZY.flow(request.build_absolute_uri(reverse("pleo_auth:callback")))
    try:
        pending = flow.start(company=request.GET.get("company"))
    except ConfigurationError as exc:
        return _page(400, "Pleo login not started", str(exc))
    request.session[PENDING_KEY] = pending.to_dict()
    target = _safe_next(request.GET.get("next"))
    if target is not None:
        request.session[NEXT_KEY] = target
    else:
        request.session.pop(NEXT_KEY, None)
    return HttpResponseRedirect(pending.url)


def callback(request: HttpRequest) -> HttpResponse:
    """Finish a Pleo login: check the state, exchange the code, save the tokens."""
    settings = _LAZY.settings()
    saved = request.session.pop(PENDING_KEY, None)
    target = _safe_next(request.session.pop(NEXT_KEY, None))
    connect_url = reverse("pleo_auth:connect")
    if saved is None:
        return _page(
            400,
            "No Pleo login in progress",
            "This browser has no Pleo login waiting for this callback.",
            connect_url,
        )
    try:
        pending = PendingAuthorization.from_dict(saved)
        login = _LAZY.flow(pending.redirect_uri).finish_login(pending, request.GET.dict())
    except AuthorizationError as exc:
        logger.warning("Pleo login failed: %s", exc)
        return _page(400, "Pleo login failed", str(exc), connect_url)
    if login.company is not None:
        request.session[COMPANY_KEY] = login.company.urn
    return HttpResponseRedirect(target or settings.after_connect)


class PleoAuthMiddleware:
    """Turns :class:`~pleo_auth.ReauthenticationRequired` from a view into a
    redirect to the connect view (back to the same page afterwards, for GET).

    Thread safety:
        Stateless; Django may call it from any number of threads.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        # Django builds its middleware when the app starts: a bad PLEO_AUTH (a
        # mistyped STORE) stops it there, not at every request.
        _LAZY.settings()
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, ReauthenticationRequired):
            return None
        logger.warning("Pleo authorisation needed: %s", exception.reason)
        url = reverse("pleo_auth:connect")
        if request.method == "GET":
            url += "?" + urlencode({"next": request.get_full_path()})
        return HttpResponseRedirect(url)


app_name = "pleo_auth"

urlpatterns = [
    path("connect/", connect, name="connect"),
    path("callback/", callback, name="callback"),
]
