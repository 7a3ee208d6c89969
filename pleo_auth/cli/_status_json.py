"""``pleo-auth status --json``: every grant of the store (or of the family), for
monitoring scripts, in a stable schema that never holds a token.

Schema 1 (docs/guide/observability.md documents it; fields are only ever added)::

    {
      "schema": 1,
      "store": "one file per company in /var/lib/app/grants",
      "family": true,
      "checked_at": 1765130000.0,
      "needs_login": false,
      "error": null,
      "grants": [
        {
          "company": "3f2504e0-4f89-11d3-9a0c-0305e82c3301",
          "needs_login": false,
          "reason": null,
          "expires_at": 1765133600.0,
          "expires_in": 3600.0,
          "expired": false,
          "refreshed_at": 1765130000.0,
          "token_url": "https://auth.pleo.io/oauth/token",
          "error": null
        }
      ]
    }

Times are Unix epoch seconds (UTC); ``expires_in`` is negative once expired (the
next use refreshes it). ``company`` is None for a store of one grant. ``reason`` is
None, ``"no_grant"`` (none stored: a person must log in), ``"unreadable"`` (tokens
that cannot be read: log in again) or ``"store_error"`` (the store failed:
``needs_login`` is None, unknown, and ``error`` says why). The exit status is the
text status's: 0, 1 when any grant needs a login (or a family holds none), 3 when
the store failed.
"""

from __future__ import annotations

import json
from typing import Any, TextIO

from .._clock import SYSTEM_CLOCK
from ..company import Company
from ..errors import PleoAuthError, TokensUnreadable
from ..settings import Settings
from ..stores.base import TokenStore
from ..tokens import TokenSet
from ._grants import Grants
from ._output import say

__all__ = ["SCHEMA", "status_json"]

EXIT_OK = 0
EXIT_LOGIN_NEEDED = 1
EXIT_FAILURE = 3

#: The schema's version: raised only for a change a reader must know of.
SCHEMA = 1


def _grant(store: TokenStore, company: Company | None, now: float) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "company": company.id if company is not None else None,
        "needs_login": False,
        "reason": None,
        "expires_at": None,
        "expires_in": None,
        "expired": None,
        "refreshed_at": None,
        "token_url": None,
        "error": None,
    }
    try:
        tokens: TokenSet | None = store.load()
    except TokensUnreadable:
        return {**entry, "needs_login": True, "reason": "unreadable"}
    except PleoAuthError as exc:
        return {**entry, "needs_login": None, "reason": "store_error", "error": str(exc)}
    if tokens is None:
        return {**entry, "needs_login": True, "reason": "no_grant"}
    left = tokens.expires_at - now
    return {
        **entry,
        "expires_at": tokens.expires_at,
        "expires_in": round(left, 3),
        "expired": left <= 0,
        "refreshed_at": tokens.issued_at,
        "token_url": tokens.token_url,
    }


def status_json(settings: Settings, grants: Grants, out: TextIO) -> int:
    """Print the status of every grant as one JSON document; the exit status."""
    now = SYSTEM_CLOCK.time()
    family = grants.family
    document: dict[str, Any] = {"schema": SCHEMA, "family": family is not None, "error": None}
    entries: list[dict[str, Any]] = []
    if family is None:
        store = grants.store(settings, "status")
        document["store"] = store.describe()
        entries.append(_grant(store, None, now))
    else:
        document["store"] = family.describe()
        try:
            companies = [grants.company] if grants.company is not None else family.companies()
        except PleoAuthError as exc:
            companies, document["error"] = [], str(exc)
        entries = [_grant(family.store(company), company, now) for company in companies]
    failed = document["error"] is not None or any(e["reason"] == "store_error" for e in entries)
    needs_login = (not entries and not failed) or any(e["needs_login"] for e in entries)
    document.update(checked_at=now, needs_login=needs_login, grants=entries)
    say(out, json.dumps(document, indent=2))
    if failed:
        return EXIT_FAILURE
    return EXIT_LOGIN_NEEDED if needs_login else EXIT_OK
