"""Tests for pleo_auth.contrib.django: Django's test client, the real emulator, a FileStore."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from web_helpers import approve, local, next_of_connect

from pleo_auth import ConfigurationError, FileStore, PleoSession
from pleo_auth.testing import Emulator

django = pytest.importorskip("django")


def employees(request: Any) -> Any:
    from django.http import JsonResponse

    from pleo_auth.contrib.django import get_session

    return JsonResponse(get_session().get("/v2/employees").json())


class Urls:
    """The test's ROOT_URLCONF: the app's own view and pleo_auth's views."""

    @staticmethod
    def patterns() -> list[Any]:
        from django.urls import include, path

        return [
            path("employees/", employees),
            path("pleo/", include("pleo_auth.contrib.django")),
        ]


@pytest.fixture(scope="module", autouse=True)
def django_settings() -> None:
    from django.conf import settings

    if not settings.configured:
        Urls.urlpatterns = Urls.patterns()  # type: ignore[attr-defined]
        settings.configure(
            DEBUG=False,
            SECRET_KEY="test-only",
            ALLOWED_HOSTS=["testserver"],
            ROOT_URLCONF=Urls,
            INSTALLED_APPS=[],
            DATABASES={},
            MIDDLEWARE=[
                "django.contrib.sessions.middleware.SessionMiddleware",
                "pleo_auth.contrib.django.PleoAuthMiddleware",
            ],
            SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies",
            USE_TZ=True,
        )
        django.setup()


def redirected_to_connect(location: str) -> str | None:
    """Asserts ``location`` is the connect view; returns its ``next``."""
    return next_of_connect(location, "/pleo/connect/")


@pytest.fixture
def token_path(tmp_path: Path) -> Path:
    return tmp_path / "tokens.json"


@pytest.fixture
def pleo_settings(emulator: Emulator, token_path: Path) -> Iterator[dict[str, Any]]:
    from django.test import override_settings

    values = {
        "CLIENT_ID": emulator.client_id,
        "CLIENT_SECRET": emulator.client_secret,
        "STORE": f"file:{token_path}",
        "SCOPES": ["users:read"],
        "TOKEN_URL": emulator.token_url,
        "API_URL": emulator.api_url,
        "AUTHORIZE_URL": emulator.authorize_url,
    }
    with override_settings(PLEO_AUTH=values):
        yield values


@pytest.fixture
def client(pleo_settings: dict[str, Any]) -> Any:
    from django.test import Client

    return Client()


def connect(client: Any, emulator: Emulator, path: str = "/pleo/connect/") -> str:
    """connect -> emulator -> callback; returns where the callback redirected."""
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"].startswith(emulator.authorize_url + "?")
    callback = approve(response["Location"])
    assert callback.startswith("http://testserver/pleo/callback/?")
    response = client.get(local(callback))
    assert response.status_code == 302, response.content
    return str(response["Location"])


def test_connect_callback_and_an_api_call_through_the_shared_session(
    client: Any, emulator: Emulator, token_path: Path
) -> None:
    assert connect(client, emulator, "/pleo/connect/?next=/employees/") == "/employees/"
    stored = FileStore(token_path).load()
    assert stored is not None
    assert stored.scope == "users:read"
    response = client.get("/employees/")
    assert response.status_code == 200
    assert response.json()["pagination"]["total"] == 3
    assert emulator.counters.code_exchanges == 1


def test_a_revoked_grant_redirects_to_connect_and_a_new_login_recovers(
    client: Any, emulator: Emulator
) -> None:
    connect(client, emulator)
    assert client.get("/employees/").status_code == 200

    emulator.revoke_all()
    response = client.get("/employees/")
    assert response.status_code == 302
    assert redirected_to_connect(response["Location"]) == "/employees/"

    assert connect(client, emulator, response["Location"]) == "/employees/"
    assert client.get("/employees/").status_code == 200
    counters = emulator.counters
    assert counters.code_exchanges == 2
    assert counters.rejected_refreshes == 1
    assert counters.reuse_detections == 0
    assert counters.unauthorized == 1


def test_without_tokens_a_view_redirects_to_connect(client: Any) -> None:
    response = client.get("/employees/?page=2")
    assert response.status_code == 302
    assert redirected_to_connect(response["Location"]) == "/employees/?page=2"


def test_a_post_that_needs_a_login_redirects_to_connect_without_next(client: Any) -> None:
    response = client.post("/employees/")
    assert response.status_code == 302
    assert response["Location"] == "/pleo/connect/"


def test_after_connect_goes_to_the_configured_page(
    pleo_settings: dict[str, Any], emulator: Emulator
) -> None:
    from django.test import Client, override_settings

    with override_settings(PLEO_AUTH={**pleo_settings, "AFTER_CONNECT": "/dashboard/"}):
        assert connect(Client(), emulator) == "/dashboard/"


def test_next_pointing_off_site_is_ignored(client: Any, emulator: Emulator) -> None:
    assert connect(client, emulator, "/pleo/connect/?next=https://evil.example/") == "/"


def test_the_pending_login_lives_in_the_session_not_the_url(client: Any) -> None:
    response = client.get("/pleo/connect/")
    pending = client.session["pleo_auth.pending"]
    assert pending["code_verifier"] not in response["Location"]
    assert pending["state"] in response["Location"]


def test_a_callback_without_a_pending_login_is_refused(client: Any, token_path: Path) -> None:
    response = client.get("/pleo/callback/?code=abc&state=def")
    assert response.status_code == 400
    assert b"No Pleo login in progress" in response.content
    assert not token_path.exists()


def test_a_callback_with_another_state_is_refused(
    client: Any, emulator: Emulator, token_path: Path
) -> None:
    response = client.get("/pleo/connect/")
    callback = approve(response["Location"]).replace("state=", "state=x", 1)
    response = client.get(local(callback))
    assert response.status_code == 400
    assert b"state does not match" in response.content
    assert not token_path.exists()
    assert emulator.counters.token_requests == 0


def test_a_denied_login_shows_pleos_error(client: Any, token_path: Path) -> None:
    client.get("/pleo/connect/")
    state = client.session["pleo_auth.pending"]["state"]
    query = urlencode({"error": "access_denied", "error_description": "No <b>", "state": state})
    response = client.get(f"/pleo/callback/?{query}")
    assert response.status_code == 400
    assert b"access_denied" in response.content
    assert b"No &lt;b&gt;" in response.content
    assert not token_path.exists()


def test_every_thread_gets_the_same_shared_session(pleo_settings: dict[str, Any]) -> None:
    from pleo_auth.contrib.django import get_session

    barrier = threading.Barrier(8)
    seen: list[PleoSession] = []
    lock = threading.Lock()

    def grab() -> None:
        barrier.wait()
        session = get_session()
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
    pleo_settings: dict[str, Any], tmp_path: Path
) -> None:
    from django.test import override_settings

    from pleo_auth.contrib.django import get_session

    before = get_session()
    other = tmp_path / "other.json"
    with override_settings(PLEO_AUTH={**pleo_settings, "STORE": f"file:{other}"}):
        after = get_session()
        assert after is not before
        assert isinstance(after.store, FileStore)
        assert after.store.path == other


def test_missing_settings_are_a_configuration_error() -> None:
    from django.test import override_settings

    from pleo_auth.contrib.django import get_session

    with (
        override_settings(PLEO_AUTH={"STORE": "file:/tmp/x.json"}),
        pytest.raises(ConfigurationError, match=r"settings.PLEO_AUTH: CLIENT_ID is required"),
    ):
        get_session()


def test_importing_pleo_auth_does_not_import_django() -> None:
    code = (
        "import sys, pleo_auth, pleo_auth.contrib, pleo_auth.cli, pleo_auth.flow; "
        "print(sorted(m for m in ('django',) if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_manage_py_check_reports_a_mistyped_store() -> None:
    from django.core import checks
    from django.test import override_settings

    with override_settings(PLEO_AUTH={"CLIENT_ID": "c", "STORE": "fiel:/tmp/x.json"}):
        errors = checks.run_checks(tags=["pleo_auth"])
    assert [error.id for error in errors] == ["pleo_auth.E001"]
    assert "unknown token store 'fiel:/tmp/x.json'" in errors[0].msg


def test_manage_py_check_passes_good_settings(pleo_settings: dict[str, Any]) -> None:
    from django.core import checks

    assert checks.run_checks(tags=["pleo_auth"]) == []


def test_the_middleware_refuses_bad_settings_when_the_app_starts() -> None:
    from django.test import override_settings

    from pleo_auth.contrib.django import PleoAuthMiddleware

    with (
        override_settings(PLEO_AUTH={"CLIENT_ID": "c", "STORE": "fiel:/tmp/x.json"}),
        pytest.raises(ConfigurationError, match="unknown token store"),
    ):
        PleoAuthMiddleware(lambda request: None)  # Django builds it once, at start-up


def test_a_dead_grant_names_the_connect_view(
    pleo_settings: dict[str, Any], emulator: Emulator
) -> None:
    from pleo_auth import ReauthenticationRequired
    from pleo_auth.contrib.django import get_session

    with pytest.raises(ReauthenticationRequired) as caught:
        get_session().get("/v2/employees")
    assert caught.value.login is not None
    assert caught.value.login.view == "/pleo/connect/"
    assert str(caught.value).endswith("Log in at /pleo/connect/.")
