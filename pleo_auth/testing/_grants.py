"""Pleo's token rules, as the emulator enforces them: every refresh rotates both
tokens and kills the old pair; a spent refresh token revokes its whole grant; a
code is redeemed once, before it expires, with its PKCE verifier."""

from __future__ import annotations

import hmac
import secrets
import threading
from collections.abc import Mapping
from typing import Any

from .._clock import Clock
from ._server import _Response
from ._state import _Code, _Grant, _GrantTally, _Tally
from ._wire import _NO_STORE, _VERIFIER_RE, _dumps, _number, _oauth_error, _s256


class _TokenRules:
    """The grant state and the rules that change it; the emulator's HTTP side
    parses requests and calls these. Every method named ``_..._locked`` and every
    state change runs under ``_lock``."""

    _lock: threading.Lock
    _clock: Clock
    _lifetime: float
    _grants_by_access: dict[str, _Grant]
    _grants_by_refresh: dict[str, _Grant]
    _pairs: dict[str, str]
    _live_grants: set[_Grant]
    _codes: dict[str, _Code]
    _tally: _Tally
    _company_tallies: dict[str, _GrantTally]
    _grants_by_company: dict[str, set[_Grant]]  # live grants only

    # -- state changes; the caller holds self._lock ------------------------

    def _company_tally(self, company: str) -> _GrantTally:
        tally = self._company_tallies.get(company)
        if tally is None:
            tally = self._company_tallies[company] = _GrantTally()
        return tally

    def _new_grant(self, scope: str, company: str) -> dict[str, Any]:
        grant = _Grant(scope, company, "", 0.0, "")
        self._live_grants.add(grant)
        self._grants_by_company.setdefault(company, set()).add(grant)
        return self._rotate(grant)

    def _rotate(self, grant: _Grant) -> dict[str, Any]:
        """Give the grant a new token pair; the old pair dies."""
        self._grants_by_access.pop(grant.access_token, None)
        grant.access_token = "at_" + secrets.token_urlsafe(32)
        grant.refresh_token = "rt_" + secrets.token_urlsafe(32)
        grant.access_expires_at = self._clock.monotonic() + self._lifetime
        grant.issued_at = self._clock.time()
        self._grants_by_access[grant.access_token] = grant
        self._grants_by_refresh[grant.refresh_token] = grant
        self._pairs[grant.refresh_token] = grant.access_token
        return {
            "access_token": grant.access_token,
            "refresh_token": grant.refresh_token,
            "expires_in": _number(self._lifetime),
            "token_type": "Bearer",
            "scope": grant.scope,
        }

    def _revoke(self, grant: _Grant) -> None:
        grant.revoked = True
        self._grants_by_access.pop(grant.access_token, None)
        self._live_grants.discard(grant)
        live = self._grants_by_company.get(grant.company)
        if live is not None:
            live.discard(grant)
            if not live:
                del self._grants_by_company[grant.company]

    def _revoke_company(self, company: str) -> int:
        """Revoke every live grant of ``company``; how many there were."""
        grants = list(self._grants_by_company.get(company, ()))
        for grant in grants:
            self._revoke(grant)
        return len(grants)

    def _company_of(self, form: Mapping[str, str]) -> str | None:
        """The company a token request's refresh token or code belongs to, if known."""
        refresh_token = form.get("refresh_token")
        if refresh_token is not None:
            grant = self._grants_by_refresh.get(refresh_token)
            return grant.company if grant is not None else None
        code = self._codes.get(form.get("code") or "")
        return code.company if code is not None else None

    # -- the token endpoint's grants ---------------------------------------

    def _refresh(self, form: Mapping[str, str]) -> _Response:
        token = form.get("refresh_token")
        if token is None:
            return _oauth_error(400, "invalid_request", "refresh_token is required")
        with self._lock:
            grant = self._grants_by_refresh.get(token)
            if grant is None or grant.revoked:
                return _oauth_error(400, "invalid_grant", "unknown or revoked refresh token")
            if token != grant.refresh_token:
                self._revoke(grant)
                self._tally.reuse_detections += 1
                self._company_tally(grant.company).reuse_detections += 1
                return _oauth_error(
                    400,
                    "invalid_grant",
                    "refresh token already used; the authorisation has been revoked",
                )
            reply = self._rotate(grant)
            self._tally.refresh_grants += 1
            self._company_tally(grant.company).refresh_grants += 1
        return _Response(200, _dumps(reply), headers=_NO_STORE)

    def _exchange_code(self, form: Mapping[str, str]) -> _Response:
        code = form.get("code")
        redirect_uri = form.get("redirect_uri")
        verifier = form.get("code_verifier")
        if code is None or redirect_uri is None:
            return _oauth_error(400, "invalid_request", "code and redirect_uri are required")
        with self._lock:
            entry = self._codes.get(code)
            if entry is not None and entry.challenge is not None and verifier is None:
                return _oauth_error(400, "invalid_request", "code_verifier is required")
            # Any attempt burns the code, so a wrong verifier cannot be retried.
            self._codes.pop(code, None)
            if entry is None:
                return _oauth_error(400, "invalid_grant", "unknown or already used code")
            if self._clock.monotonic() >= entry.expires_at:
                return _oauth_error(400, "invalid_grant", "the code has expired")
            if redirect_uri != entry.redirect_uri:
                return _oauth_error(400, "invalid_grant", "redirect_uri does not match")
            if entry.challenge is not None and not (
                verifier is not None
                and _VERIFIER_RE.fullmatch(verifier)
                and hmac.compare_digest(_s256(verifier), entry.challenge)
            ):
                return _oauth_error(400, "invalid_grant", "PKCE verification failed")
            reply = self._new_grant(entry.scope, entry.company)
            self._tally.code_exchanges += 1
            self._company_tally(entry.company).code_exchanges += 1
        return _Response(200, _dumps(reply), headers=_NO_STORE)
