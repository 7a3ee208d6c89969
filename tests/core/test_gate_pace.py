"""The refresh pool keeps the token endpoint's pace (pleo_auth._gate).

A 10,000-grant cold start against an endpoint capped at 200 token requests a
second took 1.49 times the floor: every slot ran into the cap, and each then
waited out a whole Retry-After, so the pool went in bursts. Now a refusal makes
the pool space its sends at 90% of the rate it sent at, which it raises again a
little every second without one. Driven on a FakeClock: every figure is exact.
"""

from __future__ import annotations

import threading
import time

import pytest
from support.integration_helpers import grant, integration, new_companies

from pleo_auth import MemoryStore
from pleo_auth._clock import FakeClock
from pleo_auth._gate import NO_GATE, RefreshGate, _Pace
from pleo_auth.testing import Emulator, TokenCapacity


def send(pace: _Pace, at: float, count: int) -> list[float]:
    """``count`` sends asked for at ``at``: when each may go."""
    return [pace.reserve(at) for _ in range(count)]


def test_an_unrefused_pool_sends_at_once() -> None:
    pace = _Pace()
    assert send(pace, 10.0, 500) == [10.0] * 500
    assert pace.rate(10.0) is None


def test_a_refusal_spaces_the_sends_at_nine_tenths_of_the_rate_sent_at() -> None:
    pace = _Pace()
    send(pace, 0.0, 50)
    send(pace, 0.5, 150)  # 200 sends in the last second
    pace.refused(0.6)
    assert pace.rate(0.6) == pytest.approx(180.0)
    times = send(pace, 0.6, 3)
    assert times == pytest.approx([0.6 + 1 / 180, 0.6 + 2 / 180, 0.6 + 3 / 180])


def test_refusals_within_a_second_of_a_slow_down_are_one_event() -> None:
    # The slots in flight meet the same limit together: one slow-down, not four.
    pace = _Pace()
    send(pace, 0.0, 200)
    for at in (0.1, 0.2, 0.3, 1.05):
        pace.refused(at)
    assert pace.rate(1.05) == pytest.approx(180.0 + 9.0 * 0.95)


def test_a_second_refusal_slows_down_from_the_rate_it_paced_at() -> None:
    pace = _Pace()
    send(pace, 0.0, 200)
    pace.refused(0.0)
    send(pace, 1.5, 10)  # few sends: the rate is what the pool allowed, not what it sent
    pace.refused(2.0)  # the rate by then: 180 + 9 * 2 = 198
    assert pace.rate(2.0) == pytest.approx(10 * 0.9)


def test_the_rate_climbs_by_a_twentieth_of_its_base_and_at_least_two_a_second() -> None:
    fast, slow = _Pace(), _Pace()
    send(fast, 0.0, 1000)
    fast.refused(0.0)  # base 900: +45 a second
    send(slow, 0.0, 10)
    slow.refused(0.0)  # base 9: +2 a second (a twentieth would be 0.45)
    assert fast.rate(4.0) == pytest.approx(900 + 45 * 4)
    assert slow.rate(4.0) == pytest.approx(9 + 2 * 4)


def test_spacing_stops_once_the_rate_is_four_times_the_one_refused() -> None:
    pace = _Pace()
    send(pace, 0.0, 100)
    pace.refused(0.0)  # base 90 (refused at 100), +4.5 a second: 400 after 68.9 s
    assert pace.rate(68.0) is not None
    assert pace.rate(69.0) is None
    assert send(pace, 69.0, 3) == [69.0] * 3


def test_the_slowest_rate_is_one_a_second() -> None:
    pace = _Pace()
    pace.refused(0.0)  # nothing sent in the last second
    assert pace.rate(0.0) == 1.0


def test_a_paced_slot_waits_its_turn_on_the_pools_clock() -> None:
    clock = FakeClock()
    gate = RefreshGate(4, clock=clock)
    for _ in range(10):
        with gate.slot(urgent=True):
            pass
    gate.throttled()  # 10 sends in the last second: 9 a second
    assert gate.rate == pytest.approx(9.0)
    entered = threading.Event()

    def refresh() -> None:
        with gate.slot(urgent=True):
            entered.set()

    worker = threading.Thread(target=refresh)
    worker.start()
    try:
        assert clock.wait_for_sleepers(1)
        assert not entered.is_set()  # its turn is a ninth of a second after the refusal
        clock.advance(1 / 9 + 1e-6)
        assert entered.wait(10)
    finally:
        clock.advance(10)
        worker.join(10)
    assert gate._busy == 0


def test_a_single_grant_needs_no_pace() -> None:
    NO_GATE.throttled()  # nothing to slow down: one refresh at a time
    with NO_GATE.slot(urgent=True):
        pass


def test_an_integrations_pool_slows_down_when_the_token_endpoint_answers_429(
    emulator: Emulator,
) -> None:
    # Two expired grants, an endpoint that takes one token request a second: the
    # second refresh is refused once (Retry-After: 1), and the pool then spaces its
    # sends at nine tenths of the two a second it had sent at.
    first, second = new_companies(2)
    with integration(emulator, MemoryStore.family()) as pleo:
        for company in (first, second):
            pleo.add(company, grant(emulator, company, now=time.time(), age=7200))
        assert pleo._gate.rate is None
        emulator.set_token_capacity(TokenCapacity(per_second=1, mode="reject"))
        assert pleo.session(first).get("/v2/employees").status_code == 200
        assert pleo._gate.rate is None
        assert pleo.session(second).get("/v2/employees").status_code == 200
        assert pleo._gate._pace._base == pytest.approx(1.8)
    counters = emulator.counters
    assert (counters.refresh_grants, counters.throttled, counters.token_requests) == (2, 1, 3)
    assert counters.rejected_refreshes == counters.reuse_detections == 0
