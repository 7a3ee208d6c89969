"""What pleo_auth.contrib.flask and pleo_auth.contrib.django both promise, stated once.

:class:`WebIntegrationContract` holds the promises; each framework's test file
subclasses it (``TestFlaskIntegration``, ``TestDjangoIntegration``) and gives it:

* a ``start_app`` fixture: a function that starts an app, through the framework's
  own start-up, with settings named as in :meth:`pleo_auth.Settings.from_mapping`
  (``CLIENT_ID``, ``STORE``, ...; the adapter adds the framework's prefix), and
  returns a :class:`WebApp`; a bad setting raises from it;
* the names the framework gives things: ``connect_path``, ``callback_url``,
  ``employees_path`` (an app view calling ``/v2/employees`` through
  ``get_session()``, for GET and POST), ``where`` and ``prefix`` (how messages
  name a setting) and ``framework_modules``.

Everything is real: the emulator is Pleo on loopback, the browser's trip to it
is a real HTTP request, and the tokens land in a real FileStore (or MemoryStore),
or, for an app with a grant per company, a real ``FileStore.family`` (the
emulator says which company each login is for).
"""

from __future__ import annotations

import abc
import base64
import hashlib
import json
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import attrs
import pytest
import requests

from pleo_auth import (
    Company,
    ConfigurationError,
    FileStore,
    Integration,
    MemoryStore,
    PleoSession,
    ReauthenticationRequired,
)
from pleo_auth.testing import Emulator

#: The framework session key of the pending login (pleo_auth.contrib.PENDING_KEY).
PENDING_KEY = "pleo_auth.pending"
#: The framework session key of the last login's company (pleo_auth.contrib.COMPANY_KEY).
COMPANY_KEY = "pleo_auth.company"

A = Company("3f2504e0-4f89-11d3-9a0c-0305e82c3301")
B = Company("9b2c1f6e-1d2a-4c3b-8e4f-5a6b7c8d9e0f")


def approve(authorize_url: str) -> str:
    """Play the browser at the emulator: return the callback URL it redirects to."""
    response = requests.get(authorize_url, allow_redirects=False, timeout=10)
    assert response.status_code == 302, response.text
    return response.headers["Location"]


def local(url: str) -> str:
    """The path and query of an absolute URL on the app, for the test client."""
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


def query_of(url: str) -> dict[str, str]:
    """The query parameters of ``url``, each given once."""
    values = parse_qs(urlsplit(url).query, keep_blank_values=True)
    assert all(len(value) == 1 for value in values.values()), values
    return {key: value[0] for key, value in values.items()}


@attrs.frozen
class Reply:
    """What an app answered, whatever the framework."""

    status: int
    location: str | None
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


class WebApp(abc.ABC):
    """One started app, seen through the framework's test client (one browser)."""

    @abc.abstractmethod
    def get(self, path: str) -> Reply:
        """GET ``path`` (with its query) as the browser, keeping its cookies."""

    @abc.abstractmethod
    def post(self, path: str) -> Reply:
        """POST to ``path`` as the browser."""

    @abc.abstractmethod
    def pending(self) -> dict[str, Any]:
        """The pending login kept in the browser's framework session."""

    @abc.abstractmethod
    def session(self) -> PleoSession:
        """The app's shared session, as ``get_session()`` in a view gives it; any thread."""

    @abc.abstractmethod
    def reconfigure(self, settings: Mapping[str, Any]) -> None:
        """Change the app's settings the way the framework documents it."""

    @abc.abstractmethod
    def company_session(self, company: Company | str) -> PleoSession:
        """``get_session(company)`` in a view; any thread."""

    @abc.abstractmethod
    def integration(self) -> Integration:
        """``get_integration()`` in a view."""

    @abc.abstractmethod
    def value(self, key: str) -> Any:
        """A value of the browser's framework session, or None."""

    @abc.abstractmethod
    def browser(self) -> WebApp:
        """The same app, seen through another browser (cookies of its own)."""


StartApp = Callable[[Mapping[str, Any]], WebApp]


class WebIntegrationContract:
    """The promises of a web integration; subclass it per framework (see the module)."""

    connect_path: ClassVar[str]
    callback_url: ClassVar[str]
    employees_path: ClassVar[str]
    where: ClassVar[str]
    prefix: ClassVar[str]
    framework_modules: ClassVar[tuple[str, ...]]

    @pytest.fixture
    def start_app(self) -> StartApp:
        raise NotImplementedError("a framework's test class gives its start_app fixture")

    @pytest.fixture
    def token_path(self, tmp_path: Path) -> Path:
        return tmp_path / "tokens.json"

    @pytest.fixture
    def settings(self, emulator: Emulator, token_path: Path) -> dict[str, Any]:
        return {
            "CLIENT_ID": emulator.client_id,
            "CLIENT_SECRET": emulator.client_secret,
            "STORE": f"file:{token_path}",
            "SCOPES": ["users:read"],
            "TOKEN_URL": emulator.token_url,
            "API_URL": emulator.api_url,
            "AUTHORIZE_URL": emulator.authorize_url,
        }

    @pytest.fixture
    def app(self, start_app: StartApp, settings: dict[str, Any]) -> WebApp:
        return start_app(settings)

    # -- helpers --------------------------------------------------------------------

    def log_in(self, app: WebApp, emulator: Emulator, path: str | None = None) -> str:
        """connect -> emulator -> callback; returns where the callback redirected."""
        reply = app.get(path or self.connect_path)
        assert reply.status == 302
        assert reply.location is not None
        assert reply.location.startswith(emulator.authorize_url + "?")
        callback = approve(reply.location)
        assert callback.startswith(self.callback_url + "?")
        reply = app.get(local(callback))
        assert reply.status == 302, reply.text
        assert reply.location is not None
        return reply.location

    def next_of_connect(self, location: str | None) -> str | None:
        """Asserts ``location`` is the connect view; returns its ``next``."""
        assert location is not None
        parts = urlsplit(location)
        assert parts.path == self.connect_path
        values = parse_qs(parts.query).get("next")
        return values[0] if values else None

    # -- connect and callback -------------------------------------------------------

    def test_connect_redirects_to_pleos_authorize_url_with_state_and_pkce(
        self, app: WebApp, emulator: Emulator
    ) -> None:
        reply = app.get(self.connect_path)
        assert reply.status == 302
        assert reply.location is not None
        assert reply.location.startswith(emulator.authorize_url + "?")
        query = query_of(reply.location)
        pending = app.pending()
        digest = hashlib.sha256(pending["code_verifier"].encode("ascii")).digest()
        challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
        assert query == {
            "response_type": "code",
            "client_id": emulator.client_id,
            "redirect_uri": self.callback_url,
            "scope": "users:read",
            "state": pending["state"],
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }

    def test_the_pending_login_lives_in_the_session_not_the_url(self, app: WebApp) -> None:
        reply = app.get(self.connect_path)
        assert reply.location is not None
        pending = app.pending()
        assert pending["code_verifier"] not in reply.location
        assert pending["state"] in reply.location

    def test_connect_callback_and_an_api_call_through_the_shared_session(
        self, app: WebApp, emulator: Emulator, token_path: Path
    ) -> None:
        path = f"{self.connect_path}?next={self.employees_path}"
        assert self.log_in(app, emulator, path) == self.employees_path
        stored = FileStore(token_path).load()
        assert stored is not None
        assert stored.scope == "users:read"
        reply = app.get(self.employees_path)
        assert reply.status == 200
        assert reply.json()["pagination"]["total"] == 3
        assert emulator.counters.code_exchanges == 1

    def test_the_callback_saves_the_pair_pleo_issued_with_its_issuer(
        self, app: WebApp, emulator: Emulator, token_path: Path
    ) -> None:
        self.log_in(app, emulator)
        stored = FileStore(token_path).load()
        assert stored is not None
        assert emulator.is_current(stored.access_token, stored.refresh_token)
        assert (stored.token_url, stored.api_url) == (emulator.token_url, emulator.api_url)

    def test_after_connect_goes_to_the_root_by_default(
        self, app: WebApp, emulator: Emulator
    ) -> None:
        assert self.log_in(app, emulator) == "/"

    def test_after_connect_goes_to_the_configured_page(
        self, start_app: StartApp, settings: dict[str, Any], emulator: Emulator
    ) -> None:
        app = start_app({**settings, "AFTER_CONNECT": "/dashboard/"})
        assert self.log_in(app, emulator) == "/dashboard/"

    @pytest.mark.parametrize("target", ["//evil.example/", "https://evil.example/"])
    def test_next_pointing_off_site_is_ignored(
        self, app: WebApp, emulator: Emulator, target: str
    ) -> None:
        path = f"{self.connect_path}?{urlencode({'next': target})}"
        assert self.log_in(app, emulator, path) == "/"

    def test_a_callback_without_a_pending_login_is_refused(
        self, app: WebApp, token_path: Path
    ) -> None:
        reply = app.get(f"{local(self.callback_url)}?code=abc&state=def")
        assert reply.status == 400
        assert "No Pleo login in progress" in reply.text
        assert not token_path.exists()

    def test_a_callback_with_another_state_is_refused(
        self, app: WebApp, emulator: Emulator, token_path: Path
    ) -> None:
        reply = app.get(self.connect_path)
        assert reply.location is not None
        callback = approve(reply.location).replace("state=", "state=x", 1)
        reply = app.get(local(callback))
        assert reply.status == 400
        assert "state does not match" in reply.text
        assert not token_path.exists()
        assert emulator.counters.token_requests == 0

    def test_a_denied_login_shows_pleos_error(self, app: WebApp, token_path: Path) -> None:
        app.get(self.connect_path)
        state = app.pending()["state"]
        query = urlencode({"error": "access_denied", "error_description": "No <b>", "state": state})
        reply = app.get(f"{local(self.callback_url)}?{query}")
        assert reply.status == 400
        assert "access_denied" in reply.text
        assert "No &lt;b&gt;" in reply.text
        assert not token_path.exists()

    # -- a lost grant points at the connect view --------------------------------------

    def test_without_tokens_a_view_redirects_to_connect(self, app: WebApp) -> None:
        reply = app.get(f"{self.employees_path}?page=2")
        assert reply.status == 302
        assert self.next_of_connect(reply.location) == f"{self.employees_path}?page=2"

    def test_a_post_that_needs_a_login_redirects_to_connect_without_next(self, app: WebApp) -> None:
        reply = app.post(self.employees_path)
        assert reply.status == 302
        assert reply.location == self.connect_path

    def test_a_revoked_grant_redirects_to_connect_and_a_new_login_recovers(
        self, app: WebApp, emulator: Emulator
    ) -> None:
        self.log_in(app, emulator)
        assert app.get(self.employees_path).status == 200

        emulator.revoke_all()
        reply = app.get(self.employees_path)
        assert reply.status == 302
        assert self.next_of_connect(reply.location) == self.employees_path

        assert self.log_in(app, emulator, reply.location) == self.employees_path
        assert app.get(self.employees_path).status == 200
        counters = emulator.counters
        assert counters.code_exchanges == 2
        assert counters.rejected_refreshes == 1
        assert counters.reuse_detections == 0
        assert counters.unauthorized == 1

    def test_a_dead_grant_names_the_connect_view(self, app: WebApp) -> None:
        with pytest.raises(ReauthenticationRequired) as caught:
            app.session().get("/v2/employees")
        assert caught.value.login is not None
        assert caught.value.login.view == self.connect_path
        assert str(caught.value).endswith(f"Log in at {self.connect_path}.")

    # -- one shared session per app and process --------------------------------------

    def test_every_thread_gets_the_same_shared_session(self, app: WebApp) -> None:
        barrier = threading.Barrier(8)
        seen: list[PleoSession] = []
        lock = threading.Lock()

        def grab() -> None:
            barrier.wait()
            session = app.session()
            with lock:
                seen.append(session)

        threads = [threading.Thread(target=grab) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(seen) == 8
        assert len({id(session) for session in seen}) == 1

    def test_changing_the_settings_builds_a_new_shared_session(
        self, app: WebApp, settings: dict[str, Any], tmp_path: Path
    ) -> None:
        before = app.session()
        other = tmp_path / "other.json"
        app.reconfigure({**settings, "STORE": f"file:{other}"})
        after = app.session()
        assert after is not before
        assert isinstance(after.store, FileStore)
        assert after.store.path == other

    def test_a_token_store_object_can_be_configured(
        self, start_app: StartApp, settings: dict[str, Any], emulator: Emulator
    ) -> None:
        store = MemoryStore()
        app = start_app({**settings, "STORE": store})
        self.log_in(app, emulator)
        assert store.load() is not None
        assert app.session().store is store

    # -- settings are checked when the app starts ------------------------------------

    def test_missing_client_id_stops_the_app_at_start_up(
        self, start_app: StartApp, token_path: Path
    ) -> None:
        message = f"{self.where}: {self.prefix}CLIENT_ID is required"
        with pytest.raises(ConfigurationError, match=message.replace(".", r"\.")):
            start_app({"STORE": f"file:{token_path}"})

    def test_an_unknown_setting_stops_the_app_at_start_up(
        self, start_app: StartApp, token_path: Path
    ) -> None:
        message = f"{self.where}: unknown setting(s) {self.prefix}SCOPE"
        with pytest.raises(ConfigurationError) as caught:
            start_app({"CLIENT_ID": "c", "STORE": f"file:{token_path}", "SCOPE": "users:read"})
        assert str(caught.value) == message

    def test_a_mistyped_store_stops_the_app_at_start_up(
        self, start_app: StartApp, tmp_path: Path
    ) -> None:
        message = f"{self.where}: {self.prefix}STORE: unknown token store"
        with pytest.raises(ConfigurationError, match=message.replace(".", r"\.")):
            start_app({"CLIENT_ID": "c", "STORE": f"fiel:{tmp_path}/tokens.json"})

    # -- the framework is an optional extra ------------------------------------------

    def test_importing_pleo_auth_does_not_import_the_framework(self) -> None:
        code = (
            "import sys, pleo_auth, pleo_auth.contrib, pleo_auth.cli, pleo_auth.flow; "
            f"print(sorted(m for m in {self.framework_modules!r} if m in sys.modules))"
        )
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        assert result.stdout.strip() == "[]"


def with_subject(url: str, company: Company) -> str:
    """The authorize URL as if the person picked ``company`` on Pleo's page."""
    parts = urlsplit(url)
    query = query_of(url)
    query["urn_pleo_params_oauth_subject"] = company.urn
    return urlunsplit(parts._replace(query=urlencode(query)))


class CompanyGrantsContract(WebIntegrationContract):
    """The promises of a web integration with a grant per company (``STORE`` a
    store family, or ``INTEGRATION``); a framework's test class subclasses this
    one, which runs the one-grant promises too."""

    @pytest.fixture
    def grants_dir(self, tmp_path: Path) -> Path:
        return tmp_path / "grants"

    @pytest.fixture
    def family_app(self, start_app: StartApp, settings: dict[str, Any], grants_dir: Path) -> WebApp:
        return start_app({**settings, "STORE": f"family:file:{grants_dir}"})

    def grant_of(self, grants_dir: Path, company: Company) -> Any:
        return FileStore.family(grants_dir).store(company).load()

    def test_the_callback_saves_the_grant_of_the_company_pleo_names(
        self, family_app: WebApp, emulator: Emulator, grants_dir: Path
    ) -> None:
        emulator.set_default_company(A)  # the person picks A on Pleo's page
        assert self.log_in(family_app, emulator) == "/"
        stored = self.grant_of(grants_dir, A)
        assert stored is not None
        assert emulator.is_current(stored.access_token, stored.refresh_token)
        assert FileStore.family(grants_dir).companies() == [A]
        assert family_app.value(COMPANY_KEY) == A.urn
        assert family_app.company_session(A).get("/v2/employees").status_code == 200
        assert family_app.integration().companies() == [A]

    def test_a_login_for_another_company_never_touches_the_first(
        self, family_app: WebApp, emulator: Emulator, grants_dir: Path
    ) -> None:
        emulator.set_default_company(A)
        self.log_in(family_app, emulator)
        first = self.grant_of(grants_dir, A)
        emulator.set_default_company(B)
        self.log_in(family_app, emulator)
        assert self.grant_of(grants_dir, A) == first
        assert family_app.value(COMPANY_KEY) == B.urn
        assert FileStore.family(grants_dir).companies() == [A, B]

    def test_a_second_login_for_a_company_replaces_its_grant(
        self, family_app: WebApp, emulator: Emulator, grants_dir: Path
    ) -> None:
        emulator.set_default_company(A)
        self.log_in(family_app, emulator)
        first = self.grant_of(grants_dir, A)
        self.log_in(family_app, emulator)
        second = self.grant_of(grants_dir, A)
        assert second.access_token != first.access_token
        assert emulator.is_current(second.access_token, second.refresh_token)
        assert emulator.counters_for(A).code_exchanges == 2
        assert FileStore.family(grants_dir).companies() == [A]

    def test_two_browsers_logging_in_two_companies_at_once_each_get_their_own_grant(
        self, family_app: WebApp, emulator: Emulator, grants_dir: Path
    ) -> None:
        browsers = {A: family_app, B: family_app.browser()}
        callbacks = {}
        for company, browser in browsers.items():
            reply = browser.get(f"{self.connect_path}?company={company.id}")
            assert reply.location is not None
            callbacks[company] = local(approve(reply.location))
        barrier = threading.Barrier(2)
        replies: dict[Company, Reply] = {}

        def finish(company: Company) -> None:
            barrier.wait()
            replies[company] = browsers[company].get(callbacks[company])

        threads = [threading.Thread(target=finish, args=(company,)) for company in browsers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert {company: reply.status for company, reply in replies.items()} == {A: 302, B: 302}
        for company, browser in browsers.items():
            stored = self.grant_of(grants_dir, company)
            assert emulator.is_current(stored.access_token, stored.refresh_token)
            assert emulator.counters_for(company).code_exchanges == 1
            assert browser.value(COMPANY_KEY) == company.urn

    def test_connect_with_a_company_preselects_it_and_refuses_a_login_for_another(
        self, family_app: WebApp, emulator: Emulator, grants_dir: Path
    ) -> None:
        reply = family_app.get(f"{self.connect_path}?company={A.urn}")
        assert reply.location is not None
        assert query_of(reply.location)["urn_pleo_params_oauth_subject"] == A.urn
        assert family_app.pending()["company"] == A.urn
        callback = approve(with_subject(reply.location, B))
        reply = family_app.get(local(callback))
        assert reply.status == 400
        assert f"this login is for {B}, not for {A} as asked" in reply.text
        assert not grants_dir.exists() or FileStore.family(grants_dir).companies() == []
        assert family_app.value(COMPANY_KEY) is None

    @pytest.mark.parametrize("bad", ["../etc/passwd", "*", "", "urn:pleo:user:x"])
    def test_connect_with_a_bad_company_is_refused_without_echo(
        self, family_app: WebApp, emulator: Emulator, grants_dir: Path, bad: str
    ) -> None:
        reply = family_app.get(f"{self.connect_path}?{urlencode({'company': bad})}")
        assert reply.status == 400
        assert "not a Pleo company id" in reply.text
        if bad:
            assert bad not in reply.text
        assert family_app.value(PENDING_KEY) is None
        assert not grants_dir.exists()
        assert emulator.counters.token_requests == 0

    def test_an_app_with_a_grant_per_company_needs_a_company_for_a_session(
        self, family_app: WebApp
    ) -> None:
        with pytest.raises(ConfigurationError, match=r"call get_session\(company\)"):
            family_app.session()
        with pytest.raises(ConfigurationError, match="not a Pleo company id"):
            family_app.company_session("../x")

    def test_an_app_with_one_grant_has_no_company_sessions(self, app: WebApp) -> None:
        with pytest.raises(ConfigurationError, match="this app keeps one grant"):
            app.company_session(A)
        with pytest.raises(ConfigurationError, match="this app keeps one grant"):
            app.integration()

    def test_an_integration_can_be_configured(
        self, start_app: StartApp, emulator: Emulator, tmp_path: Path
    ) -> None:
        family = MemoryStore.family()
        with Integration(
            emulator.client_id,
            emulator.client_secret,
            store=family,
            token_url=emulator.token_url,
            api_url=emulator.api_url,
        ) as integration:
            app = start_app(
                {
                    "INTEGRATION": integration,
                    "SCOPES": "users:read",
                    "AUTHORIZE_URL": emulator.authorize_url,
                }
            )
            emulator.set_default_company(B)
            self.log_in(app, emulator)
            assert app.integration() is integration
            assert integration.companies() == [B]
            assert app.company_session(B).get("/v2/employees").status_code == 200

    def test_an_integration_with_client_settings_beside_it_stops_the_app_at_start_up(
        self, start_app: StartApp, emulator: Emulator
    ) -> None:
        with (
            Integration(
                emulator.client_id, store=MemoryStore.family(), token_url=emulator.token_url
            ) as integration,
            pytest.raises(ConfigurationError) as caught,
        ):
            start_app({"INTEGRATION": integration, "CLIENT_ID": "c", "TOKEN_URL": "x"})
        assert str(caught.value) == (
            f"{self.where}: {self.prefix}INTEGRATION brings the client, its endpoints and "
            f"its store: drop {self.prefix}CLIENT_ID, {self.prefix}TOKEN_URL"
        )

    def test_a_mistyped_family_stops_the_app_at_start_up(
        self, start_app: StartApp, tmp_path: Path
    ) -> None:
        message = f"{self.where}: {self.prefix}STORE: unknown store family 'family:fiel:"
        with pytest.raises(ConfigurationError) as caught:
            start_app({"CLIENT_ID": "c", "STORE": f"family:fiel:{tmp_path}"})
        assert str(caught.value).startswith(message)
