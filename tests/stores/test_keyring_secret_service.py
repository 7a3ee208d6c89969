"""KeyringStore against the real desktop Secret Service (gnome-keyring over D-Bus).

Linux desktop users keep their tokens there. Every test here talks to a private,
unlocked gnome-keyring on a private D-Bus session bus (tests/support/secret_service.py):
the store contract as is and with entries split as on Windows, real processes
that pick the Secret Service as keyring's default backend and share one grant
through it, and a keyring that is locked or whose bus or daemon dies.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from support.secret_service import (
    daemon_pids,
    daemon_starts,
    private_secret_service,
    stop_restarting,
)

from pleo_auth import KeyringStore, TokenSet, TokenStoreError
from pleo_auth.stores.base import encode_tokens
from pleo_auth.testing import (
    Emulator,
    MakeStore,
    SizeLimitedKeyring,
    TokenStoreContract,
    new_tokens,
)


@pytest.fixture(scope="module")
def shared_secret_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One private Secret Service for the contract runs, whose tests never stop it:
    starting one per test would cost more than the tests. Each test uses a service
    name of its own. Skipped or failed like the ``secret_service`` fixture."""
    with (
        private_secret_service(tmp_path_factory.mktemp("secret-service")) as env,
        pytest.MonkeyPatch.context() as patch,
    ):
        for name, value in env.items():
            patch.setenv(name, value)
        yield


def secret_service_backend() -> Any:
    from keyring.backends import SecretService

    return SecretService.Keyring()


def new_service() -> str:
    """A keyring service name no other test uses, on the shared Secret Service."""
    return f"pleo-auth-test-{uuid.uuid4().hex}"


def shared_backend() -> Any:
    """The backend KeyringStore puts in place of keyring's: one connection per process.
    Tests that wrap a backend (SizeLimitedKeyring) build it themselves."""
    from pleo_auth.stores._secret_service import SharedConnectionKeyring

    return SharedConnectionKeyring()


def items(service: str) -> list[Any]:
    """The Secret Service items keyring filed under ``service``."""
    import secretstorage

    connection = secretstorage.dbus_init()
    try:
        collection = secretstorage.get_default_collection(connection)
        return [
            (item.get_attributes()["username"], item.get_secret().decode())
            for item in collection.search_items({"service": service})
        ]
    finally:
        connection.close()


# -- the store contract --------------------------------------------------------------


class SecretServiceContract(TokenStoreContract):
    """The contract on the shared private Secret Service, a service name per test."""

    @pytest.fixture
    def service(self) -> str:
        return new_service()


class TestKeyringStoreOnTheSecretService(SecretServiceContract):
    # A Secret Service call costs milliseconds, a split save a dozen calls.
    racing_saves = 30
    increments_per_thread = 4

    @pytest.fixture
    def make_store(self, shared_secret_service: None, service: str, tmp_path: Path) -> MakeStore:
        return lambda: KeyringStore(
            service, "client-1", backend=secret_service_backend(), state_dir=tmp_path / "state"
        )

    def test_both_tokens_are_one_secret_service_item(
        self, store: KeyringStore, service: str
    ) -> None:
        tokens = new_tokens()
        store.save(tokens)
        [(username, secret)] = items(service)
        assert username == "client-1"
        assert json.loads(secret)["access_token"] == tokens.access_token
        assert json.loads(secret)["refresh_token"] == tokens.refresh_token


class TestKeyringStoreSplitOnTheSecretService(SecretServiceContract):
    """The contract with entries limited to 320 bytes, so every save is split."""

    racing_saves = 15
    increments_per_thread = 3

    @pytest.fixture
    def make_store(self, shared_secret_service: None, service: str, tmp_path: Path) -> MakeStore:
        return lambda: KeyringStore(
            service, "client-1",
            backend=SizeLimitedKeyring(shared_backend(), max_bytes=320),
            state_dir=tmp_path / "state", max_entry_bytes=320,
        )  # fmt: skip

    def test_long_tokens_are_split_into_items_that_each_fit_windows_limit(
        self, shared_secret_service: None, service: str, tmp_path: Path
    ) -> None:
        limited = SizeLimitedKeyring(shared_backend())
        store = KeyringStore(
            service, "client-1", backend=limited, state_dir=tmp_path / "state",
            max_entry_bytes=2560,
        )  # fmt: skip
        body = "eyJhbGciOiJSUzI1NiJ9" * 500  # 10,000 characters each
        tokens = TokenSet("at_" + body, "rt_" + body, 2_000_000_000.0, scope="users:read")
        store.save(tokens)
        assert store.load() == tokens
        stored = dict(items(service))
        count = math.ceil(2 * len(encode_tokens(tokens)) / 2560)
        assert set(stored) == {"client-1"} | {f"client-1#a.{i}" for i in range(count)}
        assert all(len(secret.encode("utf-16-le")) <= 2560 for secret in stored.values())
        store.clear()
        assert items(service) == []


@pytest.mark.slow
def test_readers_racing_a_split_writer_on_the_secret_service_get_whole_pairs(
    shared_secret_service: None, tmp_path: Path
) -> None:
    """The default run's race on the real daemon: two readers load while a writer
    saves pairs split into parts, as on Windows. Every read is a whole pair."""
    service = new_service()

    def open_store() -> KeyringStore:
        return KeyringStore(
            service, "client-1", backend=SizeLimitedKeyring(shared_backend()),
            state_dir=tmp_path / "state", max_entry_bytes=2560,
        )  # fmt: skip

    pairs = [
        TokenSet(f"at_{n}_" + "x" * 3000, f"rt_{n}_" + "x" * 3000, 2_000_000_000.0)
        for n in range(6)
    ]
    writer = open_store()
    writer.save(pairs[0])
    readers, stop = 2, threading.Event()
    barrier = threading.Barrier(readers + 1)
    reads: list[TokenSet | None] = []
    errors: list[BaseException] = []

    seen = threading.Condition()

    def read() -> None:
        store = open_store()
        try:
            barrier.wait()
            while not stop.is_set():
                tokens = store.load()
                with seen:
                    reads.append(tokens)
                    seen.notify_all()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(readers)]
    for thread in threads:
        thread.start()
    try:
        barrier.wait()
        for previous, following in itertools.pairwise(pairs):
            writer.save(following, replaces=previous)
            # The next save waits until a reader has seen this one, so the reads
            # overlap every save however the scheduler runs the threads.
            with seen:
                assert seen.wait_for(lambda t=following: t in reads or bool(errors), timeout=60)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert errors == []
    assert all(tokens in pairs for tokens in reads)  # never None, never a mix
    assert set(pairs[1:]) <= set(reads)  # every save was read while others went on
    writer.clear()
    assert items(service) == []


# -- real processes on keyring's default backend ------------------------------------------

WORKER = textwrap.dedent(
    """
    import json, sys, threading
    import keyring
    from pleo_auth import KeyringStore, PleoSession

    service, client_id, secret, token_url, api_url, state_dir, threads = sys.argv[1:8]
    store = KeyringStore(service, client_id, state_dir=state_dir)  # keyring's default
    backend = store._keyring()
    barrier = threading.Barrier(int(threads))
    statuses = []

    with PleoSession(client_id, secret, store=store, token_url=token_url,
                     api_url=api_url) as session:
        def call():
            barrier.wait()
            statuses.append(session.get("/v2/employees").status_code)

        print("ready", flush=True)
        sys.stdin.readline()  # "go", once every worker is ready
        workers = [threading.Thread(target=call) for _ in range(int(threads))]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        held = session.tokens
    print(json.dumps({
        "default_keyring": f"{type(keyring.get_keyring()).__module__}."
                           f"{type(keyring.get_keyring()).__name__}",
        "backend": f"{type(backend).__module__}.{type(backend).__name__}",
        "statuses": sorted(statuses),
        "fingerprint": held.fingerprint,
    }))
    """
)


def test_processes_on_the_default_keyring_share_one_grant_through_the_secret_service(
    secret_service: dict[str, str], tmp_path: Path
) -> None:
    """Three processes of four threads each, on stale tokens: exactly one refresh."""
    processes, threads = 3, 4
    service = new_service()
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {
        **os.environ,
        **secret_service,
        "XDG_CONFIG_HOME": str(tmp_path / "config"),  # no keyringrc.cfg of the real user
        "XDG_DATA_HOME": str(tmp_path / "data"),
    }
    env.pop("PYTHON_KEYRING_BACKEND", None)
    with Emulator(access_token_lifetime=3600) as emu:
        store = KeyringStore(
            service, emu.client_id, backend=secret_service_backend(), state_dir=tmp_path / "state"
        )
        issued = TokenSet.from_response(emu.issue_tokens())
        # Valid at the emulator, but due for a refresh as far as the workers can tell.
        stale = attrs.evolve(issued, expires_at=time.time() - 1, issued_at=time.time() - 3601)
        store.save(stale)
        before = emu.counters
        command = [
            sys.executable, str(script), service, emu.client_id, emu.client_secret or "",
            emu.token_url, emu.api_url, str(tmp_path / "state"), str(threads),
        ]  # fmt: skip
        workers = [
            subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            for _ in range(processes)
        ]
        try:
            for worker in workers:
                assert worker.stdout is not None
                line = worker.stdout.readline()
                assert line == "ready\n", worker.communicate(timeout=60)[1][-2000:]
            for worker in workers:
                assert worker.stdin is not None
                worker.stdin.write("go\n")
                worker.stdin.flush()
            outputs = [worker.communicate(timeout=120) for worker in workers]
        finally:
            for worker in workers:
                worker.kill()
                worker.wait(30)
        after = emu.counters
        for worker, (_, err) in zip(workers, outputs, strict=True):
            assert worker.returncode == 0, err[-2000:]
        reports = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
        stored = store.load()
        assert stored is not None
        assert emu.is_current(stored.access_token, stored.refresh_token)
        raw = secret_service_backend().get_password(service, emu.client_id)
        store.clear()
        cleared = store.load()
    for report in reports:
        assert report["default_keyring"] == "keyring.backends.chainer.ChainerBackend"
        assert report["backend"] == "pleo_auth.stores._secret_service.SharedConnectionKeyring"
        assert report["statuses"] == [200] * threads
        assert report["fingerprint"] == stored.fingerprint
    assert after.refresh_grants - before.refresh_grants == 1
    assert after.reuse_detections == before.reuse_detections
    assert after.rejected_refreshes == before.rejected_refreshes
    assert raw == encode_tokens(stored)  # one item holds both tokens
    assert cleared is None


# -- a locked keyring, a dead bus, a dead daemon --------------------------------------------


def _processes(name: str, tmp_path: Path) -> Iterator[tuple[int, int]]:
    """``(pid, parent pid)`` of the live ``name`` processes whose HOME is the
    ``secret_service`` fixture's for this test, which tells them from the shared one."""
    home = f"HOME={tmp_path / 'secret-service-home'}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        comm, fields = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :]
        state, parent = fields.split()[:2]
        if comm == name[:15] and state != "Z" and home in environ:
            yield int(entry.name), int(parent)


def fixture_child(name: str, tmp_path: Path) -> int:
    """The pid of the ``secret_service`` fixture's ``name`` process for this test."""
    found = [pid for pid, parent in _processes(name, tmp_path) if parent == os.getpid()]
    assert len(found) == 1, f"expected one {name} of the fixture, found {found}"
    return found[0]


def kill_and_wait(pid: int) -> None:
    """SIGKILL ``pid`` and wait until it is dead (a zombie, or reaped by its parent).
    The deadline only bounds a failure."""
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return
        if stat[stat.rindex(")") + 2] == "Z":
            return
        time.sleep(0.01)
    pytest.fail(f"process {pid} did not die")


@pytest.fixture
def saved(secret_service: dict[str, str], tmp_path: Path) -> KeyringStore:
    """A store on the fixture's Secret Service, holding a pair."""
    store = KeyringStore(
        "pleo-auth-test", "client-1", backend=secret_service_backend(), state_dir=tmp_path / "state"
    )
    store.save(new_tokens())
    return store


def assert_every_call_fails_cleanly(store: KeyringStore, words: str) -> list[TokenStoreError]:
    errors = []
    for call in (store.load, lambda: store.save(new_tokens()), store.clear):
        with pytest.raises(TokenStoreError, match=words) as info:
            call()
        assert info.value.retryable is True
        assert info.value.__cause__ is not None
        errors.append(info.value)
    return errors


def test_a_locked_secret_service_is_a_retryable_error_that_says_unlock(saved: KeyringStore) -> None:
    import secretstorage
    from keyring.errors import KeyringLocked

    connection = secretstorage.dbus_init()
    try:
        secretstorage.get_default_collection(connection).lock()
    finally:
        connection.close()
    for error in assert_every_call_fails_cleanly(saved, "it is locked"):
        assert "Unlock it" in str(error)
        assert isinstance(error.__cause__, KeyringLocked)


def test_a_dead_d_bus_is_a_retryable_error_not_a_raw_exception(
    saved: KeyringStore, tmp_path: Path
) -> None:
    kill_and_wait(fixture_child("dbus-daemon", tmp_path))
    for error in assert_every_call_fails_cleanly(saved, "its service is not reachable"):
        assert "DBUS_SESSION_BUS_ADDRESS" in str(error)
        assert type(error.__cause__).__name__ == "SecretServiceNotAvailableException"


def test_a_dead_keyring_daemon_is_a_retryable_error_not_a_raw_exception(
    saved: KeyringStore, tmp_path: Path
) -> None:
    """The bus is alive but starts no new daemon: nothing owns the Secret Service's name."""
    stop_restarting(tmp_path)
    kill_and_wait(daemon_pids(tmp_path)[-1])
    for error in assert_every_call_fails_cleanly(saved, "its service is not reachable"):
        assert type(error.__cause__).__name__ == "InitError"
    assert daemon_starts(tmp_path) == 1


def test_after_the_keyring_daemon_dies_and_restarts_the_store_works_on_as_before(
    saved: KeyringStore, tmp_path: Path
) -> None:
    """As on a desktop, D-Bus starts the daemon again on the next call. KeyringStore
    keeps no connection or handle across calls, so it needs no reset: the pair
    saved before the crash loads, and saves go on."""
    before = saved.load()
    kill_and_wait(daemon_pids(tmp_path)[-1])
    assert saved.load() == before
    assert daemon_starts(tmp_path) == 2
    after = new_tokens()
    saved.save(after)
    assert saved.load() == after


def test_a_bus_that_dies_under_running_readers_fails_each_with_a_token_store_error(
    saved: KeyringStore, tmp_path: Path
) -> None:
    """Readers loading in a loop when the bus dies each get a TokenStoreError, nothing else."""
    readers = 3
    reading = threading.Barrier(readers + 1)
    outcomes: list[BaseException | None] = [None] * readers

    def read(index: int) -> None:
        try:
            saved.load()
            reading.wait()
            while True:
                saved.load()
        except BaseException as exc:
            outcomes[index] = exc

    workers = [threading.Thread(target=read, args=(i,)) for i in range(readers)]
    for worker in workers:
        worker.start()
    reading.wait(60)  # every reader has loaded once and is looping
    kill_and_wait(fixture_child("dbus-daemon", tmp_path))
    for worker in workers:
        worker.join(60)
    assert all(isinstance(outcome, TokenStoreError) for outcome in outcomes), outcomes
    assert all(outcome.retryable for outcome in outcomes if isinstance(outcome, TokenStoreError))


# -- one D-Bus connection per process -------------------------------------------------------


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every D-Bus connection secretstorage opens in this process from now on."""
    import secretstorage

    opened: list[Any] = []
    real = secretstorage.dbus_init

    def counting() -> Any:
        connection = real()
        opened.append(connection)
        return connection

    monkeypatch.setattr(secretstorage, "dbus_init", counting)
    return opened


def open_sessions() -> int:
    """How many Secret Service sessions the daemon holds open, for every client."""
    import secretstorage
    from jeepney import DBusAddress, new_method_call

    connection = secretstorage.dbus_init()
    try:
        sessions = DBusAddress(
            "/org/freedesktop/secrets/session",
            "org.freedesktop.secrets",
            "org.freedesktop.DBus.Introspectable",
        )
        xml: str = connection.send_and_get_reply(new_method_call(sessions, "Introspect")).body[0]
        return xml.count("<node name=")
    finally:
        connection.close()


def run_in_fork(body: Callable[[], Any]) -> Any:
    """``body()`` in a forked child; its JSON-able result, or the child's traceback."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            result = {"result": body()}
        except BaseException:
            result = {"error": traceback.format_exc()}
        with os.fdopen(write_fd, "w") as pipe:
            pipe.write(json.dumps(result))
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        output = pipe.read()
    os.waitpid(pid, 0)
    reply = json.loads(output)
    assert "error" not in reply, reply["error"]
    return reply["result"]


def test_keyring_store_makes_every_call_on_one_connection_where_keyring_opens_one_each(
    shared_secret_service: None, connections: list[Any], tmp_path: Path
) -> None:
    service = new_service()
    stock = secret_service_backend()
    for _ in range(3):
        stock.get_password(service, "client-1")
    assert len(connections) == 3  # keyring's own backend: a connection per call
    store = KeyringStore(service, "client-1", backend=stock, state_dir=tmp_path / "state")
    for _ in range(10):
        store.save(new_tokens())
        assert store.load() is not None
    store.clear()
    assert len(connections) == 4  # KeyringStore's: one more, for all 21 calls
    assert type(store._keyring()).__name__ == "SharedConnectionKeyring"


def test_the_shared_connection_backend_and_keyrings_own_read_each_others_items(
    shared_secret_service: None,
) -> None:
    import secretstorage

    service = new_service()
    stock, shared = secret_service_backend(), shared_backend()
    shared.set_password(service, "written-by-shared", "one")
    stock.set_password(service, "written-by-stock", "two")
    assert stock.get_password(service, "written-by-shared") == "one"
    assert shared.get_password(service, "written-by-stock") == "two"
    connection = secretstorage.dbus_init()
    try:
        collection = secretstorage.get_default_collection(connection)
        # gnome-keyring adds "xdg:schema" to items of its own accord, as when a
        # restarted daemon has read them back from disk: only what keyring wrote
        # is compared.
        found = {}
        for item in collection.search_items({"service": service}):
            written = {k: v for k, v in item.get_attributes().items() if k != "xdg:schema"}
            found[written["username"]] = (item.get_label(), written)
    finally:
        connection.close()
    (label_shared, attributes_shared), (label_stock, attributes_stock) = (
        found["written-by-shared"],
        found["written-by-stock"],
    )
    assert label_shared == label_stock.replace("written-by-stock", "written-by-shared")
    assert attributes_shared == {**attributes_stock, "username": "written-by-shared"}
    shared.delete_password(service, "written-by-stock")
    stock.delete_password(service, "written-by-shared")
    assert shared.get_password(service, "written-by-shared") is None
    assert stock.get_password(service, "written-by-stock") is None


def test_each_call_closes_the_secret_service_session_it_opened(shared_secret_service: None) -> None:
    service = new_service()
    shared = shared_backend()
    before = open_sessions()
    for index in range(10):
        shared.set_password(service, "client-1", f"secret-{index}")
        assert shared.get_password(service, "client-1") == f"secret-{index}"
    shared.delete_password(service, "client-1")
    assert open_sessions() == before


@pytest.mark.slow
def test_threads_share_the_connection_one_call_at_a_time(
    shared_secret_service: None, connections: list[Any]
) -> None:
    service = new_service()
    shared = shared_backend()
    threads, calls = 8, 10
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            start.wait()
            for call in range(calls):
                shared.set_password(service, f"user-{index}", f"secret-{index}-{call}")
                assert shared.get_password(service, f"user-{index}") == f"secret-{index}-{call}"
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(index,)) for index in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert errors == []
    assert len(connections) == 1


def test_a_forked_child_opens_its_own_connection_and_the_parents_keeps_working(
    shared_secret_service: None, connections: list[Any]
) -> None:
    service = new_service()
    shared = shared_backend()
    shared.set_password(service, "client-1", "from-the-parent")
    parents = shared._connection

    def child() -> Any:
        value = shared.get_password(service, "client-1")
        shared.set_password(service, "client-1", "from-the-child")
        return [value, len(connections), shared._connection is not parents]

    assert run_in_fork(child) == ["from-the-parent", 2, True]
    assert shared.get_password(service, "client-1") == "from-the-child"
    assert shared._connection is parents
    assert len(connections) == 1


def test_a_fork_while_a_call_holds_the_lock_leaves_the_child_a_free_lock(
    shared_secret_service: None,
) -> None:
    """A thread of the parent mid-call at the fork does not exist in the child: the
    lock it held must not be inherited held, or the child's first call hangs."""
    service = new_service()
    shared = shared_backend()
    shared.set_password(service, "client-1", "stored")
    with shared._lock:  # as if another thread were mid-call
        assert run_in_fork(lambda: shared.get_password(service, "client-1")) == "stored"


def test_a_broken_cached_connection_is_replaced_and_the_call_succeeds(
    shared_secret_service: None, connections: list[Any]
) -> None:
    service = new_service()
    shared = shared_backend()
    shared.set_password(service, "client-1", "stored")
    shared._connection.sock.close()  # as a bus restart or a call cut off mid-message would
    assert shared.get_password(service, "client-1") == "stored"
    assert len(connections) == 2


def test_a_subclass_of_keyrings_backend_is_used_as_given(
    shared_secret_service: None, tmp_path: Path
) -> None:
    from keyring.backends import SecretService

    class Custom(SecretService.Keyring):  # type: ignore[misc]
        pass

    backend = Custom()
    store = KeyringStore("pleo-auth-test", "client-1", backend=backend, state_dir=tmp_path)
    assert store._keyring() is backend
