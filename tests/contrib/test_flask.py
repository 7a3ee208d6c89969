"""Tests for pleo_auth.contrib.flask: the web integration contract (tests/support/web_contract.py)
through Flask's test client, with the real emulator and real stores."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from flask import Flask, jsonify
from flask.testing import FlaskClient
from support.web_contract import (
    PENDING_KEY,
    CompanyGrantsContract,
    Reply,
    StartApp,
    WebApp,
)

from pleo_auth import Company, Integration, PleoSession
from pleo_auth.contrib.flask import PleoAuth, get_integration, get_session


def flask_app(settings: Mapping[str, Any]) -> Flask:
    """An app with ``settings`` as ``PLEO_*`` config, set up as the module docstring says;
    ``PleoAuth(app)`` raises on a bad setting."""
    app = Flask(__name__)
    app.config["SECRET_KEY"] = "test-only"
    app.config.update({f"PLEO_{key}": value for key, value in settings.items()})

    @app.get("/employees")
    def employees() -> object:
        return jsonify(get_session().get("/v2/employees").json())

    @app.post("/employees")
    def post_employees() -> object:
        return jsonify(get_session().get("/v2/employees").json())

    PleoAuth(app)
    return app


class FlaskApp(WebApp):
    def __init__(self, app: Flask):
        self.app = app
        self.client: FlaskClient = app.test_client()

    @staticmethod
    def _reply(response: Any) -> Reply:
        return Reply(
            status=response.status_code,
            location=response.headers.get("Location"),
            text=response.get_data(as_text=True),
        )

    def get(self, path: str) -> Reply:
        return self._reply(self.client.get(path))

    def post(self, path: str) -> Reply:
        return self._reply(self.client.post(path))

    def pending(self) -> dict[str, Any]:
        with self.client.session_transaction() as session:
            return dict(session[PENDING_KEY])

    def session(self) -> PleoSession:
        with self.app.app_context():
            return get_session()

    def reconfigure(self, settings: Mapping[str, Any]) -> None:
        self.app.config.update({f"PLEO_{key}": value for key, value in settings.items()})
        PleoAuth.reset(self.app)  # documented: after changing the config

    def company_session(self, company: Company | str) -> PleoSession:
        with self.app.app_context():
            return get_session(company)

    def integration(self) -> Integration:
        with self.app.app_context():
            return get_integration()

    def value(self, key: str) -> Any:
        with self.client.session_transaction() as session:
            return session.get(key)

    def browser(self) -> WebApp:
        return FlaskApp(self.app)


class TestFlaskIntegration(CompanyGrantsContract):
    connect_path = "/pleo/connect"
    callback_url = "http://localhost/pleo/callback"
    employees_path = "/employees"
    where = "app.config"
    prefix = "PLEO_"
    framework_modules = ("flask", "werkzeug")

    @pytest.fixture
    def start_app(self) -> Iterator[StartApp]:
        started: list[Flask] = []

        def start(settings: Mapping[str, Any]) -> WebApp:
            app = flask_app(settings)
            started.append(app)
            return FlaskApp(app)

        yield start
        for app in started:
            PleoAuth.reset(app)
