"""Adversarial tests of the coordinator fixes of issue 10.

Each test drives one attack on the write-back of a pair a failed save left in
memory, on ``TokenSet.lineage``, on the ``after_401`` rule or on the registry,
with real parts: the emulator, a real redis-server, a real full disk (tmpfs),
real processes. Each broke a promise when it was written (it was marked
``xfail(strict)`` until the product was fixed); each is now a regression test.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from support.adversarial import SleepyClock, fill, run_child, session_args, small_disk
from support.session_helpers import MakeSession

from pleo_auth import FileStore, PleoSession, TokenSet, TokenStoreError
from pleo_auth.stores.redis import RedisStore
from pleo_auth.testing import Emulator

# -- a failed save: the write-back ---------------------------------------------------


@contextlib.contextmanager
def out_of_memory(url: str) -> Iterator[None]:
    """Redis at its ``maxmemory`` with ``noeviction``: every write (SET NX of the
    lock, the fenced save) is refused with OOM; reads still work. Real, reversible."""
    client = redis.Redis.from_url(url)
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", "1")
    try:
        yield
    finally:
        client.config_set("maxmemory", "0")
        client.close()


def test_a_store_error_while_a_pair_is_unsaved_does_not_forget_to_write_it_back(
    redis_url: str,
) -> None:
    with Emulator(access_token_lifetime=3600) as emu:
        store = RedisStore(redis_url + "?key=adversarial-unsaved", check_interval=0)
        store.clear()
        first = TokenSet.from_response(emu.issue_tokens())
        store.save(first)
        session = PleoSession(
            emu.client_id, emu.client_secret, store=store, token_url=emu.token_url,
            api_url=emu.api_url, clock=SleepyClock(),
        )  # fmt: skip
        try:
            # Redis fills up while the refresh is at Pleo: the new pair cannot be saved.
            oom = contextlib.ExitStack()
            emu.set_token_request_hook(lambda grant: oom.enter_context(out_of_memory(redis_url)))
            with oom:
                with pytest.raises(TokenStoreError):
                    session.refresh()
                emu.set_token_request_hook(None)
                held = session.tokens
                assert held is not None
                assert held.refresh_token != first.refresh_token
                # Still full: the next attempt cannot even take the lock.
                with pytest.raises(TokenStoreError):
                    session.refresh()
            # Redis has room again; the job ends, as a cron job does.
        finally:
            session.close()
        stored = store.load()
        assert stored is not None
        assert stored.fingerprint == held.fingerprint, "close() did not write the pair back"
        # The next run of the job refreshes from whatever the store holds.
        nxt = PleoSession(
            emu.client_id, emu.client_secret, store=RedisStore(
                redis_url + "?key=adversarial-unsaved", check_interval=0),
            token_url=emu.token_url, api_url=emu.api_url,
        )  # fmt: skip
        try:
            nxt.refresh()
        finally:
            nxt.close()
        counters = emu.counters
    assert counters.reuse_detections == 0
    assert counters.refresh_grants == 2


ONE_GET = """
from pleo_auth import FileStore, PleoSession
session = PleoSession(ARGS["client_id"], ARGS["client_secret"],
                      store=FileStore(ARGS["path"]), token_url=ARGS["token_url"],
                      api_url=ARGS["api_url"])
try:
    outcome = session.get("/v2/employees").status_code
except Exception as exc:
    outcome = type(exc).__name__
session.close()
print(json.dumps({"outcome": outcome}))
"""


def test_a_full_disk_shared_by_two_processes_never_leads_to_the_spent_token_being_presented(
    tmp_path: Path,
) -> None:
    with Emulator(access_token_lifetime=3600) as emu, small_disk(tmp_path / "disk") as disk:
        store = FileStore(disk / "tokens.json")
        first = TokenSet.from_response(emu.issue_tokens())
        store.save(first)
        session = PleoSession(
            emu.client_id, emu.client_secret, store=store, token_url=emu.token_url,
            api_url=emu.api_url, clock=SleepyClock(),
        )  # fmt: skip
        try:
            assert session.get("/v2/employees").status_code == 200
            fill(disk)  # the disk fills up (a log file, another tenant)
            with pytest.raises(TokenStoreError):
                session.refresh()
            held = session.tokens
            assert held is not None
            assert held.fingerprint != first.fingerprint
            # A second process of the app (a worker, a cron job) makes one call meanwhile.
            other = run_child(ONE_GET, path=str(store.path), **session_args(emu))
        finally:
            session.close()
        counters = emu.counters
    assert counters.reuse_detections == 0, f"the other process got {other['outcome']}"


# -- lineage -----------------------------------------------------------------------------


def written_by_0_1(store: FileStore) -> None:
    """Rewrite the stored pair as pleo-auth 0.1 wrote it: ``attrs.asdict`` of a
    TokenSet that had no ``lineage`` nor ``after_401``."""
    data = json.loads(store.path.read_text())
    for key in ("lineage", "after_401"):
        del data[key]
    store.path.write_text(json.dumps(data, sort_keys=True))


def test_upgrading_from_0_1_keeps_the_rotated_tokens_when_tokens_is_the_first_login_reply(
    emulator: Emulator, make_session: MakeSession, tmp_path: Path
) -> None:
    first_reply = emulator.issue_tokens()
    store = FileStore(tmp_path / "tokens.json")
    # Under 0.1, the app ran and rotated the tokens once.
    before = make_session(emulator, store, tokens=TokenSet.from_response(first_reply))
    before.refresh()
    before.close()
    written_by_0_1(store)
    rotated = store.load()
    assert rotated is not None
    assert rotated.lineage == ()
    # The first start under this version, the same code: tokens= is the first reply.
    after = make_session(emulator, store, tokens=TokenSet.from_response(first_reply))
    status = after.get("/v2/employees").status_code
    counters = emulator.counters
    assert (status, counters.reuse_detections) == (200, 0)
    assert counters.refresh_grants == 1


def test_a_new_login_after_a_logout_is_not_replaced_by_an_old_tokens_argument(
    emulator: Emulator, make_session: MakeSession, tmp_path: Path
) -> None:
    old_reply = emulator.issue_tokens()
    store = FileStore(tmp_path / "tokens.json")
    app = make_session(emulator, store, tokens=TokenSet.from_response(old_reply))
    app.refresh()  # the old reply is spent
    app.close()
    store.clear()  # `pleo-auth logout`
    # `pleo-auth login`: a new grant, saved as AuthorizationFlow saves it.
    login = TokenSet.from_response(emulator.issue_tokens()).succeeding(store.load())
    store.save(login)
    restarted = make_session(emulator, store, tokens=TokenSet.from_response(old_reply))
    outcome: int | str
    try:
        outcome = restarted.get("/v2/employees").status_code
    except Exception as exc:  # what the user sees, named in the assertion
        outcome = type(exc).__name__
    stored = store.load()
    assert outcome == 200
    assert stored is not None
    assert stored.fingerprint == login.fingerprint


# -- after_401 ---------------------------------------------------------------------------

REFRESH_ONCE = """
from pleo_auth import PleoSession
from pleo_auth.stores.redis import RedisStore
session = PleoSession(ARGS["client_id"], ARGS["client_secret"],
                      store=RedisStore(ARGS["url"]), token_url=ARGS["token_url"],
                      api_url=ARGS["api_url"])
session.refresh()
session.close()
print(json.dumps({"refreshed": True}))
"""


def test_a_401_after_another_host_rotated_an_after_401_pair_is_replayed_with_the_new_pair(
    emulator: Emulator, make_session: MakeSession, redis_url: str
) -> None:
    url = redis_url + "?key=adversarial-after-401"
    store = RedisStore(url, check_interval=30)  # a user's choice, to spare Redis
    store.clear()
    # Another process got a 401 for a fresh token, and a refresh cured it.
    store.save(TokenSet.from_response(emulator.issue_tokens()).succeeding(None, after_401=True))
    session = make_session(emulator, store)
    assert session.get("/v2/employees").status_code == 200
    run_child(REFRESH_ONCE, url=url, **session_args(emulator))  # another host rotates
    status = session.get("/v2/employees").status_code
    counters = emulator.counters
    assert status == 200
    assert (counters.refresh_grants, counters.reuse_detections) == (1, 0)


# -- the registry ------------------------------------------------------------------------

CLOSED_BY_DEL_UNDER_THE_CONDITION = """
import gc, threading, time
from pleo_auth import FileStore, PleoSession
from pleo_auth._registry import REGISTRY

class Client:
    # A user's wrapper that closes its session when collected, kept in a cycle.
    def __init__(self, session):
        self.session = session
        self.me = self
    def __del__(self):
        self.session.close()

def session():
    return PleoSession(ARGS["client_id"], ARGS["client_secret"],
                       store=FileStore(ARGS["path"]), token_url=ARGS["token_url"],
                       api_url=ARGS["api_url"])

gc.disable()  # the test, not chance, decides where the collector runs
mine, other = session(), session()
coordinator = mine._coordinator
gc.collect()  # the sessions are old; the wrapper made next is young
Client(mine)
del mine  # the wrapper is garbage now, in a cycle: only the collector runs its __del__

# A thread inside the Condition (a request, the timer publishing a refresh) meets a
# collection there, while another thread closes its own session.
def parked(thread):
    # Inside close(), waiting for the Condition this thread holds.
    frame = sys._current_frames().get(thread.ident)
    names = set()
    while frame is not None:
        names.add(frame.f_code.co_name)
        frame = frame.f_back
    return "close" in names and ("forget" in names or REGISTRY._lock.locked())

closer = threading.Thread(target=other.close, daemon=True)
with coordinator._cond:
    closer.start()  # takes the registry's lock, then waits for the Condition
    deadline = time.monotonic() + 5
    while not parked(closer) and time.monotonic() < deadline:
        time.sleep(0.001)  # polling for the other thread, bounded
    assert parked(closer)
    gc.collect(0)  # runs Client.__del__, so close(), here, inside the Condition
closer.join(10)
print(json.dumps({"closer_done": not closer.is_alive()}))
"""


def test_a_session_closed_by_a_users_del_inside_the_coordinator_never_deadlocks(
    emulator: Emulator, tmp_path: Path
) -> None:
    result = run_child(
        CLOSED_BY_DEL_UNDER_THE_CONDITION,
        timeout=8,
        path=str(tmp_path / "tokens.json"),
        **session_args(emulator),
    )
    assert result["closer_done"]
