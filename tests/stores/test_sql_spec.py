"""Tests for database store specs (pleo_auth.stores._sql_spec, through
pleo_auth.stores.spec and pleo_auth.stores.family_spec): parsing, the spec a
store renders, redaction, and stores built from specs on the real databases."""

from __future__ import annotations

import pytest
from support.databases import unique_name

from pleo_auth import Company, ConfigurationError, TokenSet
from pleo_auth.stores import SQLStore
from pleo_auth.stores.family_spec import (
    family_from_spec,
    family_spec_of,
    is_family_spec,
    redact_family_spec,
)
from pleo_auth.stores.spec import check_spec, has_password, redact_spec, store_from_spec

A = Company("3f2504e0-4f89-11d3-9a0c-0305e82c3301")
B = Company("9b2c1f6e-1d2a-4c3b-8e4f-5a6b7c8d9e0f")
PASSWORD = "hunter2-7c1"
CLIENT = "client-7"


def tokens(n: int) -> TokenSet:
    return TokenSet.from_response(
        {"access_token": f"at-{n}", "refresh_token": f"rt-{n}", "expires_in": 3600}
    )


def with_password(url: str) -> str:
    """``url`` with a password: PostgreSQL trusts local connections here and never
    asks for it; MariaDB's root has none and would refuse one."""
    if not url.startswith("postgresql"):
        return url
    scheme, sep, rest = url.partition("://")
    user, at, after = rest.partition("@")
    return f"{scheme}{sep}{user}:{PASSWORD}@{after}" if at else url


def test_a_spec_builds_the_companys_grant_that_a_family_spec_over_the_same_table_lists(
    sql_url: str,
) -> None:
    table = unique_name("spec")
    plain = store_from_spec(
        f"{with_password(sql_url)}?company={A.id}&table={table}", client_id=CLIENT
    )
    family = family_from_spec(f"family:{with_password(sql_url)}?table={table}", client_id=CLIENT)
    assert isinstance(family, SQLStore)
    try:
        family.create_table()
        first, second = tokens(1), tokens(2)
        plain.save(first)
        family.store(B).save(second)
        assert family.companies() == [A, B]
        assert family.store(A).load() == first
        assert family.store(B).load() == second
        assert plain.load() == first
        assert plain.key == family.store(A).key
    finally:
        family.close()
        getattr(plain, "family").close()  # noqa: B009


def test_a_stores_spec_names_it_again_without_the_password(sql_url: str) -> None:
    spec = f"{with_password(sql_url)}?company={A.id}&table=grants_x"
    store = store_from_spec(spec, client_id=CLIENT)
    rendered = store.spec
    assert rendered is not None
    assert PASSWORD not in rendered
    assert PASSWORD not in store.describe() + repr(store)
    assert rendered == f"{sql_url}?company={A.id}&table=grants_x"
    again = store_from_spec(rendered, client_id=CLIENT)
    assert again.key == store.key

    family = SQLStore(with_password(sql_url), client_id=CLIENT, table="grants_x")
    assert family.spec == f"family:{sql_url}?table=grants_x"
    assert family_spec_of(family) == family.spec
    assert is_family_spec(family.spec)
    assert PASSWORD not in family.describe() + repr(family)


def test_the_default_table_and_no_schema_leave_the_spec_bare() -> None:
    family = SQLStore("sqlite:///grants.db", client_id=CLIENT)
    assert family.spec == "family:sqlite:///grants.db"
    assert family.for_company(A).spec == f"sqlite:///grants.db?company={A.id}"
    schema = SQLStore(
        "postgresql+psycopg://app@db:5432/app", client_id=CLIENT, schema="pleo", table="g"
    )
    assert schema.spec == "family:postgresql+psycopg://app@db:5432/app?table=g&schema=pleo"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("postgresql+psycopg://app:pw@db/app", True),
        ("mysql+pymysql://app:p/w?x@db/app", True),
        ("postgresql+psycopg://app@db/app?password=pw", True),
        ("postgresql+psycopg://app@db/app?company=x", False),
        ("sqlite:///grants.db", False),
        ("mysql+pymysql://root@127.0.0.1:3306/app", False),
    ],
)
def test_has_password_finds_one_in_the_user_or_the_query(spec: str, expected: bool) -> None:
    assert has_password(spec) is expected


def test_redaction_hides_a_database_password_as_for_redis() -> None:
    assert (
        redact_spec(f"postgresql+psycopg://app:{PASSWORD}@db:5432/app?company={A.id}")
        == f"postgresql+psycopg://app:***@db:5432/app?company={A.id}"
    )
    assert (
        redact_family_spec(f"family:mysql+pymysql://root:{PASSWORD}@db/app")
        == "family:mysql+pymysql://root:***@db/app"
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (f"postgresql+psycopg://app:{PASSWORD}@db/app", "add ?company=<company id>"),
        (f"postgresql+psycopg://app:{PASSWORD}@/app?company={A.id}", "no host"),
        (f"mysql+pymysql://app:{PASSWORD}@db/?company={A.id}", "no database name"),
        (f"mysql+pymysql://app:{PASSWORD}@db:99999/x?company={A.id}", "bad host or port"),
        (f"sqlite:///:memory:?company={A.id}", "not an in-memory database"),
        (f"sqlite://host/x.db?company={A.id}", "a SQLite URL names a file"),
        (f"postgresql:app:{PASSWORD}@db/app?company={A.id}", "write postgresql://USER@HOST"),
        (f"postgresql+psycopg://app:{PASSWORD}@db/app?company=rt-{PASSWORD}", "?company=: "),
        (f"postgresql+psycopg://app:{PASSWORD}@db/a?company={A.id}&company={B.id}", "twice"),
        (f"postgresql+psycopg://app:{PASSWORD}@db/a?company={A.id}&table=", "?table= is empty"),
        (f"postgresql+psycopg://app:{PASSWORD}@db/a#{PASSWORD}", "no #fragment"),
    ],
)
def test_a_bad_database_spec_is_refused_before_connecting_and_never_shows_the_password(
    spec: str, message: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        check_spec(spec)
    assert message in str(caught.value)
    assert PASSWORD not in str(caught.value)


def test_a_family_spec_names_no_company_and_needs_the_client_id() -> None:
    with pytest.raises(ConfigurationError, match="a family names no company"):
        family_from_spec(f"family:sqlite:///g.db?company={A.id}", client_id=CLIENT)
    with pytest.raises(ConfigurationError, match="it needs the client id"):
        family_from_spec("family:sqlite:///g.db")
    with pytest.raises(ConfigurationError, match="it needs the client id"):
        store_from_spec(f"sqlite:///g.db?company={A.id}", client_id="")


def test_driver_parameters_pass_through_to_the_database_url(postgres_url: str) -> None:
    store = store_from_spec(f"{postgres_url}?connect_timeout=7&company={A.id}", client_id=CLIENT)
    family = getattr(store, "family")  # noqa: B009
    try:
        assert family.engine.url.query == {"connect_timeout": "7"}
        assert store.spec == f"{postgres_url}?connect_timeout=7&company={A.id}"
    finally:
        family.close()


def test_a_web_integrations_store_setting_names_a_database_family_keyed_by_its_client_id(
    sqlite_url: str,
) -> None:
    from pleo_auth.contrib import _WebSettings

    web = _WebSettings.from_mapping(
        {"CLIENT_ID": CLIENT, "STORE": f"family:{sqlite_url}?table=web"}, where="app.config"
    )
    family = web.family
    assert isinstance(family, SQLStore)
    try:
        assert family.client_id == CLIENT
        assert family.table.name == "web"
    finally:
        family.close()
