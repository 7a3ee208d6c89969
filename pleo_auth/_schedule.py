"""When tokens are refreshed: the one place the refresh schedule is decided.

The coordinator asks it when a pair is due and how long to wait after a failure;
the workload runner asks it how often a pair rotates. Nothing else derives these
numbers from ``refresh_margin``.

* A request finds a pair **due** ``margin`` seconds before it expires, where the
  margin is ``refresh_margin`` but never more than half the pair's life, so a
  short-lived token is not refreshed again the moment it arrives.
* The proactive timer refreshes a little earlier, by a **jitter** that spreads
  the processes of a fleet: a share in [0, 1) of at most ``refresh_margin / 4``
  (and 15 s), never more than a quarter of the effective margin. A jitter longer
  than the margin would make every refresh of a short-lived token due on arrival.
* After a failed refresh, no new attempt starts for a **cooldown** of a quarter
  of the margin, between 0.5 s and 5 s (longer when the server said
  ``Retry-After``).
"""

from __future__ import annotations

import attrs

from .tokens import TokenSet

__all__ = ["RefreshSchedule"]

#: The longest timer jitter, whatever the margin.
_MAX_JITTER = 15.0

#: Bounds of the pause after a failed refresh.
_MIN_COOLDOWN, _MAX_COOLDOWN = 0.5, 5.0


@attrs.frozen
class RefreshSchedule:
    """The refresh schedule of one coordinator.

    Attributes:
        refresh_margin: Seconds before expiry to refresh, as the session was given.
        jitter: The most the timer refreshes ahead of the due time, in seconds,
            before the cap of a quarter of the effective margin.
        failure_cooldown: Seconds to wait after a failed refresh.
    """

    refresh_margin: float
    jitter: float
    failure_cooldown: float

    @classmethod
    def for_margin(cls, refresh_margin: float) -> RefreshSchedule:
        """The schedule a session with this ``refresh_margin`` follows."""
        return cls(
            refresh_margin=refresh_margin,
            jitter=min(refresh_margin / 4, _MAX_JITTER),
            failure_cooldown=min(_MAX_COOLDOWN, max(refresh_margin / 4, _MIN_COOLDOWN)),
        )

    def margin(self, tokens: TokenSet) -> float:
        """How long before expiry ``tokens`` are due: ``refresh_margin``, but never
        more than half the token's life."""
        margin = self.refresh_margin
        if tokens.issued_at is not None:
            margin = min(margin, (tokens.expires_at - tokens.issued_at) / 2)
        return margin

    def due_at(self, tokens: TokenSet) -> float:
        """When a request finds ``tokens`` due, and refreshes before it is sent."""
        return tokens.expires_at - self.margin(tokens)

    def timer_due_at(self, tokens: TokenSet, share: float) -> float:
        """When the proactive timer refreshes ``tokens``: :meth:`due_at` less
        ``share`` (in [0, 1), drawn once per rotation) of the jitter, which stays
        inside a quarter of the effective margin."""
        spread = min(self.jitter, self.margin(tokens) / 4)
        return self.due_at(tokens) - share * spread

    def mean_period(self, lifetime: float) -> float:
        """The average seconds between rotations of tokens living ``lifetime``
        seconds, refreshed by the timer with a jitter share of one half."""
        margin = min(self.refresh_margin, lifetime / 2)
        return lifetime - margin - min(self.jitter, margin / 4) / 2
