"""The emulator's endpoints beside the token endpoint: token introspection on the
authorisation server, and the API (``/v...``) with ``GET /v1/introspect`` and
``DELETE /v1/installations/me``."""

from __future__ import annotations

from typing import Any

from ._grants import _TokenRules
from ._server import _Request, _Response
from ._state import _Grant
from ._wire import (
    _EMPLOYEES_BODY,
    _NO_STORE,
    _UNAUTHORIZED,
    _authenticate,
    _dumps,
    _FormError,
    _oauth_error,
    _parse_form,
)

#: What ``GET /v1/introspect`` reports as ``applicationName``.
APPLICATION_NAME = "pleo-auth emulator"

#: What ``GET /v1/introspect`` reports as ``authMethod`` for an OAuth token. Pleo's
#: reference shows only ``"API_KEY"`` in its example; the OAuth value is a guess.
_AUTH_METHOD = "OAUTH"

_SUBJECT_URN = "urn:pleo:params:oauth:subject_urn"


class _ApiEndpoints(_TokenRules):
    """Introspection and the API; the emulator routes requests here."""

    _client_id: str
    _client_secret: str | None
    #: Arrival times of API requests (emulator's monotonic clock), once recording.
    _api_log: list[float] | None = None
    #: API requests still to answer 429, and the Retry-After they carry.
    _api_throttle: tuple[int, float | None] = (0, None)

    def record_api_requests(self) -> None:
        """Keep the arrival time of every API request from now on (see
        :meth:`api_request_times`); for rate-limit tests."""
        with self._lock:
            if self._api_log is None:
                self._api_log = []

    def api_request_times(self) -> list[float]:
        """Arrival times, on the emulator's monotonic clock, of the API requests
        (``/v...``, answered or not) since :meth:`record_api_requests`."""
        with self._lock:
            return list(self._api_log or ())

    def throttle_api(self, count: int = 1, *, retry_after: float | None = 1.0) -> None:
        """Answer the next ``count`` API requests 429 Too Many Requests, with
        ``Retry-After: <retry_after>`` (none when None). Pleo documents no rate
        limit headers; this is the standard form."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError("count must be an integer >= 0")
        with self._lock:
            self._api_throttle = (count, retry_after)

    def _introspect(self, request: _Request) -> _Response:
        if request.method != "POST":
            return _oauth_error(405, "invalid_request", "use POST", (("Allow", "POST"),))
        try:
            form = _parse_form(request)
        except _FormError as exc:
            return _oauth_error(400, "invalid_request", str(exc))
        error = _authenticate(request, form, self._client_id, self._client_secret)
        if error is not None:
            return error
        token = form.get("token")
        if token is None:
            return _oauth_error(400, "invalid_request", "token is required")
        with self._lock:
            reply = self._introspection_locked(token)
        return _Response(200, _dumps(reply), headers=_NO_STORE)

    def _introspection_locked(self, token: str) -> dict[str, Any]:
        now = self._clock.monotonic()
        grant = self._grants_by_access.get(token)
        if grant is not None and now < grant.access_expires_at:
            return {
                **self._subject(grant),
                "token_type": "Bearer",
                "iat": int(grant.issued_at),
                "exp": int(self._clock.time() + (grant.access_expires_at - now)),
            }
        grant = self._grants_by_refresh.get(token)
        if grant is not None and not grant.revoked and grant.refresh_token == token:
            return {**self._subject(grant), "token_type": "refresh_token"}
        return {"active": False}

    def _subject(self, grant: _Grant) -> dict[str, Any]:
        return {
            "active": True,
            "scope": grant.scope,
            "client_id": self._client_id,
            "sub": grant.company.rpartition(":")[2],
            _SUBJECT_URN: grant.company,
        }

    def _api(self, request: _Request) -> _Response:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        with self._lock:
            self._tally.api_requests += 1
            if self._api_log is not None:
                self._api_log.append(self._clock.monotonic())
            throttled, retry_after = self._api_throttle
            if throttled:
                self._api_throttle = (throttled - 1, retry_after)
                self._tally.api_throttled += 1
                return _throttled(retry_after)
            grant = self._grants_by_access.get(token) if scheme.lower() == "bearer" else None
            if grant is None or self._clock.monotonic() >= grant.access_expires_at:
                self._tally.unauthorized += 1
                return _UNAUTHORIZED
            self._company_tally(grant.company).api_requests += 1
            if request.path == "/v1/installations/me" and request.method == "DELETE":
                return self._delete_installation_locked(grant.company)
        return self._api_reply(request, grant)

    def _delete_installation_locked(self, company: str) -> _Response:
        """End the company's installation: every grant of it dies."""
        self._revoke_company(company)
        self._tally.installations_deleted += 1
        self._company_tally(company).installations_deleted += 1
        return _Response(204)

    def _api_reply(self, request: _Request, grant: _Grant) -> _Response:
        if request.path == "/v2/employees" and request.method == "GET":
            return _Response(200, _EMPLOYEES_BODY)
        if request.path == "/v1/introspect" and request.method == "GET":
            data = {
                "authMethod": _AUTH_METHOD,
                "clientId": self._client_id,
                "scope": grant.scope,
                "applicationName": APPLICATION_NAME,
                "subjectURN": grant.company,
            }
            return _Response(200, _dumps({"data": data}))
        echo: dict[str, Any] = {"ok": True, "method": request.method, "path": request.path}
        if request.body:
            echo["body_length"] = len(request.body)
        return _Response(200, _dumps(echo))


def _throttled(retry_after: float | None) -> _Response:
    headers = () if retry_after is None else (("Retry-After", f"{retry_after:g}"),)
    return _Response(429, _dumps({"message": "Too Many Requests"}), headers=headers)
