"""Tests for the ``pleo-auth`` command over grants in a database (``--store
postgresql+psycopg://...?company=ID``, ``sqlite:///PATH?company=ID`` and their
``family:`` forms), run against the emulator on the real
PostgreSQL server and a SQLite file; the test plays the browser with requests.
``login`` and ``refresh`` run as real ``pleo-auth`` processes, the other commands
in-process through ``main()`` (as in test_cli.py), to keep the run short.

A password is given only through ``PLEO_STORE``: PostgreSQL trusts local
connections here, so the password below is never asked for, but it travels with
the URL and must never be printed."""

from __future__ import annotations

import io
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from support.databases import unique_name

from pleo_auth import Company, TokenSet
from pleo_auth.cli import main
from pleo_auth.stores import SQLStore
from pleo_auth.testing import Emulator

SECRET = "demo-secret"
PASSWORD = "pw-never-shown-9f3e"
A = Company("3f2504e0-4f89-11d3-9a0c-0305e82c3301")
B = Company("9b2c1f6e-1d2a-4c3b-8e4f-5a6b7c8d9e0f")


def command() -> list[str]:
    script = Path(sys.executable).with_name("pleo-auth")
    return [str(script)] if script.exists() else [sys.executable, "-m", "pleo_auth.cli"]


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command(), *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def run_main(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    out = io.StringIO()
    return main(args, env=env, out=out), out.getvalue()


def run_here(
    args: list[str], env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> subprocess.CompletedProcess[str]:
    """The command in this process (as tests/cli/test_cli.py runs all but login)."""
    code, out = run_main(args, env)
    return subprocess.CompletedProcess(args, code, out, capsys.readouterr().err)


def with_password(url: str) -> str:
    """``url`` with :data:`PASSWORD` for its user (SQLite has none)."""
    scheme, sep, rest = url.partition("://")
    user, at, after = rest.partition("@")
    return f"{scheme}{sep}{user}:{PASSWORD}@{after}" if at else url


@pytest.fixture(params=["postgresql", "sqlite"])
def database(request: pytest.FixtureRequest) -> str:
    """The database URL as ``PLEO_STORE`` gives it: PostgreSQL's with a password."""
    url: str = request.getfixturevalue(
        {"postgresql": "postgres_url", "sqlite": "sqlite_url"}[request.param]
    )
    return with_password(url)


@pytest.fixture
def table() -> str:
    return unique_name("cli")


@pytest.fixture
def grants(database: str, table: str, emulator: Emulator) -> Iterator[SQLStore]:
    family = SQLStore(database, client_id=emulator.client_id, table=table)
    family.create_table()
    yield family
    family.close()


@pytest.fixture
def env(emulator: Emulator) -> dict[str, str]:
    return {
        **os.environ,
        "PLEO_CLIENT_ID": emulator.client_id,
        "PLEO_CLIENT_SECRET": SECRET,
        "PLEO_TOKEN_URL": emulator.token_url,
        "PLEO_API_URL": emulator.api_url,
        "PYTHONUNBUFFERED": "1",
    }


def log_in(args: list[str], env: dict[str, str]) -> tuple[str, str]:
    """Run ``pleo-auth login --no-browser`` with ``args`` (a command line as a hint
    gives it, or none), and complete its login at the emulator: stdout and stderr."""
    login = subprocess.Popen(
        [*command(), *args, "--no-browser"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert login.stdout is not None
        url = next(line.strip() for line in login.stdout if line.strip().startswith("http"))
        assert requests.get(url, timeout=60).status_code == 200
        out, err = login.communicate(timeout=120)
    finally:
        if login.poll() is None:
            login.kill()
            login.communicate()
    assert login.returncode == 0, err
    return out, err


def seed(emulator: Emulator, grants: SQLStore, company: Company) -> TokenSet:
    tokens = TokenSet.from_response(emulator.issue_tokens(company=company))
    grants.for_company(company).save(tokens)
    return tokens


@pytest.mark.slow
def test_login_status_refresh_logout_over_one_grant_in_the_database(
    emulator: Emulator,
    grants: SQLStore,
    database: str,
    table: str,
    env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = {**env, "PLEO_STORE": f"{database}?company={A.id}&table={table}"}
    emulator.set_default_company(A)
    said: list[str] = list(log_in(["login"], env))
    assert emulator.counters.code_exchanges == 1
    logged_in = grants.for_company(A).load()
    assert logged_in is not None
    assert emulator.is_current(logged_in.access_token, logged_in.refresh_token)

    status = run_here(["status"], env, capsys)
    said += [status.stdout, status.stderr]
    assert status.returncode == 0, status.stderr
    assert f"table {table}, client {emulator.client_id!r}, company {A.id}" in status.stdout
    assert "access token expires" in status.stdout

    refresh = run_here(["refresh"], env, capsys)
    said += [refresh.stdout, refresh.stderr]
    assert refresh.returncode == 0, refresh.stderr
    assert emulator.counters.refresh_grants == 1
    assert emulator.counters.rejected_refreshes == 0
    assert emulator.counters.reuse_detections == 0
    refreshed = grants.for_company(A).load()
    assert refreshed is not None
    assert refreshed.refresh_token != logged_in.refresh_token
    assert emulator.is_current(refreshed.access_token, refreshed.refresh_token)

    logout = run_here(["logout"], env, capsys)
    said += [logout.stdout, logout.stderr]
    assert logout.returncode == 0, logout.stderr
    assert "removed the tokens" in logout.stdout
    assert grants.for_company(A).load() is None
    assert emulator.counters.refresh_grants == 1

    status = run_here(["status"], env, capsys)
    said += [status.stdout, status.stderr]
    assert status.returncode == 1
    hint = next(line for line in status.stdout.splitlines() if "pleo-auth login" in line)
    hinted = shlex.split(hint)
    if database.startswith("sqlite"):
        assert f"?company={A.id}&table={table}" in hint
    else:
        # --store would win over PLEO_STORE, and the spec cannot hold the password:
        # the command leaves the store to PLEO_STORE, which holds it.
        assert "--store" not in hinted
    # The hinted command, as a person would paste it in that shell, fills the grant.
    said += log_in(hinted[1:], env)
    again = grants.for_company(A).load()
    assert again is not None
    assert emulator.is_current(again.access_token, again.refresh_token)
    assert emulator.counters.code_exchanges == 2
    for secret in (
        PASSWORD,
        SECRET,
        logged_in.access_token,
        logged_in.refresh_token,
        refreshed.access_token,
        refreshed.refresh_token,
    ):
        assert all(secret not in text for text in said)


@pytest.mark.slow
def test_a_family_in_the_database_lists_refreshes_and_logs_out_each_company(
    emulator: Emulator,
    grants: SQLStore,
    database: str,
    table: str,
    env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = {**env, "PLEO_STORE": f"family:{database}?table={table}"}
    seed(emulator, grants, A)
    kept = seed(emulator, grants, B)

    status = run_here(["status"], env, capsys)
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0] == f"Store: {grants.describe()}"
    assert [line.split()[0] for line in lines[2:4]] == [A.id, B.id]
    assert lines[4] == "2 companies; none needs a login."

    refresh = run(["refresh", "--company", A.urn], env)
    assert refresh.returncode == 0, refresh.stderr
    assert emulator.counters_for(A).refresh_grants == 1
    assert emulator.counters_for(B).refresh_grants == 0
    assert emulator.counters.rejected_refreshes == 0
    assert grants.for_company(B).load() == kept

    logout = run_here(["logout", "--company", A.id], env, capsys)
    assert logout.returncode == 0, logout.stderr
    assert grants.companies() == [B]

    status = run_here(["status", "--company", A.id], env, capsys)
    assert status.returncode == 1
    hint = status.stdout.splitlines()[-1]
    if database.startswith("sqlite"):
        assert f" --store {shlex.quote(grants.spec)} " in hint
    else:  # the password is in PLEO_STORE only: --store would lose it
        assert "--store" not in hint
    assert hint.endswith(f" --company {A.id}")
    for result in (status, refresh, logout):
        assert PASSWORD not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "spec",
    [
        f"postgresql+psycopg://app:{PASSWORD}@127.0.0.1:1/app?company={A.id}",
        f"family:mysql+pymysql://app:{PASSWORD}@127.0.0.1:1/app",
        f"postgresql+psycopg://app@127.0.0.1:1/app?company={A.id}&password={PASSWORD}",
    ],
)
@pytest.mark.parametrize("command_name", ["login", "status", "refresh", "logout"])
def test_a_database_password_in_store_is_refused_without_echoing_it(
    spec: str, command_name: str, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    extra = ["--company", A.id] if spec.startswith("family:") else []
    code, out = run_main([command_name, "--store", spec, *extra], env)
    err = capsys.readouterr().err
    assert code == 2
    assert "--store holds a database password" in err
    assert "put the whole URL in the PLEO_STORE environment variable" in err
    assert PASSWORD not in out + err


def test_a_database_family_without_a_client_id_names_the_flag_and_variable(
    env: dict[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    env = {name: value for name, value in env.items() if name != "PLEO_CLIENT_ID"}
    code, _ = run_main(["status", "--store", f"family:sqlite:///{tmp_path}/g.db"], env)
    err = capsys.readouterr().err
    assert code == 2
    assert "it needs the client id (--store); give --client-id or set PLEO_CLIENT_ID" in err
