"""Moved to :mod:`pleo_auth.stores.lease` (public); this alias goes once no module
imports it."""

from __future__ import annotations

from .lease import (
    DEFAULT_LEASE,
    HELD,
    MAX_PAUSE,
    RENEWER,
    Held,
    Holding,
    LeaseTerms,
    Renewer,
    check_requested,
    fence,
    new_owner,
    wait_for_lease,
)

__all__ = [
    "DEFAULT_LEASE",
    "HELD",
    "MAX_PAUSE",
    "RENEWER",
    "Held",
    "Holding",
    "LeaseTerms",
    "Renewer",
    "check_requested",
    "fence",
    "new_owner",
    "wait_for_lease",
]
