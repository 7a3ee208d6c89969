"""What the emulator says and reads on the wire: token-endpoint forms, client
authentication, the authorize request and PKCE, OAuth error replies and HTML
pages, and the emulated API's canned replies."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import html
import json
import re
from collections.abc import Mapping
from urllib.parse import parse_qs, unquote_plus, urlencode, urlsplit, urlunsplit

from ._server import _Request, _Response

_VERIFIER_RE = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
# BASE64URL(SHA256(verifier)) without padding is always 43 characters.
_CHALLENGE_RE = re.compile(r"[A-Za-z0-9_-]{43}")

_JSON = "application/json"
_NO_STORE = (("Cache-Control", "no-store"), ("Pragma", "no-cache"))


def _dumps(payload: object) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def _grant_type(request: _Request) -> str | None:
    """The form's grant_type, read leniently (for hooks; the grant reads it strictly)."""
    try:
        values = parse_qs(request.body.decode("utf-8")).get("grant_type")
    except UnicodeDecodeError:
        return None
    return values[0] if values else None


def _lenient_form(request: _Request) -> dict[str, str]:
    """The form's fields, read leniently (to attribute a refused request to a company)."""
    return _single_values(request.body.decode("utf-8", "replace"))[0]


class _FormError(Exception):
    """A request that cannot be read as a token-endpoint form."""


def _number(value: float) -> int | float:
    """Report an integral value as an int, anything else as a float."""
    return int(value) if float(value).is_integer() else float(value)


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _single_values(query: str) -> tuple[dict[str, str], set[str]]:
    """Parse a query or form body.

    Returns:
        The parameters, and the names that were repeated. Parameters without
        a value count as omitted (RFC 6749 section 3.1).
    """
    parsed = parse_qs(query, keep_blank_values=False)
    repeated = {name for name, values in parsed.items() if len(values) > 1}
    return {name: values[0] for name, values in parsed.items()}, repeated


def _parse_form(request: _Request) -> dict[str, str]:
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        raise _FormError("expected Content-Type application/x-www-form-urlencoded")
    try:
        text = request.body.decode("utf-8")
    except UnicodeDecodeError:
        raise _FormError("the form is not UTF-8") from None
    form, repeated = _single_values(text)
    if repeated:
        raise _FormError("repeated parameter: " + ", ".join(sorted(repeated)))
    return form


def _oauth_error(
    status: int, error: str, description: str, headers: tuple[tuple[str, str], ...] = ()
) -> _Response:
    body = _dumps({"error": error, "error_description": description})
    return _Response(status, body, headers=_NO_STORE + headers)


def _invalid_client(description: str) -> _Response:
    return _oauth_error(401, "invalid_client", description, (("WWW-Authenticate", "Basic"),))


def _valid_redirect_uri(uri: str) -> bool:
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and not parts.fragment


def _with_query(uri: str, params: Mapping[str, str]) -> str:
    parts = urlsplit(uri)
    extra = urlencode(params)
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit(parts._replace(query=query))


def _page(status: int, message: str) -> _Response:
    text = f"<!doctype html><title>Error</title><h1>{status}</h1><p>{html.escape(message)}</p>"
    return _Response(status, text.encode(), content_type="text/html; charset=utf-8")


def _authenticate(
    request: _Request, form: Mapping[str, str], known_id: str, known_secret: str | None
) -> _Response | None:
    """Check client credentials (Basic, or in the form body) against the one known client.

    Returns:
        An error response, or None when the client is authenticated.
    """
    authorization = request.headers.get("authorization")
    if authorization is not None:
        scheme, _, encoded = authorization.partition(" ")
        if scheme.lower() != "basic":
            return _invalid_client("use HTTP Basic client authentication")
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return _invalid_client("malformed Basic credentials")
        raw_id, colon, raw_secret = decoded.partition(":")
        if not colon:
            return _invalid_client("malformed Basic credentials")
        if "client_secret" in form:
            return _oauth_error(
                400, "invalid_request", "use one client authentication method, not two"
            )
        client_id: str | None = unquote_plus(raw_id)
        secret: str | None = unquote_plus(raw_secret)
        if "client_id" in form and form["client_id"] != client_id:
            return _invalid_client("client_id in the body differs from Basic")
    else:
        client_id = form.get("client_id")
        secret = form.get("client_secret")
    if client_id is None:
        return _invalid_client("client authentication required")
    ok = hmac.compare_digest(client_id.encode(), known_id.encode())
    if known_secret is None:
        ok = ok and not secret
    else:
        expected = known_secret.encode()
        ok = ok and secret is not None and hmac.compare_digest(secret.encode(), expected)
    return None if ok else _invalid_client("unknown client or wrong secret")


def _authorize_refusal(
    params: Mapping[str, str], repeated: set[str], *, pkce_required: bool
) -> tuple[str, str] | None:
    """Why an authorize request (known client, valid redirect) is refused, as the
    OAuth ``error`` and ``error_description`` sent back to the redirect; None if not."""
    if repeated:
        return "invalid_request", "repeated parameter: " + ", ".join(sorted(repeated))
    response_type = params.get("response_type")
    if response_type is None:
        return "invalid_request", "response_type is required"
    if response_type != "code":
        return "unsupported_response_type", "only response_type=code is supported"
    challenge = params.get("code_challenge")
    method = params.get("code_challenge_method")
    if challenge is None:
        if pkce_required:
            return "invalid_request", "code_challenge is required (PKCE, S256)"
        if method is not None:
            return "invalid_request", "code_challenge_method without code_challenge"
        return None
    # RFC 7636: an absent method means "plain", which Pleo refuses.
    if (method or "plain") != "S256":
        return "invalid_request", "code_challenge_method must be S256"
    if not _CHALLENGE_RE.fullmatch(challenge):
        return "invalid_request", "malformed code_challenge"
    return None


# -- the emulated API's canned replies ------------------------------------------------

_EMPLOYEES_BODY = _dumps(
    {
        "data": [
            {
                "id": "0b6c2f4e-6d1a-4c53-9a51-2d8f0d6c1a01",
                "firstName": "Ada",
                "lastName": "Lovelace",
                "email": "ada@example.com",
            },
            {
                "id": "5e1f3b7a-2c4d-4e8f-8a9b-0c1d2e3f4a02",
                "firstName": "Grace",
                "lastName": "Hopper",
                "email": "grace@example.com",
            },
            {
                "id": "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c03",
                "firstName": "Alan",
                "lastName": "Turing",
                "email": "alan@example.com",
            },
        ],
        "pagination": {
            "hasPreviousPage": False,
            "hasNextPage": False,
            "startCursor": None,
            "endCursor": None,
            "total": 3,
        },
    }
)

_INDEX_BODY = _dumps(
    {
        "name": "pleo_auth emulator of Pleo's OAuth 2.0 server",
        "endpoints": {
            "GET /oauth/authorize": "authorization code + PKCE (S256); auto-approves",
            "POST /oauth/token": "grant_type=authorization_code or refresh_token",
            "POST /oauth/token/introspect": "RFC 7662 introspection (form field token)",
            "GET /v1/introspect": "the token's client, scope and company; needs a Bearer token",
            "DELETE /v1/installations/me": "ends the token's company's installation",
            "GET /v2/employees": "a small fixed list; needs a Bearer access token",
            "/v...": "any other API path; needs a Bearer access token; echoes the request",
        },
    }
)

_UNAUTHORIZED = _Response(
    401,
    _dumps({"error": "invalid_token"}),
    headers=(("WWW-Authenticate", 'Bearer error="invalid_token"'),),
)
