"""The emulator's OAuth endpoints: ``/oauth/authorize`` and ``/oauth/token``
(with the token endpoint's faults and capacity), and the router of every request."""

from __future__ import annotations

import secrets
import threading
import time
from collections import deque
from collections.abc import Callable

from ._api import _ApiEndpoints
from ._capacity import TokenCapacity, _Admission
from ._companies import company_urn
from ._fault import Fault
from ._server import _Request, _Response
from ._state import _Code
from ._wire import (
    _INDEX_BODY,
    _authenticate,
    _authorize_refusal,
    _dumps,
    _FormError,
    _grant_type,
    _lenient_form,
    _oauth_error,
    _page,
    _parse_form,
    _single_values,
    _valid_redirect_uri,
    _with_query,
)

#: Seconds an authorization code stays redeemable, on the emulator's clock.
CODE_LIFETIME = 60.0

_API_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})

#: The authorize parameter that names the company to authorise.
_SUBJECT_PARAMETER = "urn_pleo_params_oauth_subject"


def _chosen_company(subject: str | None) -> str | None:
    """The company an authorize request pre-selects: its subject, if that names a
    company. Another subject is a hint the login page cannot use, so it is
    ignored, and the user picks a company as if none were given."""
    if subject is None:
        return None
    try:
        return company_urn(subject)
    except ValueError:
        return None


class _OAuthEndpoints(_ApiEndpoints):
    """The authorisation server's endpoints; the emulator's state is declared here
    and set up by :class:`~pleo_auth.testing.Emulator`."""

    _pkce_required: bool
    _company: str
    _capacity: TokenCapacity | None
    _admission: _Admission
    _faults: deque[Fault]
    _token_hook: Callable[[str | None], object] | None
    _lifecycle_lock: threading.Lock

    # -- HTTP --------------------------------------------------------------

    def _handle(self, request: _Request) -> _Response:
        """Route one request; called from the server's connection threads."""
        path = request.path
        if path == "/oauth/token":
            return self._token_endpoint(request)
        if path == "/oauth/token/introspect":
            return self._introspect(request)
        if path == "/oauth/authorize":
            return self._authorize(request)
        if path.startswith("/v") and request.method in _API_METHODS:
            return self._api(request)
        if path == "/" and request.method == "GET":
            return _Response(200, _INDEX_BODY)
        return _Response(404, _dumps({"error": "not_found", "path": path}))

    def _token_endpoint(self, request: _Request) -> _Response:
        """Admit the request (a capacity may refuse or hold it), then handle it."""
        with self._lock:
            capacity = self._capacity
        if capacity is None:
            return self._token_admitted(request)
        decision = self._admission.enter(capacity)
        if not decision.admitted:
            return self._throttled(request, decision.retry_after)
        try:
            if decision.delayed:
                with self._lock:
                    self._tally.delayed += 1
            return self._token_admitted(request)
        finally:
            self._admission.leave()

    def _throttled(self, request: _Request, retry_after: str) -> _Response:
        """The 429 of a request over capacity; nothing of it is spent."""
        form = _lenient_form(request)
        with self._lock:
            self._tally.token_requests += 1
            self._tally.throttled += 1
            company = self._company_of(form)
            if company is not None:
                self._company_tally(company).throttled += 1
        return _oauth_error(
            429,
            "temporarily_unavailable",
            "the token endpoint is over capacity; retry later",
            (("Retry-After", retry_after),),
        )

    def _token_admitted(self, request: _Request) -> _Response:
        with self._lock:
            hook = self._token_hook
        if hook is not None:
            hook(_grant_type(request))
        with self._lock:
            self._tally.token_requests += 1
            fault = self._faults.popleft() if self._faults else None
            if fault is not None:
                self._tally.faults_served += 1
        if fault is None:
            return self._token_grant(request)
        if fault.after_grant:
            reply = self._token_grant(request)
            if fault.delay:
                time.sleep(fault.delay)
            return fault._spoil(reply)
        if fault.delay:
            time.sleep(fault.delay)
        if not fault.replaces_reply:
            return self._token_grant(request)
        return fault._spoil(None)

    def _token_grant(self, request: _Request) -> _Response:
        if request.method != "POST":
            return _oauth_error(405, "invalid_request", "use POST", (("Allow", "POST"),))
        try:
            form = _parse_form(request)
        except _FormError as exc:
            return _oauth_error(400, "invalid_request", str(exc))
        grant_type = form.get("grant_type")
        response = _authenticate(request, form, self._client_id, self._client_secret)
        if response is None:
            if grant_type == "refresh_token":
                response = self._refresh(form)
            elif grant_type == "authorization_code":
                response = self._exchange_code(form)
            elif grant_type is None:
                response = _oauth_error(400, "invalid_request", "grant_type is required")
            else:
                response = _oauth_error(
                    400, "unsupported_grant_type", "use authorization_code or refresh_token"
                )
        if grant_type == "refresh_token" and response.status != 200:
            with self._lock:
                self._tally.rejected_refreshes += 1
                company = self._company_of(form)
                if company is not None:
                    self._company_tally(company).rejected_refreshes += 1
        return response

    def _authorize(self, request: _Request) -> _Response:
        if request.method != "GET":
            return _page(405, "use GET")
        params, repeated = _single_values(request.query)
        client_id = params.get("client_id")
        redirect_uri = params.get("redirect_uri")
        if client_id != self._client_id or "client_id" in repeated:
            return _page(400, "unknown client_id")
        if (
            redirect_uri is None
            or not _valid_redirect_uri(redirect_uri)
            or "redirect_uri" in repeated
        ):
            return _page(400, "redirect_uri must be one absolute http(s) URL without a fragment")

        state = params.get("state")

        def redirect(query: dict[str, str]) -> _Response:
            if state is not None:
                query["state"] = state
            location = _with_query(redirect_uri, query)
            return _Response(302, headers=(("Location", location), ("Cache-Control", "no-store")))

        def refuse(error: str, description: str) -> _Response:
            return redirect({"error": error, "error_description": description})

        refused = _authorize_refusal(params, repeated, pkce_required=self._pkce_required)
        if refused is not None:
            return refuse(*refused)

        company = _chosen_company(params.get(_SUBJECT_PARAMETER))
        code = "ac_" + secrets.token_urlsafe(32)
        with self._lock:
            entry = _Code(
                redirect_uri=redirect_uri,
                challenge=params.get("code_challenge"),
                scope=params.get("scope", ""),
                # Without a subject naming a company, the emulated user picks
                # the default company on the login page.
                company=company or self._company,
                expires_at=self._clock.monotonic() + CODE_LIFETIME,
            )
            now = self._clock.monotonic()
            for stale in [c for c, e in self._codes.items() if e.expires_at <= now]:
                del self._codes[stale]
            self._codes[code] = entry
        return redirect({"code": code})
