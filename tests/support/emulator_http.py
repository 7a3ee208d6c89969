"""Requests to the emulator over real HTTP, shared by the emulator's tests: a
refresh, an API call, a PKCE pair, the authorize redirect, and the code exchange;
and an AuthorizationFlow of the emulator's client over one store."""

from __future__ import annotations

import base64
import hashlib
import secrets
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests

from pleo_auth import TokenStore
from pleo_auth.flow import AuthorizationFlow
from pleo_auth.testing import Emulator

REDIRECT_URI = "http://127.0.0.1:8765/callback"


def refresh(
    http: requests.Session, emu: Emulator, refresh_token: str, **kwargs: Any
) -> requests.Response:
    return http.post(
        emu.token_url,
        data={"grant_type": "refresh_token", "refresh_token": refresh_token},
        auth=(emu.client_id, emu.client_secret or ""),
        **kwargs,
    )


def api(
    http: requests.Session, emu: Emulator, access_token: str, path: str = "/v2/employees"
) -> requests.Response:
    return http.get(emu.api_url + path, headers={"Authorization": f"Bearer {access_token}"})


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def authorize(http: requests.Session, emu: Emulator, **overrides: str | None) -> dict[str, str]:
    """Run /oauth/authorize and return the query of the redirect it answers."""
    params: dict[str, str | None] = {
        "response_type": "code",
        "client_id": emu.client_id,
        "redirect_uri": REDIRECT_URI,
        "scope": "users:read export-jobs:read",
        "state": "st-123",
        "code_challenge_method": "S256",
    }
    params.update(overrides)
    response = http.get(emu.authorize_url, params=params, allow_redirects=False)
    assert response.status_code == 302
    location = response.headers["Location"]
    redirect = overrides.get("redirect_uri", REDIRECT_URI)
    assert redirect is not None
    assert location.startswith(redirect.split("?")[0] + "?")
    return {name: values[0] for name, values in parse_qs(urlsplit(location).query).items()}


def exchange(
    http: requests.Session,
    emu: Emulator,
    code: str,
    verifier: str | None,
    redirect_uri: str = REDIRECT_URI,
) -> requests.Response:
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
    if verifier is not None:
        data["code_verifier"] = verifier
    return http.post(emu.token_url, data=data, auth=(emu.client_id, emu.client_secret or ""))


def code_for(http: requests.Session, emu: Emulator) -> tuple[str, str]:
    verifier, challenge = pkce_pair()
    return authorize(http, emu, code_challenge=challenge)["code"], verifier


def flow_over(emulator: Emulator, store: TokenStore) -> AuthorizationFlow:
    """A flow of the emulator's client that saves its logins to ``store``."""
    return AuthorizationFlow(
        emulator.client_id,
        emulator.client_secret,
        redirect_uri=REDIRECT_URI,
        store=store,
        token_url=emulator.token_url,
        api_url=emulator.api_url,
    )
