"""A fork at any moment of a session's warm-up leaves every worker able to refresh.

``gunicorn --preload`` builds a module-level session in the master and forks the
workers straight after. A fork while another thread is inside an import leaves
that module locked in the child, by a thread that does not exist there, and the
child hangs at its first refresh (issue 10, bug 3).

Each moment runs in a fresh interpreter (tests/support/fork_warmup_child.py), so that
nothing a refresh imports lazily is imported yet. A gate on the import system
holds a background thread inside its n-th import, and the workers are forked
right then: every import of the warm-up is a moment, from the first to the one
after the last. Each worker refreshes once, in turn, and must answer within a
bounded time; the emulator counts exactly one refresh grant per worker and no
reuse.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from pleo_auth import FileStore, TokenSet
from pleo_auth.testing import Emulator

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

CHILD = Path(__file__).parents[1] / "support" / "fork_warmup_child.py"
WORKERS = 3
WORKER_TIMEOUT = 10.0  # seconds per worker's refresh; only a hung worker gets near it
CHILD_TIMEOUT = 150.0  # seconds per moment, hung workers and all
MOST_MOMENTS = 300  # more imports than any warm-up makes: the sweep always ends
PARALLEL = 4


def run_moment(emulator: Emulator, tmp_path: Path, mode: str, gate_at: int) -> dict[str, Any]:
    """Run the child for one moment; its report, with the store it used."""
    store_path = tmp_path / f"tokens-{mode}-{gate_at}-{uuid.uuid4().hex[:8]}.json"
    FileStore(store_path).save(TokenSet.from_response(emulator.issue_tokens()))
    config = {
        "token_url": emulator.token_url,
        "api_url": emulator.api_url,
        "client_id": emulator.client_id,
        "client_secret": emulator.client_secret,
        "store_path": str(store_path),
        "mode": mode,
        "gate_at": gate_at,
        "workers": WORKERS,
        "worker_timeout": WORKER_TIMEOUT,
    }
    try:
        done = subprocess.run(
            [sys.executable, str(CHILD), json.dumps(config)],
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{mode} moment {gate_at}: the child was still running after {CHILD_TIMEOUT}s")
    assert done.returncode == 0, f"{mode} moment {gate_at}: {done.stderr[-3000:]}"
    report: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    report["gate_at"] = gate_at
    return report


def sweep(
    emulator: Emulator, tmp_path: Path, mode: str, first: Iterable[int], stride: int = 1
) -> list[dict[str, Any]]:
    """The ``first`` moments, then every ``stride``-th import the warm-up made, its
    last import, and the moment after it, where the gate is never reached."""
    reports = [run_moment(emulator, tmp_path, mode, gate_at) for gate_at in first]
    for report in reports:  # fail fast: hung workers take seconds each
        assert report["workers"] == [{"status": 200}] * WORKERS, describe(report)
    imports = len(reports[-1]["background_imports"])
    assert imports < MOST_MOMENTS
    after = reports[-1]["gate_at"] + 1
    rest = sorted({*range(after, imports + 1, stride), imports, imports + 1} - {*range(after)})
    with ThreadPoolExecutor(PARALLEL) as pool:
        reports += pool.map(lambda gate_at: run_moment(emulator, tmp_path, mode, gate_at), rest)
    return reports


def describe(report: dict[str, Any]) -> str:
    return f"moment {report['gate_at']} (inside {report['module']!r} on {report['thread']!r})"


def assert_every_worker_refreshed(reports: list[dict[str, Any]], emulator: Emulator) -> None:
    for report in reports:
        where = describe(report)
        assert report["preloaded"] == [], f"{where}: the interpreter was not cold"
        assert report["workers"] == [{"status": 200}] * WORKERS, where
    counters = emulator.counters
    assert counters.refresh_grants == WORKERS * len(reports)
    assert counters.reuse_detections == 0
    assert counters.rejected_refreshes == 0


def test_workers_forked_at_every_moment_of_a_preloaded_sessions_warm_up_each_refresh(
    emulator: Emulator, tmp_path: Path
) -> None:
    # As gunicorn --preload: the main thread builds the session, then forks.
    reports = sweep(emulator, tmp_path, "main", first=[0, 1])
    assert reports[-1]["reached"] is False  # the sweep went past the warm-up's last import
    assert_every_worker_refreshed(reports, emulator)


def test_the_timer_thread_of_a_new_session_imports_nothing(
    emulator: Emulator, tmp_path: Path
) -> None:
    # Nothing left to import, nothing for a fork to catch: the whole warm-up ran
    # on the thread that built the session, which is the thread that forks.
    report = run_moment(emulator, tmp_path, "main", 1)
    assert report["background_imports"] == [], describe(report)
    assert report["reached"] is False
    assert report["workers"] == [{"status": 200}] * WORKERS


def check_forks_from_another_thread(emulator: Emulator, tmp_path: Path, stride: int) -> None:
    # One thread builds the session while the main thread forks: each fork lands
    # inside one of the warm-up's imports, and must wait for the warm-up to end.
    reports = sweep(emulator, tmp_path, "thread", first=[1], stride=stride)
    imports = len(reports[0]["background_imports"])
    inside = [report for report in reports if report["reached"]]
    assert [report["gate_at"] for report in inside] == sorted(
        {1, *range(2, imports + 1, stride), imports}
    )
    assert reports[-1]["gate_at"] == imports + 1  # past the last import
    assert reports[-1]["reached"] is False
    assert all(report["fork_waited"] for report in inside)
    assert_every_worker_refreshed(reports, emulator)


@pytest.mark.slow
def test_a_fork_from_another_thread_waits_for_a_warm_up_caught_inside_an_import(
    emulator: Emulator, tmp_path: Path
) -> None:
    # A deterministic sixth of the moments, the first and the last among them.
    check_forks_from_another_thread(emulator, tmp_path, stride=6)


@pytest.mark.soak
def test_a_fork_from_another_thread_waits_for_a_warm_up_caught_inside_any_import(
    emulator: Emulator, tmp_path: Path
) -> None:
    check_forks_from_another_thread(emulator, tmp_path, stride=1)
