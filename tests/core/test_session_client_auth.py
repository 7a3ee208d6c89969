"""PleoSession authenticates its client at the token endpoint: HTTP Basic or the form body."""

from __future__ import annotations

import base64
import json
import time
from typing import Any
from urllib.parse import parse_qs

import pytest
from support.session_doubles import CaptureServer, Seen
from support.session_helpers import MakeSession, issued

from pleo_auth import MemoryStore, PleoSession, TokenSet
from pleo_auth.testing import Emulator

# -- client authentication -------------------------------------------------------------------


def token_endpoint_reply(seen: Seen) -> tuple[int, dict[str, str], bytes]:
    body = {
        "access_token": "at_from_capture",
        "refresh_token": "rt_from_capture",
        "expires_in": 900,
        "token_type": "Bearer",
    }
    return 200, {}, json.dumps(body).encode()


def seeded_tokens() -> TokenSet:
    return TokenSet("at_seed", "rt_seed", expires_at=time.time() + 3600, issued_at=time.time())


@pytest.mark.parametrize("client_auth", [None, "basic"])
def test_client_auth_defaults_to_http_basic(client_auth: str | None) -> None:
    kwargs: dict[str, Any] = {} if client_auth is None else {"client_auth": client_auth}
    with (
        CaptureServer(token_endpoint_reply) as server,
        PleoSession(
            "client-1",
            "secret-1",
            store=MemoryStore(),
            token_url=server.url + "/oauth/token",
            api_url=server.url,
            tokens=seeded_tokens(),
            **kwargs,
        ) as session,
    ):
        session.refresh()
    (seen,) = server.seen
    assert (
        seen.headers["authorization"] == "Basic " + base64.b64encode(b"client-1:secret-1").decode()
    )
    form = parse_qs(seen.body.decode())
    assert form["grant_type"] == ["refresh_token"]
    assert form["refresh_token"] == ["rt_seed"]
    assert "client_secret" not in form


def test_client_auth_body_sends_client_id_and_secret_in_the_form() -> None:
    with (
        CaptureServer(token_endpoint_reply) as server,
        PleoSession(
            "client-1",
            "secret-1",
            store=MemoryStore(),
            token_url=server.url + "/oauth/token",
            api_url=server.url,
            tokens=seeded_tokens(),
            client_auth="body",
        ) as session,
    ):
        session.refresh()
    (seen,) = server.seen
    assert "authorization" not in seen.headers
    form = parse_qs(seen.body.decode())
    assert form["client_id"] == ["client-1"]
    assert form["client_secret"] == ["secret-1"]


def test_client_auth_body_refreshes_against_the_emulator(
    emulator: Emulator, make_session: MakeSession
) -> None:
    session = make_session(emulator, tokens=issued(emulator), client_auth="body")
    session.refresh()
    assert emulator.counters.refresh_grants == 1
    assert emulator.counters.rejected_refreshes == 0
