"""Two real processes refreshing one grant through the Django model store, against
the emulator, on SQLite and on PostgreSQL: exactly one refresh grant per rotation,
no refused refresh, no reuse of a spent refresh token.

Each rotation the emulator holds the leader's refresh request (sent while the leader
holds the row's lease) until the follower has seen that lease held and started its
own refresh: the follower must wait for the lease, then adopt the leader's pair.
"""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.databases import Database
from support.django_project import configure, databases, migrate, unique_client, use_postgres
from support.web_contract import A

from pleo_auth import TokenSet
from pleo_auth.contrib.django import DjangoStoreFamily
from pleo_auth.testing import Emulator

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
