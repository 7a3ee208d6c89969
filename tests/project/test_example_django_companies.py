"""examples/django_companies, run as its README says (``manage.py migrate``, then
``runserver``) on a private PostgreSQL database, against the real emulator: two
companies log in through its views, and each one's employees come from the API
with that company's grant."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from support.databases import private_database
from support.web_contract import A, B, approve, with_subject

from pleo_auth import Company
from pleo_auth.testing import Emulator, free_port

PROJECT = Path(__file__).resolve().parents[2] / "examples" / "django_companies"


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    """One emulator for the module's site (the project is migrated and served once)."""
    with Emulator(access_token_lifetime=3600) as emu:
        yield emu


@pytest.fixture(scope="module")
def environment(emulator: Emulator) -> Iterator[dict[str, str]]:
    with private_database("postgresql") as database:
        yield {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(PROJECT.parents[1]), str(PROJECT)]),
            "PGDATABASE": database.name,
            "PGHOST": database.server.host,
            "PGPORT": str(database.server.port),
            "PGUSER": database.server.user,
            "PLEO_CLIENT_ID": emulator.client_id,
            "PLEO_CLIENT_SECRET": emulator.client_secret or "",
            "PLEO_TOKEN_URL": emulator.token_url,
            "PLEO_API_URL": emulator.api_url,
            "PLEO_AUTHORIZE_URL": emulator.authorize_url,
        }


@pytest.fixture(scope="module")
def site(environment: dict[str, str]) -> Iterator[str]:
    """The example, migrated and served by ``manage.py runserver``: its base URL."""
    manage = [sys.executable, "manage.py"]
    migrated = subprocess.run(
        [*manage, "migrate", "--verbosity", "0"],
        cwd=PROJECT, env=environment, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert migrated.returncode == 0, migrated.stderr
    port = free_port()
    server = subprocess.Popen(
        [*manage, "runserver", "--noreload", "--skip-checks", f"127.0.0.1:{port}"],
        cwd=PROJECT, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        give_up_at = time.monotonic() + 60  # a bound against hangs, not a schedule
        while True:
            assert server.poll() is None, server.communicate()[1]
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < give_up_at, "runserver did not start within 60 s"
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(30)


def log_in(browser: requests.Session, site: str, company: Company) -> None:
    """connect -> Pleo (the emulator; the person picks ``company``) -> callback."""
    reply = browser.get(f"{site}/pleo/connect/", allow_redirects=False, timeout=30)
    assert reply.status_code == 302
    callback = approve(with_subject(reply.headers["Location"], company))
    assert callback.startswith(f"{site}/pleo/callback/?")
    reply = browser.get(callback, allow_redirects=False, timeout=30)
    assert reply.status_code == 302, reply.text
    assert reply.headers["Location"] == "/"


def test_two_companies_log_in_through_the_views_and_each_calls_the_api(
    site: str, emulator: Emulator
) -> None:
    browser = requests.Session()

    log_in(browser, site, A)
    log_in(browser, site, B)

    index = browser.get(f"{site}/", timeout=30)
    assert index.status_code == 200
    assert A.id in index.text
    assert B.id in index.text
    for company in (A, B):
        reply = browser.get(f"{site}/companies/{company.id}/employees/", timeout=30)
        assert reply.status_code == 200
        assert "data" in reply.json()
    for company in (A, B):
        counters = emulator.counters_for(company)
        assert (
            counters.code_exchanges,
            counters.api_requests,
            counters.refresh_grants,
            counters.rejected_refreshes,
            counters.reuse_detections,
        ) == (1, 1, 0, 0, 0)


def test_a_company_without_a_grant_is_sent_to_log_in(site: str) -> None:
    never_logged_in = Company("c0ffee00-1234-4abc-8def-0123456789ab")
    reply = requests.get(
        f"{site}/companies/{never_logged_in.id}/employees/", allow_redirects=False, timeout=30
    )
    assert reply.status_code == 302
    assert reply.headers["Location"].startswith("/pleo/connect/?next=")
