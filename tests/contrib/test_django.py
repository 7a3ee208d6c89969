"""Tests for pleo_auth.contrib.django: the web integration contract (tests/support/web_contract.py)
through Django's test client, with the real emulator and real stores; then what only
Django has (the system check, settings read at first use)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from support.django_project import configure
from support.web_contract import (
    PENDING_KEY,
    CompanyGrantsContract,
    Reply,
    StartApp,
    WebApp,
)

from pleo_auth import Company, ConfigurationError, Integration, PleoSession

django = pytest.importorskip("django")


@pytest.fixture(scope="module", autouse=True)
def django_settings() -> None:
    # The URLconf (support.django_urls) has the app's /employees/ view and pleo_auth's views.
    configure()


class DjangoApp(WebApp):
    def __init__(self, client: Any, overrides: contextlib.ExitStack):
        self.client = client
        self._overrides = overrides

    @staticmethod
    def _reply(response: Any) -> Reply:
        return Reply(
            status=response.status_code,
            location=response.get("Location"),
            text=response.content.decode(),
        )

    def get(self, path: str) -> Reply:
        return self._reply(self.client.get(path))

    def post(self, path: str) -> Reply:
        return self._reply(self.client.post(path))

    def pending(self) -> dict[str, Any]:
        return dict(self.client.session[PENDING_KEY])

    def session(self) -> PleoSession:
        from pleo_auth.contrib.django import get_session

        return get_session()

    def reconfigure(self, settings: Mapping[str, Any]) -> None:
        from django.test import override_settings

        self._overrides.enter_context(override_settings(PLEO_AUTH=dict(settings)))

    def company_session(self, company: Company | str) -> PleoSession:
        from pleo_auth.contrib.django import get_session

        return get_session(company)

    def integration(self) -> Integration:
        from pleo_auth.contrib.django import get_integration

        return get_integration()

    def value(self, key: str) -> Any:
        return self.client.session.get(key)

    def browser(self) -> WebApp:
        from django.test import Client

        return DjangoApp(Client(), self._overrides)


class TestDjangoIntegration(CompanyGrantsContract):
    connect_path = "/pleo/connect/"
    callback_url = "http://testserver/pleo/callback/"
    employees_path = "/employees/"
    where = "settings.PLEO_AUTH"
    prefix = ""
    framework_modules = ("django",)

    @pytest.fixture
    def start_app(self) -> Iterator[StartApp]:
        from django.test import Client, override_settings

        with contextlib.ExitStack() as overrides:

            def start(settings: Mapping[str, Any]) -> WebApp:
                overrides.enter_context(override_settings(PLEO_AUTH=dict(settings)))
                client = Client()
                # What Django does when the app starts (at its first request): build
                # the middleware, PleoAuthMiddleware included.
                client.handler.load_middleware()
                return DjangoApp(client, overrides)

            yield start

    def test_manage_py_check_passes_good_settings(self, app: WebApp) -> None:
        """Django only: ``manage.py check`` with the settings the contract's app runs on."""
        from django.core import checks

        assert checks.run_checks(tags=["pleo_auth"]) == []


# -- Django only ------------------------------------------------------------------------


def test_missing_settings_are_a_configuration_error_at_first_use() -> None:
    from django.test import override_settings

    from pleo_auth.contrib.django import get_session

    with (
        override_settings(PLEO_AUTH={"STORE": "file:/tmp/x.json"}),
        pytest.raises(ConfigurationError, match=r"settings.PLEO_AUTH: CLIENT_ID is required"),
    ):
        get_session()


def test_manage_py_check_reports_a_missing_pleo_auth() -> None:
    from django.conf import settings
    from django.core import checks

    assert not hasattr(settings, "PLEO_AUTH")
    errors = checks.run_checks(tags=["pleo_auth"])
    assert [error.id for error in errors] == ["pleo_auth.E001"]
    assert errors[0].msg == "settings.PLEO_AUTH must be a dict with at least CLIENT_ID"


def test_manage_py_check_reports_a_mistyped_store() -> None:
    from django.core import checks
    from django.test import override_settings

    with override_settings(PLEO_AUTH={"CLIENT_ID": "c", "STORE": "fiel:/tmp/x.json"}):
        errors = checks.run_checks(tags=["pleo_auth"])
    assert [error.id for error in errors] == ["pleo_auth.E001"]
    assert "unknown token store 'fiel:/tmp/x.json'" in errors[0].msg


# -- manage.py check over PLEO_AUTH values, each in a fresh interpreter ------------------

_CHECK = """
import json, sys
import django
from django.conf import settings
settings.configure(DEBUG=False, SECRET_KEY="test-only", INSTALLED_APPS=[], DATABASES={},
                   PLEO_AUTH=eval(sys.argv[1]))
django.setup()
from django.core import checks
import pleo_auth.contrib.django  # registers the check
print(json.dumps([[error.id, error.msg] for error in checks.run_checks(tags=["pleo_auth"])]))
"""


def _check(values: str) -> list[list[str]]:
    """What ``manage.py check`` reports for ``PLEO_AUTH = <values>`` (Python source):
    [id, message] pairs. In a fresh interpreter with its own settings.configure,
    so Django's global settings in this one stay as the tests above set them."""
    run = subprocess.run(
        [sys.executable, "-c", _CHECK, values], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    reported: list[list[str]] = json.loads(run.stdout)
    return reported


def test_manage_py_check_reports_a_key_that_is_not_a_string_instead_of_crashing(
    tmp_path: Path,
) -> None:
    values = {"CLIENT_ID": "client-1", "STORE": f"file:{tmp_path}/t.json", 1: "x"}

    assert _check(repr(values)) == [
        ["pleo_auth.E001", "settings.PLEO_AUTH: setting names must be strings, not 1"]
    ]


@pytest.mark.parametrize(
    ("redirect_uri", "reason"),
    [
        ("not a url", "must be an absolute http(s) URL with a host, not a URL without a scheme"),
        (
            "ftp://example.com/callback",
            "must be an absolute http(s) URL with a host, not a ftp: URL",
        ),
        ("https://example.com/callback#here", "must not have a #fragment"),
    ],
)
def test_manage_py_check_reports_a_redirect_uri_no_login_could_use(
    redirect_uri: str, reason: str, tmp_path: Path
) -> None:
    """Found at start-up, as a mistyped STORE is: not as a 500 at every connect."""
    values = {
        "CLIENT_ID": "client-1",
        "STORE": f"file:{tmp_path}/t.json",
        "REDIRECT_URI": redirect_uri,
    }

    assert _check(repr(values)) == [
        ["pleo_auth.E001", f"settings.PLEO_AUTH: REDIRECT_URI {reason}"]
    ]


def test_manage_py_check_passes_good_settings_in_a_fresh_interpreter(tmp_path: Path) -> None:
    values = {
        "CLIENT_ID": "client-1",
        "STORE": f"file:{tmp_path}/t.json",
        "REDIRECT_URI": "https://app.example/pleo/callback",
    }

    assert _check(repr(values)) == []
