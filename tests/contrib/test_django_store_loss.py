"""Loss is not logout for the Django model store (issue 14): a ``pleo_grants`` row
deleted under a live session (a truncated table, a restored backup without it) is
written back by the session holding the live pair, and a logout's tombstone is not.

Real parts: the Django project of support.django_project on its SQLite file and on
the test session's PostgreSQL database, the emulator over HTTP. The store is
wrapped by tests/hunt/test_store_loss.py's ``Host``, which counts restores.
"""

from __future__ import annotations

import pytest
from hunt.test_store_loss import API, Host, session_over
from support.databases import Database
from support.django_project import configure, make_family, migrate, unique_client, use_postgres

from pleo_auth import ReauthenticationRequired, TokenSet
from pleo_auth.testing import Emulator


@pytest.fixture(scope="module", autouse=True)
def project() -> None:
    configure()
    migrate("default")


@pytest.fixture(params=["default", "postgres"])
def alias(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres":
        database: Database = request.getfixturevalue("postgres_database")
        use_postgres(database.name)
        migrate("postgres")
    return str(request.param)


def test_a_deleted_row_is_restored_by_the_holder_and_a_logout_is_not(
    emulator: Emulator, alias: str
) -> None:
    family = make_family(alias, emulator.client_id + "-" + unique_client(), check_interval=0.0)()
    company = emulator.default_company
    member = family.store(company)
    host = Host(member, "a")
    first = TokenSet.from_response(emulator.issue_tokens())
    member.save(first)
    calls: list[str] = []
    with session_over(host, emulator, calls) as session:
        assert session.get(API).status_code == 200
        assert not member.lost()
        family.rows().delete()  # the row is gone: no tokens, and no tombstone
        assert member.lost()
        # A request reads the version unless another thread (the timer) is reading
        # it: then it goes out with the cached one, and the next request looks.
        for _ in range(5):
            assert session.get(API).status_code == 200
            if host.restores:
                break
        assert host.restores == 1
        back = member.load()
        assert back is not None
        assert back.refresh_token == first.refresh_token
        assert not member.lost()

        member.clear()  # a logout: the row stays, its tokens NULL
        assert not member.lost()
        with pytest.raises(ReauthenticationRequired):
            session.get(API)
    assert host.restores == 1
    assert calls == ["hook"]
    counters = emulator.counters
    assert (counters.refresh_grants, counters.rejected_refreshes) == (0, 0)
    assert counters.reuse_detections == 0


def test_restore_writes_only_while_the_row_is_lost(emulator: Emulator, alias: str) -> None:
    from pleo_auth import TokenStoreError

    family = make_family(alias, unique_client(), check_interval=0.0)()
    member = family.store(emulator.default_company)
    assert member.lost()  # never written
    first = TokenSet.from_response(emulator.issue_tokens())
    member.restore(first)
    assert member.load() == first
    assert member.version() is not None
    second = TokenSet.from_response(emulator.issue_tokens())
    with pytest.raises(TokenStoreError) as raised:
        member.restore(second)  # written: not lost any more
    assert raised.value.retryable
    assert member.load() == first
    member.clear()
    with pytest.raises(TokenStoreError):
        member.restore(second)  # a tombstone: never undone
    assert member.load() is None
