"""SQLStore's crash runs, on PostgreSQL and a SQLite file: processes killed with
SIGKILL at random moments of a save, and of a refresh through a real PleoSession
against the emulator. The runs are tests/hunt/test_crash.py's, over a SQLStore
whose row lease is short, so a killed holder's successor waits at most one lease.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator

import pytest
from hunt.test_crash import (
    Pace,
    Pairs,
    fork_child,
    reaped,
    rotate,
    run_random_refresh_kills,
    save_loop,
)
from support.databases import unique_name

from pleo_auth import Company
from pleo_auth.stores import SQLGrantStore, SQLStore
from pleo_auth.testing import Emulator

A = Company("0b6e1a7c-55d2-4c1e-9a51-3f1d2c4b5a60")
LEASE = 0.5
SAVE_KILLS = 6
REFRESH_KILLS = 3
SOAK_SAVE_KILLS = 50
SOAK_REFRESH_KILLS = 30


@pytest.fixture
def rng() -> random.Random:
    """The run's randomness; its seed is printed, so a failure shows how to replay it."""
    seed = int(os.environ.get("PLEO_AUTH_CRASH_SEED") or random.SystemRandom().randrange(2**32))
    print(f"crash seed {seed}: replay with PLEO_AUTH_CRASH_SEED={seed}")
    return random.Random(seed)


@pytest.fixture(params=["postgres_url", "sqlite_url"])
def store(request: pytest.FixtureRequest, emulator: Emulator) -> Iterator[SQLGrantStore]:
    url: str = request.getfixturevalue(request.param)
    family = SQLStore(url, client_id=emulator.client_id, table=unique_name("grants"), lease=LEASE)
    family.create_table()
    yield family.for_company(A)
    family.close()


def save_kills(store: SQLGrantStore, rng: random.Random, kills: int) -> tuple[int, float]:
    """Kill ``kills`` children rotating the stored pair at random moments; after each,
    the row holds the last pair a save acknowledged, or the one being saved, whole.

    Returns:
        How many kills fell inside a save, and the slowest survivor's wait for the lock.
    """
    pairs = Pairs(rng.getrandbits(64))
    store.save(pairs.pair(0))
    timings = []
    for _ in range(3):
        started = time.monotonic()
        generation = rotate(store, pairs)
        timings.append(time.monotonic() - started)
    pace = Pace(timings)
    inside, slowest = 0, 0.0
    for _ in range(kills):
        with reaped(fork_child(save_loop(store, pairs, None))) as child:
            _, waited = child.expect("L")  # the survivor of the previous kill
            slowest = max(slowest, waited)
            child.run_for(pace.kill_delay(rng))
            child.kill()
        pace.add([m[2] for m in child.messages if m[0] == "S"])
        acknowledged = began = generation
        for message in child.messages:
            if message[0] == "B":
                began = message[1]
            elif message[0] == "S":
                acknowledged = message[1]
        stored = store.load()  # raises on a torn document
        expected = {acknowledged: pairs.pair(acknowledged), began: pairs.pair(began)}
        held = [n for n, pair in expected.items() if stored == pair]
        assert held, f"after a kill the row holds neither pair {sorted(expected)}"
        inside += began != acknowledged
        generation = held[0]
    return inside, slowest


@pytest.mark.slow
def test_a_save_killed_at_random_moments_leaves_the_old_or_the_new_pair_whole(
    store: SQLGrantStore, rng: random.Random
) -> None:
    inside, slowest = save_kills(store, rng, SAVE_KILLS)
    print(f"{store!r}: {SAVE_KILLS} kills, {inside} inside a save, slowest survivor {slowest:.3f}s")
    assert slowest < LEASE + 1.0  # a killed holder's lease, and the round trips


@pytest.mark.slow
def test_a_refresh_killed_at_random_moments_leaves_a_pair_the_server_issued_together(
    store: SQLGrantStore, emulator: Emulator, rng: random.Random
) -> None:
    stats = run_random_refresh_kills(store, emulator, rng, REFRESH_KILLS)
    print(f"{store!r}: {stats.summary()}")
    assert stats.kills == REFRESH_KILLS


@pytest.mark.soak
@pytest.mark.timeout(1800)
def test_soak_saves_killed_at_random_moments_by_the_dozen(
    store: SQLGrantStore, rng: random.Random
) -> None:
    inside, slowest = save_kills(store, rng, SOAK_SAVE_KILLS)
    print(f"{store!r}: {SOAK_SAVE_KILLS} kills, {inside} inside a save, slowest {slowest:.3f}s")
    assert slowest < LEASE + 1.0


@pytest.mark.soak
@pytest.mark.timeout(1800)
def test_soak_refreshes_killed_at_random_moments_by_the_dozen(
    store: SQLGrantStore, emulator: Emulator, rng: random.Random
) -> None:
    stats = run_random_refresh_kills(store, emulator, rng, SOAK_REFRESH_KILLS)
    print(f"{store!r}: {stats.summary()}")
    assert stats.kills == SOAK_REFRESH_KILLS
