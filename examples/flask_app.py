"""A minimal Flask app that connects to Pleo and lists its employees.

Settings come from the environment. Try it against the local emulator:

    pleo-auth emulator                       # prints its URLs; leave it running
    export PLEO_CLIENT_ID=pleo-auth-demo PLEO_CLIENT_SECRET=demo-secret
    export PLEO_TOKEN_URL=http://127.0.0.1:PORT/oauth/token PLEO_API_URL=http://127.0.0.1:PORT
    export PLEO_STORE=file:/tmp/flask-example-tokens.json
    flask --app examples/flask_app run

Then open http://127.0.0.1:5000/ and follow "Connect to Pleo". Against Pleo itself,
set your own client id and secret, leave the URLs unset, and register
http://127.0.0.1:5000/pleo/callback as the integration's redirect URI.
"""

from __future__ import annotations

import os
import secrets

from flask import Flask, Response, jsonify

from pleo_auth.contrib.flask import PleoAuth, get_session

SETTINGS = (
    "PLEO_CLIENT_ID",
    "PLEO_CLIENT_SECRET",
    "PLEO_STORE",
    "PLEO_ENVIRONMENT",
    "PLEO_SCOPES",
    "PLEO_TOKEN_URL",
    "PLEO_API_URL",
    "PLEO_AUTHORIZE_URL",
)


def create_app() -> Flask:
    app = Flask(__name__)
    # Flask's session carries the pending login between /pleo/connect and /pleo/callback.
    app.config["SECRET_KEY"] = os.environ.get("FLASK_SECRET_KEY") or secrets.token_hex(32)
    app.config["PLEO_SCOPES"] = "users:read"
    app.config.update({key: os.environ[key] for key in SETTINGS if os.environ.get(key)})
    PleoAuth(app)  # adds /pleo/connect, /pleo/callback and the ReauthenticationRequired handler

    @app.get("/")
    def index() -> str:
        return (
            "<h1>Pleo example</h1>"
            "<p><a href='/pleo/connect'>Connect to Pleo</a> · "
            "<a href='/employees'>Employees</a></p>"
        )

    @app.get("/employees")
    def employees() -> Response:
        # No tokens, or a dead grant? The view raises ReauthenticationRequired and
        # PleoAuth redirects the person to /pleo/connect?next=/employees.
        response = get_session().get("/v2/employees")
        response.raise_for_status()
        return jsonify(response.json())

    return app


app = create_app()

if __name__ == "__main__":
    app.run(port=5000)
