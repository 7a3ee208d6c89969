"""What the Flask and Django tests share: playing the browser at the emulator."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import requests


def approve(authorize_url: str) -> str:
    """Play the browser at the emulator: return the callback URL it redirects to."""
    response = requests.get(authorize_url, allow_redirects=False, timeout=10)
    assert response.status_code == 302, response.text
    return response.headers["Location"]


def local(url: str) -> str:
    """The path and query of an absolute URL on the app, for the test client."""
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


def next_of_connect(location: str, connect_path: str) -> str | None:
    """Asserts ``location`` is the connect view at ``connect_path``; returns its ``next``."""
    parts = urlsplit(location)
    assert parts.path == connect_path
    values = parse_qs(parts.query).get("next")
    return values[0] if values else None
