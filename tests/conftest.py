"""Shared fixtures: real services on loopback, started privately for each run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.binaries import require
from support.databases import Database, private_database, sqlite_url_for
from support.leakguard import _leak_guard_installed, leak_guard  # guards every test
from support.secret_service import private_secret_service
from support.session_helpers import MakeSession, TimerlessClock

from pleo_auth import MemoryStore, PleoSession, TokenSet, TokenStore
from pleo_auth._clock import FakeClock
from pleo_auth.testing import Emulator, redis_server

__all__ = ["_leak_guard_installed", "leak_guard"]

# The store contract (pleo_auth.testing.TokenStoreContract) keeps pytest's detailed
# assert messages, as when it lived in tests/.
pytest.register_assert_rewrite("pleo_auth.testing._contract", "pleo_auth.testing._family_contract")


#: Runs of the default suite whose cheaper siblings (the FileStore run of the same test)
#: stay there: they run with the soak runs, so CI still runs every one of them.
SOAK_ONLY = frozenset(
    {
        "tests/hunt/test_crash.py::test_a_save_killed_at_every_step_leaves_the_old_or_the_new_pair"
        "_and_no_stale_lock[keyring]",
        "tests/hunt/test_crash.py::test_a_save_killed_at_every_step_leaves_the_old_or_the_new_pair"
        "_and_no_stale_lock[keyring-split]",
        "tests/hunt/test_crash.py::test_a_refresh_killed_at_random_moments_leaves_a_pair_the_server"
        "_issued_together[keyring-split]",
        "tests/hunt/test_multiprocess.py::test_four_processes_of_eight_threads_rotate_once_per"
        "_schedule_without_errors[keyring-file]",
        "tests/hunt/test_multiprocess.py::test_four_processes_of_eight_threads_rotate_once_per"
        "_schedule_without_errors[redis]",
    }
)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Keeps the default run near four minutes (see SOAK_ONLY)."""
    for item in items:
        if item.nodeid in SOAK_ONLY:
            item.add_marker(pytest.mark.soak)


def pytest_assertrepr_compare(op: str, left: object, right: object) -> list[str] | None:
    """A failed comparison of TokenSets shows their fingerprints, never their tokens:
    pytest's own explanation drills into attrs fields and prints every value."""
    if isinstance(left, TokenSet) or isinstance(right, TokenSet):

        def show(side: object) -> str:
            if isinstance(side, TokenSet):
                return f"TokenSet {side.fingerprint} expiring at {side.expires_at}"
            return type(side).__name__

        return [f"{show(left)} {op} {show(right)}"]
    return None


_require = require  # the tests' conftest modules share one name: import it from support


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    """A running emulator with long-lived tokens; tests shorten them as needed."""
    with Emulator(access_token_lifetime=3600) as emu:
        yield emu


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A private redis-server on a free port, for this test run only."""
    _require("redis-server")
    with redis_server() as url:
        yield url


@pytest.fixture
def keyring_backend(tmp_path: Path) -> object:
    """A real keyring backend (keyrings.alt's plaintext file), private to the test."""
    from keyrings.alt.file import PlaintextKeyring

    backend = PlaintextKeyring()
    backend.file_path = str(tmp_path / "keyring.cfg")  # type: ignore[misc]
    return backend


@pytest.fixture
def secret_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """A private, unlocked gnome-keyring on a private D-Bus session bus.

    This process talks to it (``DBUS_SESSION_BUS_ADDRESS`` is set for the test);
    pass the yielded variables in a child process's environment to share it.
    Skipped where the binaries are missing, failed instead under CI.
    """
    with private_secret_service(tmp_path) as env:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        yield env


@pytest.fixture
def make_session() -> Iterator[MakeSession]:
    """Build PleoSessions against an emulator; every one is closed afterwards."""
    made: list[PleoSession] = []

    def make(emu: Emulator, store: TokenStore | None = None, **kwargs: Any) -> PleoSession:
        kwargs.setdefault("token_url", emu.token_url)
        kwargs.setdefault("api_url", emu.api_url)
        client_secret = kwargs.pop("client_secret", emu.client_secret)
        session = PleoSession(
            emu.client_id,
            client_secret,
            store=store if store is not None else MemoryStore(),
            **kwargs,
        )
        made.append(session)
        return session

    yield make
    for session in made:
        session.close()


@pytest.fixture
def timerless() -> TimerlessClock:
    return TimerlessClock()


@pytest.fixture
def timerless_emulator(timerless: TimerlessClock) -> Iterator[Emulator]:
    """An emulator on the timerless clock, issuing 100-second access tokens."""
    with Emulator(access_token_lifetime=100, clock=timerless) as emu:
        yield emu


# -- SQL databases (tests/support/databases.py) ---------------------------------------


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[Database]:
    """A database of this test session's own on the PostgreSQL server (127.0.0.1:5432),
    dropped afterwards. Skipped where the server does not answer; failed under CI."""
    with private_database("postgresql") as database:
        yield database


@pytest.fixture(scope="session")
def mariadb_database() -> Iterator[Database]:
    """A database of this test session's own on the MariaDB server (127.0.0.1:3306),
    dropped afterwards. Skipped where the server does not answer; failed under CI."""
    with private_database("mariadb") as database:
        yield database


@pytest.fixture
def postgres_url(postgres_database: Database) -> str:
    """The SQLAlchemy URL (``postgresql+psycopg://``) of the session's PostgreSQL database."""
    return postgres_database.url


@pytest.fixture
def mariadb_url(mariadb_database: Database) -> str:
    """The SQLAlchemy URL (``mysql+pymysql://``) of the session's MariaDB database."""
    return mariadb_database.url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """The SQLAlchemy URL of a SQLite file private to the test."""
    return sqlite_url_for(tmp_path)


@pytest.fixture(params=["postgresql", "mariadb", "sqlite"])
def sql_url(request: pytest.FixtureRequest) -> str:
    """Each SQL database in turn: PostgreSQL, MariaDB and a SQLite file. The server
    databases are shared by the session: use a table or prefix of the test's own."""
    fixture = {"postgresql": "postgres_url", "mariadb": "mariadb_url", "sqlite": "sqlite_url"}
    url: str = request.getfixturevalue(fixture[request.param])
    return url
