"""Smoke test of the benchmarks (``python -m benchmarks``): the harness runs, and
the correctness figures it reports hold. Never a timing: this machine is noisy.

PleoSession's figures are always checked. The anchors (requests-oauthlib, Authlib)
are the ``bench`` extra; their tests skip when it is not installed. They run on
one thread in one process, the only load where their figures are deterministic.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    # benchmarks/ is not installed with the package; its worker processes get this path too.
    sys.path.insert(0, str(ROOT))

from benchmarks import contention, hot_path  # noqa: E402
from benchmarks.contention import ContentionConfig, Emulators, RunResult  # noqa: E402

# Two rotations of 2-second tokens per run: a few seconds each. (Authlib keeps
# whole seconds of expiry, so shorter tokens would make it refresh on every request.)
SMOKE = ContentionConfig(token_lifetime=2.0, refresh_margin=0.4, rotations=2, probe_every=0.5)


@pytest.fixture(scope="module")
def emulators() -> Iterator[Emulators]:
    with contention.emulators() as pair:
        yield pair


def run(emulators: Emulators, library: str, threads: int, processes: int, tmp: Path) -> RunResult:
    return contention.run_one(
        emulators.main, emulators.probe, library, threads, processes, SMOKE, tmp
    )


def test_pleo_session_makes_one_grant_per_rotation_without_errors_at_4_threads_x_2_processes(
    emulators: Emulators, tmp_path: Path
) -> None:
    result = run(emulators, "pleo_auth", 4, 2, tmp_path)

    assert result.rotations >= 1, "the run must span a rotation to prove anything"
    assert result.refresh_grants == result.rotations
    assert result.grants_per_rotation == 1.0
    assert result.caller_errors == 0, result.errors_by_kind
    assert result.rejected_refreshes == 0
    assert result.reuse_detections == 0


def test_authlib_alone_makes_one_grant_per_rotation_without_errors(
    emulators: Emulators, tmp_path: Path
) -> None:
    pytest.importorskip("authlib")
    result = run(emulators, "authlib", 1, 1, tmp_path)

    assert result.rotations >= 1
    assert result.grants_per_rotation == 1.0
    assert result.caller_errors == 0, result.errors_by_kind
    assert result.rejected_refreshes == 0
    assert result.reuse_detections == 0


def test_requests_oauthlib_alone_refreshes_once_per_rotation_and_fails_only_with_401(
    emulators: Emulators, tmp_path: Path
) -> None:
    # It refreshes only once its token has expired by its own clock, which oauthlib
    # rounds to the second, so requests at the edge can meet a 401 first.
    pytest.importorskip("requests_oauthlib")
    result = run(emulators, "requests-oauthlib", 1, 1, tmp_path)

    assert result.rotations >= 1
    assert result.grants_per_rotation == 1.0
    assert set(result.errors_by_kind) <= {"HTTP 401"}
    assert result.rejected_refreshes == 0
    assert result.reuse_detections == 0


def test_static_baseline_never_refreshes_and_never_fails(
    emulators: Emulators, tmp_path: Path
) -> None:
    result = contention.run_one(
        emulators.main, emulators.probe, "static", 1, 1, replace(SMOKE, rotations=1), tmp_path
    )

    assert result.refresh_grants == 0
    assert result.caller_errors == 0, result.errors_by_kind
    assert result.requests > 0


def test_count_rotations_folds_grants_closer_than_a_quarter_lifetime() -> None:
    assert contention.count_rotations([], 3.0) == 0
    assert contention.count_rotations([1.9, 3.8, 3.81, 5.7], 3.0) == 3
    assert contention.count_rotations([2.0, 2.0, 2.0], 3.0) == 1


def test_hot_path_sessions_all_send_a_bearer_token_through_the_stub(tmp_path: Path) -> None:
    with hot_path.subjects(tmp_path) as (sessions, _skipped):
        headers = {
            name: session.get(hot_path.URL).request.headers.get("Authorization", "")
            for name, session in sessions.items()
        }

    assert hot_path.BASELINE in headers
    assert "PleoSession + FileStore" in headers
    assert "PleoSession + KeyringStore" in headers
    assert all(value.startswith("Bearer ") for value in headers.values()), headers


@pytest.mark.soak
def test_quick_command_writes_a_report_and_a_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )

    assert done.returncode == 0, done.stderr
    assert "| target |" in done.stdout
    assert "## Benchmark results" in (tmp_path / "RESULTS.md").read_text()
    assert (tmp_path / "latency.png").read_bytes().startswith(b"\x89PNG")
