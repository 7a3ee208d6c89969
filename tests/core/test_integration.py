"""Integration: one OAuth client, a grant per Pleo company (issue 12).

Everything runs on real parts: the emulator over loopback HTTP, the real store
families, real threads started on barriers, and a FakeClock where time matters.
"""

from __future__ import annotations

import copy
import math
import pickle
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from support.integration_helpers import (
    LockWatch,
    grant,
    integration,
    library_threads,
    new_companies,
    settled,
    wait_until,
)

from pleo_auth import (
    Company,
    ConfigurationError,
    FileStore,
    Integration,
    MemoryStore,
    ReauthenticationRequired,
    RevocationError,
    TokenSet,
)
from pleo_auth._clock import SYSTEM_CLOCK
from pleo_auth.integration import GrantStatus
from pleo_auth.testing import Emulator, free_port

NOW = time.time


@pytest.fixture
def family() -> Any:
    return MemoryStore.family()


@pytest.fixture
def pleo(emulator: Emulator, family: Any) -> Iterator[Integration]:
    with integration(emulator, family) as made:
        yield made


# -- the API ----------------------------------------------------------------------------


def test_add_companies_status_session_and_remove_each_act_on_one_company(
    emulator: Emulator, pleo: Integration
) -> None:
    a, b = new_companies(2)
    tokens_a, tokens_b = grant(emulator, a, now=NOW()), grant(emulator, b, now=NOW())
    pleo.add(a, tokens_a)
    pleo.add(b, tokens_b)
    assert pleo.companies() == sorted([Company(a), Company(b)])
    status = pleo.status(a)
    assert status == GrantStatus(
        company=Company(a),
        needs_login=False,
        expires_at=tokens_a.expires_at,
        refreshed_at=tokens_a.issued_at,
        scope="users:read",
    )
    assert pleo.session(a).get("/v2/employees").status_code == 200
    assert pleo.session(b).get("/v2/employees").status_code == 200
    assert emulator.counters_for(a).api_requests == 1
    assert emulator.counters_for(b).api_requests == 1

    pleo.remove(a)
    assert pleo.companies() == [Company(b)]
    assert pleo.status(a) == GrantStatus(company=Company(a), needs_login=True)
    with pytest.raises(ReauthenticationRequired):
        pleo.session(a).get("/v2/employees")
    # Local only: the installation lives on at Pleo, and b is untouched.
    assert emulator.counters.installations_deleted == 0
    assert emulator.is_current(tokens_a.access_token, tokens_a.refresh_token)
    assert pleo.session(b).get("/v2/employees").status_code == 200
    assert emulator.counters.refresh_grants == 0


def test_status_of_a_company_never_added_needs_a_login_and_stores_nothing(
    pleo: Integration, family: Any
) -> None:
    (company,) = new_companies(1)
    assert pleo.status(company).needs_login
    assert family.companies() == []


def test_remove_with_revoke_ends_the_installation_at_pleo_and_its_refresh_is_then_refused(
    emulator: Emulator, pleo: Integration
) -> None:
    a, b = new_companies(2)
    tokens_a = grant(emulator, a, now=NOW())
    pleo.add(a, tokens_a)
    pleo.add(b, grant(emulator, b, now=NOW()))
    pleo.remove(a, revoke=True)
    assert emulator.counters_for(a).installations_deleted == 1
    assert emulator.counters.installations_deleted == 1
    assert pleo.companies() == [Company(b)]
    assert Company(a).urn not in emulator.companies()
    # The grant is dead at Pleo: stored again, its refresh is refused.
    pleo.add(a, tokens_a)
    with pytest.raises(ReauthenticationRequired):
        pleo.session(a).refresh()
    assert emulator.counters_for(a).rejected_refreshes == 1
    assert emulator.counters_for(a).refresh_grants == 0
    assert pleo.session(b).get("/v2/employees").status_code == 200


class _Refusing(BaseHTTPRequestHandler):
    """An API that answers every request with 503."""

    def do_DELETE(self) -> None:
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def refusing_api() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("api", ["unreachable", "503"])
def test_a_revocation_pleo_does_not_confirm_raises_and_keeps_the_grant(
    emulator: Emulator, family: Any, api: str, request: pytest.FixtureRequest
) -> None:
    api_url = (
        f"http://127.0.0.1:{free_port()}"
        if api == "unreachable"
        else request.getfixturevalue("refusing_api")
    )
    (company,) = new_companies(1)
    tokens = grant(emulator, company, now=NOW())
    with Integration(
        emulator.client_id,
        emulator.client_secret,
        store=family,
        token_url=emulator.token_url,
        api_url=api_url,
    ) as pleo:
        pleo.add(company, tokens)
        with pytest.raises(RevocationError) as raised:
            pleo.remove(company, revoke=True)
        assert "the grant is kept" in str(raised.value)
        assert pleo.companies() == [Company(company)]
        assert family.store(company).load() == tokens
    assert emulator.is_current(tokens.access_token, tokens.refresh_token)
    assert emulator.counters.installations_deleted == 0


def test_revoking_a_grant_pleo_already_ended_just_removes_it(
    emulator: Emulator, family: Any
) -> None:
    dead: list[Company] = []
    a, b = new_companies(2)
    with integration(emulator, family, on_reauthentication_required=dead.append) as pleo:
        pleo.add(a, grant(emulator, a, now=NOW()))
        pleo.add(b, grant(emulator, b, now=NOW()))
        emulator.revoke(a)
        pleo.remove(a, revoke=True)
        assert pleo.companies() == [Company(b)]
        assert emulator.counters.installations_deleted == 0
        assert pleo.session(b).get("/v2/employees").status_code == 200
    assert emulator.counters_for(b).refresh_grants == 0


def test_revoking_a_company_with_no_grant_just_removes_nothing(
    emulator: Emulator, pleo: Integration
) -> None:
    (company,) = new_companies(1)
    pleo.remove(company, revoke=True)
    assert pleo.companies() == []
    assert emulator.counters.api_requests == 0


def test_close_stops_the_integration_and_the_context_manager_closes_it(
    emulator: Emulator, family: Any
) -> None:
    (company,) = new_companies(1)
    with integration(emulator, family) as pleo:
        assert isinstance(pleo, Integration)
        pleo.add(company, grant(emulator, company, now=NOW()))
        assert pleo.session(company).get("/v2/employees").status_code == 200
    for call in (
        lambda: pleo.session(company),
        lambda: pleo.add(company, grant(emulator, company, now=NOW())),
    ):
        with pytest.raises(ConfigurationError, match="closed"):
            call()
    assert pleo._sweep.closed
    pleo.close()  # twice is harmless
    assert family.companies() == [Company(company)]  # closing forgets no grant


def test_repr_names_the_client_and_store_but_no_secret(emulator: Emulator, tmp_path: Path) -> None:
    (company,) = new_companies(1)
    tokens = grant(emulator, company, now=NOW())
    with Integration(
        emulator.client_id,
        "a-very-secret-value",
        store=FileStore.family(tmp_path / "grants"),
        token_url=emulator.token_url,
        api_url=emulator.api_url,
    ) as pleo:
        pleo.add(company, tokens)
        text = repr(pleo)
    assert emulator.client_id in text
    assert str(tmp_path / "grants") in text
    for secret in ("a-very-secret-value", tokens.access_token, tokens.refresh_token):
        assert secret not in text


def test_a_redis_family_password_stays_out_of_the_repr(emulator: Emulator) -> None:
    from pleo_auth import RedisStore

    family = RedisStore.family("redis://:hunter2-password@127.0.0.1:1/0", prefix="t:")
    with integration(emulator, family) as pleo:
        assert "hunter2-password" not in repr(pleo)


def test_an_integration_cannot_be_pickled_or_copied(pleo: Integration) -> None:
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(pleo)
    with pytest.raises(TypeError, match="cannot be pickled"):
        copy.copy(pleo)


@pytest.mark.parametrize(
    "store", [MemoryStore(), "memory:", None, object()], ids=["store", "str", "none", "object"]
)
def test_a_store_that_is_not_a_family_is_refused(emulator: Emulator, store: object) -> None:
    with pytest.raises(ConfigurationError, match="family"):
        integration(emulator, store)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("max_concurrent_refreshes", 0),
        ("max_concurrent_refreshes", -1),
        ("max_concurrent_refreshes", True),
        ("max_concurrent_refreshes", "4"),
        ("max_concurrent_refreshes", 2.0),
        ("keep_alive", 0),
        ("keep_alive", -1.0),
        ("keep_alive", math.nan),
        ("keep_alive", math.inf),
        ("keep_alive", True),
        ("keep_alive", "3600"),
        ("on_reauthentication_required", 42),
        ("on_reauthentication_required", "print"),
    ],
)
def test_bad_arguments_are_refused(
    emulator: Emulator, family: Any, argument: str, value: object
) -> None:
    before = library_threads()
    with pytest.raises(ConfigurationError, match=argument):
        integration(emulator, family, **{argument: value})
    assert library_threads() == before


def test_good_arguments_are_kept(emulator: Emulator, family: Any) -> None:
    with integration(
        emulator,
        family,
        max_concurrent_refreshes=1,
        keep_alive=1,
        on_reauthentication_required=print,
    ) as pleo:
        assert pleo.max_concurrent_refreshes == 1
        assert pleo.keep_alive == 1.0


# -- companies --------------------------------------------------------------------------

UUID = "3f2504e0-4f89-11d3-9a0c-0305e82c3301"

NOT_COMPANIES = [
    "../x",
    "/etc/passwd",
    f"../{UUID}",
    f"{UUID}/../x",
    "*",
    f"{UUID[:-1]}*",
    "[a-f]*",
    f"{UUID}\x00",
    f"{UUID}\n",
    "\x1b[31m",
    "",
    " ",
    f" {UUID}",
    f"{UUID} ",
    f"urn:pleo:user:{UUID}",
    f"urn:pleo:company:{UUID}:x",
    "urn:pleo:company:*",
    f"{UUID}.json",
    "not-a-company",
]


def _every_method(pleo: Integration, company: Any, tokens: TokenSet) -> list[Any]:
    return [
        lambda: pleo.session(company),
        lambda: pleo.add(company, tokens),
        lambda: pleo.status(company),
        lambda: pleo.remove(company),
        lambda: pleo.remove(company, revoke=True),
    ]


@pytest.mark.parametrize("value", NOT_COMPANIES)
def test_a_company_string_that_is_no_id_or_urn_is_refused_and_nothing_is_stored(
    emulator: Emulator, tmp_path: Path, value: str
) -> None:
    directory = tmp_path / "grants"
    directory.mkdir(mode=0o700)
    tokens = grant(emulator, UUID, now=NOW())
    with integration(emulator, FileStore.family(directory)) as pleo:
        for call in _every_method(pleo, value, tokens):
            with pytest.raises(ConfigurationError, match="not a Pleo company"):
                call()
        assert pleo.companies() == []
        assert pleo._grants == {}
    assert list(directory.iterdir()) == []
    assert emulator.counters.api_requests == 0
    assert emulator.counters.token_requests == 0


@pytest.mark.parametrize("value", [None, 42, UUID.encode(), [UUID]], ids=repr)
def test_a_company_that_is_not_a_string_is_refused(
    emulator: Emulator, pleo: Integration, value: object
) -> None:
    tokens = grant(emulator, UUID, now=NOW())
    for call in _every_method(pleo, value, tokens):
        with pytest.raises(ConfigurationError):
            call()
    assert pleo.companies() == []


def test_add_refuses_what_is_not_a_token_set(emulator: Emulator, pleo: Integration) -> None:
    with pytest.raises(ConfigurationError, match="TokenSet"):
        pleo.add(UUID, emulator.issue_tokens(company=UUID))  # type: ignore[arg-type]
    assert pleo.companies() == []


def test_the_id_its_urn_and_upper_case_name_one_grant(emulator: Emulator, tmp_path: Path) -> None:
    directory = tmp_path / "grants"
    names = [UUID, UUID.upper(), f"urn:pleo:company:{UUID}", f"URN:PLEO:COMPANY:{UUID.upper()}"]
    tokens = grant(emulator, UUID, now=NOW())
    with integration(emulator, FileStore.family(directory)) as pleo:
        pleo.add(names[1], tokens)
        assert sorted(p.name for p in directory.iterdir()) == [f"{UUID}.json", f"{UUID}.json.lock"]
        assert pleo.companies() == [Company(UUID)]
        assert {pleo.status(name) for name in names} == {
            GrantStatus(Company(UUID), False, tokens.expires_at, tokens.issued_at, "users:read")
        }
        sessions = [pleo.session(name) for name in names]
        assert len({id(s._coordinator) for s in sessions}) == 1
        assert {s.company for s in sessions} == {Company(UUID)}
        assert sessions[3].get("/v2/employees").status_code == 200
        pleo.remove(names[2])
        assert pleo.companies() == []
        assert [p.name for p in directory.iterdir()] == [f"{UUID}.json.lock"]


# -- remove against refreshes and callbacks ---------------------------------------------


@pytest.fixture(params=["memory", "file", "redis"])
def any_family(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "memory":
        return MemoryStore.family()
    if request.param == "file":
        return FileStore.family(tmp_path / "grants")
    from pleo_auth import RedisStore

    return RedisStore.family(request.getfixturevalue("redis_url"), prefix=f"t:{uuid.uuid4().hex}:")


def test_a_remove_during_a_refresh_waits_for_it_and_the_grant_stays_removed(
    emulator: Emulator, any_family: Any
) -> None:
    # The refresh holds the company's lock while Pleo answers. A remove that does not
    # take it clears the store first; the refresh then saves the new pair over the
    # removal (or, fenced out, writes it back): the company comes back.
    family = LockWatch(any_family)
    (company,) = new_companies(1)
    arrived, release = threading.Event(), threading.Event()
    statuses: list[int] = []
    with integration(emulator, family) as pleo:
        pleo.add(company, grant(emulator, company, now=NOW(), age=7200))

        def hook(grant_type: str | None) -> None:
            arrived.set()
            release.wait(10)

        emulator.set_token_request_hook(hook)
        session = pleo.session(company)
        caller = threading.Thread(
            target=lambda: statuses.append(session.get("/v2/employees").status_code)
        )
        caller.start()
        assert arrived.wait(10)
        locks = family.locks
        remover = threading.Thread(target=pleo.remove, args=(company,))
        remover.start()
        assert wait_until(lambda: family.locks > locks or not remover.is_alive())
        assert remover.is_alive(), "the remove did not wait for the refresh under way"
        release.set()
        caller.join(10)
        remover.join(10)
        assert statuses == [200]
        assert settled(SYSTEM_CLOCK)
        assert pleo.companies() == []
        assert any_family.store(company).load() is None
    assert emulator.counters_for(company).refresh_grants == 1


def test_removing_a_dead_grant_with_revoke_asks_nobody_to_log_in(
    emulator: Emulator, family: Any
) -> None:
    dead: list[Company] = []
    (company,) = new_companies(1)
    with integration(emulator, family, on_reauthentication_required=dead.append) as pleo:
        pleo.add(company, grant(emulator, company, now=NOW()))
        pleo.session(company).get("/v2/employees")
        emulator.revoke(company)
        pleo.remove(company, revoke=True)
        assert pleo.companies() == []
    assert dead == []
