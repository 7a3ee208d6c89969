"""The refresh schedule (pleo_auth._schedule): the one place the due time, the
timer's jitter and the failure cooldown are derived from ``refresh_margin``."""

from __future__ import annotations

import pytest

from pleo_auth import TokenSet
from pleo_auth._schedule import RefreshSchedule


def pair(lifetime: float, issued_at: float | None = 1000.0) -> TokenSet:
    return TokenSet(
        access_token="at",
        refresh_token="rt",
        expires_at=1000.0 + lifetime,
        issued_at=issued_at,
    )


@pytest.mark.parametrize(
    ("margin", "jitter", "cooldown"),
    [(60.0, 15.0, 5.0), (8.0, 2.0, 2.0), (1.0, 0.25, 0.5), (0.0, 0.0, 0.5), (200.0, 15.0, 5.0)],
)
def test_a_margin_gives_the_sessions_jitter_and_cooldown(
    margin: float, jitter: float, cooldown: float
) -> None:
    schedule = RefreshSchedule.for_margin(margin)
    assert schedule.jitter == jitter
    assert schedule.failure_cooldown == cooldown


def test_a_pair_is_due_the_margin_before_expiry_but_never_before_half_its_life() -> None:
    schedule = RefreshSchedule.for_margin(60.0)
    assert schedule.due_at(pair(3600)) == 1000.0 + 3600 - 60
    assert schedule.due_at(pair(100)) == 1000.0 + 50  # half of 100 s, not 60 s
    assert schedule.due_at(pair(100, issued_at=None)) == 1000.0 + 100 - 60


def test_the_timer_jitter_stays_within_a_quarter_of_the_effective_margin() -> None:
    schedule = RefreshSchedule.for_margin(60.0)
    long, short = pair(3600), pair(20)
    assert schedule.timer_due_at(long, 0.0) == schedule.due_at(long)
    assert schedule.timer_due_at(long, 0.5) == schedule.due_at(long) - 7.5  # half of 15 s
    # Effective margin 10 s (half of 20 s): the jitter is at most 2.5 s, not 15 s.
    assert schedule.timer_due_at(short, 0.999) > schedule.due_at(short) - 2.5
    assert schedule.timer_due_at(short, 0.999) < schedule.due_at(short)


def test_the_mean_period_is_lifetime_less_margin_less_half_the_capped_jitter() -> None:
    assert RefreshSchedule.for_margin(1.0).mean_period(4.0) == 4.0 - 1.0 - 0.125
    # A margin over half the life: the effective margin and its jitter cap apply.
    assert RefreshSchedule.for_margin(1.0).mean_period(1.0) == 1.0 - 0.5 - 0.0625
