"""Sixteen threads, one PleoSession, many rotations: exactly one refresh grant per rotation.

The emulator enforces Pleo's rules: a refresh token presented twice revokes the
grant (``reuse_detections``) and a spent or unknown one is refused
(``rejected_refreshes``). Both staying at zero means no token was ever refreshed
twice; ``refresh_grants`` equal to the rotations the store saw means each
rotation cost exactly one grant.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.session_helpers import stopped

from pleo_auth import FileStore, MemoryStore, PleoSession, TokenSet
from pleo_auth._clock import FakeClock
from pleo_auth.testing import Emulator

THREADS = 16


class Recording:
    """Mixin for a store: remembers every TokenSet saved, in order."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.saves: list[TokenSet] = []
        self._guard = threading.Lock()

    def save(self, tokens: TokenSet, *, replaces: TokenSet | None = None) -> None:
        super().save(tokens, replaces=replaces)  # type: ignore[misc]
        with self._guard:
            self.saves.append(tokens)


class RecordingMemoryStore(Recording, MemoryStore):
    pass


class RecordingFileStore(Recording, FileStore):
    pass


@pytest.fixture(params=["memory", "file"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Recording:
    if request.param == "memory":
        return RecordingMemoryStore()
    return RecordingFileStore(tmp_path / "tokens.json")


def close_and_join_timer(session: PleoSession) -> None:
    """Close the session and wait for its timer to stop, so no refresh runs after."""
    session.close()
    assert stopped(session, 60)


def check_rotation_chain(saves: list[TokenSet]) -> None:
    """Every save is a new pair: no token appears in two saves."""
    access = [tokens.access_token for tokens in saves]
    refresh = [tokens.refresh_token for tokens in saves]
    assert len(set(access)) == len(access)
    assert len(set(refresh)) == len(refresh)


def hammer(session: PleoSession, deadline: float) -> tuple[Counter[int], list[BaseException]]:
    """16 threads, started together on a barrier, GET until the (wall-clock) deadline."""
    barrier = threading.Barrier(THREADS)
    statuses: Counter[int] = Counter()
    errors: list[BaseException] = []
    per_thread = [0] * THREADS
    guard = threading.Lock()

    def work(index: int) -> None:
        barrier.wait()
        while time.time() < deadline:
            try:
                response = session.get("/v2/employees")
            except BaseException as exc:
                with guard:
                    errors.append(exc)
            else:
                with guard:
                    statuses[response.status_code] += 1
                    per_thread[index] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads)
    assert all(count > 0 for count in per_thread)
    return statuses, errors


def run_rotations(store: Recording, lifetime: float, margin: float, rotations: int) -> None:
    """Drive 16 threads through at least ``rotations`` rotations, in real time, and
    check the refresh count against what the lifetime, margin and timer jitter allow."""
    jitter_max = min(margin / 4, 15.0)  # what PleoSession gives the proactive timer
    with Emulator(access_token_lifetime=lifetime) as emu:
        first = TokenSet.from_response(emu.issue_tokens())
        assert first.issued_at is not None
        session = PleoSession(
            emu.client_id,
            emu.client_secret,
            store=store,  # type: ignore[arg-type]
            token_url=emu.token_url,
            api_url=emu.api_url,
            tokens=first,
            refresh_margin=margin,
        )
        try:
            # Every token is replaced by the time it expires (the library refreshes at
            # expiry - margin), so running past `rotations` lifetimes forces that many.
            deadline = first.issued_at + rotations * lifetime + 0.2
            statuses, errors = hammer(session, deadline)
        finally:
            close_and_join_timer(session)
        ended = time.time()
        counters = emu.counters

    assert errors == []
    assert set(statuses) == {200}
    rotated = len(store.saves) - 1  # the first save is the seed
    assert counters.refresh_grants == rotated  # exactly one grant per rotation
    assert counters.rejected_refreshes == 0
    assert counters.reuse_detections == 0
    # No 401 reached a caller (every status above is 200). The emulator may still
    # count a few: a request the OS scheduler delays past its token's expiry, or
    # past a rotation's bounded drain, is refused and then replayed by the session.
    assert counters.unauthorized == counters.api_requests - sum(statuses.values())
    check_rotation_chain(store.saves)
    # A rotation starts no sooner than expiry - margin - jitter after the previous one
    # was issued: that bounds how many fit before the timer stopped.
    shortest_period = lifetime - margin - jitter_max
    most = math.floor((ended - first.issued_at) / shortest_period)
    least = math.floor((deadline - first.issued_at) / lifetime)
    assert least >= rotations
    assert least <= counters.refresh_grants <= most
    issued = [tokens.issued_at or 0.0 for tokens in store.saves]
    assert all(b - a >= shortest_period for a, b in itertools.pairwise(issued))


@pytest.mark.slow
def test_sixteen_threads_share_one_session_across_rotations(store: Recording) -> None:
    run_rotations(store, lifetime=2.0, margin=0.5, rotations=4)


@pytest.mark.soak
def test_sixteen_threads_share_one_session_across_many_rotations_soak(store: Recording) -> None:
    run_rotations(store, lifetime=2.0, margin=0.5, rotations=10)


# -- deterministic: fake time ------------------------------------------------------------------


def release_together(
    session: PleoSession, clock: FakeClock, advance_to: float
) -> tuple[list[Any], list[BaseException]]:
    """16 threads wait on a barrier; fake time moves to ``advance_to``; then all GET at once."""
    barrier = threading.Barrier(THREADS + 1)
    responses: list[Any] = []
    errors: list[BaseException] = []
    guard = threading.Lock()

    def work() -> None:
        barrier.wait()
        try:
            response = session.get("/v2/employees")
        except BaseException as exc:
            with guard:
                errors.append(exc)
        else:
            with guard:
                responses.append(response)

    threads = [threading.Thread(target=work) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    clock.advance(advance_to - clock.time())
    barrier.wait()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    return responses, errors


@pytest.fixture
def fake_emulator(clock: FakeClock) -> Iterator[Emulator]:
    with Emulator(access_token_lifetime=100, clock=clock) as emu:
        yield emu


@pytest.mark.parametrize("past", [95.0, 150.0], ids=["inside-margin", "expired"])
def test_sixteen_threads_released_past_the_margin_cause_exactly_one_refresh_per_rotation(
    clock: FakeClock, fake_emulator: Emulator, store: Recording, past: float
) -> None:
    emu = fake_emulator
    session = PleoSession(
        emu.client_id,
        emu.client_secret,
        store=store,  # type: ignore[arg-type]
        token_url=emu.token_url,
        api_url=emu.api_url,
        tokens=TokenSet.from_response(emu.issue_tokens(), now=clock.time()),
        refresh_margin=10,
        clock=clock,
    )
    try:
        assert session.get("/v2/employees").status_code == 200
        for rotation in range(1, 4):
            # Time passes the margin while every thread is held at the barrier.
            when = store.saves[-1].expires_at - 100 + past
            responses, errors = release_together(session, clock, when)
            assert errors == []
            current = store.saves[-1]
            assert [r.status_code for r in responses] == [200] * THREADS
            assert {r.request.headers["Authorization"] for r in responses} == {
                f"Bearer {current.access_token}"
            }
            counters = emu.counters
            assert counters.refresh_grants == rotation
            assert len(store.saves) == rotation + 1
            assert counters.rejected_refreshes == 0
            assert counters.reuse_detections == 0
            assert counters.unauthorized == 0
    finally:
        close_and_join_timer(session)
    check_rotation_chain(store.saves)
