"""The token model: one immutable pair of Pleo tokens."""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Mapping
from typing import Any

import attrs

from .errors import RefreshError

__all__ = ["TokenSet"]


def _positive_finite(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{attribute.name} must be a finite number of epoch seconds")


def _non_empty(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{attribute.name} must be a non-empty string")


@attrs.frozen(repr=False)
class TokenSet:
    """An access token and the refresh token issued with it.

    Pleo rotates both on every refresh, so a ``TokenSet`` is only ever replaced
    whole, never edited. Its ``repr`` shows the expiry and scope but never a token.

    Args:
        access_token: The opaque bearer token for API calls.
        refresh_token: The opaque, single-use refresh token.
        expires_at: When the access token expires, in epoch seconds.
        token_type: Always ``"Bearer"`` for Pleo.
        scope: The space-separated scopes granted, if the server said.
        issued_at: When the tokens were issued, in epoch seconds, if known. With
            ``expires_at`` it gives the token's lifetime.

    Thread safety:
        Immutable; share it freely.

    >>> tokens = TokenSet.from_response(
    ...     {"access_token": "a", "refresh_token": "r", "expires_in": 900}, now=1000.0)
    >>> tokens
    TokenSet(token_type='Bearer', expires_at=1900.0, scope=None)
    >>> tokens.expires_in(now=1500.0)
    400.0
    """

    access_token: str = attrs.field(validator=_non_empty)
    refresh_token: str = attrs.field(validator=_non_empty)
    expires_at: float = attrs.field(converter=float, validator=_positive_finite)
    token_type: str = "Bearer"
    scope: str | None = None
    issued_at: float | None = attrs.field(default=None, converter=attrs.converters.optional(float))

    @classmethod
    def from_response(cls, data: Mapping[str, Any], *, now: float | None = None) -> TokenSet:
        """Build a ``TokenSet`` from a token-endpoint reply.

        Args:
            data: The decoded JSON reply, with ``access_token``, ``refresh_token``,
                ``expires_in`` and optionally ``token_type`` and ``scope``.
            now: Wall-clock epoch seconds at which the reply arrived; defaults to now.

        Raises:
            RefreshError: The reply lacks a field Pleo always sends. (Pleo always
                rotates the refresh token, so a reply without one is unusable.)
        """
        missing = [
            key for key in ("access_token", "refresh_token", "expires_in") if not data.get(key)
        ]
        if missing:
            raise RefreshError(f"token endpoint reply lacks {', '.join(missing)}")
        try:
            expires_in = float(data["expires_in"])
        except (TypeError, ValueError) as exc:
            raise RefreshError("token endpoint reply has a non-numeric expires_in") from exc
        if not math.isfinite(expires_in) or expires_in <= 0:
            raise RefreshError("token endpoint reply has a non-positive expires_in")
        issued = time.time() if now is None else now
        return cls(
            access_token=str(data["access_token"]),
            refresh_token=str(data["refresh_token"]),
            expires_at=issued + expires_in,
            token_type=str(data.get("token_type") or "Bearer"),
            scope=str(data["scope"]) if data.get("scope") else None,
            issued_at=issued,
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TokenSet:
        """Rebuild a ``TokenSet`` saved with :meth:`to_dict`.

        Raises:
            ValueError: A field is missing or malformed.
        """
        try:
            return cls(
                access_token=data["access_token"],
                refresh_token=data["refresh_token"],
                expires_at=data["expires_at"],
                token_type=data.get("token_type") or "Bearer",
                scope=data.get("scope"),
                issued_at=data.get("issued_at"),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a saved TokenSet: {type(exc).__name__}") from None

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict. It holds secrets: store it, never log it."""
        return attrs.asdict(self)

    def expires_in(self, now: float | None = None) -> float:
        """Seconds until the access token expires (negative once it has)."""
        return self.expires_at - (time.time() if now is None else now)

    @property
    def fingerprint(self) -> str:
        """A short, non-reversible tag of the refresh token, safe to log.

        Two ``TokenSet`` objects with the same fingerprint came from the same rotation.
        """
        return hashlib.sha256(self.refresh_token.encode()).hexdigest()[:12]

    def __repr__(self) -> str:
        return (
            f"TokenSet(token_type={self.token_type!r}, expires_at={self.expires_at!r}, "
            f"scope={self.scope!r})"
        )
