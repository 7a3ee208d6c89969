"""Tests for pleo_auth.contrib.flask: Flask's test client, the real emulator, a FileStore."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
from flask import Flask, jsonify
from flask.testing import FlaskClient
from web_helpers import approve, local, next_of_connect

from pleo_auth import ConfigurationError, FileStore, MemoryStore, PleoSession
from pleo_auth.contrib.flask import PleoAuth, get_session
from pleo_auth.testing import Emulator


def redirected_to_connect(location: str) -> str | None:
    """Asserts ``location`` is the connect view; returns its ``next``."""
    return next_of_connect(location, "/pleo/connect")


@pytest.fixture
def token_path(tmp_path: Path) -> Path:
    return tmp_path / "tokens.json"


@pytest.fixture
def app(emulator: Emulator, token_path: Path) -> Iterator[Flask]:
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY="test-only",
        PLEO_CLIENT_ID=emulator.client_id,
        PLEO_CLIENT_SECRET=emulator.client_secret,
        PLEO_STORE=f"file:{token_path}",
        PLEO_SCOPES="users:read",
        PLEO_TOKEN_URL=emulator.token_url,
        PLEO_API_URL=emulator.api_url,
        PLEO_AUTHORIZE_URL=emulator.authorize_url,
    )
    PleoAuth(app)

    @app.get("/employees")
    def employees() -> object:
        return jsonify(get_session().get("/v2/employees").json())

    @app.post("/employees")
    def post_employees() -> object:
        return jsonify(get_session().get("/v2/employees").json())

    yield app
    PleoAuth.reset(app)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def connect(client: FlaskClient, emulator: Emulator, path: str = "/pleo/connect") -> str:
    """connect -> emulator -> callback; returns where the callback redirected."""
    response = client.get(path)
    assert response.status_code == 302
    assert response.headers["Location"].startswith(emulator.authorize_url + "?")
    callback = approve(response.headers["Location"])
    assert callback.startswith("http://localhost/pleo/callback?")
    response = client.get(local(callback))
    assert response.status_code == 302, response.get_data(as_text=True)
    return response.headers["Location"]


def test_connect_callback_and_an_api_call_through_the_shared_session(
    client: FlaskClient, emulator: Emulator, token_path: Path
) -> None:
    assert connect(client, emulator, "/pleo/connect?next=/employees") == "/employees"
    stored = FileStore(token_path).load()
    assert stored is not None
    assert stored.scope == "users:read"
    response = client.get("/employees")
    assert response.status_code == 200
    assert response.get_json()["pagination"]["total"] == 3
    assert emulator.counters.code_exchanges == 1


def test_a_revoked_grant_redirects_to_connect_and_a_new_login_recovers(
    client: FlaskClient, emulator: Emulator
) -> None:
    connect(client, emulator)
    assert client.get("/employees").status_code == 200

    emulator.revoke_all()
    response = client.get("/employees")
    assert response.status_code == 302
    assert redirected_to_connect(response.headers["Location"]) == "/employees"

    assert connect(client, emulator, response.headers["Location"]) == "/employees"
    assert client.get("/employees").status_code == 200
    counters = emulator.counters
    assert counters.code_exchanges == 2
    assert counters.rejected_refreshes == 1
    assert counters.reuse_detections == 0
    assert counters.unauthorized == 1


def test_without_tokens_a_view_redirects_to_connect(client: FlaskClient) -> None:
    response = client.get("/employees?page=2")
    assert response.status_code == 302
    assert redirected_to_connect(response.headers["Location"]) == "/employees?page=2"


def test_a_post_that_needs_a_login_redirects_to_connect_without_next(
    client: FlaskClient,
) -> None:
    response = client.post("/employees")
    assert response.status_code == 302
    assert response.headers["Location"] == "/pleo/connect"


def test_after_connect_goes_to_the_root_by_default(client: FlaskClient, emulator: Emulator) -> None:
    assert connect(client, emulator) == "/"


def test_next_pointing_off_site_is_ignored(client: FlaskClient, emulator: Emulator) -> None:
    assert connect(client, emulator, "/pleo/connect?next=//evil.example/") == "/"


def test_the_pending_login_lives_in_the_session_not_the_url(
    client: FlaskClient, emulator: Emulator
) -> None:
    response = client.get("/pleo/connect")
    with client.session_transaction() as session:
        pending = session["pleo_auth.pending"]
    assert pending["code_verifier"] not in response.headers["Location"]
    assert pending["state"] in response.headers["Location"]


def test_a_callback_without_a_pending_login_is_refused(
    client: FlaskClient, token_path: Path
) -> None:
    response = client.get("/pleo/callback?code=abc&state=def")
    assert response.status_code == 400
    assert "No Pleo login in progress" in response.get_data(as_text=True)
    assert not token_path.exists()


def test_a_callback_with_another_state_is_refused(
    client: FlaskClient, emulator: Emulator, token_path: Path
) -> None:
    response = client.get("/pleo/connect")
    callback = approve(response.headers["Location"]).replace("state=", "state=x", 1)
    response = client.get(local(callback))
    assert response.status_code == 400
    assert "state does not match" in response.get_data(as_text=True)
    assert not token_path.exists()
    assert emulator.counters.token_requests == 0


def test_a_denied_login_shows_pleos_error(client: FlaskClient, token_path: Path) -> None:
    client.get("/pleo/connect")
    with client.session_transaction() as session:
        state = session["pleo_auth.pending"]["state"]
    query = urlencode({"error": "access_denied", "error_description": "No <b>", "state": state})
    response = client.get(f"/pleo/callback?{query}")
    page = response.get_data(as_text=True)
    assert response.status_code == 400
    assert "access_denied" in page
    assert "No &lt;b&gt;" in page
    assert not token_path.exists()


def test_every_thread_gets_the_same_shared_session(app: Flask) -> None:
    barrier = threading.Barrier(8)
    seen: list[PleoSession] = []
    lock = threading.Lock()

    def grab() -> None:
        with app.app_context():
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


def test_a_token_store_object_can_be_configured(emulator: Emulator) -> None:
    app = Flask(__name__)
    store = MemoryStore()
    app.config.update(
        SECRET_KEY="test-only",
        PLEO_CLIENT_ID=emulator.client_id,
        PLEO_CLIENT_SECRET=emulator.client_secret,
        PLEO_STORE=store,
        PLEO_TOKEN_URL=emulator.token_url,
        PLEO_API_URL=emulator.api_url,
    )
    PleoAuth(app)
    try:
        connect(app.test_client(), emulator)
        assert store.load() is not None
        with app.app_context():
            assert get_session().store is store
    finally:
        PleoAuth.reset(app)


def test_missing_client_id_is_a_configuration_error() -> None:
    app = Flask(__name__)
    app.config["SECRET_KEY"] = "test-only"
    # Checked when the extension is set up, not at the first request.
    with pytest.raises(ConfigurationError, match="CLIENT_ID is required"):
        PleoAuth(app)


def test_an_unknown_pleo_setting_is_a_configuration_error() -> None:
    app = Flask(__name__)
    app.config.update(PLEO_CLIENT_ID="c", PLEO_STORE="file:/tmp/x.json", PLEO_SCOPE="users:read")
    with pytest.raises(ConfigurationError, match="SCOPE"):
        PleoAuth(app)


def test_importing_pleo_auth_does_not_import_flask() -> None:
    code = (
        "import sys, pleo_auth, pleo_auth.contrib, pleo_auth.cli, pleo_auth.flow; "
        "print(sorted(m for m in ('flask', 'werkzeug') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_a_mistyped_store_stops_the_app_at_init(tmp_path: Path) -> None:
    app = Flask(__name__)
    app.config.update(PLEO_CLIENT_ID="c", PLEO_STORE=f"fiel:{tmp_path}/tokens.json")
    with pytest.raises(ConfigurationError, match=r"app\.config: PLEO_STORE: unknown token store"):
        PleoAuth(app)


def test_a_dead_grant_names_the_connect_view(app: Flask) -> None:
    from pleo_auth import ReauthenticationRequired

    with app.app_context(), pytest.raises(ReauthenticationRequired) as caught:
        get_session().get("/v2/employees")
    assert caught.value.login is not None
    assert caught.value.login.view == "/pleo/connect"
