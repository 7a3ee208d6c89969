"""Four processes of eight threads sharing grants in a SQLStore family on the real
PostgreSQL and MariaDB servers and on a SQLite file, until every grant went through
at least three rotations of 3 s tokens (issue 13's must-show).

The machinery is tests/hunt/test_integration_processes.py's (spawned workers, each
with its own Integration over its own SQLStore, as separate hosts would have). Per
grant: every refresh grant the emulator made advanced that grant's chain (0 rejected
refreshes, 0 reuse detections, and the pair in the row at the end is the one Pleo
holds current), so each rotation cost exactly 1.0 refresh grant; no grant rotated
more often than its schedule allows; and no caller saw an error.
"""

from __future__ import annotations

import pytest
from support.databases import unique_name
from support.integration_workers import FamilySpec
from test_integration_processes import shared_grants

from pleo_auth.stores import SQLStore
from pleo_auth.testing import Emulator


@pytest.fixture
def sql_family(request: pytest.FixtureRequest, emulator: Emulator) -> FamilySpec:
    """A new table in the named database, created before the workers start."""
    url: str = request.getfixturevalue(request.param)
    spec = FamilySpec("sql", url, unique_name("load"), emulator.client_id)
    family = spec.build()
    assert isinstance(family, SQLStore)
    family.create_table()
    family.close()
    return spec


def assert_one_refresh_grant_per_rotation(emulator: Emulator, spec: FamilySpec) -> None:
    """Every refresh grant advanced its grant's chain: the row holds the pair Pleo
    made last, and none was spent twice or refused."""
    family = spec.build()
    try:
        companies = family.companies()
        assert companies, "no grant was stored"
        for company in companies:
            stored = family.store(company).load()
            assert stored is not None
            assert emulator.is_current(stored.access_token, stored.refresh_token), company
            counted = emulator.counters_for(company)
            assert counted.rejected_refreshes == 0
            assert counted.reuse_detections == 0
    finally:
        getattr(family, "close")()  # noqa: B009
    assert emulator.counters.rejected_refreshes == 0
    assert emulator.counters.reuse_detections == 0


def run(emulator: Emulator, spec: FamilySpec, grants: int) -> None:
    # 3 lifetimes of 3 s tokens, and on until every grant made 3 rotations.
    shared_grants(emulator, spec, grants=grants, duration=9.0)
    assert_one_refresh_grant_per_rotation(emulator, spec)


@pytest.mark.slow
@pytest.mark.parametrize("sql_family", ["postgres_url", "mariadb_url"], indirect=True)
def test_four_processes_share_fifty_grants_in_a_database_rotating_once_per_schedule(
    emulator: Emulator, sql_family: FamilySpec
) -> None:
    run(emulator, sql_family, grants=50)


# SQLite serialises every write in the file: a smaller scale, as the issue asks.
@pytest.mark.slow
@pytest.mark.parametrize("sql_family", ["sqlite_url"], indirect=True)
def test_four_processes_share_ten_grants_in_a_sqlite_file_rotating_once_per_schedule(
    emulator: Emulator, sql_family: FamilySpec
) -> None:
    run(emulator, sql_family, grants=10)


@pytest.mark.soak
@pytest.mark.long
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("sql_family", ["postgres_url", "mariadb_url"], indirect=True)
def test_soak_four_processes_share_two_thousand_grants_in_a_database(
    emulator: Emulator, sql_family: FamilySpec
) -> None:
    run(emulator, sql_family, grants=2000)
