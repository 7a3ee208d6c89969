"""Two real processes refreshing one grant through the Django model store, against
the emulator, on SQLite and on PostgreSQL: exactly one refresh grant per rotation,
no refused refresh, no reuse of a spent refresh token.

Each rotation the emulator holds the leader's refresh request (sent while the leader
holds the row's lease) until the follower has seen that lease held and started its
own refresh: the follower must wait for the lease, then adopt the leader's pair.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.databases import Database
from support.django_project import configure, databases, migrate, unique_client, use_postgres
from support.web_contract import A

from pleo_auth import TokenSet, TokenStoreError
from pleo_auth.contrib.django import DjangoGrantStore, DjangoStoreFamily
from pleo_auth.stores.lease import MAX_PAUSE
from pleo_auth.testing import Emulator, new_tokens

#: The row lease of the killed-holder test, in seconds.
LEASE = 1.0

WORKER = Path(__file__).resolve().parents[1] / "support" / "django_store_worker.py"


@pytest.fixture(scope="module", autouse=True)
def project() -> None:
    configure()
    migrate("default")


@pytest.fixture(params=["sqlite", "postgresql"])
def alias(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql":
        database: Database = request.getfixturevalue("postgres_database")
        use_postgres(database.name)
        migrate("postgres")
        return "postgres"
    return "default"


class Worker:
    """A child process running support/django_store_worker.py: one answer per command."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.send(json.dumps(config))
        assert self.answer() == "ready"

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.strip())
        self.lines.put("<exited>")

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def answer(self) -> str:
        try:
            return self.lines.get(timeout=60)  # a bound against hangs, not a schedule
        except queue.Empty:
            pytest.fail("a worker gave no answer within 60 s")

    def stop(self) -> str:
        if self.process.poll() is None:
            with contextlib.suppress(OSError):
                self.send("quit")
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
        assert self.process.stderr is not None
        return self.process.stderr.read()


@pytest.fixture
def workers(alias: str, emulator: Emulator) -> Iterator[list[Worker]]:
    client_id = unique_client()
    family = DjangoStoreFamily(client_id, using=alias)
    family.store(A).save(TokenSet.from_response(emulator.issue_tokens(company=A)))
    config = {
        "databases": databases(),
        "alias": alias,
        "client_id": client_id,
        "oauth_client_id": emulator.client_id,
        "client_secret": emulator.client_secret,
        "company": A.urn,
        "token_url": emulator.token_url,
        "api_url": emulator.api_url,
    }
    started: list[Worker] = []
    try:
        started.extend(Worker(config) for _ in range(2))
        yield started
    finally:
        errors = [worker.stop() for worker in started]
        assert all(worker.process.returncode == 0 for worker in started), errors
        family.rows().delete()


@pytest.mark.slow
def test_two_processes_refreshing_one_grant_spend_each_refresh_token_once(
    workers: list[Worker], emulator: Emulator
) -> None:
    arrived = threading.Semaphore(0)
    release = threading.Event()

    def hold_refreshes(grant_type: str | None) -> None:
        if grant_type == "refresh_token":
            arrived.release()
            release.wait(60)  # a bound against hangs; the test releases it

    emulator.set_token_request_hook(hold_refreshes)
    try:
        rotations = 4
        for rotation in range(1, rotations + 1):
            leader, follower = workers[rotation % 2], workers[(rotation + 1) % 2]
            release.clear()
            leader.send("refresh")
            assert arrived.acquire(timeout=60), "the leader sent no refresh"
            follower.send("probe-then-refresh")
            probe = follower.answer()
            release.set()
            answers = (leader.answer(), follower.answer())
            counters = emulator.counters_for(A)
            assert (
                counters.refresh_grants,
                counters.rejected_refreshes,
                counters.reuse_detections,
            ) == (rotation, 0, 0)
            assert probe == "held"
            assert answers == ("refreshed", "refreshed")
            for worker in workers:
                worker.send("get")
                assert worker.answer() == "status 200"
    finally:
        release.set()
        emulator.set_token_request_hook(None)
    assert emulator.counters.rejected_refreshes == 0


def lease_until(family: DjangoStoreFamily) -> Any:
    return family.rows().filter(company=A.id).values_list("lease_until", flat=True).get()


def contend(store: DjangoGrantStore, outcome: list[BaseException | None]) -> None:
    try:
        with store.lock(timeout=0.0, lease=60.0):
            outcome.append(None)
    except BaseException as exc:
        outcome.append(exc)


@pytest.mark.slow
def test_a_held_lease_is_renewed_so_a_slow_refresh_keeps_it(alias: str) -> None:
    """A row lease of 1 s, held through four renewals (longer than the lease): no
    other owner can take it meanwhile, and the holder's fenced save still lands.
    (A renewal may come two thirds of a lease late: busy cores delay it a little.)"""
    family = DjangoStoreFamily(unique_client(), using=alias, lease=LEASE)
    contender = DjangoStoreFamily(family.client_id, using=alias, lease=LEASE).store(A)
    stored = new_tokens()
    family.store(A).save(stored)
    try:
        with family.store(A).lock(timeout=5.0, lease=60.0):
            seen = [lease_until(family)]
            give_up_at = time.monotonic() + 30  # a bound against hangs, not a schedule
            while len(seen) < 5:
                until = lease_until(family)
                if until != seen[-1]:
                    seen.append(until)
                assert time.monotonic() < give_up_at, "the lease was not renewed"
                time.sleep(0.01)
            assert seen == sorted(seen)
            # Another thread (this one's own lock calls would re-enter its lease).
            outcome: list[BaseException | None] = []
            thread = threading.Thread(target=contend, args=(contender, outcome))
            thread.start()
            thread.join(30)
            assert len(outcome) == 1
            assert isinstance(outcome[0], TokenStoreError)
            assert outcome[0].retryable is True
            successor = new_tokens()
            family.store(A).save(successor, replaces=stored)
        assert contender.load() == successor
    finally:
        family.rows().delete()


@pytest.mark.slow
def test_a_killed_holder_delays_the_others_by_at_most_one_lease(
    alias: str, emulator: Emulator
) -> None:
    from django.db.models.functions import Now

    """The holder is SIGKILLed while it holds the lease (renewing it every third):
    the next owner takes it within one lease of the kill, plus the longest backoff
    (and half a second for the machine). A 1 s lease; the default is 10 s."""
    client_id = unique_client()
    family = DjangoStoreFamily(client_id, using=alias, lease=LEASE)
    family.store(A).save(new_tokens())
    worker = Worker(
        {
            "databases": databases(),
            "alias": alias,
            "client_id": client_id,
            "oauth_client_id": emulator.client_id,
            "client_secret": emulator.client_secret,
            "company": A.urn,
            "token_url": emulator.token_url,
            "api_url": emulator.api_url,
            "lease": LEASE,
        }
    )
    try:
        worker.send("hold")
        assert worker.answer() == "held"
        held = family.rows().filter(company=A.id, lease_until__gt=Now())
        assert held.exclude(lease_owner=None).exists()
        worker.process.kill()
        killed_at = time.monotonic()
        dead_until = lease_until(family)  # by the database's clock; renewals only raise it
        worker.process.wait(30)
        with family.store(A).lock(timeout=60.0, lease=60.0):
            waited = time.monotonic() - killed_at
            taken_at = lease_until(family) - datetime.timedelta(seconds=LEASE)
        # The kill released nothing: the lease was taken only once it had run out...
        assert taken_at >= dead_until - datetime.timedelta(milliseconds=10)
        # ... and at most one lease after the kill (plus the longest backoff, and a
        # second for a machine whose cores are busy).
        assert waited <= LEASE + MAX_PAUSE + 1.0, f"waited {waited:.2f}s"
    finally:
        worker.stop()
        family.rows().delete()
