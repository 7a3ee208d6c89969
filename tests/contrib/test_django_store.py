"""Tests for the Django model store (pleo_auth.contrib.django.store): the store and
family contracts on SQLite and PostgreSQL, the cached version, the faults, and
``PLEO_AUTH = {"STORE": "django"}`` through the views.

Each test's grants belong to a client id of its own (support.django_project), so
the tests share the project's databases without seeing each other's rows.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from support.databases import Database
from support.django_project import (
    configure,
    make_family,
    migrate,
    unique_client,
    use_postgres,
)
from support.web_contract import A, B, approve, local, with_subject

from pleo_auth import (
    Company,
    ConfigurationError,
    Integration,
    TokenSet,
    TokenStoreError,
)
from pleo_auth._clock import FakeClock
from pleo_auth.contrib.django import DjangoGrantStore, DjangoStoreFamily
from pleo_auth.stores.base import save_login
from pleo_auth.testing import Emulator, MakeFamily, TokenStoreFamilyContract, new_tokens
from pleo_auth.testing._family_contract import BAD_COMPANIES


@pytest.fixture(scope="module", autouse=True)
def project() -> None:
    configure()
    migrate("default")


@pytest.fixture(scope="module")
def postgres(postgres_database: Database) -> str:
    """The ``postgres`` alias, on the test session's private PostgreSQL database."""
    use_postgres(postgres_database.name)
    migrate("postgres")
    return "postgres"


# -- the contracts --------------------------------------------------------------------


class TestDjangoStoreOnSQLite(TokenStoreFamilyContract):
    """Every store promise (over one company of the family) and every family promise,
    on a SQLite file shared by threads and spawned processes."""

    # The three racing readers never leave the GIL to the writer for long, and each
    # save is five statements: 10 saves keep the test near a second.
    racing_saves = 10
    rounds_per_process = 10

    @pytest.fixture
    def make_family(self) -> MakeFamily:
        return make_family("default", unique_client(), check_interval=0.0)


class TestDjangoStoreOnPostgreSQL(TokenStoreFamilyContract):
    """The same on PostgreSQL (psycopg 3)."""

    rounds_per_process = 10

    @pytest.fixture
    def make_family(self, postgres: str) -> MakeFamily:
        return make_family(postgres, unique_client(), check_interval=0.0)


# -- the cached version ---------------------------------------------------------------


def queries_during(alias: str) -> Any:
    from django.db import connections
    from django.test.utils import CaptureQueriesContext

    return CaptureQueriesContext(connections[alias])


def test_versions_are_read_once_per_interval_for_every_grant_in_use() -> None:
    clock = FakeClock()
    family = DjangoStoreFamily(unique_client(), check_interval=1.0, clock=clock)
    companies = [Company(f"00000000-0000-4000-8000-{n:012d}") for n in range(20)]
    stores = [family.store(company) for company in companies]
    for store in stores:
        store.save(new_tokens())
    first = [store.version() for store in stores]  # each read once: nothing cached yet

    with queries_during("default") as within:
        for _ in range(50):
            assert [store.version() for store in stores] == first
    assert len(within.captured_queries) == 0

    clock.advance(1.0)
    with queries_during("default") as after:
        for _ in range(50):
            assert [store.version() for store in stores] == first
    assert len(after.captured_queries) == 1  # one batch for the 20 grants


def test_a_rotation_elsewhere_is_seen_within_one_interval() -> None:
    clock = FakeClock()
    client = unique_client()
    watcher = DjangoStoreFamily(client, check_interval=1.0, clock=clock).store(A)
    writer = DjangoStoreFamily(client, check_interval=1.0, clock=clock).store(A)
    first = new_tokens()
    writer.save(first)
    before = watcher.version()
    writer.save(new_tokens(), replaces=first)

    assert watcher.version() == before  # cached: no query yet
    clock.advance(1.0)
    assert watcher.version() != before


def test_an_empty_grant_is_never_answered_from_the_cache() -> None:
    """A login made elsewhere is seen at once: without tokens there is nothing to save."""
    clock = FakeClock()
    client = unique_client()
    watcher = DjangoStoreFamily(client, check_interval=60.0, clock=clock).store(A)
    before = watcher.version()
    DjangoStoreFamily(client).store(A).save(new_tokens())

    assert watcher.version() != before


# -- faults ---------------------------------------------------------------------------


def test_a_garbage_row_is_an_error_naming_the_table_and_company_never_the_content() -> None:
    from pleo_auth.contrib.django.models import PleoGrant

    family = DjangoStoreFamily(unique_client())
    store = family.store(A)
    store.save(new_tokens())
    garbage = '{"access_token": "at_secret_garbage", "refresh_token": 7'
    PleoGrant.objects.filter(client_id=family.client_id, company=A.id).update(tokens=garbage)

    with pytest.raises(TokenStoreError) as refused:
        store.load()
    message = str(refused.value)
    assert "pleo_auth_pleogrant" in message
    assert A.id in message
    assert "at_secret_garbage" not in message
    assert "at_secret_garbage" not in repr(refused.value)
    login = new_tokens()
    save_login(store, login)  # a new login replaces the garbage
    assert store.load() == login


@pytest.mark.parametrize(
    "bad", [*BAD_COMPANIES, "x' OR '1'='1", f"{A.id}'; DROP TABLE pleo_auth_pleogrant; --"]
)
def test_a_bad_company_is_refused_before_any_query(bad: object) -> None:
    family = DjangoStoreFamily(unique_client())

    with queries_during("default") as queries:
        for call in (family.store, family.remove, lambda c: DjangoGrantStore(family, c)):
            with pytest.raises(ConfigurationError):
                call(bad)
    assert queries.captured_queries == []


def test_a_missing_table_says_to_run_migrate() -> None:
    store = DjangoStoreFamily(unique_client(), using="bare").store(A)

    for call in (store.load, lambda: store.save(new_tokens()), store.version):
        with pytest.raises(TokenStoreError) as refused:
            call()
        message = str(refused.value)
        assert "table pleo_auth_pleogrant does not exist" in message
        assert "python manage.py migrate pleo_auth" in message
        assert "'bare'" in message


def test_the_lock_and_its_reentry_say_until_when_the_lease_is_known_held() -> None:
    store = DjangoStoreFamily(unique_client()).store(A)
    before = time.monotonic()
    with store.lock(timeout=5.0, lease=30.0) as outer:
        assert outer.held_until is not None
        lasts = store.family.terms.lease
        assert before + 0.9 * lasts <= outer.held_until() <= time.monotonic() + 0.9 * lasts
        with store.lock(timeout=0.1, lease=30.0) as inner:
            assert inner.held_until is not None
            assert inner.held_until() == outer.held_until()


def test_a_save_over_a_lease_another_owner_holds_waits_for_it() -> None:
    """A write outside a lock takes its turn: never between a holder's load and save."""
    import threading

    client = unique_client()
    holder, writer = (DjangoStoreFamily(client).store(A) for _ in range(2))
    first = new_tokens()
    holder.save(first)
    written = threading.Event()

    def write() -> None:
        writer.save(new_tokens())
        written.set()

    with holder.lock(timeout=5.0, lease=30.0):
        thread = threading.Thread(target=write)
        thread.start()
        assert not written.wait(0.3)
        successor = new_tokens()
        holder.save(successor, replaces=first)
    assert written.wait(30)
    thread.join(30)
    assert holder.load() not in (first, successor, None)


def test_a_save_after_the_lease_was_taken_over_is_refused() -> None:
    """The fenced save also matches the owner: a holder whose lease ran out and was
    taken by another can no longer write, even over the pair it read."""
    from pleo_auth.contrib.django.models import PleoGrant

    client = unique_client()
    store = DjangoStoreFamily(client).store(A)
    stored = new_tokens()
    store.save(stored)
    with store.lock(timeout=5.0, lease=30.0):
        PleoGrant.objects.filter(client_id=client, company=A.id).update(lease_owner="another")
        with pytest.raises(TokenStoreError, match="took over the refresh lease"):
            store.save(new_tokens(), replaces=stored)
    assert store.load() == stored


def test_a_save_inside_the_apps_transaction_survives_its_rollback() -> None:
    """A rotation is never rolled back with a request (ATOMIC_REQUESTS): the store
    writes on a connection of its own, outside the app's transaction."""
    from django.db import transaction

    store = DjangoStoreFamily(unique_client()).store(A)
    tokens = new_tokens()

    with transaction.atomic():
        store.save(tokens)
        transaction.set_rollback(True)
    assert store.load() == tokens


# -- STORE = "django" -----------------------------------------------------------------


@pytest.fixture
def settings(emulator: Emulator) -> dict[str, Any]:
    return {
        "CLIENT_ID": emulator.client_id,
        "CLIENT_SECRET": emulator.client_secret,
        "STORE": "django",
        "TOKEN_URL": emulator.token_url,
        "API_URL": emulator.api_url,
        "AUTHORIZE_URL": emulator.authorize_url,
    }


@pytest.fixture
def client(settings: dict[str, Any]) -> Iterator[Any]:
    from django.test import Client, override_settings

    from pleo_auth.contrib.django.models import PleoGrant

    PleoGrant.objects.filter(client_id=settings["CLIENT_ID"]).delete()
    with override_settings(PLEO_AUTH=settings):
        yield Client()
    PleoGrant.objects.filter(client_id=settings["CLIENT_ID"]).delete()


def log_in(client: Any, company: Company) -> None:
    reply = client.get("/pleo/connect/")
    assert reply.status_code == 302
    callback = approve(with_subject(reply["Location"], company))
    assert client.get(local(callback)).status_code == 302


def test_store_django_keeps_a_grant_per_company_in_the_model(
    client: Any, settings: dict[str, Any], emulator: Emulator
) -> None:
    from pleo_auth.contrib.django import get_integration, get_session
    from pleo_auth.contrib.django.models import PleoGrant

    log_in(client, A)
    log_in(client, B)

    integration = get_integration()
    assert isinstance(integration, Integration)
    assert isinstance(integration.store, DjangoStoreFamily)
    rows = PleoGrant.objects.filter(client_id=settings["CLIENT_ID"]).order_by("company")
    expected = sorted([(A.id, False), (B.id, False)])
    assert [(row.company, row.needs_login) for row in rows] == expected
    for company in (A, B):
        assert get_session(company).get("/v2/employees").status_code == 200
        counters = emulator.counters_for(company)
        assert (counters.code_exchanges, counters.api_requests) == (1, 1)
        stored = DjangoStoreFamily(settings["CLIENT_ID"]).store(company).load()
        assert isinstance(stored, TokenSet)


def test_store_django_names_a_database_alias(settings: dict[str, Any]) -> None:
    from django.test import override_settings

    from pleo_auth.contrib.django import get_integration

    with override_settings(PLEO_AUTH={**settings, "STORE": "django:bare"}):
        family = get_integration().store
    assert isinstance(family, DjangoStoreFamily)
    assert family.using == "bare"
    with (
        override_settings(PLEO_AUTH={**settings, "STORE": "django:nowhere"}),
        pytest.raises(ConfigurationError, match="names database 'nowhere', which DATABASES lacks"),
    ):
        get_integration()


_UNINSTALLED = """
import json, django
from django.conf import settings
settings.configure(INSTALLED_APPS=[], DATABASES={}, PLEO_AUTH={"CLIENT_ID": "c", "STORE": "django"})
django.setup()
from django.core import checks
import pleo_auth.contrib.django
print(json.dumps([error.msg for error in checks.run_checks(tags=["pleo_auth"])]))
"""


def test_store_django_without_the_app_installed_says_to_install_it() -> None:
    run = subprocess.run(
        [sys.executable, "-c", _UNINSTALLED], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == [
        'settings.PLEO_AUTH: STORE is "django": add "pleo_auth.contrib.django" to '
        "INSTALLED_APPS and run `python manage.py migrate pleo_auth`"
    ]


def test_the_migration_matches_the_model() -> None:
    from django.core.management import call_command

    call_command("makemigrations", "pleo_auth", check=True, dry_run=True, verbosity=0)


def test_a_dropped_connection_is_a_retryable_error_and_the_next_call_reconnects(
    postgres: str,
) -> None:
    """The server ends the connection (a restart, a failover): one call fails,
    retryable, and the next works on a new connection, in a thread that serves no
    request (as pleo_auth's own threads serve none)."""
    import psycopg
    from django.db import connections

    store = DjangoStoreFamily(unique_client(), using=postgres).store(A)
    tokens = new_tokens()
    store.save(tokens)
    with connections[postgres].cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres") as other:
        other.execute("SELECT pg_terminate_backend(%s)", (pid,))

    with pytest.raises(TokenStoreError) as failed:
        store.load()
    assert failed.value.retryable is True
    assert store.load() == tokens


_EARLY_IMPORT = """
import sys
import pleo_auth.contrib.django                      # before settings, before the registry
from pleo_auth.contrib.django import DjangoStoreFamily, PleoAuthConfig, get_session
early = sorted(m for m in sys.modules if m.startswith("pleo_auth.contrib.django."))
import django
from django.conf import settings
settings.configure(INSTALLED_APPS=["pleo_auth.contrib.django"], DATABASES={}, ROOT_URLCONF=[])
django.setup()
from django.urls import include
include("pleo_auth.contrib.django")
print(early, "pleo_auth.contrib.django.models" in sys.modules)
"""


def test_importing_the_package_before_the_app_registry_imports_no_model() -> None:
    """``include("pleo_auth.contrib.django")`` in a URLconf, or an import in settings,
    happens before the registry is ready: the package must not import its models."""
    run = subprocess.run(
        [sys.executable, "-c", _EARLY_IMPORT], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [
        "['pleo_auth.contrib.django.apps',",
        "'pleo_auth.contrib.django.store']",
        "True",
    ]


def test_an_integration_over_the_model_store_adds_uses_and_removes_a_grant(
    emulator: Emulator,
) -> None:
    """Integration.remove holds the company's lease through one store object and
    clears through another: the lease belongs to the thread and the row, so the
    clear writes under it at once instead of waiting for it."""
    import time

    family = DjangoStoreFamily(unique_client())
    integration = Integration(
        emulator.client_id,
        emulator.client_secret,
        store=family,
        token_url=emulator.token_url,
        api_url=emulator.api_url,
    )
    try:
        integration.add(A, TokenSet.from_response(emulator.issue_tokens(company=A)))
        assert integration.session(A).get("/v2/employees").status_code == 200
        started = time.monotonic()
        integration.remove(A)
        assert time.monotonic() - started < 5.0  # not the 30 s a write waits for a lease
        assert integration.companies() == []
        assert family.store(A).load() is None
    finally:
        integration.close()
        family.rows().delete()


def test_a_client_id_with_sql_metacharacters_is_a_plain_value() -> None:
    client = f"{unique_client()}'; DROP TABLE pleo_auth_pleogrant; --"
    tokens = new_tokens()

    DjangoStoreFamily(client).store(A).save(tokens)

    assert DjangoStoreFamily(client).store(A).load() == tokens
    assert DjangoStoreFamily(client).companies() == [A]
    assert DjangoStoreFamily(client.split("'")[0]).companies() == []


def test_requests_cost_no_query_and_one_query_per_interval(emulator: Emulator) -> None:
    """The hot path: a session over the model store sends 200 requests without a
    query; once the version is older than check_interval (the store's clock moves
    1 s), the next request costs one query, and the ones after it none again."""
    from pleo_auth import PleoSession

    clock = FakeClock()
    family = DjangoStoreFamily(unique_client(), check_interval=1.0, clock=clock)
    store = family.store(A)
    store.save(TokenSet.from_response(emulator.issue_tokens(company=A)))
    session = PleoSession(
        emulator.client_id,
        emulator.client_secret,
        store=store,
        token_url=emulator.token_url,
        api_url=emulator.api_url,
    )
    try:
        assert session.get("/v2/employees").status_code == 200  # loads the pair
        with queries_during("default") as steady:
            for _ in range(200):
                assert session.get("/v2/employees").status_code == 200
        clock.advance(1.0)
        with queries_during("default") as stale:
            for _ in range(200):
                assert session.get("/v2/employees").status_code == 200
    finally:
        session.close()
        family.rows().delete()
    assert len(steady.captured_queries) == 0
    assert len(stale.captured_queries) == 1
    assert emulator.counters_for(A).refresh_grants == 0
