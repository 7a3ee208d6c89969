"""pleo_auth.events (issue 15, part 1): the exact events of each kind of rotation,
seen by a subscriber, against the emulator over HTTP; and delivery that never holds
up a caller, whatever the subscriber does."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.integration_helpers import integration
from support.session_helpers import MakeSession, TimerlessClock, issued

from pleo_auth import FileStore, MemoryStore, ReauthenticationRequired, RefreshError, TokenSet
from pleo_auth import events as ev
from pleo_auth._clock import FakeClock
from pleo_auth.testing import Emulator, Fault, settle


class Recorder:
    """A subscriber that keeps what it is given, in order."""

    def __init__(self) -> None:
        self.seen: list[ev.Event] = []

    def __call__(self, event: ev.Event) -> None:
        self.seen.append(event)

    def kinds(self) -> list[str]:
        assert ev.flush(10), "events still undelivered after 10 s"
        return [event.kind for event in self.seen]

    def only(self, kind: type[ev._Event]) -> list[ev.Event]:
        return [event for event in self.seen if isinstance(event, kind)]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


REFRESH = ["lock_waited", "refresh_started", "refresh_succeeded"]


# -- the exact sequences --------------------------------------------------------------


def test_a_proactive_refresh_is_lock_waited_refresh_started_refresh_succeeded(
    clock: FakeClock, fake_emulator: Emulator, make_session: MakeSession, recorder: Recorder
) -> None:
    tokens = issued(fake_emulator, clock)
    make_session(fake_emulator, tokens=tokens, refresh_margin=10, clock=clock, on_event=recorder)
    assert recorder.kinds() == []  # building a session and seeding it emit nothing
    clock.advance(91)  # past the refresh's due time, before expiry: the timer's
    assert settle(clock)
    assert recorder.kinds() == REFRESH
    assert fake_emulator.counters.refresh_grants == 1
    succeeded = recorder.seen[-1]
    assert isinstance(succeeded, ev.RefreshSucceeded)
    assert succeeded.attempts == 1
    assert succeeded.duration >= 0
    assert {event.company for event in recorder.seen} == {None}


def test_an_adoption_from_another_process_is_one_adopted_event(
    emulator: Emulator, make_session: MakeSession, recorder: Recorder, tmp_path: Path
) -> None:
    path = tmp_path / "tokens.json"
    session = make_session(emulator, FileStore(path), tokens=issued(emulator), on_event=recorder)
    assert session.get("/v2/employees").status_code == 200
    other = textwrap.dedent(
        f"""
        from pleo_auth import FileStore, PleoSession
        with PleoSession({emulator.client_id!r}, {emulator.client_secret!r},
                         store=FileStore({str(path)!r}), token_url={emulator.token_url!r},
                         api_url={emulator.api_url!r}) as other:
            other.refresh()
        """
    )
    subprocess.run([sys.executable, "-c", other], check=True, timeout=60)
    assert emulator.counters.refresh_grants == 1  # the other process's
    assert session.get("/v2/employees").status_code == 200  # with the adopted pair
    assert recorder.kinds() == ["adopted"]
    assert emulator.counters.refresh_grants == 1
    assert emulator.counters.unauthorized == 0


def test_a_401_replay_is_the_forced_refresh_then_replayed_401(
    timerless: TimerlessClock, make_session: MakeSession, recorder: Recorder
) -> None:
    with Emulator(access_token_lifetime=100, clock=timerless) as emu:
        # The session believes the token lives 50 s longer than Pleo does.
        tokens = TokenSet.from_response(emu.issue_tokens(), now=timerless.time() + 50)
        session = make_session(
            emu, tokens=tokens, refresh_margin=1, clock=timerless, on_event=recorder
        )
        timerless.advance(110)  # expired at Pleo, 40 s left as the session sees it
        assert session.get("/v2/employees").status_code == 200
        assert recorder.kinds() == [*REFRESH, "replayed_401"]
        assert emu.counters.unauthorized == 1
        assert emu.counters.refresh_grants == 1


def test_a_transient_failure_then_success_is_refresh_failed_then_a_refresh(
    emulator: Emulator, make_session: MakeSession, recorder: Recorder
) -> None:
    session = make_session(
        emulator, tokens=issued(emulator), max_refresh_attempts=1, on_event=recorder
    )
    emulator.inject_fault(Fault(status=503))
    with pytest.raises(RefreshError):
        session.refresh()
    session.refresh()
    assert recorder.kinds() == ["lock_waited", "refresh_started", "refresh_failed", *REFRESH]
    failed = recorder.seen[2]
    assert isinstance(failed, ev.RefreshFailed)
    assert (failed.error_type, failed.retryable) == ("RefreshError", True)
    assert "503" in failed.reason
    succeeded = recorder.seen[-1]
    assert isinstance(succeeded, ev.RefreshSucceeded)
    assert succeeded.attempts == 1
    assert emulator.counters.refresh_grants == 1
    assert emulator.counters.faults_served == 1


def test_a_transient_failure_retried_within_one_refresh_counts_two_attempts(
    emulator: Emulator, make_session: MakeSession, recorder: Recorder
) -> None:
    session = make_session(emulator, tokens=issued(emulator), on_event=recorder)
    emulator.inject_fault(Fault(status=503))
    session.refresh()
    assert recorder.kinds() == REFRESH
    succeeded = recorder.seen[-1]
    assert isinstance(succeeded, ev.RefreshSucceeded)
    assert succeeded.attempts == 2
    assert emulator.counters.token_requests == 2


def test_a_dead_grant_is_refresh_failed_then_grant_dead(
    emulator: Emulator, make_session: MakeSession, recorder: Recorder
) -> None:
    session = make_session(emulator, tokens=issued(emulator), on_event=recorder)
    emulator.revoke_all()
    with pytest.raises(ReauthenticationRequired):
        session.refresh()
    with pytest.raises(ReauthenticationRequired):
        session.get("/v2/employees")  # already known dead: nothing more happens
    assert recorder.kinds() == ["lock_waited", "refresh_started", "refresh_failed", "grant_dead"]
    failed, dead = recorder.seen[2], recorder.seen[3]
    assert isinstance(failed, ev.RefreshFailed)
    assert (failed.error_type, failed.retryable) == ("ReauthenticationRequired", False)
    assert isinstance(dead, ev.GrantDead)
    assert dead.error == failed.reason == "invalid_grant"


def test_requests_held_by_a_refresh_each_get_a_request_held_event(
    clock: FakeClock, fake_emulator: Emulator, make_session: MakeSession, recorder: Recorder
) -> None:
    session = make_session(
        fake_emulator, tokens=issued(fake_emulator, clock), clock=clock, on_event=recorder
    )
    clock.advance(99)  # inside the margin: the request refreshes before it is sent
    assert session.get("/v2/employees").status_code == 200
    assert recorder.kinds() == [*REFRESH, "request_held"]
    assert fake_emulator.counters.refresh_grants == 1


def test_no_event_of_an_ordinary_request(
    emulator: Emulator, make_session: MakeSession, recorder: Recorder
) -> None:
    session = make_session(emulator, tokens=issued(emulator), on_event=recorder)
    for _ in range(5):
        assert session.get("/v2/employees").status_code == 200
    assert recorder.kinds() == []


def test_an_event_never_holds_a_token_or_the_secret(
    emulator: Emulator, make_session: MakeSession, recorder: Recorder
) -> None:
    store = MemoryStore()
    first = issued(emulator)
    session = make_session(emulator, store, tokens=first, on_event=recorder)
    emulator.inject_fault(Fault(status=503))
    session.refresh()
    second = store.load()
    assert second is not None
    emulator.revoke_all()
    with pytest.raises(ReauthenticationRequired):
        session.refresh()
    assert len(recorder.kinds()) == 7
    text = repr(recorder.seen)
    secrets = [emulator.client_secret or ""]
    for tokens in (first, second):
        secrets += [tokens.access_token, tokens.refresh_token]
    assert all(secret and secret not in text for secret in secrets)


# -- subscribing ------------------------------------------------------------------------


def test_an_integrations_events_carry_the_company(emulator: Emulator, recorder: Recorder) -> None:
    company = "3b4c5d6e-0000-4000-8000-000000000001"
    with integration(emulator, MemoryStore.family(), on_event=recorder) as pleo:
        pleo.add(company, TokenSet.from_response(emulator.issue_tokens(company=company)))
        pleo.session(company).refresh()
        emulator.revoke(company)
        with pytest.raises(ReauthenticationRequired):
            pleo.session(company).refresh()
    assert recorder.kinds() == [*REFRESH, "lock_waited", "refresh_started", "refresh_failed",
                                "grant_dead"]  # fmt: skip
    assert {event.company for event in recorder.seen} == {company}


def test_a_global_subscriber_sees_every_session_and_unsubscribes(
    emulator: Emulator, make_session: MakeSession, recorder: Recorder
) -> None:
    unsubscribe = ev.subscribe(recorder)
    try:
        first = make_session(emulator, tokens=issued(emulator))
        second = make_session(emulator, tokens=issued(emulator))
        first.refresh()
        second.refresh()
        assert recorder.kinds() == REFRESH * 2
    finally:
        unsubscribe()
    unsubscribe()  # harmless
    first.refresh()
    assert recorder.kinds() == REFRESH * 2


def test_a_closed_session_stops_its_subscriber(
    emulator: Emulator, make_session: MakeSession, recorder: Recorder
) -> None:
    store = MemoryStore()
    keeper = make_session(emulator, store, tokens=issued(emulator))
    watched = make_session(emulator, store, on_event=recorder)
    watched.refresh()
    watched.close()
    keeper.refresh()  # the same coordinator, without the closed session's subscriber
    assert recorder.kinds() == REFRESH


# -- delivery never holds anyone up ---------------------------------------------------


class Blocked:
    """A subscriber that blocks on an Event until released: as one that sleeps 10 s,
    without the sleep."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def __call__(self, event: ev.Event) -> None:
        self.calls += 1
        self.entered.set()
        self.release.wait(60)


@pytest.fixture
def blocked() -> Iterator[Blocked]:
    subscriber = Blocked()
    yield subscriber
    subscriber.release.set()
    assert ev.flush(30)


def test_a_blocked_subscriber_holds_up_no_refresh(
    emulator: Emulator, make_session: MakeSession, blocked: Blocked
) -> None:
    session = make_session(emulator, tokens=issued(emulator), on_event=blocked)
    session.refresh()
    assert blocked.entered.wait(10)
    # The subscriber is inside its first event, and stays there: every call returns.
    for _ in range(3):
        session.refresh()
    assert not blocked.release.is_set()
    assert blocked.calls == 1
    assert emulator.counters.refresh_grants == 4
    blocked.release.set()
    assert ev.flush(10)
    assert blocked.calls == 4 * len(REFRESH)


def test_a_blocked_subscriber_adds_no_time_to_a_request_that_waits_for_a_refresh(
    clock: FakeClock, fake_emulator: Emulator, make_session: MakeSession, blocked: Blocked
) -> None:
    # The same refresh, without and then with a subscriber blocked in its first event.
    def timed_refresh() -> float:
        started = time.perf_counter()
        session.refresh()
        return time.perf_counter() - started

    session = make_session(fake_emulator, tokens=issued(fake_emulator, clock), clock=clock)
    without = min(timed_refresh() for _ in range(5))
    session.close()
    session = make_session(
        fake_emulator, tokens=issued(fake_emulator, clock), clock=clock, on_event=blocked
    )
    session.refresh()
    assert blocked.entered.wait(10)
    with_blocked = min(timed_refresh() for _ in range(5))
    assert not blocked.release.is_set()
    # Best of five each: the subscriber's cost is a queue append, not its 60 s.
    assert with_blocked < without + 0.005, (with_blocked, without)


def test_a_raising_subscriber_breaks_no_refresh_and_is_logged_once(
    emulator: Emulator,
    make_session: MakeSession,
    recorder: Recorder,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(event: ev.Event) -> None:
        raise RuntimeError("subscriber bug")

    unsubscribe = ev.subscribe(broken)
    try:
        session = make_session(emulator, tokens=issued(emulator), on_event=recorder)
        with caplog.at_level(logging.ERROR, logger="pleo_auth"):
            session.refresh()
            session.refresh()
            assert recorder.kinds() == REFRESH * 2  # a subscriber after it still gets all
    finally:
        unsubscribe()
    failures = [r for r in caplog.records if "event subscriber" in r.getMessage()]
    assert len(failures) == 1
    assert "broken" in failures[0].getMessage()
    assert emulator.counters.refresh_grants == 2


def test_a_full_queue_drops_and_counts_events_and_blocks_nobody(
    blocked: Blocked, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ev, "QUEUE_SIZE", 10)
    observers = ev.Observers("company")
    observers.add("handle", blocked)
    before = ev.dropped()
    observers.emit(ev.Adopted(company="company"))
    assert blocked.entered.wait(10)  # the dispatcher holds the first, outside the queue
    for _ in range(10 + 3):
        observers.emit(ev.Adopted(company="company"))
    assert ev.dropped() - before == 3
    blocked.release.set()
    assert ev.flush(10)
    assert blocked.calls == 1 + 10


def test_observers_are_false_with_nobody_subscribed() -> None:
    observers = ev.Observers()
    assert not observers
    unsubscribe = ev.subscribe(lambda event: None)
    assert observers
    unsubscribe()
    assert not observers
    observers.add(1, lambda event: None)
    assert observers
    observers.discard(1)
    assert not observers


def test_events_are_immutable_values_with_their_kind() -> None:
    event = ev.RefreshSucceeded(company=None, duration=0.25, attempts=2)
    assert event == ev.RefreshSucceeded(company=None, duration=0.25, attempts=2)
    with pytest.raises(AttributeError):
        event.attempts = 3  # type: ignore[misc]
    kinds = {
        cls.kind
        for cls in (
            ev.RefreshStarted, ev.RefreshSucceeded, ev.RefreshFailed, ev.Adopted,
            ev.LockWaited, ev.RequestHeld, ev.Replayed401, ev.GrantDead,
            ev.StoreRestored, ev.RateLimited,
        )
    }  # fmt: skip
    assert kinds == {
        "refresh_started", "refresh_succeeded", "refresh_failed", "adopted", "lock_waited",
        "request_held", "replayed_401", "grant_dead", "store_restored", "rate_limited",
    }  # fmt: skip


def test_a_forked_child_delivers_its_own_events_on_a_dispatcher_of_its_own(
    blocked: Blocked,
) -> None:
    observers = ev.Observers("company")
    observers.add("handle", blocked)
    observers.emit(ev.Adopted(company="company"))
    assert blocked.entered.wait(10)  # the parent's dispatcher is busy, for good
    observers.emit(ev.Adopted(company="company"))  # and one more waits in its queue
    pid = os.fork()
    if pid == 0:  # the child: its parent's dispatcher thread does not exist here
        code = 1
        try:
            got: list[ev.Event] = []
            child = ev.Observers("child")
            child.add("handle", got.append)
            child.emit(ev.GrantDead(company="child"))
            delivered = ev.flush(10)
            code = 0 if delivered and [e.company for e in got] == ["child"] else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert blocked.calls == 1  # the parent's own dispatcher is still where it was
