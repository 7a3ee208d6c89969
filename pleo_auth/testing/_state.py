"""What the emulator remembers: grants, authorization codes and counters."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class EmulatorCounters:
    """A snapshot of what an :class:`Emulator` has seen since its last reset.

    Attributes:
        refresh_grants: Successful ``refresh_token`` grants.
        code_exchanges: Successful ``authorization_code`` grants.
        rejected_refreshes: ``refresh_token`` grant requests refused for any
            reason: unknown, spent or revoked refresh token, bad client
            credentials, missing parameters. Injected faults are not counted.
        reuse_detections: Spent refresh tokens presented while their grant was
            still live, each of which revoked that grant. At most one per
            grant: later attempts on the revoked grant count only as
            ``rejected_refreshes``.
        api_requests: Requests to API paths (``/v...``), answered or not.
        unauthorized: API requests answered 401.
        token_requests: Requests to ``/oauth/token``, injected faults and
            requests refused for capacity included.
        faults_served: Injected faults consumed.
        throttled: Token requests answered 429 because the token endpoint was
            over its :class:`~pleo_auth.testing.TokenCapacity`; nothing of
            theirs was spent.
        delayed: Token requests held back by the capacity (``mode="delay"``)
            before they were handled.
        installations_deleted: ``DELETE /v1/installations/me`` requests that
            ended an installation.
        api_throttled: API requests answered 429 (:meth:`Emulator.throttle_api`).
    """

    refresh_grants: int = 0
    code_exchanges: int = 0
    rejected_refreshes: int = 0
    reuse_detections: int = 0
    api_requests: int = 0
    unauthorized: int = 0
    token_requests: int = 0
    faults_served: int = 0
    throttled: int = 0
    delayed: int = 0
    installations_deleted: int = 0
    api_throttled: int = 0


@dataclass
class _Tally:
    """The mutable twin of :class:`EmulatorCounters`, guarded by the lock."""

    refresh_grants: int = 0
    code_exchanges: int = 0
    rejected_refreshes: int = 0
    reuse_detections: int = 0
    api_requests: int = 0
    unauthorized: int = 0
    token_requests: int = 0
    faults_served: int = 0
    throttled: int = 0
    delayed: int = 0
    installations_deleted: int = 0
    api_throttled: int = 0


@dataclass(frozen=True)
class GrantCounters:
    """A snapshot of what an :class:`Emulator` has seen of one company's grants
    since its last reset: :meth:`Emulator.counters_for`.

    A request counts for a company when it carries a token, refresh token or
    code the emulator issued for that company; a request it cannot tie to one
    (an unknown token, a form it cannot read) counts only in
    :attr:`Emulator.counters`.

    Attributes:
        refresh_grants: Successful ``refresh_token`` grants.
        code_exchanges: Successful ``authorization_code`` grants (logins).
        rejected_refreshes: Refused ``refresh_token`` grants that carried one
            of the company's refresh tokens, for any reason (spent, of a
            revoked grant, bad client credentials).
        reuse_detections: Spent refresh tokens presented while their grant was
            live, each of which revoked that grant.
        throttled: Token requests answered 429 for capacity.
        api_requests: API requests served with one of the company's live
            access tokens.
        installations_deleted: Installations ended with
            ``DELETE /v1/installations/me``.
    """

    refresh_grants: int = 0
    code_exchanges: int = 0
    rejected_refreshes: int = 0
    reuse_detections: int = 0
    throttled: int = 0
    api_requests: int = 0
    installations_deleted: int = 0


@dataclass
class _GrantTally:
    """The mutable twin of :class:`GrantCounters`, guarded by the lock."""

    refresh_grants: int = 0
    code_exchanges: int = 0
    rejected_refreshes: int = 0
    reuse_detections: int = 0
    throttled: int = 0
    api_requests: int = 0
    installations_deleted: int = 0


@dataclass(eq=False)
class _Grant:
    """One authorisation of one company: a chain of rotated tokens, live until revoked."""

    scope: str
    company: str  # urn:pleo:company:<uuid>
    access_token: str
    access_expires_at: float  # on the emulator's clock
    refresh_token: str
    revoked: bool = False
    issued_at: float = 0.0  # wall time of the current access token, for introspection


@dataclass(frozen=True)
class _Code:
    redirect_uri: str
    challenge: str | None
    scope: str
    company: str  # urn:pleo:company:<uuid>
    expires_at: float  # on the emulator's clock


def _check_lifetime(seconds: float) -> float:
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("access_token_lifetime must be a finite number of seconds >= 0")
    return float(seconds)
