"""The token model: one immutable pair of Pleo tokens."""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from ._clock import SYSTEM_CLOCK
from .errors import RefreshError

__all__ = ["DEFAULT_EXPIRES_IN", "MAX_EXPIRES_IN", "MIN_EXPIRES_IN", "TokenSet"]

logger = logging.getLogger(__name__)

#: Seconds an access token is assumed to live when a reply's ``expires_in`` is
#: missing or unusable: the 15 minutes an older Pleo page documents.
DEFAULT_EXPIRES_IN = 900.0

#: The shortest lifetime taken from ``expires_in``: shorter would make the
#: proactive timer refresh over and over.
MIN_EXPIRES_IN = 1.0

#: The longest lifetime taken from ``expires_in`` (a day): longer would let the
#: proactive timer sleep past any real token's death.
MAX_EXPIRES_IN = 86_400.0

#: How many fingerprints :attr:`TokenSet.lineage` keeps: the newest ones, and always
#: the oldest (the login the lineage started from, which an app may pass again).
LINEAGE_LIMIT = 16

_MISSING = object()

# What an Authorization header can carry: visible ASCII, no spaces or controls.
_HEADER_SAFE = frozenset(chr(code) for code in range(0x21, 0x7F))


def _json_type(value: object) -> str:
    """The JSON kind of ``value``, with its article: never the value itself."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def _token_problem(key: str, value: object) -> str | None:
    """What makes ``value`` unusable as ``key`` of a reply, or None. Never the value."""
    if value is None:
        return "is missing"
    if not isinstance(value, str):
        return f"is not a string ({_json_type(value)})"
    if not value:
        return "is empty"
    if key == "access_token" and not _HEADER_SAFE.issuperset(value):
        return "has characters an Authorization header cannot carry"
    return None


def _assumed(problem: str) -> float:
    logger.warning(
        "token endpoint reply: expires_in %s; assuming the access token lives %.0f s",
        problem,
        DEFAULT_EXPIRES_IN,
    )
    return DEFAULT_EXPIRES_IN


def _lifetime(value: object) -> float:
    """Seconds the access token lives, by the policy of :meth:`TokenSet.from_response`."""
    if value is _MISSING or value is None:
        return _assumed("is missing")
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return _assumed(f"is not a number ({_json_type(value)})")
    try:
        seconds = float(value)
    except OverflowError:  # an integer too large for a float
        seconds = math.inf
    except ValueError:
        return _assumed("is not a number (a non-numeric string)")
    if math.isnan(seconds):
        return _assumed("is not a number (NaN)")
    if seconds <= 0:
        return _assumed("is zero" if seconds == 0 else "is negative")
    if seconds < MIN_EXPIRES_IN or seconds > MAX_EXPIRES_IN:
        bound = MIN_EXPIRES_IN if seconds < MIN_EXPIRES_IN else MAX_EXPIRES_IN
        logger.warning(
            "token endpoint reply: expires_in %g s is out of range; using %.0f s", seconds, bound
        )
        return bound
    return seconds


def _number(value: object) -> float | None:
    """``value`` as a finite number (a numeric string counts), or None. Never logged."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _saved_expiry(
    expires_at: object, expires_in: object, now: float
) -> tuple[float, float | None] | None:
    """``(expires_at, issued_at)`` from a token dict another library saved, or None.

    requests-oauthlib (through oauthlib) and Authlib add ``expires_at``, in epoch
    seconds, to the reply they keep, and keep its ``expires_in`` unchanged: read
    back later, ``expires_in`` is the lifetime the token had when issued, not what
    is left of it. So ``expires_at`` wins, and ``expires_in`` only tells when the
    token was issued. None when ``expires_at`` is absent or unusable.
    """
    if expires_at is _MISSING or expires_at is None:
        return None
    when = _number(expires_at)
    if when is None:
        logger.warning(
            "token dict: expires_at is not a finite number (%s); using expires_in",
            _json_type(expires_at),
        )
        return None
    if when > now + MAX_EXPIRES_IN:
        logger.warning(
            "token dict: expires_at is more than %.0f s away; using %.0f s",
            MAX_EXPIRES_IN,
            MAX_EXPIRES_IN,
        )
        return now + MAX_EXPIRES_IN, now
    lifetime = _number(expires_in)
    if lifetime is None or not MIN_EXPIRES_IN <= lifetime <= MAX_EXPIRES_IN:
        return when, None  # the lifetime is unknown, and so is the time of issue
    return when, when - lifetime


def _positive_finite(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{attribute.name} must be a finite number of epoch seconds")


def _non_empty(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{attribute.name} must be a non-empty string")


def _fingerprints(value: Iterable[str]) -> tuple[str, ...]:
    items = () if isinstance(value, str) else tuple(value)
    if isinstance(value, str) or not all(isinstance(item, str) and item for item in items):
        raise ValueError("lineage must be a sequence of fingerprints")
    return items


def _trimmed(lineage: tuple[str, ...]) -> tuple[str, ...]:
    if len(lineage) <= LINEAGE_LIMIT:
        return lineage
    return lineage[: LINEAGE_LIMIT - 1] + lineage[-1:]


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
        lineage: Fingerprints of the refresh tokens this pair replaced in its store,
            newest first (see :meth:`succeeding`). It is how pleo_auth tells a newer
            pair from an older one without trusting a clock: a pair whose refresh
            token appears in another's lineage is spent or superseded, and is never
            stored again. Not part of equality.
        after_401: Whether a 401 forced the refresh that issued this pair. A 401 for
            such a pair before it is due is not answered with another refresh (see
            :class:`~pleo_auth.PleoSession`). Not part of equality.
        token_url: The token endpoint that issued this pair, when recorded (a
            login records it, and each refresh carries it on). Not part of equality.
        api_url: The API base URL the pair is for, when recorded. Not part of equality.

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
    lineage: tuple[str, ...] = attrs.field(
        default=(), converter=_fingerprints, eq=False, kw_only=True
    )
    after_401: bool = attrs.field(default=False, converter=bool, eq=False, kw_only=True)
    token_url: str | None = attrs.field(default=None, eq=False, kw_only=True)
    api_url: str | None = attrs.field(default=None, eq=False, kw_only=True)

    @classmethod
    def from_response(cls, data: Mapping[str, Any], *, now: float | None = None) -> TokenSet:
        """Build a ``TokenSet`` from a token-endpoint reply.

        By the time a reply arrives, Pleo has already rotated the tokens: the
        refresh token that was sent is spent. So a reply that carries both new
        tokens is always kept, even when its ``expires_in`` is odd, and only a
        reply without usable tokens is refused:

        * ``expires_in`` missing, null, not a number (``"soon"``, ``true``), NaN,
          zero or negative: the access token is assumed to live
          :data:`DEFAULT_EXPIRES_IN` seconds (15 minutes), with a warning. A token
          that dies sooner is refused with 401, which refreshes once and replays.
        * A numeric string (``"3600"``) counts as that number.
        * Below :data:`MIN_EXPIRES_IN` (1 s) or above :data:`MAX_EXPIRES_IN`
          (1 day; ``1e12``, or ``1e309``, which parses as infinity), it is clamped
          into that range, with a warning: the proactive timer never spins, and
          never waits past a day.

        It also takes a token dict that requests-oauthlib or Authlib saved (see
        the migration guide). Those libraries add ``expires_at`` (epoch seconds)
        and keep the ``expires_in`` the token was issued with, so when
        ``expires_at`` is a finite number it is the expiry, and ``expires_in`` only
        dates the issue (``issued_at = expires_at - expires_in``). An ``expires_at``
        already past gives tokens that are refreshed at first use; one more than a
        day away is clamped to a day, with a warning; one that is not a number is
        warned about and ``expires_in`` counts from ``now`` instead. Pleo's own
        replies carry no ``expires_at``, and pleo_auth's token endpoint client
        ignores one if a reply does.

        ``token_type`` is always ``"Bearer"``: Pleo issues nothing else, and a
        reply that says otherwise is warned about, not trusted. Warnings name the
        problem, never a value that could be a token.

        Args:
            data: The decoded JSON reply, with ``access_token``, ``refresh_token``,
                ``expires_in`` and optionally ``token_type`` and ``scope`` (a string,
                or a list as oauthlib keeps it); or a saved token dict with
                ``expires_at``.
            now: Wall-clock epoch seconds at which the reply arrived; defaults to now.

        Raises:
            RefreshError: The reply lacks a usable ``access_token`` or
                ``refresh_token``. Pleo rotates the refresh token on every refresh,
                so a reply without a new one is unusable: the old one is not kept
                beside a new access token.
        """
        problems = [
            f"{key} {problem}"
            for key in ("access_token", "refresh_token")
            if (problem := _token_problem(key, data.get(key))) is not None
        ]
        if problems:
            raise RefreshError(f"token endpoint reply unusable: {'; '.join(problems)}")
        issued = SYSTEM_CLOCK.time() if now is None else now
        scope = data.get("scope")
        if isinstance(scope, list) and all(isinstance(item, str) for item in scope):
            scope = " ".join(scope)
        token_type = data.get("token_type")
        if token_type is not None and not (
            isinstance(token_type, str) and token_type.lower() == "bearer"
        ):
            # Pleo issues Bearer tokens only, and pleo_auth sends them as such.
            logger.warning(
                "token endpoint reply: token_type is not Bearer (%s); using the token as Bearer",
                _json_type(token_type),
            )
        saved = _saved_expiry(
            data.get("expires_at", _MISSING), data.get("expires_in", _MISSING), issued
        )
        if saved is not None:
            expires_at, issued_at = saved
        else:
            expires_at = issued + _lifetime(data.get("expires_in", _MISSING))
            issued_at = issued
        return cls(
            access_token=data["access_token"],
            refresh_token=data["refresh_token"],
            expires_at=expires_at,
            token_type="Bearer",
            scope=scope if isinstance(scope, str) and scope else None,
            issued_at=issued_at,
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
                lineage=data.get("lineage") or (),
                after_401=data.get("after_401") or False,
                token_url=data.get("token_url"),
                api_url=data.get("api_url"),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a saved TokenSet: {type(exc).__name__}") from None

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict. It holds secrets: store it, never log it."""
        data = attrs.asdict(self)
        data["lineage"] = list(self.lineage)
        for name in ("token_url", "api_url"):
            if data[name] is None:
                del data[name]  # unrecorded: the document 0.1 wrote
        return data

    def succeeding(self, previous: TokenSet | None, *, after_401: bool = False) -> TokenSet:
        """This pair, recorded as the one that replaces ``previous`` in a store.

        Its :attr:`lineage` gains ``previous``'s fingerprint and lineage, so
        ``previous`` can never again pass for the newer pair.
        """
        lineage = self.lineage
        if previous is not None and previous.refresh_token != self.refresh_token:
            lineage = _trimmed((previous.fingerprint, *previous.lineage))
        if previous is not None and self.token_url is None:
            # A refresh's reply says nothing of its issuer: it is the previous pair's.
            return attrs.evolve(
                self,
                lineage=lineage,
                after_401=after_401,
                token_url=previous.token_url,
                api_url=previous.api_url,
            )
        return attrs.evolve(self, lineage=lineage, after_401=after_401)

    def descends_from(self, other: TokenSet) -> bool:
        """Whether ``other`` is in this pair's lineage: a pair this one replaced."""
        return other.refresh_token != self.refresh_token and other.fingerprint in self.lineage

    def expires_in(self, now: float | None = None) -> float:
        """Seconds until the access token expires (negative once it has)."""
        return self.expires_at - (SYSTEM_CLOCK.time() if now is None else now)

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
