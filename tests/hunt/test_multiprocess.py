"""Many processes, one grant: refreshes coordinated through the store.

Every worker is a real process (spawned: a fresh interpreter, sharing nothing
with the others but the store spec), talking over HTTP to the emulator in this
process. The emulator counts what a broken coordinator would cause: refresh
tokens spent twice (``reuse_detections``), stale ones (``rejected_refreshes``),
and refreshes nobody needed (``refresh_grants`` above what the schedule allows).
"""

from __future__ import annotations

import math
import os
import stat
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Hashable
from pathlib import Path

import pytest
import requests

from pleo_auth import FileStore, PleoSession, ReauthenticationRequired, TokenSet
from pleo_auth.stores.base import TokenStore
from pleo_auth.stores.redis import RedisStore
from pleo_auth.testing import Emulator
from pleo_auth.testing._workload import ClientSpec, WorkloadReport, build_store, run_workload

STORE_KINDS = ["file", "keyring-file", "redis"]

# The default-suite stress run: a rotation about every two seconds, at least five.
#
# Rotations at least 1.75 s apart (lifetime - margin - the largest jitter), because a
# caller sees a 401 when its request and its one replay together outlast a rotation:
# the request meets one rotation, its replay with the new tokens meets the next.
# With tokens that live 1.5 s (rotations 0.875 s apart), a machine loaded enough to
# hold a thread up for most of a second did exactly that ([redis], once). The session
# replays once, and should: with Pleo's tokens, that needs a request and its replay
# to outlast a whole token lifetime (minutes), and a second rotation within one
# request would mean a schedule gone wrong, which this test exists to catch.
LIFETIME = 3.0
MARGIN = 1.0
DURATION = 15.0


@pytest.fixture(params=STORE_KINDS)
def store_spec(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return _spec(request.param, request, tmp_path)


def _spec(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if kind == "file":
        return f"file:{tmp_path / 'tokens.json'}"
    if kind == "keyring-file":
        return f"keyring-file:{tmp_path / 'keyring.cfg'}"
    redis_url = request.getfixturevalue("redis_url")
    return f"{redis_url}#test:{uuid.uuid4().hex}"


def rotation_bounds(report: WorkloadReport) -> tuple[int, int]:
    """The fewest and the most refresh grants a correct run can make.

    With ``margin = min(refresh_margin, lifetime / 2)`` (Coordinator._due_at) and a
    timer jitter of at most ``refresh_margin / 4`` (PleoSession):

    * Most: a refresh is never sent before the stored tokens are due less the
      largest jitter (earlier, the refresher finds fresh tokens under the lock and
      adopts them). So rotations are at least ``lifetime - margin - jitter`` apart,
      the first as long after the seed, and no more than
      ``span // that`` fit in the span the emulator's counts cover.
    * Fewest: the timer refreshes before the tokens expire, so rotations are at
      most ``lifetime`` apart and at least ``duration // lifetime`` happen while
      the load runs. (This assumes no refresh is held up for longer than the
      margin, which is what the margin is for.)
    """
    lifetime = report.token_lifetime
    margin = min(report.refresh_margin, lifetime / 2)
    jitter = min(report.refresh_margin / 4, 15.0)
    shortest_period = lifetime - margin - jitter
    return math.floor(report.duration / lifetime), math.floor(report.span / shortest_period)


def assert_clean_rotations(report: WorkloadReport, *, at_least: int) -> None:
    assert report.caller_errors == 0, report.error_samples
    assert report.caller_401s == 0
    assert report.reuse_detections == 0
    assert report.rejected_refreshes == 0
    fewest, most = rotation_bounds(report)
    assert fewest >= at_least, "the run is too short to prove anything"
    assert fewest <= report.refresh_grants <= most, (report.refresh_grants, fewest, most)
    assert report.requests == len(report.timeline) > 0


@pytest.mark.slow
def test_four_processes_of_eight_threads_rotate_once_per_schedule_without_errors(
    emulator: Emulator, store_spec: str
) -> None:
    emulator.set_access_token_lifetime(LIFETIME)
    report = run_workload(
        emulator,
        store_spec,
        processes=4,
        threads=8,
        duration=DURATION,
        refresh_margin=MARGIN,
    )
    assert_clean_rotations(report, at_least=5)


# FileStore's long run is the fault soak in test_soak_faults.py.
@pytest.mark.soak
@pytest.mark.parametrize("kind", ["keyring-file", "redis"])
def test_soak_four_processes_of_eight_threads_for_twenty_seconds(
    emulator: Emulator, kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    emulator.set_access_token_lifetime(3.0)
    report = run_workload(
        emulator,
        _spec(kind, request, tmp_path),
        processes=4,
        threads=8,
        duration=20.0,
        refresh_margin=1.0,
    )
    assert_clean_rotations(report, at_least=6)


@pytest.mark.slow
def test_redis_workers_share_nothing_but_the_url(
    emulator: Emulator, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every place a pleo_auth process would put a lock or marker file by default
    # points into an empty directory, which the spawned workers inherit.
    home = tmp_path / "home"
    home.mkdir()
    for variable in ("HOME", "XDG_RUNTIME_DIR", "XDG_CACHE_HOME", "XDG_DATA_HOME"):
        monkeypatch.setenv(variable, str(home))
    monkeypatch.chdir(home)
    spec = f"{redis_url}#test:{uuid.uuid4().hex}"
    assert isinstance(build_store(spec, client_id=emulator.client_id), RedisStore)
    emulator.set_access_token_lifetime(LIFETIME)
    # Long enough for at least two rotations of LIFETIME tokens at MARGIN.
    report = run_workload(
        emulator, spec, processes=4, threads=4, duration=7.0, refresh_margin=MARGIN
    )
    assert sorted(home.rglob("*")) == []
    assert_clean_rotations(report, at_least=2)


def unauthenticated_client(spec: ClientSpec) -> requests.Session:
    """A client_factory: a plain session that sends no token at all."""
    assert spec.api_url.startswith("http://127.0.0.1:")
    return requests.Session()


def test_a_client_factory_puts_its_own_client_in_every_worker(
    emulator: Emulator, tmp_path: Path
) -> None:
    report = run_workload(
        emulator,
        f"file:{tmp_path / 'tokens.json'}",
        processes=2,
        threads=2,
        duration=1.0,
        client_factory=f"{__name__}:unauthenticated_client",
    )
    # A PleoSession never lets a caller see 401: these came from the factory's client.
    assert report.requests > 0
    assert report.caller_401s == report.requests
    assert report.errors_by_kind == {"HTTP 401": report.requests}
    assert len(report.failures) == report.requests
    assert report.refresh_grants == 0


# -- noticing a rotation made by another process ----------------------------------------

REFRESH_IN_ANOTHER_PROCESS = textwrap.dedent(
    """
    import sys
    from pleo_auth import PleoSession
    from pleo_auth.testing._workload import build_store

    spec, token_url, api_url, client_id, secret = sys.argv[1:6]
    store = build_store(spec, client_id=client_id)
    with PleoSession(client_id, secret, store=store, token_url=token_url, api_url=api_url) as s:
        print(s.refresh().fingerprint)
    """
)


def refresh_in_another_process(emulator: Emulator, spec: str) -> str:
    """Refresh the tokens from a new process; the new tokens' fingerprint."""
    done = subprocess.run(
        [sys.executable, "-c", REFRESH_IN_ANOTHER_PROCESS, spec, emulator.token_url,
         emulator.api_url, emulator.client_id, emulator.client_secret or ""],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return done.stdout.strip()


class ManualClock:
    """Monotonic time that moves only when the test says. It starts at the real
    monotonic time: the store's lease deadlines are read on the session's clock."""

    def __init__(self) -> None:
        self.now = time.monotonic()

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return time.time()

    def wait(self, event: threading.Event, timeout: float) -> bool:
        return event.wait(timeout)


def session_over(store: TokenStore, emulator: Emulator) -> PleoSession:
    return PleoSession(
        emulator.client_id,
        emulator.client_secret,
        store=store,
        token_url=emulator.token_url,
        api_url=emulator.api_url,
    )


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_a_rotation_in_another_process_is_noticed_before_the_next_request_without_a_401(
    emulator: Emulator, kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    spec = _spec(kind, request, tmp_path)
    clock = ManualClock()
    store: TokenStore
    if kind == "redis":
        store = RedisStore(spec, check_interval=0.1, clock=clock)
    else:
        store = build_store(spec, client_id=emulator.client_id)
    store.save(TokenSet.from_response(emulator.issue_tokens()))
    with session_over(store, emulator) as session:
        assert session.get("/v2/employees").status_code == 200
        rotated = refresh_in_another_process(emulator, spec)
        clock.now += 1.0  # Redis: the cached version has aged out
        before = emulator.counters
        assert session.get("/v2/employees").status_code == 200
        after = emulator.counters
        current = session.tokens
    assert current is not None
    assert current.fingerprint == rotated
    assert after.unauthorized - before.unauthorized == 0
    assert after.refresh_grants - before.refresh_grants == 0
    assert after.api_requests - before.api_requests == 1


class VersionlessFileStore(FileStore):
    """A file store that cannot tell when another process changed it."""

    def version(self) -> Hashable:
        return None


def test_a_401_after_a_rotation_elsewhere_is_replayed_with_the_stored_tokens_unseen(
    emulator: Emulator, tmp_path: Path
) -> None:
    path = tmp_path / "tokens.json"
    store = VersionlessFileStore(path)
    store.save(TokenSet.from_response(emulator.issue_tokens()))
    with session_over(store, emulator) as session:
        assert session.get("/v2/employees").status_code == 200
        rotated = refresh_in_another_process(emulator, f"file:{path}")
        before = emulator.counters
        response = session.get("/v2/employees")
        after = emulator.counters
        current = session.tokens
    assert response.status_code == 200
    assert current is not None
    assert current.fingerprint == rotated
    assert after.unauthorized - before.unauthorized == 1  # the one replayed request
    assert after.api_requests - before.api_requests == 2
    assert after.refresh_grants - before.refresh_grants == 0  # adopted, not refreshed
    assert after.rejected_refreshes - before.rejected_refreshes == 0


def test_a_401_after_another_process_found_the_grant_dead_raises_reauthentication_required(
    emulator: Emulator, tmp_path: Path
) -> None:
    # A second coordinator over the same file (another token_url host spelling gives
    # it its own) plays the other process; this session cannot see the file change.
    path = tmp_path / "tokens.json"
    FileStore(path).save(TokenSet.from_response(emulator.issue_tokens()))
    elsewhere = emulator.token_url.replace("127.0.0.1", "localhost")
    with (
        session_over(VersionlessFileStore(path), emulator) as session,
        PleoSession(
            emulator.client_id,
            emulator.client_secret,
            store=FileStore(path),
            token_url=elsewhere,
            api_url=emulator.api_url,
        ) as other,
    ):
        assert session.get("/v2/employees").status_code == 200
        emulator.revoke_all()
        with pytest.raises(ReauthenticationRequired):
            other.refresh()
        assert FileStore(path).load() is None
        with pytest.raises(ReauthenticationRequired):
            session.get("/v2/employees")
    assert emulator.counters.rejected_refreshes == 1


# -- the file store, as processes on one machine share it -----------------------------------

READ_WHILE_WRITTEN = textwrap.dedent(
    """
    import sys
    from pleo_auth import FileStore

    store = FileStore(sys.argv[1])
    missing = failed = 0
    for _ in range(int(sys.argv[2])):
        try:
            if store.load() is None:
                missing += 1
        except Exception:
            failed += 1
    print(missing, failed)
    """
)


def test_a_reader_process_never_sees_a_missing_or_torn_file_while_another_saves(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tokens.json"
    writer = FileStore(path)
    writer.save(TokenSet.from_response(_reply()))
    reader = subprocess.Popen(
        [sys.executable, "-c", READ_WHILE_WRITTEN, str(path), "3000"],
        stdout=subprocess.PIPE,
        text=True,
    )
    saves = 0
    while reader.poll() is None:  # write for as long as the reader reads
        writer.save(TokenSet.from_response(_reply()))
        saves += 1
    out, _ = reader.communicate(timeout=60)
    assert reader.returncode == 0
    assert out.split() == ["0", "0"]
    assert saves > 0


def _reply() -> dict[str, object]:
    token = uuid.uuid4().hex
    return {"access_token": "at_" + token, "refresh_token": "rt_" + token, "expires_in": 60}


def test_a_file_store_replaces_the_file_by_rename_after_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "tokens.json"
    store = FileStore(path)
    store.save(TokenSet.from_response(_reply()))
    old_inode = path.stat().st_ino
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append("fsync-dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync-file")
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        calls.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    store.save(TokenSet.from_response(_reply()))
    assert calls == ["fsync-file", "replace", "fsync-dir"]
    assert path.stat().st_ino != old_inode
