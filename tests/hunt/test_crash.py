"""Crash consistency: processes killed with SIGKILL in the middle of saves and refreshes.

A process can die at any instruction: the OOM killer, ``kill -9``, a container
stopped mid-request. Whatever it was doing, the survivors must find

* a store that loads, holding the old pair or the new pair, never a mix of two
  rotations and never a torn document;
* a lock they can take at once: the dead process's lock must not make them wait.

Children are forked from the test process (as in test_fork.py): a kill then costs
milliseconds instead of an interpreter start, so hundreds fit in a few seconds.
They never return into pytest, report over a pipe one JSON line per event, and
are killed by the parent at a random moment (``random.Random``, seeded; the seed
is printed and ``PLEO_AUTH_CRASH_SEED`` replays it), or kill themselves at the
k-th step of a save (:class:`Tripwire`), which walks a kill through every step.

The Secret Service is gnome-keyring on a private D-Bus (the ``secret_service``
fixture). keyrings.alt's PlaintextKeyring is deliberately not tested here: it
rewrites its file in place, so a process killed mid-write can leave it truncated
for good. KeyringStore's reread under the lock protects readers racing a live
writer, not the survivors of a dead one: that backend is not crash-safe.

Figures: ``pytest tests/hunt/test_crash.py -s`` prints, per store, the kills, how many
landed inside a save, and how many refreshes lost their reply.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import select
import signal
import socket
import stat
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pleo_auth import FileStore, KeyringStore, PleoSession, ReauthenticationRequired, TokenSet
from pleo_auth.errors import TokenStoreError
from pleo_auth.stores._secret_service import SharedConnectionKeyring
from pleo_auth.stores.base import TokenStore
from pleo_auth.stores.keyring import WINDOWS_CREDENTIAL_LIMIT
from pleo_auth.testing import Emulator, SizeLimitedKeyring

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork and SIGKILL")

#: Seconds a survivor may wait for the lock of a process that was killed holding it.
#: flock is released by the kernel when its holder dies, so the wait is really
#: microseconds; the bound only catches a lock that outlives its holder. It is far
#: below the stores' own lock timeout (60 s) and PleoSession's (over a minute), so a
#: survivor that waited for a timeout fails here.
SURVIVOR_BOUND = 10.0
CHILD_TIMEOUT = 60.0  # seconds; only a hung child gets near it
#: file: FileStore. keyring: KeyringStore over the Secret Service. keyring-split: the
#: same with Windows' 2,560-byte entry limit (SizeLimitedKeyring), so every save
#: writes several parts and then the head entry that commits them.
STORE_KINDS = ["file", "keyring", "keyring-split"]

#: The smallest entry KeyringStore accepts. The emulator's pairs (some 200
#: characters) need two parts under it, so the refresh runs split them too.
SMALLEST_ENTRY = 320

#: Kills per store, a few seconds each in the default run and about a minute each
#: in the soak run: a Secret Service call costs milliseconds, and a split save
#: makes a dozen of them.
SAVE_KILLS = {"file": 100, "keyring": 20, "keyring-split": 8}
REFRESH_KILLS = {"file": 20, "keyring": 8, "keyring-split": 6}
SOAK_SAVE_KILLS = {"file": 500, "keyring": 100, "keyring-split": 30}
SOAK_REFRESH_KILLS = {"file": 100, "keyring": 30, "keyring-split": 20}


# -- the seed --------------------------------------------------------------------------------


@pytest.fixture
def rng() -> random.Random:
    """The test's randomness; its seed is printed, so a failure shows how to replay it."""
    seed = int(os.environ.get("PLEO_AUTH_CRASH_SEED") or random.SystemRandom().randrange(2**32))
    print(f"crash seed {seed}: replay with PLEO_AUTH_CRASH_SEED={seed}")
    return random.Random(seed)


# -- stores ----------------------------------------------------------------------------------


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> TokenStore:
    return make_store(request.param, request, tmp_path)


def make_store(
    kind: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    *,
    entry_limit: int = WINDOWS_CREDENTIAL_LIMIT,
) -> TokenStore:
    """The store of ``kind``; ``entry_limit`` is the split keyring's limit per entry."""
    if kind == "file":
        return FileStore(tmp_path / "tokens.json")
    request.getfixturevalue("secret_service")
    from keyring.backends import SecretService

    backend: Any = SecretService.Keyring()  # KeyringStore puts SharedConnectionKeyring in
    limit = None
    if kind == "keyring-split":
        backend = SizeLimitedKeyring(SharedConnectionKeyring(), max_bytes=entry_limit)
        limit = entry_limit
    return KeyringStore(
        f"pleo-auth-crash-{uuid.uuid4().hex}",
        "crash",
        backend=backend,
        state_dir=tmp_path / "state",
        max_entry_bytes=limit,
    )


def is_split(store: TokenStore) -> bool:
    return isinstance(store, KeyringStore) and store.max_entry_bytes is not None


def assert_split(store: TokenStore) -> None:
    """The stored tokens really are split: the entry itself is a head naming parts."""
    from keyring.backends import SecretService

    assert isinstance(store, KeyringStore)
    head = json.loads(SecretService.Keyring().get_password(store.service, store.account))
    assert head["format"] == "pleo-auth-split/1"
    assert head["parts"] >= 2


def kind_of(store: TokenStore) -> str:
    if isinstance(store, FileStore):
        return "file"
    return "keyring-split" if is_split(store) else "keyring"


def store_dir(store: TokenStore) -> Path:
    """The directory where the store's own files (tokens or change marker) live."""
    if isinstance(store, FileStore):
        return store.path.parent
    assert isinstance(store, KeyringStore)
    return store.marker_path.parent


def leftover_temp_files(store: TokenStore) -> list[Path]:
    """Temporary files of writes that a kill cut short before their rename."""
    directory = store_dir(store)
    return sorted(directory.glob(".*.tmp")) if directory.exists() else []


def assert_private(paths: list[Path]) -> None:
    for path in paths:
        st = path.stat()
        assert stat.S_IMODE(st.st_mode) == 0o600, (path.name, oct(st.st_mode))
        assert st.st_uid == os.geteuid()


# -- deterministic pairs ---------------------------------------------------------------------


class Pairs:
    """Pair ``n`` of a chain of rotations, the same in every process.

    Both tokens carry ``n`` and kilobytes of padding drawn from a seeded generator
    (4 to 12 KB each, so a write spans pages; about 1 KB for a split keyring, which
    then needs two parts), so neither a mix of two pairs nor a torn document can
    pass for either of them.
    """

    def __init__(self, seed: int, *, short: bool = False):
        self.seed = seed
        self.sizes = (400, 500) if short else (2000, 6000)

    @classmethod
    def for_store(cls, store: TokenStore, seed: int) -> Pairs:
        return cls(seed, short=is_split(store))

    def pair(self, n: int) -> TokenSet:
        rng = random.Random(f"{self.seed}-{n}")
        access = rng.randbytes(rng.randint(*self.sizes)).hex()
        refresh = rng.randbytes(rng.randint(*self.sizes)).hex()
        return TokenSet(
            access_token=f"at-{n}-{access}",
            refresh_token=f"rt-{n}-{refresh}",
            expires_at=2_000_000_000 + n,
            scope="users:read",
            issued_at=1_000_000_000 + n,
        )

    @staticmethod
    def generation(tokens: TokenSet | None) -> int:
        assert tokens is not None, "the store lost its tokens"
        return int(tokens.access_token.split("-")[1])


# -- children --------------------------------------------------------------------------------


class Report:
    """The child's end of the pipe: one JSON array per line."""

    def __init__(self, fd: int):
        self.fd = fd
        self._write = os.write  # the real one, even while a Tripwire watches os.*

    def send(self, kind: str, *fields: Any) -> None:
        self._write(self.fd, (json.dumps([kind, *fields]) + "\n").encode())


class Child:
    """The parent's handle on a forked child and its report pipe."""

    def __init__(self, pid: int, fd: int):
        self.pid = pid
        self.fd = fd
        self.messages: list[list[Any]] = []
        self._seen = 0  # messages already returned by expect()
        self._buffer = b""
        self._eof = False
        self._reaped = False

    def _read(self, timeout: float) -> bool:
        """Read what the child sent within ``timeout``; False once it closed the pipe."""
        if self._eof:
            return False
        ready, _, _ = select.select([self.fd], [], [], max(timeout, 0.0))
        if not ready:
            return True
        chunk = os.read(self.fd, 65536)
        if not chunk:
            self._eof = True
            return False
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            message = json.loads(line)
            if message[0] == "E":
                self.kill()
                pytest.fail(f"the child failed:\n{message[1]}")
            self.messages.append(message)
        return True

    def expect(self, *kinds: str, timeout: float = CHILD_TIMEOUT) -> list[Any]:
        """The next message of one of ``kinds``; earlier ones of other kinds are skipped."""
        give_up_at = time.monotonic() + timeout
        while True:
            while self._seen < len(self.messages):
                message = self.messages[self._seen]
                self._seen += 1
                if message[0] in kinds:
                    return message
            left = give_up_at - time.monotonic()
            if left <= 0 or not self._read(left):
                self.kill()
                pytest.fail(f"the child sent no {kinds} (it sent {self.messages})")

    def run_for(self, seconds: float) -> None:
        """Collect messages for ``seconds``; the child must still be running after them."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if not self._read(left):
                pytest.fail(f"the child exited on its own: {self.messages[-3:]}")

    def kill(self) -> None:
        """SIGKILL the child (if still running), collect its last messages and reap it."""
        if self._reaped:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self.finish()

    def finish(self, timeout: float = CHILD_TIMEOUT) -> int:
        """Read to the end of the pipe and reap the child; its exit code (-9: killed)."""
        give_up_at = time.monotonic() + timeout
        while self._read(give_up_at - time.monotonic()):
            if time.monotonic() > give_up_at:
                os.kill(self.pid, signal.SIGKILL)
        os.close(self.fd)
        _, status = os.waitpid(self.pid, 0)
        self._reaped = True
        return os.waitstatus_to_exitcode(status)


def fork_child(body: Callable[[Report], None]) -> Child:
    """Run ``body`` in a forked child that never returns into pytest."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_fd)
            body(Report(write_fd))
            code = 0
        except BaseException:
            with contextlib.suppress(BaseException):
                Report(write_fd).send("E", traceback.format_exc())
        finally:
            os._exit(code)
    os.close(write_fd)
    return Child(pid, read_fd)


@contextlib.contextmanager
def reaped(child: Child) -> Iterator[Child]:
    try:
        yield child
    finally:
        child.kill()


# -- killing a save at every step ------------------------------------------------------------


class Tripwire:
    """Counts the steps of the code it watches, and SIGKILLs this process at step ``kill_at``.

    A step is the moment before a system-level call (open, fsync, rename, flock,
    a socket send or receive), or halfway through a file write or a D-Bus message,
    so the file or the keyring daemon is left with half of it. Only steps taken
    while armed count; calls made inside a muted call are not steps of their own.
    """

    def __init__(self, kill_at: int, report: Report):
        self.kill_at = kill_at
        self.report = report
        self.armed = False
        self.muted = 0
        self.steps: list[str] = []

    def step(self, name: str) -> None:
        if not self.armed or self.muted:
            return
        self.steps.append(name)
        if len(self.steps) == self.kill_at:
            self.report.send("K", name)
            os.kill(os.getpid(), signal.SIGKILL)

    def install(self, store: TokenStore) -> None:
        """Watch the calls ``store`` makes. Only in a forked child: it patches modules.

        * Files: every call of an atomic write, and each write cut in two.
        * The Secret Service: every socket call of a keyring write (connect,
          authenticate, each D-Bus message, cut in two, each reply); a keyring
          read is one step, since a read cannot tear anything.
        * A split keyring: each keyring call (get, set or delete of one entry) is
          one step; what a split save must survive is being killed between them,
          and each call's own atomicity is the unsplit runs' business.
        """
        watched: list[tuple[Any, str]] = [(fcntl, "flock")]
        muted: list[tuple[Any, str]] = []
        files = [(os, "open"), (os, "close"), (os, "fstat"), (os, "fchmod"), (os, "fsync"),
                 (os, "replace"), (os, "unlink"), (os, "mkdir"), (tempfile, "mkstemp")]  # fmt: skip
        if is_split(store):
            watched += [(tempfile, "mkstemp"), (os, "fsync"), (os, "replace")]
            muted += [(SizeLimitedKeyring, "get_password"), (SizeLimitedKeyring, "set_password"),
                      (SizeLimitedKeyring, "delete_password")]  # fmt: skip
        else:
            from keyring.backends import SecretService

            sockets = [(socket.socket, "connect"), (socket.socket, "send"),
                       (socket.socket, "sendmsg"), (socket.socket, "recv"),
                       (socket.socket, "recvmsg")]  # fmt: skip
            watched += files + sockets
            muted += [(SecretService.Keyring, "get_password")]
            self._halve_writes_and_messages()
        for owner, name in watched:
            setattr(owner, name, self._before(getattr(owner, name), name))
        for owner, name in muted:
            setattr(owner, name, self._before(getattr(owner, name), name, mute=True))

    def _halve_writes_and_messages(self) -> None:
        real_fdopen, real_sendall = os.fdopen, socket.socket.sendall
        tripwire = self

        def fdopen(fd: int, *args: Any, **kwargs: Any) -> Any:
            tripwire.step("fdopen")
            return _HalvedWrites(real_fdopen(fd, *args, **kwargs), tripwire)

        def sendall(sock: socket.socket, data: bytes, *args: Any) -> None:
            tripwire.step("sendall")
            half = len(data) // 2
            real_sendall(sock, data[:half], *args)
            tripwire.step("half-sent D-Bus message")
            real_sendall(sock, data[half:], *args)

        os.fdopen = fdopen  # type: ignore[assignment]
        socket.socket.sendall = sendall  # type: ignore[assignment,method-assign]

    def _before(
        self, real: Callable[..., Any], name: str, *, mute: bool = False
    ) -> Callable[..., Any]:
        def watched(*args: Any, **kwargs: Any) -> Any:
            self.step(name)
            self.muted += mute
            try:
                return real(*args, **kwargs)
            finally:
                self.muted -= mute

        return watched


class _HalvedWrites:
    """A file whose writes land in two halves, with a step between them."""

    def __init__(self, handle: Any, tripwire: Tripwire):
        self._handle = handle
        self._tripwire = tripwire

    def write(self, data: bytes) -> int:
        half = len(data) // 2
        self._handle.write(data[:half])
        self._handle.flush()
        self._tripwire.step("half-written file")
        return half + int(self._handle.write(data[half:]))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)

    def __enter__(self) -> _HalvedWrites:
        self._handle.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.__exit__(*exc)


# -- the save-level crash run ----------------------------------------------------------------


def save_loop(store: TokenStore, pairs: Pairs, tripwire_at: int | None) -> Callable[[Report], None]:
    """A child that rotates the stored pair ``n`` to ``n + 1`` in a tight loop.

    Each rotation takes the lock, loads, and saves the next pair with ``replaces``,
    as a refresh does. ``L`` reports how long the first lock took: the child is the
    survivor of the previous kill. ``B n`` is sent just before pair ``n`` is saved,
    ``S n`` once the save returned. With ``tripwire_at``, one rotation is watched by a
    :class:`Tripwire` and the child kills itself at that step, or reports the steps.
    """

    def body(report: Report) -> None:
        started = time.monotonic()
        with store.lock(timeout=SURVIVOR_BOUND, lease=SURVIVOR_BOUND):
            report.send("L", time.monotonic() - started)
        tripwire = None
        if tripwire_at is not None:
            tripwire = Tripwire(tripwire_at, report)
            tripwire.install(store)
        while True:
            started = time.monotonic()
            if tripwire is not None:
                tripwire.armed = True
            with store.lock(timeout=CHILD_TIMEOUT, lease=CHILD_TIMEOUT):
                stored = store.load()
                n = Pairs.generation(stored) + 1
                report.send("B", n)
                store.save(pairs.pair(n), replaces=stored)
            if tripwire is not None:
                tripwire.armed = False
                report.send("S", n, time.monotonic() - started)
                report.send("D", tripwire.steps)
                return
            report.send("S", n, time.monotonic() - started)

    return body


@dataclass
class SaveKills:
    kills: int = 0
    mid_save: int = 0  # killed between "B n" and "S n": inside the save
    mid_save_kept_new: int = 0  # ... after the write had landed
    leftover_temp_files: int = 0
    slowest_survivor: float = 0.0
    steps: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.kills} kills, {self.mid_save} inside a save "
            f"({self.mid_save_kept_new} after its write landed), "
            f"{self.leftover_temp_files} temporary files left behind, "
            f"slowest survivor lock {self.slowest_survivor * 1000:.1f} ms"
        )


def check_after_kill(
    store: TokenStore, pairs: Pairs, child: Child, generation: int, stats: SaveKills
) -> int:
    """Assert the store holds the last acknowledged pair or the one being saved.

    Returns:
        The stored generation, where the next child carries on.
    """
    acknowledged, began = generation, generation
    for message in child.messages:
        if message[0] == "B":
            began = message[1]
        elif message[0] == "S":
            acknowledged = message[1]
    assert began in (acknowledged, acknowledged + 1), child.messages
    stored = store.load()  # raises on a torn document
    expected = {acknowledged: pairs.pair(acknowledged)}
    if began == acknowledged + 1:
        expected[began] = pairs.pair(began)  # killed mid-save: either is right
    held = [n for n, pair in expected.items() if stored == pair]
    assert held, (
        f"after a kill the store holds neither pair {sorted(expected)}: "
        f"generation {Pairs.generation(stored)}, a mix or a torn write"
    )
    stats.kills += 1
    if began == acknowledged + 1:
        stats.mid_save += 1
        stats.mid_save_kept_new += held[0] == began
    temp_files = leftover_temp_files(store)
    assert_private(temp_files)  # a cut-short write leaves secrets only where the owner can read
    stats.leftover_temp_files = len(temp_files)
    return held[0]


def survivor(child: Child, stats: SaveKills) -> None:
    """The child's first lock, right after the previous holder was killed, was prompt."""
    _, waited = child.expect("L")
    assert waited < SURVIVOR_BOUND
    stats.slowest_survivor = max(stats.slowest_survivor, waited)


class Pace:
    """How long one rotation takes on this machine, now: the median of the last 50.

    Kills are spread uniformly over about three rotations, so they land anywhere in
    a save (its lock, load, write, rename, fsync or D-Bus calls) however fast or
    loaded the machine is. Correctness never depends on it: only the mix of kill
    points does.
    """

    def __init__(self, durations: list[float]):
        self.durations = durations[-50:]

    def add(self, durations: list[float]) -> None:
        self.durations = (self.durations + durations)[-50:]

    def kill_delay(self, rng: random.Random) -> float:
        median = sorted(self.durations)[len(self.durations) // 2]
        return rng.uniform(0.0, 3.0 * median)


def rotate(store: TokenStore, pairs: Pairs, timeout: float = CHILD_TIMEOUT) -> int:
    """Replace pair ``n`` by pair ``n + 1`` as the children do; returns ``n + 1``."""
    with store.lock(timeout=timeout, lease=timeout):
        stored = store.load()
        n = Pairs.generation(stored) + 1
        store.save(pairs.pair(n), replaces=stored)
    return n


def run_random_save_kills(store: TokenStore, rng: random.Random, kills: int) -> SaveKills:
    """Kill ``kills`` save loops at random moments; check the store after each."""
    pairs = Pairs.for_store(store, rng.getrandbits(64))
    store.save(pairs.pair(0))
    if is_split(store):
        assert_split(store)
    timings = []
    for _ in range(3):
        started = time.monotonic()
        generation = rotate(store, pairs)
        timings.append(time.monotonic() - started)
    pace = Pace(timings)
    stats = SaveKills()
    for _ in range(kills):
        with reaped(fork_child(save_loop(store, pairs, None))) as child:
            survivor(child, stats)
            child.run_for(pace.kill_delay(rng))
            child.kill()
        pace.add([m[2] for m in child.messages if m[0] == "S"])
        generation = check_after_kill(store, pairs, child, generation, stats)
    with store.lock(timeout=SURVIVOR_BOUND, lease=SURVIVOR_BOUND):  # the last kill's survivor
        assert store.load() == pairs.pair(generation)
    return stats


def run_stepped_save_kills(store: TokenStore, rng: random.Random) -> SaveKills:
    """Kill the rotation of pair 0 to pair 1 at its first step, its second, ..., until
    one completes.

    Every run starts from pair 0, saved whole, so step ``k`` is the same step in
    every run. After each kill the store must hold pair 0 or pair 1, and the next
    save must work from whatever the kill left behind (a temporary file, the parts
    of an uncommitted split save) without waiting for the dead child's lock.
    """
    pairs = Pairs.for_store(store, rng.getrandbits(64))
    store.save(pairs.pair(1))
    if is_split(store):
        assert_split(store)
    stats = SaveKills()
    for kill_at in range(1, 1000):
        store.save(pairs.pair(0))
        with reaped(fork_child(save_loop(store, pairs, kill_at))) as child:
            survivor(child, stats)
            code = child.finish()
        if code == 0:  # no step left to kill at: the rotation completed
            completed = child.messages[-1]
            assert completed[0] == "D"
            assert len(completed[1]) < kill_at
            assert store.load() == pairs.pair(1)
            return stats
        assert code == -signal.SIGKILL, child.messages
        stats.steps.append(next(m[1] for m in child.messages if m[0] == "K"))
        held = check_after_kill(store, pairs, child, 0, stats)
        assert rotate(store, pairs, timeout=SURVIVOR_BOUND) == held + 1
        assert store.load() == pairs.pair(held + 1)
    pytest.fail("a rotation took more than 1000 steps")


@pytest.mark.slow
def test_a_save_killed_at_random_moments_leaves_the_old_or_the_new_pair_and_no_stale_lock(
    store: TokenStore, rng: random.Random
) -> None:
    kills = SAVE_KILLS[kind_of(store)]
    stats = run_random_save_kills(store, rng, kills)
    print(f"{store!r}: {stats.summary()}")
    assert stats.kills == kills


def test_a_save_killed_at_every_step_leaves_the_old_or_the_new_pair_and_no_stale_lock(
    store: TokenStore, rng: random.Random
) -> None:
    stats = run_stepped_save_kills(store, rng)
    print(f"{store!r}: {stats.summary()}; steps {dict(Counter(stats.steps))}")
    # The steps where a non-atomic save would tear: the lock, the write, the rename,
    # and (keyring) a half-sent D-Bus message carrying the secret.
    assert "flock" in stats.steps
    if isinstance(store, FileStore):
        assert {"half-written file", "fsync", "replace"} <= set(stats.steps)
    elif is_split(store):
        assert {"get_password", "set_password", "delete_password", "replace"} <= set(stats.steps)
    else:
        assert {"get_password", "half-sent D-Bus message", "recv", "replace"} <= set(stats.steps)
    assert stats.mid_save_kept_new > 0  # some kills landed after the write: new pair kept
    assert stats.mid_save > stats.mid_save_kept_new  # and some before: old pair kept


@pytest.mark.soak
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("kind", STORE_KINDS)
def test_soak_saves_killed_at_random_moments_by_the_hundred(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, rng: random.Random
) -> None:
    store = make_store(kind, request, tmp_path)
    stats = run_random_save_kills(store, rng, SOAK_SAVE_KILLS[kind])
    print(f"{store!r}: {stats.summary()}")
    assert stats.kills == SOAK_SAVE_KILLS[kind]


# -- the refresh-level crash run -------------------------------------------------------------


def refresh_loop(store: TokenStore, emulator: Emulator, *, once: bool) -> Callable[[Report], None]:
    """A child that refreshes through a real PleoSession in a tight loop.

    Its first refresh uses whatever the last child left in the store: ``F`` reports
    that it succeeded and how long it took, ``X`` that the server refused it because
    the grant is dead. ``R`` reports each later refresh and its duration.
    """
    client_id, secret = emulator.client_id, emulator.client_secret
    token_url, api_url = emulator.token_url, emulator.api_url

    def body(report: Report) -> None:
        session = PleoSession(client_id, secret, store=store, token_url=token_url, api_url=api_url)
        started = time.monotonic()
        try:
            session.refresh()
        except ReauthenticationRequired:
            report.send("X", time.monotonic() - started)
            return
        report.send("F", time.monotonic() - started)
        while not once:
            started = time.monotonic()
            session.refresh()
            report.send("R", time.monotonic() - started)

    return body


@dataclass
class RefreshKills:
    kills: int = 0
    lost: int = 0  # killed after the server rotated, before the save: the grant is lost
    slowest_survivor: float = 0.0

    def summary(self) -> str:
        ratio = self.lost / self.kills if self.kills else 0.0
        return (
            f"{self.kills} kills, {self.lost} lost replies ({ratio:.0%}), "
            f"slowest survivor refresh {self.slowest_survivor * 1000:.1f} ms"
        )


def run_random_refresh_kills(
    store: TokenStore, emulator: Emulator, rng: random.Random, kills: int
) -> RefreshKills:
    """Kill ``kills`` refresh loops at random moments; check the store after each.

    The pair left behind must be one the server issued as a pair. If it is the
    grant's live pair, the next child (a survivor) refreshes with it at once. If
    not, the kill fell after the server rotated and before the save: the lost
    reply that Pleo's rotation makes fatal. The next child's refresh must then be
    refused, clear the store, and the test logs in again.
    """
    store.save(TokenSet.from_response(emulator.issue_tokens()))
    if is_split(store):
        assert_split(store)
    stats = RefreshKills()
    pace: Pace | None = None
    grant_lost = False
    while True:
        last = stats.kills == kills
        with reaped(fork_child(refresh_loop(store, emulator, once=last))) as child:
            outcome = child.expect("F", "X")
            if grant_lost:
                assert outcome[0] == "X"  # the dead pair was refused...
                assert child.finish() == 0
                assert store.load() is None  # ...and cleared: the user must log in again
                store.save(TokenSet.from_response(emulator.issue_tokens()))
                grant_lost = False
                continue
            assert outcome[0] == "F", "a live pair was refused"
            assert outcome[1] < SURVIVOR_BOUND  # the dead child's lock did not hold it up
            stats.slowest_survivor = max(stats.slowest_survivor, outcome[1])
            if last:
                assert child.finish() == 0
                break
            pace = pace or Pace([outcome[1]])
            child.run_for(pace.kill_delay(rng))
            child.kill()
        assert pace is not None
        pace.add([m[1] for m in child.messages if m[0] == "R"])
        stats.kills += 1
        wait_until_served(emulator)
        stored = store.load()  # raises on a torn document
        assert stored is not None
        assert emulator.issued_together(stored.access_token, stored.refresh_token)
        if not emulator.is_current(stored.access_token, stored.refresh_token):
            grant_lost = True
            stats.lost += 1
    counters = emulator.counters
    # Each lost reply cost exactly one refused refresh, the survivor's: no refresh
    # ever presented a spent token otherwise.
    assert counters.reuse_detections == stats.lost
    assert counters.rejected_refreshes == stats.lost
    return stats


def wait_until_served(emulator: Emulator) -> None:
    """Wait until the emulator has answered every request it received.

    A refresh the child sent just before it died is still served: the server may
    rotate after the kill, and only then is the stored pair's fate decided. Each
    connection closes once the server sees the dead child's end of it closed.
    """
    emulator.wait_until_idle(timeout=CHILD_TIMEOUT)


@pytest.mark.slow
@pytest.mark.parametrize("kind", STORE_KINDS)
def test_a_refresh_killed_at_random_moments_leaves_a_pair_the_server_issued_together(
    kind: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    emulator: Emulator,
    rng: random.Random,
) -> None:
    store = make_store(kind, request, tmp_path, entry_limit=SMALLEST_ENTRY)
    kills = REFRESH_KILLS[kind]
    stats = run_random_refresh_kills(store, emulator, rng, kills)
    print(f"{store!r}: {stats.summary()}")
    assert stats.kills == kills


@pytest.mark.soak
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("kind", STORE_KINDS)
def test_soak_refreshes_killed_at_random_moments_by_the_hundred(
    kind: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    emulator: Emulator,
    rng: random.Random,
) -> None:
    store = make_store(kind, request, tmp_path, entry_limit=SMALLEST_ENTRY)
    stats = run_random_refresh_kills(store, emulator, rng, SOAK_REFRESH_KILLS[kind])
    print(f"{store!r}: {stats.summary()}")
    assert stats.kills == SOAK_REFRESH_KILLS[kind]


# -- a lock held by a killed process ---------------------------------------------------------


def hold_the_lock(store: TokenStore) -> Callable[[Report], None]:
    def body(report: Report) -> None:
        with store.lock(timeout=CHILD_TIMEOUT, lease=CHILD_TIMEOUT):
            report.send("held")
            threading.Event().wait()  # until killed

    return body


def test_a_lock_held_by_a_killed_process_is_taken_at_once_by_waiting_and_new_survivors(
    store: TokenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(store, FileStore | KeyringStore)
    pairs = Pairs.for_store(store, 0)
    store.save(pairs.pair(0))
    # Counts the waiter's failed flock attempts, to kill the holder only once the
    # waiter is inside its blocking acquire.
    real_flock = fcntl.flock
    refused = threading.Semaphore(0)

    def flock(fd: int, operation: int) -> None:
        try:
            real_flock(fd, operation)
        except BlockingIOError:
            refused.release()
            raise

    monkeypatch.setattr(fcntl, "flock", flock)
    with reaped(fork_child(hold_the_lock(store))) as holder:
        holder.expect("held")
        with (
            pytest.raises(TokenStoreError, match="timed out"),  # it really is held
            store.lock(timeout=0.0, lease=0.0),
        ):
            pass
        assert refused.acquire(timeout=0)
        taken_at: list[float] = []
        failures: list[BaseException] = []

        def wait_for_the_lock() -> None:
            try:
                with store.lock(timeout=SURVIVOR_BOUND, lease=SURVIVOR_BOUND):
                    taken_at.append(time.monotonic())
            except BaseException as exc:
                failures.append(exc)

        waiter = threading.Thread(target=wait_for_the_lock)
        waiter.start()
        for _ in range(2):  # refused twice: it is polling, in a single blocking acquire
            assert refused.acquire(timeout=CHILD_TIMEOUT)
        killed_at = time.monotonic()
        holder.kill()
        waiter.join(CHILD_TIMEOUT)
    assert failures == []
    assert len(taken_at) == 1
    assert killed_at < taken_at[0] < killed_at + SURVIVOR_BOUND
    # The dead holder's lock file is still there, and a new process does not mind it.
    assert store.lock_path.exists()
    with reaped(fork_child(save_loop(store, pairs, None))) as newcomer:
        _, newcomer_waited = newcomer.expect("L")
        newcomer.expect("S")
    assert newcomer_waited < SURVIVOR_BOUND
    assert Pairs.generation(store.load()) >= 1


def _killed_in_the_rename(store: FileStore, tokens: TokenSet) -> None:
    """Fork a writer that SIGKILLs itself at ``os.replace``: its temporary file stays."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.replace = lambda src, dst: os.kill(os.getpid(), signal.SIGKILL)  # type: ignore[assignment]
            store.save(tokens)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status)
    assert os.WTERMSIG(status) == signal.SIGKILL


def _pair(n: int) -> TokenSet:
    return TokenSet.from_response(
        {"access_token": f"at-leftover-{n:04d}", "refresh_token": f"rt-leftover-{n:04d}",
         "expires_in": 3600},
        now=1_800_000_000.0,
    )  # fmt: skip


def test_a_killed_writers_temporary_file_is_removed_by_the_next_save_and_by_clear(
    tmp_path: Path,
) -> None:
    store = FileStore(tmp_path / "tokens.json")
    store.save(_pair(1))

    def leftovers() -> list[Path]:
        return sorted(tmp_path.glob(".tokens.json.*.tmp"))

    _killed_in_the_rename(store, _pair(2))
    assert len(leftovers()) == 1  # it holds pair 2's tokens
    assert store.load() == _pair(1)
    store.save(_pair(3))
    assert leftovers() == []
    assert store.load() == _pair(3)

    _killed_in_the_rename(store, _pair(4))
    assert len(leftovers()) == 1
    store.clear()  # a logout leaves no tokens behind, not even a dead writer's
    assert leftovers() == []
    assert not store.path.exists()


def test_the_sweep_spares_the_live_temporary_file_of_a_store_beside_it(tmp_path: Path) -> None:
    # "tokens.json.staging" is another store with its own lock; its writer may be
    # between mkstemp and rename while "tokens.json" saves and clears.
    store = FileStore(tmp_path / "tokens.json")
    sibling_temp = tmp_path / ".tokens.json.staging.abcd1234.tmp"
    sibling_temp.write_bytes(b"in flight")
    sibling_temp.chmod(0o600)
    store.save(_pair(1))
    store.clear()
    assert sibling_temp.read_bytes() == b"in flight"
