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
import requests
from support.integration_helpers import (
    CountingFamily,
    LockWatch,
    advance,
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
from pleo_auth._clock import SYSTEM_CLOCK, FakeClock
from pleo_auth._gate import RefreshGate
from pleo_auth.integration import GrantStatus
from pleo_auth.testing import Emulator, TokenCapacity, free_port

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


# -- logins -----------------------------------------------------------------------------


def _together(targets: list[Any]) -> list[BaseException]:
    """Run each callable on its own thread, started together on a barrier; the
    exceptions they raised."""
    barrier = threading.Barrier(len(targets))
    errors: list[BaseException] = []

    def run(target: Any) -> None:
        barrier.wait()
        try:
            target()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(target,)) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    return errors


def test_companies_logging_in_at_the_same_moment_each_get_their_own_grant(
    emulator: Emulator, any_family: Any
) -> None:
    companies = new_companies(16)
    tokens = {company: grant(emulator, company, now=NOW()) for company in companies}
    with integration(emulator, any_family) as pleo:
        logins = [lambda c=company: pleo.add(c, tokens[c]) for company in companies]
        assert _together(logins) == []
        assert pleo.companies() == sorted(Company(c) for c in companies)
        for company in companies:
            assert any_family.store(company).load() == tokens[company]
            assert pleo.session(company).get("/v2/employees").status_code == 200
            assert emulator.counters_for(company).api_requests == 1
    assert emulator.counters.refresh_grants == 0


def test_a_second_login_for_a_company_replaces_its_grant_and_its_sessions_take_it_up(
    emulator: Emulator, any_family: Any
) -> None:
    (company,) = new_companies(1)
    first, second = grant(emulator, company, now=NOW()), grant(emulator, company, now=NOW())
    with integration(emulator, any_family) as pleo:
        pleo.add(company, first)
        session = pleo.session(company)
        assert session.get("/v2/employees").status_code == 200
        assert session.tokens == first
        pleo.add(company, second)
        assert session.get("/v2/employees").status_code == 200
        assert session.tokens == second
        stored = any_family.store(company).load()
        assert stored == second
        assert first.fingerprint in stored.lineage  # never mistaken for newer again
        assert pleo.companies() == [Company(company)]
    assert emulator.counters.refresh_grants == 0


def test_two_logins_for_one_company_at_the_same_moment_leave_one_of_them(
    emulator: Emulator, any_family: Any
) -> None:
    (company,) = new_companies(1)
    logins = [grant(emulator, company, now=NOW()) for _ in range(2)]
    with integration(emulator, any_family) as pleo:
        assert _together([lambda t=tokens: pleo.add(company, t) for tokens in logins]) == []
        stored = any_family.store(company).load()
        assert stored in logins
        other = logins[1] if stored == logins[0] else logins[0]
        assert other.fingerprint in stored.lineage
        assert pleo.session(company).get("/v2/employees").status_code == 200


def test_a_login_for_one_company_never_touches_another(emulator: Emulator, tmp_path: Path) -> None:
    a, b = new_companies(2)
    directory = tmp_path / "grants"
    family = FileStore.family(directory)
    with integration(emulator, family) as pleo:
        pleo.add(b, grant(emulator, b, now=NOW()))
        session_b = pleo.session(b)
        assert session_b.get("/v2/employees").status_code == 200
        b_file = directory / f"{Company(b).id}.json"
        before = (b_file.stat().st_ino, b_file.stat().st_mtime_ns, b_file.read_bytes())
        version = family.store(b).version()
        coordinator_version = session_b._coordinator._version
        pleo.add(a, grant(emulator, a, now=NOW()))
        pleo.add(a, grant(emulator, a, now=NOW()))
        assert (b_file.stat().st_ino, b_file.stat().st_mtime_ns, b_file.read_bytes()) == before
        assert family.store(b).version() == version
        assert session_b.get("/v2/employees").status_code == 200
        assert session_b._coordinator._version == coordinator_version  # nothing to reload


# -- dead grants ------------------------------------------------------------------------


def _spend_behind_its_back(emulator: Emulator, tokens: TokenSet) -> None:
    """Refresh ``tokens`` at the emulator directly, as a stray copy of them would:
    the stored pair is then spent, and its next refresh is reuse."""
    reply = requests.post(
        emulator.token_url,
        data={"grant_type": "refresh_token", "refresh_token": tokens.refresh_token},
        auth=(emulator.client_id, emulator.client_secret or ""),
        timeout=10,
    )
    assert reply.status_code == 200


@pytest.mark.parametrize("death", ["revoked", "spent"])
def test_a_dead_grant_never_affects_another_company_and_is_reported_once(
    emulator: Emulator, family: Any, death: str
) -> None:
    dead: list[Company] = []
    companies = new_companies(4)
    doomed, others = companies[0], companies[1:]
    calls_each = 6
    outcomes: dict[str, list[object]] = {company: [] for company in companies}
    with integration(emulator, family, on_reauthentication_required=dead.append) as pleo:
        for company in companies:
            pleo.add(company, grant(emulator, company, now=NOW()))
        if death == "revoked":
            emulator.revoke(doomed)
        else:
            _spend_behind_its_back(emulator, family.store(doomed).load())

        def call(company: str) -> None:
            for _ in range(calls_each):
                try:
                    outcome: object = pleo.session(company).get("/v2/employees").status_code
                except ReauthenticationRequired as exc:
                    outcome = type(exc)
                outcomes[company].append(outcome)

        threads = [lambda c=company: call(c) for company in companies for _ in range(2)]
        assert _together(threads) == []
        assert outcomes[doomed] == [ReauthenticationRequired] * 2 * calls_each
        for company in others:
            assert outcomes[company] == [200] * 2 * calls_each
        assert dead == [Company(doomed)]
        assert pleo.status(doomed).needs_login
        assert pleo.companies() == sorted(Company(c) for c in others)
    counted = emulator.counters_for(doomed)
    assert counted.rejected_refreshes == 1  # one refresh found out, for every thread
    assert counted.reuse_detections == (1 if death == "spent" else 0)
    for company in others:
        assert emulator.counters_for(company).api_requests == 2 * calls_each
        assert emulator.counters_for(company).rejected_refreshes == 0
    assert emulator.counters.refresh_grants == (1 if death == "spent" else 0)


# -- sessions ---------------------------------------------------------------------------


def test_a_session_costs_no_thread_and_no_store_call(emulator: Emulator) -> None:
    family = CountingFamily()
    companies = new_companies(50)
    with integration(emulator, family) as pleo:
        for company in companies:
            pleo.add(company, grant(emulator, company, now=NOW()))
        assert settled(SYSTEM_CLOCK)
        threads = library_threads()
        calls = family.io()
        sessions = [pleo.session(company) for company in companies for _ in range(2)]
        assert family.io() == calls
        assert library_threads() == threads
        assert emulator.counters.api_requests == 0
        assert len({id(s._coordinator) for s in sessions}) == len(companies)


def test_a_session_touches_no_file_of_a_file_family(emulator: Emulator, tmp_path: Path) -> None:
    directory = tmp_path / "grants"
    (stored, unseen) = new_companies(2)
    with integration(emulator, FileStore.family(directory)) as pleo:
        pleo.session(unseen)
        assert not directory.exists()
        pleo.add(stored, grant(emulator, stored, now=NOW()))
        listing = {p.name: p.stat().st_mtime_ns for p in directory.iterdir()}
        for _ in range(3):
            pleo.session(unseen)
            pleo.session(stored)
        assert {p.name: p.stat().st_mtime_ns for p in directory.iterdir()} == listing


def connections(adapter: Any) -> list[int]:
    """How many connections each of the adapter's pools ever opened."""
    pools = adapter.poolmanager.pools
    keys = pools.keys()  # the container refuses to be iterated itself
    return [pools[key].num_connections for key in keys]


def test_sessions_share_the_integrations_connection_pool(
    emulator: Emulator, pleo: Integration
) -> None:
    companies = new_companies(20)
    for company in companies:
        pleo.add(company, grant(emulator, company, now=NOW()))
    sessions = [pleo.session(company) for company in companies]
    adapter = pleo._template.get_adapter(emulator.api_url)
    assert all(s.get_adapter(emulator.api_url) is adapter for s in sessions)
    for session in sessions:
        assert session.get("/v2/employees").status_code == 200
    assert connections(adapter) == [1]  # one keep-alive connection served all 20


def test_closing_one_session_leaves_the_others_and_the_pool_working(
    emulator: Emulator, pleo: Integration
) -> None:
    a, b = new_companies(2)
    for company in (a, b):
        pleo.add(company, grant(emulator, company, now=NOW()))
    first, second, other = pleo.session(a), pleo.session(a), pleo.session(b)
    assert first.get("/v2/employees").status_code == 200
    first.close()
    assert second.get("/v2/employees").status_code == 200
    assert other.get("/v2/employees").status_code == 200
    assert pleo.session(a).get("/v2/employees").status_code == 200
    adapter = pleo._template.get_adapter(emulator.api_url)
    assert connections(adapter) == [1]


def test_sessions_of_one_company_on_many_threads_refresh_its_expired_grant_once(
    emulator: Emulator, pleo: Integration
) -> None:
    a, b = new_companies(2)
    for company in (a, b):
        pleo.add(company, grant(emulator, company, now=NOW(), age=7200))
    statuses: list[int] = []

    def call() -> None:
        statuses.append(pleo.session(a).get("/v2/employees").status_code)

    assert _together([call] * 16) == []
    assert statuses == [200] * 16
    assert emulator.counters_for(a).refresh_grants == 1
    assert emulator.counters_for(b).refresh_grants == 0
    assert emulator.counters.rejected_refreshes == 0


def test_a_thousand_grants_used_once_cost_at_most_three_library_threads(
    emulator: Emulator, pleo: Integration
) -> None:
    companies = new_companies(1000)
    for n, company in enumerate(companies):
        pleo.add(company, grant(emulator, company, now=NOW(), age=7200 if n % 10 == 0 else 0))
    most = 0
    for company in companies:
        assert pleo.session(company).get("/v2/employees").status_code == 200
        most = max(most, len(library_threads()))
    assert settled(SYSTEM_CLOCK)
    most = max(most, len(library_threads()))
    assert most <= 3, library_threads()
    assert emulator.counters.refresh_grants == 100


# -- the bounded refresh pool -----------------------------------------------------------


class _HeldTokenEndpoint:
    """A token request hook that holds every request until the test lets it go,
    counting the requests in the hook at once."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.inside = 0
        self.peak = 0
        self.arrived = 0
        self._permits = 0
        self._open = False

    def __call__(self, grant_type: str | None) -> None:
        with self._cond:
            self.inside += 1
            self.arrived += 1
            self.peak = max(self.peak, self.inside)
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._open or self._permits > 0, 30)
            if not self._open:
                self._permits -= 1
            self.inside -= 1
            self._cond.notify_all()

    def wait_inside(self, count: int) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.inside >= count, 10)

    def wait_arrived(self, count: int) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.arrived >= count, 10)

    def let_one_go(self) -> None:
        with self._cond:
            self._permits += 1
            self._cond.notify_all()

    def open(self) -> None:
        with self._cond:
            self._open = True
            self._cond.notify_all()


@pytest.mark.parametrize("slots", [1, 2, 4])
def test_at_most_max_concurrent_refreshes_token_requests_are_in_flight(
    emulator: Emulator, family: Any, slots: int
) -> None:
    callers = slots + 4
    companies = new_companies(callers)
    held = _HeldTokenEndpoint()
    # A second witness: the emulator refuses any token request beyond `slots` at once.
    emulator.set_token_capacity(TokenCapacity(concurrent=slots, mode="reject"))
    statuses: list[int] = []
    with integration(emulator, family, max_concurrent_refreshes=slots) as pleo:
        for company in companies:
            pleo.add(company, grant(emulator, company, now=NOW(), age=7200))
        emulator.set_token_request_hook(held)

        def call(company: str) -> None:
            statuses.append(pleo.session(company).get("/v2/employees").status_code)

        threads = [threading.Thread(target=call, args=(c,)) for c in companies]
        for thread in threads:
            thread.start()
        try:
            assert held.wait_inside(slots)
            assert wait_until(lambda: pleo._gate.waiting == (callers - slots, 0))
            assert held.inside == slots  # the others wait their turn, none is sent
        finally:
            held.open()
        for thread in threads:
            thread.join(30)
        assert held.peak == slots
        assert pleo._gate.peak == slots
    assert statuses == [200] * callers
    counters = emulator.counters
    assert counters.throttled == 0
    assert counters.refresh_grants == callers
    assert counters.rejected_refreshes == 0
    assert all(emulator.counters_for(c).refresh_grants == 1 for c in companies)


def test_a_waiting_requests_refresh_goes_before_a_proactive_one(clock: FakeClock) -> None:
    family = CountingFamily()
    first, second, proactive, request = new_companies(4)
    held = _HeldTokenEndpoint()
    statuses: list[int] = []
    with (
        Emulator(access_token_lifetime=100, clock=clock) as emu,
        integration(
            emu, family, clock=clock, max_concurrent_refreshes=2, refresh_margin=10
        ) as pleo,
    ):
        for company in (first, second, request):
            pleo.add(company, grant(emu, company, now=clock.time(), age=200))
        pleo.add(proactive, grant(emu, proactive, now=clock.time()))
        assert pleo.session(proactive).get("/v2/employees").status_code == 200  # used
        # Pairs issued from here on outlive the test: only the used grant comes due.
        emu.set_access_token_lifetime(100 * LIFETIME)
        emu.set_token_request_hook(held)

        def call(company: str) -> threading.Thread:
            thread = threading.Thread(
                target=lambda: statuses.append(pleo.session(company).get("/v2/x").status_code)
            )
            thread.start()
            return thread

        logins = len(family.lock_order)
        callers = [call(first), call(second)]
        try:
            assert held.wait_inside(2)  # both slots taken
            clock.advance(95)  # the used grant's timer is due (90 s, less its jitter)
            assert wait_until(lambda: pleo._gate.waiting == (0, 1))
            callers.append(call(request))
            assert wait_until(lambda: pleo._gate.waiting == (1, 1))
            held.let_one_go()
            assert held.wait_arrived(3)
            # The freed slot went to the request, though the timer waited longer.
            assert family.lock_order[logins + 2 :] == [Company(request)]
            # The timer, woken by the freed slot, found none for it, and waits again.
            assert wait_until(lambda: pleo._gate.waiting == (0, 1))
        finally:
            held.open()
        for thread in callers:
            thread.join(30)
        assert settled(clock)
        assert family.lock_order[logins + 3 :] == [Company(proactive)]
    assert statuses == [200] * 3
    assert emu.counters.refresh_grants == 4
    assert emu.counters_for(proactive).refresh_grants == 1


# -- idle grants ------------------------------------------------------------------------

LIFETIME = 100.0
MARGIN = 10.0


@pytest.fixture
def fake_emulator(clock: FakeClock) -> Iterator[Emulator]:
    with Emulator(access_token_lifetime=LIFETIME, clock=clock) as emu:
        yield emu


def test_a_thousand_idle_grants_cost_no_refresh_while_a_used_one_keeps_its_timer(
    clock: FakeClock, fake_emulator: Emulator
) -> None:
    emu = fake_emulator
    family = MemoryStore.family()
    companies = new_companies(1000)
    used = companies[0]
    with integration(emu, family, clock=clock, refresh_margin=MARGIN) as pleo:
        for company in companies:
            pleo.add(company, grant(emu, company, now=clock.time()))
        sessions = [pleo.session(company) for company in companies]  # made, never used
        used_session = sessions[0]
        start = clock.time()
        for now in advance(clock, 10 * LIFETIME, step=10.0):
            assert used_session.get("/v2/employees").status_code == 200
            # The timer refreshed it at the first step past each due time, before
            # this request: one rotation every LIFETIME - MARGIN seconds.
            assert emu.counters.refresh_grants == (now - start) // (LIFETIME - MARGIN)
            assert used_session.tokens is not None
            assert used_session.tokens.issued_at == start + emu.counters.refresh_grants * 90
    assert emu.counters_for(used).refresh_grants == 11  # at 90, 180, ..., 990 s
    assert emu.counters.refresh_grants == 11
    assert emu.counters.api_requests == 100


def test_a_grant_used_once_is_refreshed_ahead_once_then_only_when_used_again(
    clock: FakeClock, fake_emulator: Emulator
) -> None:
    emu = fake_emulator
    (company,) = new_companies(1)
    with integration(emu, MemoryStore.family(), clock=clock, refresh_margin=MARGIN) as pleo:
        pleo.add(company, grant(emu, company, now=clock.time()))
        session = pleo.session(company)
        assert session.get("/v2/employees").status_code == 200
        for _ in advance(clock, 10 * LIFETIME, step=10.0):
            pass
        # Used within the first token's life: its timer ran once; the next token was
        # never used within its life, so it was left to expire.
        assert emu.counters.refresh_grants == 1
        assert session.get("/v2/employees").status_code == 200
        assert emu.counters.refresh_grants == 2  # refreshed on use


@pytest.mark.parametrize("grants", [100])
def test_a_keep_alive_refreshes_each_idle_grant_once_per_interval(
    clock: FakeClock, fake_emulator: Emulator, grants: int
) -> None:
    emu = fake_emulator
    keep_alive = 3 * LIFETIME
    companies = new_companies(grants)
    with integration(
        emu, MemoryStore.family(), clock=clock, refresh_margin=MARGIN, keep_alive=keep_alive
    ) as pleo:
        for company in companies:
            pleo.add(company, grant(emu, company, now=clock.time()))
        start = clock.time()
        for now in advance(clock, 10 * LIFETIME, step=10.0):
            # Due keep_alive after each refresh, and refreshed by the sweep at the
            # first step past it (it sweeps every keep_alive / 8 until one is due,
            # then at the due time): the first at [300, 340), then 300 s apart.
            expected = 0 if now - start < 3 * LIFETIME else None
            if expected is not None:
                assert emu.counters.refresh_grants == expected
        issued = {pleo.status(company).refreshed_at for company in companies}
        assert len(issued) == 1
        (last,) = issued
        assert last is not None
        assert start + 900 <= last < start + 940
    for company in companies:
        assert emu.counters_for(company).refresh_grants == 3  # at T, T + 300, T + 600
    assert emu.counters.refresh_grants == 3 * grants
    assert emu.counters.rejected_refreshes == 0
    assert emu.counters.api_requests == 0


# -- the gate itself --------------------------------------------------------------------


def _hold_slot(gate: RefreshGate, *, urgent: bool, taken: list[str], name: str) -> threading.Event:
    """Take a slot on a thread, record it in ``taken``, and keep it until the
    returned event is set."""
    done = threading.Event()

    def run() -> None:
        with gate.slot(urgent=urgent):
            taken.append(name)
            done.wait(10)

    threading.Thread(target=run, daemon=True).start()
    return done


def test_proactive_refreshes_never_take_the_last_slot_and_a_request_gets_it() -> None:
    gate = RefreshGate(3)
    taken: list[str] = []
    holds = [_hold_slot(gate, urgent=False, taken=taken, name=f"p{n}") for n in range(3)]
    assert wait_until(lambda: len(taken) == 2 and gate.waiting == (0, 1))
    request = _hold_slot(gate, urgent=True, taken=taken, name="r")
    assert wait_until(lambda: len(taken) == 3)
    assert taken[2] == "r"  # the last slot, which the third proactive one left free
    assert gate.waiting == (0, 1)
    holds[0].set()
    assert wait_until(lambda: len(taken) == 4)
    for event in (*holds, request):
        event.set()
    assert wait_until(lambda: gate.waiting == (0, 0) and gate._busy == 0)
    assert gate.peak == 3


def test_one_slot_serves_proactive_refreshes_too() -> None:
    gate = RefreshGate(1)
    with gate.slot(urgent=False):
        assert gate.peak == 1
    with gate.slot(urgent=True):
        pass
    assert gate._busy == 0


def test_a_slot_is_given_back_when_the_refresh_raises() -> None:
    gate = RefreshGate(1)
    for urgent in (True, False):
        with pytest.raises(RuntimeError), gate.slot(urgent=urgent):
            raise RuntimeError("refresh failed")
    assert gate._busy == 0
    assert gate._proactive == 0
    with gate.slot(urgent=False):
        pass
