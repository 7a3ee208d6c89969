"""Tests for the admin page of the Django model store (pleo_auth.contrib.django.admin):
it lists the companies, their access tokens' expiry and whether they need a login,
and no admin page, list or form, ever shows a token. Rendered for real, with
Django's test client as a logged-in superuser."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from support.django_project import ADMIN_MIDDLEWARE, configure, migrate, unique_client
from support.web_contract import A, B

from pleo_auth import TokenSet
from pleo_auth.contrib.django import DjangoStoreFamily
from pleo_auth.stores.lease import fence


@pytest.fixture(scope="module", autouse=True)
def project() -> None:
    configure()
    migrate("default")


@pytest.fixture
def admin_client() -> Iterator[Any]:
    from django.contrib.auth.models import User
    from django.test import Client, override_settings

    user = User.objects.create_superuser(f"admin-{unique_client()}", password=None)
    client = Client()
    client.force_login(user)
    app = {"CLIENT_ID": "admin-test", "STORE": "django"}
    with override_settings(MIDDLEWARE=ADMIN_MIDDLEWARE, PLEO_AUTH=app):
        yield client
    user.delete()


def pair(tag: str, expires_at: float) -> TokenSet:
    return TokenSet(
        access_token=f"at_ADMIN_SECRET_{tag}",
        refresh_token=f"rt_ADMIN_SECRET_{tag}",
        expires_at=expires_at,
        scope="users:read",
        issued_at=expires_at - 900.0,
    )


@pytest.fixture
def grants() -> Iterator[tuple[DjangoStoreFamily, list[TokenSet]]]:
    """Company A with a live grant (expiring 2033-05-18 03:33:20 UTC); company B logged
    out after a grant of its own (its row stays, needing a login)."""
    from pleo_auth.contrib.django.models import PleoGrant

    family = DjangoStoreFamily(unique_client())
    live, cleared = pair("a", 2_000_000_000.0), pair("b", 2_000_000_000.0)
    family.store(A).save(live)
    family.store(B).save(cleared)
    family.store(B).clear()
    yield family, [live, cleared]
    PleoGrant.objects.filter(client_id=family.client_id).delete()


def assert_no_secret(page: str, pairs: list[TokenSet]) -> None:
    assert "ADMIN_SECRET" not in page
    for tokens in pairs:
        for secret in (tokens.access_token, tokens.refresh_token, fence(tokens)):
            assert secret not in page


def rows_of(family: DjangoStoreFamily) -> dict[str, Any]:
    from pleo_auth.contrib.django.models import PleoGrant

    return {row.company: row for row in PleoGrant.objects.filter(client_id=family.client_id)}


def test_the_list_shows_companies_expiry_and_needs_login_and_no_token(
    admin_client: Any, grants: tuple[DjangoStoreFamily, list[TokenSet]]
) -> None:
    family, pairs = grants

    reply = admin_client.get("/admin/pleo_auth/pleogrant/", {"client_id": family.client_id})
    page = reply.content.decode()

    assert reply.status_code == 200
    assert A.id in page
    assert B.id in page
    assert "needs login" in page.lower()
    assert "May 18, 2033, 3:33 a.m." in page  # A's access token expiry, in UTC
    # One "yes" and one "no" icon for needs-login: B needs a login, A does not.
    assert page.count('alt="True"') == 1
    assert page.count('alt="False"') == 1
    assert_no_secret(page, pairs)


def test_the_grant_page_of_each_company_shows_no_token(
    admin_client: Any, grants: tuple[DjangoStoreFamily, list[TokenSet]]
) -> None:
    family, pairs = grants

    for company, row in rows_of(family).items():
        for view in ("change", "history", "delete"):
            reply = admin_client.get(f"/admin/pleo_auth/pleogrant/{row.pk}/{view}/")
            page = reply.content.decode()
            assert reply.status_code == 200, (view, reply.status_code)
            assert company in page
            assert_no_secret(page, pairs)


def test_the_grant_page_is_read_only_and_no_grant_can_be_added_in_the_admin(
    admin_client: Any, grants: tuple[DjangoStoreFamily, list[TokenSet]]
) -> None:
    family, pairs = grants
    row = rows_of(family)[A.id]

    page = admin_client.get(f"/admin/pleo_auth/pleogrant/{row.pk}/change/").content.decode()
    assert "<textarea" not in page
    assert 'name="tokens"' not in page
    assert admin_client.get("/admin/pleo_auth/pleogrant/add/").status_code == 403
    reply = admin_client.post(f"/admin/pleo_auth/pleogrant/{row.pk}/change/", {"company": B.id})
    assert reply.status_code == 403
    assert family.store(A).load() == pairs[0]


def test_the_admin_index_and_app_pages_show_no_token(
    admin_client: Any, grants: tuple[DjangoStoreFamily, list[TokenSet]]
) -> None:
    _family, pairs = grants

    for path in ("/admin/", "/admin/pleo_auth/"):
        reply = admin_client.get(path)
        assert reply.status_code == 200
        assert "Pleo grants" in reply.content.decode()
        assert_no_secret(reply.content.decode(), pairs)
