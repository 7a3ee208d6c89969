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
        token_requests: Requests to ``/oauth/token``, injected faults included.
        faults_served: Injected faults consumed.
    """

    refresh_grants: int = 0
    code_exchanges: int = 0
    rejected_refreshes: int = 0
    reuse_detections: int = 0
    api_requests: int = 0
    unauthorized: int = 0
    token_requests: int = 0
    faults_served: int = 0


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


@dataclass(eq=False)
class _Grant:
    """One authorisation: a chain of rotated tokens, live until revoked."""

    scope: str
    subject: str | None
    access_token: str
    access_expires_at: float  # on the emulator's clock
    refresh_token: str
    revoked: bool = False


@dataclass(frozen=True)
class _Code:
    redirect_uri: str
    challenge: str | None
    scope: str
    subject: str | None
    expires_at: float  # on the emulator's clock


def _check_lifetime(seconds: float) -> float:
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("access_token_lifetime must be a finite number of seconds >= 0")
    return float(seconds)
