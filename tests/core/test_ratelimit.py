"""pleo_auth.ratelimit: the GCRA's bound on a fake clock, and the limiter on a real
session against the emulator (waits, RateLimited, 429 retries, events, scopes)."""

from __future__ import annotations

import bisect
import io
import math
import random
import threading
import time
from collections.abc import Iterator

import pytest
from support.session_helpers import MakeSession

import pleo_auth
from pleo_auth import (
    ConfigurationError,
    FileStore,
    Integration,
    MemoryStore,
    PleoAuthError,
    RateLimit,
    RateLimited,
    TokenSet,
)
from pleo_auth import events as pleo_events
from pleo_auth.ratelimit import LEASE_LIFE, SEND_ALLOWANCE, Limiter
from pleo_auth.stores.buckets import MemoryBucket
from pleo_auth.testing import Emulator, FakeClock

OTHER_COMPANY = "urn:pleo:company:6a0b6b8e-1c2d-4e3f-8a9b-0c1d2e3f4a5b"


def most_in_a_window(times: list[float], window: float) -> int:
    """The most of ``times`` (sorted) in any closed interval ``window`` long."""
    return max(
        (bisect.bisect_right(times, start + window) - index for index, start in enumerate(times)),
        default=0,
    )


# -- the bound, on a fake clock -------------------------------------------------------


@pytest.mark.parametrize("per_minute", [1, 60, 500, 600, 6_000, 1_000_000])
def test_no_window_sees_more_than_the_rate_plus_the_burst(per_minute: float) -> None:
    """Callers arriving at random, each taking a slot at once or giving up
    (``deadline=now``): in every window the slots spent stay within
    ``per_minute * W / 60 + burst`` less what is reserved for sending; and a
    caller refused who comes back exactly ``retry_after`` later gets its slot
    (the limiter never holds back more than the rate demands)."""
    clock = FakeClock()
    limit = RateLimit(per_minute)
    limiter = Limiter(limit, MemoryBucket(clock.monotonic), clock=clock)
    rng = random.Random(per_minute)
    interval = limit.interval
    spent: list[float] = []
    start = clock.monotonic()
    steps = 6_000
    for _ in range(steps):
        # Bursts of callers, then quiet spells: up to 4 intervals between arrivals.
        clock.advance(rng.choice((0.0, 0.0, interval / 7, interval / 2, interval * 4)))
        try:
            limiter.acquire(clock.monotonic())
        except RateLimited as exc:
            refused = exc.retry_after
        else:
            spent.append(clock.monotonic())
            continue
        assert 0 < refused <= interval + 1e-9
        if rng.random() < 0.5:
            clock.advance(refused)
            limiter.acquire(clock.monotonic())
            spent.append(clock.monotonic())
    elapsed = clock.monotonic() - start
    send_reserve = math.ceil(per_minute * SEND_ALLOWANCE / 60 - 1e-9)
    for window in (interval, 10 * interval, 60.0, elapsed):
        bound = per_minute * window / 60 + limit.burst - send_reserve
        assert most_in_a_window(spent, window) <= bound + 1e-9, window


def test_a_full_bucket_grants_its_burst_then_one_slot_per_interval() -> None:
    clock = FakeClock()
    limit = RateLimit(60, burst=4)  # 1 a second; 1 slot reserved for sending
    limiter = Limiter(limit, MemoryBucket(clock.monotonic), clock=clock)
    now = clock.monotonic()
    for _ in range(3):
        limiter.acquire(now)
    with pytest.raises(RateLimited) as caught:
        limiter.acquire(now)
    assert caught.value.retry_after == pytest.approx(1.0)
    assert isinstance(caught.value, PleoAuthError)
    assert caught.value.retryable
    clock.advance(1.0)
    limiter.acquire(clock.monotonic())
    with pytest.raises(RateLimited):
        limiter.acquire(clock.monotonic())


def test_slots_of_a_batch_unspent_within_the_lease_life_are_dropped() -> None:
    clock = FakeClock()
    limit = RateLimit(6_000)  # batches of 20
    assert limit.batch == 20
    bucket = MemoryBucket(clock.monotonic)
    limiter = Limiter(limit, bucket, clock=clock)
    limiter.acquire(clock.monotonic())  # takes a batch of 20, spends 1
    taken: list[int] = []
    real_take = bucket.take

    def counting_take(wanted: int, interval: float, tolerance: float) -> tuple[int, float]:
        granted, wait = real_take(wanted, interval, tolerance)
        taken.append(granted)
        return granted, wait

    bucket.take = counting_take  # type: ignore[method-assign]
    for _ in range(19):
        limiter.acquire(clock.monotonic())
    assert taken == []  # the batch's 19 others, no round trip
    limiter.acquire(clock.monotonic())
    assert taken == [20]
    clock.advance(LEASE_LIFE)
    limiter.acquire(clock.monotonic())
    assert taken == [20, 20]  # the 19 left were dropped, not spent late


def test_a_waiting_caller_sleeps_on_the_clock_until_its_slot() -> None:
    clock = FakeClock()
    limiter = Limiter(RateLimit(60, burst=2), MemoryBucket(clock.monotonic), clock=clock)
    limiter.acquire(clock.monotonic())
    done = threading.Event()
    started = clock.monotonic()

    def wait_for_slot() -> None:
        limiter.acquire(started + 5.0)
        done.set()

    thread = threading.Thread(target=wait_for_slot)
    thread.start()
    assert clock.wait_for_sleepers(1)
    clock.advance(0.5)
    assert not done.wait(0.05)
    clock.advance(0.5)
    thread.join(10)
    assert done.is_set()
    assert clock.monotonic() - started == pytest.approx(1.0)


@pytest.mark.parametrize(
    "arguments",
    [
        {"per_minute": 0},
        {"per_minute": -5},
        {"per_minute": math.nan},
        {"per_minute": math.inf},
        {"per_minute": "500"},
        {"per_minute": True},
        {"per_minute": 500, "burst": 5},
        {"per_minute": 500, "burst": 50.0},
        {"per_minute": 500, "wait": -1},
        {"per_minute": 500, "scope": "host"},
    ],
)
def test_a_rate_limit_out_of_range_is_a_configuration_error(arguments: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        RateLimit(**arguments)  # type: ignore[arg-type]


def test_the_default_is_500_a_minute_with_a_burst_of_50() -> None:
    limit = RateLimit()
    assert (limit.per_minute, limit.burst, limit.wait, limit.scope) == (500, 50, 10.0, "client")
    assert RateLimit.of(500) == limit
    assert "RateLimit" in pleo_auth.__all__
    assert "RateLimited" in pleo_auth.__all__


# -- on a session, against the emulator ------------------------------------------------


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator() as emulator:
        emulator.record_api_requests()
        yield emulator


def tokens_of(emu: Emulator, company: str | None = None) -> TokenSet:
    return TokenSet.from_response(emu.issue_tokens(company=company))


def test_a_request_with_no_slot_within_its_wait_raises_rate_limited_unsent(
    emu: Emulator, make_session: MakeSession
) -> None:
    # One a minute, one slot of burst after the reserve: the second request has none.
    session = make_session(emu, tokens=tokens_of(emu), rate_limit=RateLimit(1, burst=2, wait=0))
    assert session.get("/v2/employees").status_code == 200
    with pytest.raises(RateLimited) as caught:
        session.get("/v2/employees")
    assert 0 < caught.value.retry_after <= 60.0
    assert emu.counters.api_requests == 1


def test_requests_over_the_rate_wait_for_their_slots_and_are_sent(
    emu: Emulator, make_session: MakeSession
) -> None:
    session = make_session(emu, tokens=tokens_of(emu), rate_limit=RateLimit(600, burst=8, wait=5))
    started = time.monotonic()
    for _ in range(5):
        assert session.get("/v2/employees").status_code == 200
    # One slot at once, then one every 0.1 s: never faster, however fast this machine.
    assert time.monotonic() - started >= 0.4 - 0.01
    # (Arrival times at the emulator may be closer: each request reaches it a
    # little after its slot, by a varying lag; see SEND_ALLOWANCE.)
    assert len(emu.api_request_times()) == 5


@pytest.mark.slow
def test_a_wait_for_the_limit_is_told_as_a_rate_limited_event(
    emu: Emulator, make_session: MakeSession
) -> None:
    seen: list[pleo_events.Event] = []
    # One slot, then one every 3 s: the second request waits for its slot unless
    # this machine stalls for 3 s between the two.
    limit = RateLimit(20, burst=2, wait=5)
    session = make_session(emu, tokens=tokens_of(emu), rate_limit=limit, on_event=seen.append)
    session.get("/v2/employees")
    session.get("/v2/employees")
    # Over the same store, so the same grant and subscriber: its refusal is told too.
    session2 = make_session(emu, store=session.store, rate_limit=RateLimit(20, burst=2, wait=0))
    with pytest.raises(RateLimited):
        session2.get("/v2/employees")
    assert pleo_events.flush()
    limited = [event for event in seen if event.kind == "rate_limited"]
    assert len(limited) == 2
    assert isinstance(limited[0], pleo_events.RateLimited)
    assert limited[0].company is None
    assert 1.5 < limited[0].wait <= 3.0 + 0.5  # waited for its slot
    assert isinstance(limited[1], pleo_events.RateLimited)
    assert limited[1].wait > 1.5  # would have had to wait


def test_a_429_to_a_get_is_retried_once_after_its_retry_after(
    emu: Emulator, make_session: MakeSession
) -> None:
    session = make_session(emu, tokens=tokens_of(emu), rate_limit=RateLimit(600, wait=5))
    emu.throttle_api(1, retry_after=0.3)
    started = time.monotonic()
    response = session.get("/v2/employees")
    assert response.status_code == 200
    assert time.monotonic() - started >= 0.3 - 0.01
    assert (emu.counters.api_requests, emu.counters.api_throttled) == (2, 1)
    times = emu.api_request_times()
    assert times[1] - times[0] >= 0.3 - 0.01


def test_a_second_429_is_returned_not_retried_again(
    emu: Emulator, make_session: MakeSession
) -> None:
    session = make_session(emu, tokens=tokens_of(emu), rate_limit=RateLimit(600, wait=5))
    emu.throttle_api(2, retry_after=0.1)
    assert session.put("/v1/things/1", json={"a": 1}).status_code == 429
    assert (emu.counters.api_requests, emu.counters.api_throttled) == (2, 2)


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_a_429_to_a_method_that_is_not_idempotent_is_returned_as_is(
    emu: Emulator, make_session: MakeSession, method: str
) -> None:
    session = make_session(emu, tokens=tokens_of(emu), rate_limit=RateLimit(600, wait=5))
    emu.throttle_api(1, retry_after=0.1)
    response = session.request(method, "/v1/things", json={"a": 1})
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "0.1"
    assert emu.counters.api_requests == 1


def test_a_429_whose_retry_after_ends_past_the_wait_is_returned_at_once(
    emu: Emulator, make_session: MakeSession
) -> None:
    session = make_session(emu, tokens=tokens_of(emu), rate_limit=RateLimit(600, wait=1))
    emu.throttle_api(1, retry_after=30)
    started = time.monotonic()
    assert session.get("/v2/employees").status_code == 429
    assert time.monotonic() - started < 30
    assert emu.counters.api_requests == 1


def test_a_429_to_a_body_that_cannot_be_sent_again_is_returned(
    emu: Emulator, make_session: MakeSession
) -> None:
    session = make_session(emu, tokens=tokens_of(emu), rate_limit=RateLimit(600, wait=5))
    emu.throttle_api(1, retry_after=0.1)
    response = session.put("/v1/things/1", files={"upload": io.BytesIO(b"spent once")})
    assert response.status_code == 429
    assert emu.counters.api_requests == 1


def test_without_a_limit_a_429_is_returned_as_before(
    emu: Emulator, make_session: MakeSession
) -> None:
    session = make_session(emu, tokens=tokens_of(emu))
    assert session._limiter is None
    emu.throttle_api(1, retry_after=0.1)
    assert session.get("/v2/employees").status_code == 429
    assert emu.counters.api_requests == 1


def test_sessions_over_one_file_store_share_one_budget(
    emu: Emulator, make_session: MakeSession, tmp_path: object
) -> None:
    store_path = f"{tmp_path}/tokens.json"
    tokens = tokens_of(emu)
    limit = RateLimit(1, burst=3, wait=0)  # two slots after the reserve
    first = make_session(emu, FileStore(store_path), tokens=tokens, rate_limit=limit)
    second = make_session(emu, FileStore(store_path), rate_limit=limit)
    assert first.get("/v2/employees").status_code == 200
    assert second.get("/v2/employees").status_code == 200
    for session in (first, second):
        with pytest.raises(RateLimited):
            session.get("/v2/employees")
    assert emu.counters.api_requests == 2


@pytest.mark.parametrize(("scope", "expected"), [("client", 1), ("company", 2)])
def test_an_integration_limits_per_client_or_per_company(
    emu: Emulator, scope: str, expected: int
) -> None:
    limit = RateLimit(1, burst=2, wait=0, scope=scope)  # type: ignore[arg-type]
    with Integration(
        emu.client_id,
        emu.client_secret,
        store=MemoryStore.family(),
        token_url=emu.token_url,
        api_url=emu.api_url,
        rate_limit=limit,
    ) as pleo:
        pleo.add(emu.default_company, tokens_of(emu))
        pleo.add(OTHER_COMPANY, tokens_of(emu, OTHER_COMPANY))
        sent = 0
        for company in (emu.default_company, OTHER_COMPANY):
            try:
                assert pleo.session(company).get("/v2/employees").status_code == 200
                sent += 1
            except RateLimited:
                pass
        assert sent == expected
        with pytest.raises(RateLimited):
            pleo.session(emu.default_company).get("/v2/employees")
    assert emu.counters.api_requests == expected


def test_requests_outside_the_api_are_not_limited(emu: Emulator, make_session: MakeSession) -> None:
    session = make_session(emu, tokens=tokens_of(emu), rate_limit=RateLimit(1, burst=2, wait=0))
    assert session.get("/v2/employees").status_code == 200
    # The same server under another name is outside api_url: no token, no slot.
    elsewhere = emu.url.replace("127.0.0.1", "localhost") + "/v2/employees"
    for _ in range(3):
        assert session.get(elsewhere).status_code == 401
    with pytest.raises(RateLimited):
        session.get("/v2/employees")


def test_a_401_replay_takes_a_slot_of_its_own(
    emulator: Emulator, make_session: MakeSession
) -> None:
    from support.session_doubles import CaptureServer, status_sequence
    from support.session_helpers import issued

    limit = RateLimit(1, burst=4, wait=0)  # three slots, then one a minute
    with CaptureServer(status_sequence(401, 200, 200, 200)) as api:
        session = make_session(emulator, api_url=api.url, tokens=issued(emulator), rate_limit=limit)
        assert session.get("/v2/employees").status_code == 200  # the 401, then its replay
        assert session.get("/v2/employees").status_code == 200
        with pytest.raises(RateLimited):
            session.get("/v2/employees")
    assert len(api.seen) == 3
    assert emulator.counters.refresh_grants == 1
