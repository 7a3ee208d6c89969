"""Smoke test of the benchmarks (``python -m benchmarks``): the harness runs, and
the correctness figures it reports hold. Never a timing: this machine is noisy.

PleoSession's figures are always checked. The anchors (requests-oauthlib, Authlib)
are the ``bench`` extra; their tests skip when it is not installed. They run on
one thread in one process, the only load where their figures are deterministic.

The many-grants parts (issue 12) run in their ``--quick`` sizes: a few hundred
grants, an emulator in a process of its own, real client processes.
"""

from __future__ import annotations

import shutil
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

from benchmarks import __main__ as cli  # noqa: E402
from benchmarks import (  # noqa: E402
    contention,
    hot_path,
    idle_grants,
    integration_cold_start,
    many_grants,
    shared_grants,
    sql,
)
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


# -- many grants (issue 12) -----------------------------------------------------------------


def test_many_grants_quick_serves_every_grant_with_at_most_three_library_threads() -> None:
    config = many_grants.ManyGrantsConfig.quick()

    section = many_grants.run(replace(config, trace_grants=0))

    result = section.raw["result"]
    rss = result["rss"]
    assert result["grants"] == config.grants
    assert result["errors"] == []
    assert result["peak_library_threads"] <= many_grants.MAX_LIBRARY_THREADS
    assert result["peak_threads_beyond_caller"] <= many_grants.MAX_LIBRARY_THREADS
    assert rss["baseline"] <= rss["stored"] <= rss["idle"]
    assert all(len(batches) == config.hot_batches for batches in result["hot_path"].values()), (
        result["hot_path"]
    )
    assert section.raw["emulator_counters"].api_requests >= config.grants
    assert section.raw["emulator_counters"].refresh_grants == 0


@pytest.mark.slow
def test_many_grants_memory_sources_charge_the_sessions_to_pleo_auth_lines() -> None:
    config = replace(many_grants.ManyGrantsConfig.quick(), grants=20, trace_grants=20)

    section = many_grants.run(config)

    where = section.raw["where"]
    assert set(where) == {"stored", "idle", "used"}
    idle_total, *idle_sources = where["idle"]
    assert idle_total[0] == "total"
    assert idle_total[1] > 0
    assert any(name.startswith("pleo_auth/") for name, _size in idle_sources), idle_sources


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["delay", "reject"])
def test_integration_cold_start_refreshes_every_expired_grant_exactly_once(mode: str) -> None:
    config = replace(integration_cold_start.IntegrationColdStartConfig.quick(), modes=(mode,))

    section = integration_cold_start.run(config)

    (result,) = section.raw["runs"]
    counters = result["counters"]
    assert result["refreshes_per_grant"] == {1: config.grants}
    assert counters.refresh_grants == config.grants
    assert counters.rejected_refreshes == 0
    assert counters.reuse_detections == 0
    assert result["errors"] == {}
    assert len(result["done"]) == config.grants
    assert result["gate_peak"] <= result["max_concurrent_refreshes"]


@pytest.mark.slow
@pytest.mark.parametrize("store", ["file", "redis"])
def test_shared_grants_make_one_refresh_grant_per_rotation_per_grant(store: str) -> None:
    if store == "redis":
        pytest.importorskip("redis")
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server is not installed")
    config = shared_grants.SharedGrantsConfig.quick(stores=(store,))

    section = shared_grants.run(config)

    (result,) = section.raw["runs"]
    counters = result["counters"]
    assert result["rotations"] >= 1, "the run must span a rotation to prove anything"
    assert result["refresh_grants"] == result["rotations"]
    assert counters.rejected_refreshes == 0
    assert counters.reuse_detections == 0
    assert result["errors"] == {}
    assert result["requests"] > 0


@pytest.mark.slow
def test_sql_part_measures_every_database_and_the_version_cache_asks_once_per_interval() -> None:
    config = replace(sql.SqlConfig.quick(), shared=replace(sql.SqlConfig.quick().shared, stores=()))

    section = sql.run(config)

    steady = section.raw["steady"]
    assert sorted(steady) == ["mysql", "postgresql", "sqlite"], section.tables[0].notes
    for kind, counted in steady.items():
        assert counted["requests"] > 0, kind
        # One query per check_interval (1 s) at most, the first one included.
        assert counted["queries"] <= config.steady_seconds + 1, (kind, counted)
    timings = section.raw["cpu_seconds_per_request"]
    assert all(len(values) == config.repeats for values in timings.values())
    assert len(timings) == 4


@pytest.mark.slow
@pytest.mark.parametrize("store", ["postgresql", "mysql"])
def test_shared_grants_in_a_database_make_one_refresh_grant_per_rotation_per_grant(
    store: str,
) -> None:
    config = shared_grants.SharedGrantsConfig.quick(stores=(store,))

    section = shared_grants.run(config)

    (result,) = section.raw["runs"]
    counters = result["counters"]
    assert result["store"] == store
    assert result["rotations"] >= 1, "the run must span a rotation to prove anything"
    assert result["refresh_grants"] == result["rotations"]
    assert counters.rejected_refreshes == 0
    assert counters.reuse_detections == 0
    assert result["errors"] == {}
    assert result["requests"] > 0


def test_idle_grants_cost_only_keep_alives_and_the_used_grant_is_refreshed_ahead() -> None:
    config = idle_grants.IdleGrantsConfig.quick()

    section = idle_grants.run(config)

    default, kept = section.raw["runs"]
    assert default["idle_refreshes_with_session"] == 0
    assert default["idle_refreshes_stored_only"] == 0
    assert kept["idle_refreshes_with_session"] > 0
    assert kept["shortest_idle_gap"] >= config.keep_alive_lifetimes * config.token_lifetime
    for run in (default, kept):
        assert run["used_refreshes"] >= config.lifetimes - 1
        assert run["used_found_due"] == 0
        assert run["used_errors"] == 0


def test_parts_are_named_alone_or_by_group_and_an_unknown_name_is_refused() -> None:
    assert cli.chosen_parts([]) == list(cli.PARTS)
    assert cli.chosen_parts(["grants"]) == list(cli.GROUPS["grants"])
    assert cli.chosen_parts(["idle_grants", "hot_path"]) == ["hot_path", "idle_grants"]
    with pytest.raises(SystemExit):
        cli.chosen_parts(["no_such_part"])


@pytest.mark.soak
@pytest.mark.long
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
    assert (tmp_path / "grants.png").read_bytes().startswith(b"\x89PNG")


# -- many grants at full scale (issue 12; soak) ----------------------------------------------


@pytest.mark.soak
def test_soak_ten_thousand_grants_cost_at_most_three_threads_and_32_kib_each() -> None:
    config = replace(many_grants.ManyGrantsConfig(), trace_grants=0)

    section = many_grants.run(config)

    result = section.raw["result"]
    rss = result["rss"]
    assert result["grants"] == 10_000
    assert result["errors"] == []
    assert result["peak_library_threads"] <= many_grants.MAX_LIBRARY_THREADS
    assert result["peak_threads_beyond_caller"] <= many_grants.MAX_LIBRARY_THREADS
    kib_per_grant = {
        phase: (rss[phase] - rss["baseline"]) / result["grants"] for phase in ("idle", "used")
    }
    assert kib_per_grant["idle"] <= many_grants.MAX_IDLE_KIB, kib_per_grant
    assert kib_per_grant["used"] <= many_grants.MAX_USED_KIB, kib_per_grant
    assert section.raw["emulator_counters"].api_requests >= 10_000
    assert section.raw["emulator_counters"].refresh_grants == 0


@pytest.mark.soak
def test_soak_a_thousand_idle_grants_cost_only_keep_alives_over_ten_lifetimes() -> None:
    config = idle_grants.IdleGrantsConfig()

    section = idle_grants.run(config)

    default, kept = section.raw["runs"]
    assert default["idle_refreshes_with_session"] == 0
    assert default["idle_refreshes_stored_only"] == 0
    assert kept["idle_refreshes_with_session"] + kept["idle_refreshes_stored_only"] == (
        config.grants * 3
    )
    assert kept["shortest_idle_gap"] >= config.keep_alive_lifetimes * config.token_lifetime
    for run in (default, kept):
        assert run["used_refreshes"] == config.lifetimes
        assert run["used_found_due"] == 0
        assert run["used_errors"] == 0
