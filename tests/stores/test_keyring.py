"""KeyringStore's split entries for size-limited keyrings, its refusal of unusable ones,
and its one lock per entry whatever the environment.

Windows keeps at most 2,560 bytes in one credential. The split is tested against
:class:`~pleo_auth.testing.SizeLimitedKeyring`, which enforces that limit, wrapped
around real keyrings.alt file backends (and, where threads race, around a small
in-memory keyring whose entries change atomically, as the Secret Service's and
Windows' do; keyrings.alt rewrites its file in place, so a lock-free reader there
can see nothing for reasons that have nothing to do with splitting).
"""

from __future__ import annotations

import configparser
import contextlib
import io
import itertools
import json
import math
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keyring
import keyring.backend
import keyring.core
import pytest
from keyring.backends import chainer, fail, null
from keyring.errors import KeyringLocked, PasswordDeleteError, PasswordSetError
from keyrings.alt.escape import escape
from keyrings.alt.file import PlaintextKeyring

from pleo_auth import (
    ConfigurationError,
    KeyringStore,
    PleoSession,
    TokenSet,
    TokenStoreError,
)
from pleo_auth.cli import main
from pleo_auth.stores.base import encode_tokens
from pleo_auth.testing import (
    Emulator,
    MakeStore,
    SizeLimitedKeyring,
    TokenStoreContract,
    new_tokens,
)

SERVICE = "pleo-auth-test"
ACCOUNT = "client-1"
LIMIT = 2560


def long_tokens(tag: str, size: int) -> TokenSet:
    """A pair whose access and refresh tokens are each ``size`` characters, JWT-like."""
    body = (tag * (size // len(tag) + 1))[: size - 3]
    return TokenSet(
        access_token="at_" + body,
        refresh_token="rt_" + body,
        expires_at=2_000_000_000.0,
        scope="users:read",
        issued_at=1_999_999_100.0,
    )


def tag_of(tokens: TokenSet) -> tuple[str, str]:
    return tokens.access_token[3:], tokens.refresh_token[3:]


class MemoryKeyring:
    """A keyring held in a dict, each entry set, read or deleted atomically.

    Duck-typed rather than a KeyringBackend subclass, so keyring never sees it
    as a candidate default backend.
    """

    priority = 1  # viable, for keyring's chainer

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def get_password(self, service: str, username: str) -> str | None:
        _call_out()
        with self._lock:
            return self.entries.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        _call_out()
        with self._lock:
            self.entries[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        _call_out()
        with self._lock:
            if self.entries.pop((service, username), None) is None:
                raise PasswordDeleteError("no such entry")


def _call_out() -> None:
    """Let other threads run, as a real backend's D-Bus or file call does.

    Without it, readers spinning in pure Python hold the GIL for whole switch
    intervals and starve the writer. ``sleep(0)`` is a yield, not a wait.
    """
    time.sleep(0)


def file_backend(path: Path) -> PlaintextKeyring:
    backend = PlaintextKeyring()
    backend.file_path = str(path)  # type: ignore[misc]
    return backend


def usernames(backend: Any) -> set[str]:
    """The user names ``backend`` holds under SERVICE, however it stores them."""
    if isinstance(backend, SizeLimitedKeyring):
        backend = backend.inner
    if isinstance(backend, MemoryKeyring):
        return {user for service, user in backend.entries if service == SERVICE}
    # keyrings.alt's file: read it once, not once per name (each read parses the file).
    candidates = [ACCOUNT] + [f"{ACCOUNT}#{slot}.{i}" for slot in "ab" for i in range(64)]
    by_option = {escape(name).lower(): name for name in candidates}
    parser = configparser.RawConfigParser()
    parser.read(backend.file_path)
    section = escape(SERVICE)
    options = parser.options(section) if parser.has_section(section) else []
    return {by_option[option] for option in options if option in by_option}


def parts_needed(tokens: TokenSet) -> int:
    """Parts of at most LIMIT bytes of UTF-16-LE that the saved pair needs."""
    return math.ceil(2 * len(encode_tokens(tokens)) / LIMIT)


def parts_of(slot: str, count: int) -> set[str]:
    return {f"{ACCOUNT}#{slot}.{index}" for index in range(count)}


@pytest.fixture
def limited(tmp_path: Path) -> SizeLimitedKeyring:
    return SizeLimitedKeyring(file_backend(tmp_path / "keyring.cfg"), max_bytes=LIMIT)


@pytest.fixture
def store(limited: SizeLimitedKeyring, tmp_path: Path) -> KeyringStore:
    return KeyringStore(
        SERVICE, ACCOUNT, backend=limited, state_dir=tmp_path / "state", max_entry_bytes=LIMIT
    )


# -- the contract, with every save split ------------------------------------------------


class TestKeyringStoreSplitOverALimitedKeyring(TokenStoreContract):
    """The whole contract with entries limited to 320 bytes: the contract's pairs
    (about 180 characters, 360 bytes) are then always split into two parts. Over
    the in-memory keyring, to keep it fast; tests/stores/test_keyring_secret_service.py
    runs it over the Secret Service."""

    @pytest.fixture
    def make_store(self, tmp_path: Path) -> MakeStore:
        backend = SizeLimitedKeyring(MemoryKeyring(), max_bytes=320)
        return lambda: KeyringStore(
            SERVICE, ACCOUNT, backend=backend, state_dir=tmp_path / "state", max_entry_bytes=320
        )

    def test_the_contract_pairs_are_really_split_here(self, store: KeyringStore) -> None:
        store.save(new_tokens())
        head = json.loads(store._keyring().get_password(SERVICE, ACCOUNT))
        assert head["format"] == "pleo-auth-split/1"
        assert head["parts"] == 2


# -- long tokens --------------------------------------------------------------------


@pytest.mark.parametrize("size", [4096, 10240])
def test_long_tokens_round_trip_in_parts_that_each_fit_the_limit(
    store: KeyringStore, limited: SizeLimitedKeyring, size: int
) -> None:
    tokens = long_tokens("eyJhbGciOiJSUzI1NiJ9", size)
    store.save(tokens)
    assert store.load() == tokens
    payload_bytes = 2 * len(encode_tokens(tokens))
    count = math.ceil(payload_bytes / LIMIT)
    assert usernames(limited) == {ACCOUNT} | parts_of("a", count)
    for name in usernames(limited):
        assert len(limited.get_password(SERVICE, name).encode("utf-16-le")) <= LIMIT
    assert limited.refused == []


def test_the_limited_backend_refuses_a_long_entry_that_is_not_split(
    limited: SizeLimitedKeyring, tmp_path: Path
) -> None:
    """Proves the limit is enforced: without max_entry_bytes the same save fails, cleanly."""
    unsplit = KeyringStore(SERVICE, ACCOUNT, backend=limited, state_dir=tmp_path / "state")
    with pytest.raises(TokenStoreError, match="cannot write the keyring: PasswordSetError") as info:
        unsplit.save(long_tokens("x", 4096))
    assert isinstance(info.value.__cause__, PasswordSetError)
    assert limited.refused == [2 * len(encode_tokens(long_tokens("x", 4096)))]
    assert unsplit.load() is None


def test_a_pair_that_fits_stays_one_plain_entry(
    store: KeyringStore, limited: SizeLimitedKeyring
) -> None:
    tokens = new_tokens()
    store.save(tokens)
    assert usernames(limited) == {ACCOUNT}
    assert json.loads(limited.get_password(SERVICE, ACCOUNT))["refresh_token"] == (
        tokens.refresh_token
    )


def test_an_entry_written_before_splitting_existed_still_loads(
    store: KeyringStore, limited: SizeLimitedKeyring
) -> None:
    tokens = new_tokens()
    limited.set_password(SERVICE, ACCOUNT, json.dumps(tokens.to_dict()))
    assert store.load() == tokens


def test_saves_alternate_slots_and_delete_the_previous_slots_parts(
    store: KeyringStore, limited: SizeLimitedKeyring
) -> None:
    first, second, third = (long_tokens(tag, 4096) for tag in ("one", "two", "six"))
    count = math.ceil(2 * len(encode_tokens(first)) / LIMIT)
    store.save(first)
    assert usernames(limited) == {ACCOUNT} | parts_of("a", count)
    store.save(second, replaces=first)
    assert usernames(limited) == {ACCOUNT} | parts_of("b", count)
    store.save(third, replaces=second)
    assert usernames(limited) == {ACCOUNT} | parts_of("a", count)
    assert store.load() == third


def test_a_short_pair_after_a_long_one_is_plain_and_leaves_no_parts(
    store: KeyringStore, limited: SizeLimitedKeyring
) -> None:
    long, short = long_tokens("long", 6000), new_tokens()
    store.save(long)
    store.save(short, replaces=long)
    assert usernames(limited) == {ACCOUNT}
    assert store.load() == short


def test_clear_deletes_the_head_and_every_part(
    store: KeyringStore, limited: SizeLimitedKeyring
) -> None:
    store.save(long_tokens("gone", 8000))
    # Parts a save left behind before it was interrupted, in the other slot.
    limited.set_password(SERVICE, f"{ACCOUNT}#b.0", "orphan")
    limited.set_password(SERVICE, f"{ACCOUNT}#b.1", "orphan")
    store.clear()
    assert usernames(limited) == set()
    assert store.load() is None


def test_clear_only_the_stored_long_pair_clears_it(store: KeyringStore) -> None:
    tokens = long_tokens("only", 5000)
    store.save(tokens)
    store.clear(only=long_tokens("other", 5000))
    assert store.load() == tokens
    store.clear(only=tokens)
    assert store.load() is None


# -- a save interrupted before its commit ---------------------------------------------


class RefuseTheHead(SizeLimitedKeyring):
    """Fails the write of the head entry, as a crash just before the commit would."""

    def set_password(self, service: str, username: str, password: str) -> None:
        if username == ACCOUNT and self.armed:
            raise PasswordSetError("simulated crash before the commit")
        super().set_password(service, username, password)

    armed = False


@pytest.mark.parametrize("old_size", [None, 5000], ids=["old-plain", "old-split"])
def test_a_save_failing_at_the_head_leaves_the_old_pair_loadable(
    tmp_path: Path, old_size: int | None
) -> None:
    backend = RefuseTheHead(file_backend(tmp_path / "keyring.cfg"), max_bytes=LIMIT)
    store = KeyringStore(
        SERVICE, ACCOUNT, backend=backend, state_dir=tmp_path / "state", max_entry_bytes=LIMIT
    )
    old = new_tokens() if old_size is None else long_tokens("old", old_size)
    store.save(old)
    backend.armed = True
    new = long_tokens("new", 9000)
    with pytest.raises(TokenStoreError, match="simulated crash"):
        store.save(new, replaces=old)
    assert store.load() == old
    # Every part of the new pair was written, in the slot the old head does not use.
    old_parts = set() if old_size is None else parts_of("a", parts_needed(old))
    new_slot = "a" if old_size is None else "b"
    assert usernames(backend) == {ACCOUNT} | old_parts | parts_of(new_slot, parts_needed(new))
    # The next save writes over the parts the failed one left, and commits; the
    # save after it moves to the other slot and sweeps this one, leftovers and all.
    backend.armed = False
    newer, newest = long_tokens("newer", 3000), long_tokens("newest", 3000)
    store.save(newer, replaces=old)
    assert store.load() == newer
    store.save(newest, replaces=newer)
    assert store.load() == newest
    other_slot = "b" if new_slot == "a" else "a"
    assert usernames(backend) == {ACCOUNT} | parts_of(other_slot, parts_needed(newest))


KILLED_SAVER = textwrap.dedent(
    """
    import json, sys
    from keyrings.alt.file import PlaintextKeyring
    from pleo_auth import KeyringStore, TokenSet
    from pleo_auth.testing import SizeLimitedKeyring

    keyring_file, state_dir, service, account = sys.argv[1:5]

    class PauseAtTheHead(SizeLimitedKeyring):
        def set_password(self, service, username, password):
            if username == account:
                print("committing", flush=True)
                sys.stdin.readline()  # the parent kills this process here
            super().set_password(service, username, password)

    inner = PlaintextKeyring()
    inner.file_path = keyring_file
    store = KeyringStore(service, account, backend=PauseAtTheHead(inner),
                         state_dir=state_dir, max_entry_bytes=2560)
    store.save(TokenSet.from_dict(json.loads(sys.stdin.readline())))
    print("saved", flush=True)
    """
)


def test_a_process_killed_between_the_parts_and_the_head_leaves_the_old_pair(
    store: KeyringStore, limited: SizeLimitedKeyring, tmp_path: Path
) -> None:
    old = long_tokens("old", 5000)
    store.save(old)
    script = tmp_path / "saver.py"
    script.write_text(KILLED_SAVER)
    saver = subprocess.Popen(
        [sys.executable, str(script), limited.inner.file_path, str(tmp_path / "state"),
         SERVICE, ACCOUNT],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert saver.stdin is not None
        assert saver.stdout is not None
        saver.stdin.write(json.dumps(long_tokens("new", 9000).to_dict()) + "\n")
        saver.stdin.flush()
        assert saver.stdout.readline() == "committing\n", (
            saver.stderr.read() if saver.stderr else ""
        )
        # Every part of the new pair is written; the head is not.
        assert any(name.startswith(f"{ACCOUNT}#b.") for name in usernames(limited))
        saver.send_signal(signal.SIGKILL)
    finally:
        saver.kill()
        saver.wait(30)
    assert saver.returncode == -signal.SIGKILL
    assert store.load() == old
    newer = long_tokens("newer", 4000)
    store.save(newer, replaces=old)
    assert store.load() == newer


# -- readers racing a writer ----------------------------------------------------------


@pytest.mark.parametrize("lock_free", [False, True], ids=["load", "lock-free-read"])
def test_readers_racing_a_writer_get_a_whole_old_or_new_long_pair(
    tmp_path: Path, lock_free: bool
) -> None:
    """``load`` may fall back to a read under the lock; the lock-free read may not,
    so it shows that the head and the hash alone keep a reader from a torn pair.
    A lock-free read that finds the head moving on every attempt may give up with
    a retryable error (``load`` then reads under the lock); it never returns a mix."""
    backend = SizeLimitedKeyring(MemoryKeyring(), max_bytes=LIMIT)
    writer = KeyringStore(
        SERVICE, ACCOUNT, backend=backend, state_dir=tmp_path / "state", max_entry_bytes=LIMIT
    )
    pairs = [long_tokens(f"pair{n:03d}-", 4000 + 97 * n) for n in range(25)]
    writer.save(pairs[0])
    readers, stop = 3, threading.Event()
    barrier = threading.Barrier(readers + 1)
    seen: list[list[TokenSet | None]] = [[] for _ in range(readers)]
    gave_up: list[TokenStoreError] = []
    errors: list[BaseException] = []
    progress = threading.Condition()

    def was_read(tokens: TokenSet) -> bool:
        return bool(errors) or any(tokens in per_thread for per_thread in seen)

    def read(index: int) -> None:
        reader = KeyringStore(
            SERVICE, ACCOUNT, backend=backend, state_dir=tmp_path / "state", max_entry_bytes=LIMIT
        )
        try:
            barrier.wait()
            while not stop.is_set():
                try:
                    tokens = reader._read(backend) if lock_free else reader.load()
                    with progress:
                        seen[index].append(tokens)
                        progress.notify_all()
                except TokenStoreError as exc:
                    if not (lock_free and exc.retryable):
                        raise
                    gave_up.append(exc)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=read, args=(i,)) for i in range(readers)]
    for thread in threads:
        thread.start()
    try:
        barrier.wait()
        for previous, following in itertools.pairwise(pairs):
            writer.save(following, replaces=previous)
            # The next save waits until a reader has seen this one, so the reads
            # overlap every save however the scheduler runs the threads.
            with progress:
                assert progress.wait_for(lambda t=following: was_read(t), timeout=60)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert errors == []
    reads = [tokens for per_thread in seen for tokens in per_thread]
    assert reads, "the readers never ran"
    assert None not in reads
    assert all(tokens in pairs for tokens in reads)
    assert all(len(set(tag_of(tokens))) == 1 for tokens in reads if tokens is not None)
    assert all("changed on every one of" in str(exc) for exc in gave_up)
    assert set(pairs[1:]) <= set(reads)  # every save was read while others went on


class SaveWhileReading(MemoryKeyring):
    """Runs ``interrupt`` (once) when a reader asks for part 1 of slot a: a save
    that lands between a reader's parts, deterministically."""

    def __init__(self) -> None:
        super().__init__()
        self.interrupt: Any = None

    def get_password(self, service: str, username: str) -> str | None:
        if username == f"{ACCOUNT}#a.1" and self.interrupt is not None:
            interrupt, self.interrupt = self.interrupt, None
            interrupt()
        return super().get_password(service, username)


@pytest.mark.parametrize("saves", [1, 2], ids=["parts-deleted", "parts-rewritten"])
def test_a_read_whose_parts_are_replaced_midway_reads_the_new_pair_whole(
    tmp_path: Path, saves: int
) -> None:
    """One save deletes the parts being read; two saves rewrite them with another
    pair's, so the parts read mix two pairs. Either way the reader, taking no lock,
    notices the moved head (missing part or hash mismatch) and reads again."""
    backend = SaveWhileReading()
    writer, reader = (
        KeyringStore(SERVICE, ACCOUNT, backend=backend, state_dir=tmp_path / "state",
                     max_entry_bytes=LIMIT)
        for _ in range(2)
    )  # fmt: skip
    pairs = [long_tokens(tag, 6000) for tag in ("zero", "one", "two")]
    writer.save(pairs[0])

    def save() -> None:
        for previous, following in itertools.pairwise(pairs[: saves + 1]):
            writer.save(following, replaces=previous)

    backend.interrupt = save
    assert reader._read(backend) == pairs[saves]
    assert backend.interrupt is None, "the interrupting save never ran"


# -- corrupt split entries ---------------------------------------------------------------


def test_a_missing_part_raises_a_clear_error_that_is_not_retryable(
    store: KeyringStore, limited: SizeLimitedKeyring
) -> None:
    store.save(long_tokens("x", 6000))
    limited.delete_password(SERVICE, f"{ACCOUNT}#a.1")
    with pytest.raises(TokenStoreError, match="a part is missing or does not match") as info:
        store.load()
    assert info.value.retryable is False


def test_a_part_that_does_not_match_the_hash_raises_instead_of_a_mixed_pair(
    store: KeyringStore, limited: SizeLimitedKeyring
) -> None:
    store.save(long_tokens("x", 6000))
    part = limited.get_password(SERVICE, f"{ACCOUNT}#a.0")
    limited.set_password(SERVICE, f"{ACCOUNT}#a.0", part.replace("x", "y"))
    with pytest.raises(TokenStoreError, match="a part is missing or does not match"):
        store.load()


def test_an_entry_limit_too_small_for_the_head_is_a_configuration_error(
    limited: SizeLimitedKeyring,
) -> None:
    with pytest.raises(ConfigurationError, match="at least 320"):
        KeyringStore(SERVICE, ACCOUNT, backend=limited, max_entry_bytes=200)


@pytest.mark.parametrize("limit", ["3000", 2560.0, float("nan"), True, -1])
def test_an_entry_limit_that_is_not_an_integer_is_a_configuration_error(
    limited: SizeLimitedKeyring, limit: object
) -> None:
    with pytest.raises(ConfigurationError, match="max_entry_bytes must be None or an integer"):
        KeyringStore(SERVICE, ACCOUNT, backend=limited, max_entry_bytes=limit)  # type: ignore[arg-type]


# -- the limit's default -------------------------------------------------------------------


class WinVaultKeyring:
    """Named like keyring's Windows Credential Manager backend, and as limited.

    Not a KeyringBackend subclass, so keyring never registers it as a candidate.
    """

    priority = 5  # viable, for keyring's chainer

    def __init__(self, inner: Any):
        self.limited = SizeLimitedKeyring(inner, max_bytes=LIMIT)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.limited, name)


WinVaultKeyring.__module__ = "keyring.backends.Windows"


def windows_lookalike(inner: Any) -> Any:
    return WinVaultKeyring(inner)


def test_the_windows_backend_gets_the_2560_byte_limit_without_being_told(tmp_path: Path) -> None:
    backend = windows_lookalike(MemoryKeyring())
    store = KeyringStore(SERVICE, ACCOUNT, backend=backend, state_dir=tmp_path / "state")
    tokens = long_tokens("win", 5000)
    store.save(tokens)
    assert store.load() == tokens
    assert json.loads(backend.get_password(SERVICE, ACCOUNT))["format"] == "pleo-auth-split/1"
    assert backend.refused == []


def test_a_chain_holding_the_windows_backend_gets_the_limit_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = windows_lookalike(MemoryKeyring())
    monkeypatch.setattr(keyring.backend, "get_all_keyring", lambda: [backend])
    monkeypatch.setattr(keyring.core, "_keyring_backend", chainer.ChainerBackend())
    store = KeyringStore(SERVICE, ACCOUNT, state_dir=tmp_path / "state")
    tokens = long_tokens("chain", 5000)
    store.save(tokens)
    assert store.load() == tokens
    assert backend.refused == []


def test_other_backends_get_no_limit(tmp_path: Path) -> None:
    memory = MemoryKeyring()
    store = KeyringStore(SERVICE, ACCOUNT, backend=memory, state_dir=tmp_path / "state")
    tokens = long_tokens("free", 10240)
    store.save(tokens)
    assert usernames(memory) == {ACCOUNT}
    assert store.load() == tokens


# -- no usable keyring ------------------------------------------------------------------


ALTERNATIVES = ("FileStore", "RedisStore", "--store file:PATH", "--store redis://")


def assert_names_the_alternatives(error: TokenStoreError) -> None:
    message = str(error)
    for alternative in ALTERNATIVES:
        assert alternative in message, message
    assert "install and unlock a keyring" in message
    assert error.retryable is False


@pytest.fixture
def private_keyring_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """keyring's configuration and data directories, private and empty; no backend chosen yet."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.delenv("PYTHON_KEYRING_BACKEND", raising=False)
    monkeypatch.setattr(keyring.core, "_keyring_backend", None)
    return tmp_path


def default_store(tmp_path: Path) -> KeyringStore:
    return KeyringStore(SERVICE, ACCOUNT, state_dir=tmp_path / "state")


def plaintext() -> PlaintextKeyring:
    return PlaintextKeyring()


@pytest.mark.parametrize(
    ("default", "reason"),
    [
        (fail.Keyring, "no usable backend"),
        (null.Keyring, "null backend"),
        (plaintext, "PlaintextKeyring, an unencrypted file"),
    ],
    ids=["fail", "null", "plaintext"],
)
def test_an_unusable_default_keyring_is_refused_naming_file_and_redis_stores(
    private_keyring_config: Path, monkeypatch: pytest.MonkeyPatch, default: Any, reason: str
) -> None:
    monkeypatch.setattr(keyring.core, "_keyring_backend", default())
    store = default_store(private_keyring_config)
    for call in (store.load, lambda: store.save(new_tokens()), store.clear):
        with pytest.raises(TokenStoreError, match=reason) as info:
            call()
        assert_names_the_alternatives(info.value)
    assert not (private_keyring_config / "data").exists(), "something was written in plain text"


@pytest.mark.parametrize("first", [plaintext, None], ids=["plaintext-first", "empty"])
def test_a_chain_that_would_write_plain_text_or_nowhere_is_refused(
    private_keyring_config: Path, monkeypatch: pytest.MonkeyPatch, first: Any
) -> None:
    members = [first()] if first is not None else []
    monkeypatch.setattr(keyring.backend, "get_all_keyring", lambda: members)
    monkeypatch.setattr(keyring.core, "_keyring_backend", chainer.ChainerBackend())
    with pytest.raises(TokenStoreError) as info:
        default_store(private_keyring_config).save(new_tokens())
    assert_names_the_alternatives(info.value)


def test_a_chain_uses_its_first_backend_so_a_stale_copy_below_is_never_read(
    private_keyring_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, below = MemoryKeyring(), MemoryKeyring()
    below.set_password(SERVICE, ACCOUNT, encode_tokens(new_tokens("stale")))
    monkeypatch.setattr(keyring.backend, "get_all_keyring", lambda: [first, below])
    monkeypatch.setattr(keyring.core, "_keyring_backend", chainer.ChainerBackend())
    store = default_store(private_keyring_config)
    assert store.load() is None
    tokens = new_tokens()
    store.save(tokens)
    assert first.get_password(SERVICE, ACCOUNT) == encode_tokens(tokens)
    store.clear()
    assert store.load() is None


def test_a_plaintext_backend_named_by_python_keyring_backend_is_refused_too(
    private_keyring_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyrings.alt.file.PlaintextKeyring")
    with pytest.raises(TokenStoreError, match="PYTHON_KEYRING_BACKEND") as info:
        default_store(private_keyring_config).save(new_tokens())
    assert_names_the_alternatives(info.value)
    assert not (private_keyring_config / "data").exists()


def test_the_null_backend_named_by_keyringrc_is_refused_naming_the_file(
    private_keyring_config: Path,
) -> None:
    config = private_keyring_config / "config" / "python_keyring" / "keyringrc.cfg"
    config.parent.mkdir(parents=True)
    config.write_text("[backend]\ndefault-keyring=keyring.backends.null.Keyring\n")
    with pytest.raises(TokenStoreError, match=r"keyringrc\.cfg") as info:
        default_store(private_keyring_config).load()
    assert_names_the_alternatives(info.value)


def test_a_backend_named_by_python_keyring_backend_that_cannot_load_is_a_clear_error(
    private_keyring_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "no_such_module.Keyring")
    with pytest.raises(TokenStoreError, match="cannot load the keyring backend") as info:
        default_store(private_keyring_config).load()
    assert "PYTHON_KEYRING_BACKEND" in str(info.value)
    assert_names_the_alternatives(info.value)


def test_a_plaintext_backend_passed_explicitly_is_honoured(tmp_path: Path) -> None:
    backend = file_backend(tmp_path / "keyring.cfg")
    store = KeyringStore(SERVICE, ACCOUNT, backend=backend, state_dir=tmp_path / "state")
    tokens = new_tokens()
    store.save(tokens)
    assert store.load() == tokens
    assert backend.get_password(SERVICE, ACCOUNT) == encode_tokens(tokens)


def test_a_session_on_the_default_keyring_without_one_fails_naming_the_alternatives(
    private_keyring_config: Path, monkeypatch: pytest.MonkeyPatch, emulator: Emulator
) -> None:
    monkeypatch.setattr(keyring.core, "_keyring_backend", fail.Keyring())
    monkeypatch.setenv("XDG_CACHE_HOME", str(private_keyring_config / "cache"))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    before = emulator.counters
    with PleoSession(
        emulator.client_id, emulator.client_secret, token_url=emulator.token_url,
        api_url=emulator.api_url,
    ) as session:  # fmt: skip
        assert isinstance(session.store, KeyringStore)
        with pytest.raises(TokenStoreError) as info:
            session.get("/v2/employees")
    assert_names_the_alternatives(info.value)
    assert emulator.counters == before


def test_the_cli_keyring_store_without_a_keyring_exits_2_naming_the_alternatives(
    private_keyring_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keyring.core, "_keyring_backend", fail.Keyring())
    env = {
        "PLEO_CLIENT_ID": "client-1",
        "XDG_CACHE_HOME": str(private_keyring_config / "cache"),
    }
    monkeypatch.setenv("XDG_CACHE_HOME", env["XDG_CACHE_HOME"])
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["status"], env=env, out=io.StringIO())
    # A store this machine cannot use is a settings problem: 2, like other usage errors.
    assert code == 2
    message = err.getvalue()
    assert message.startswith("pleo-auth: error: keyring found no usable backend")
    _reason, fix = message.splitlines()
    assert fix.startswith("  Use a file")  # the fix, on a line of its own
    for alternative in ALTERNATIVES:
        assert alternative in fix
    assert "secretstorage" not in message  # keyring already brings it
    assert "Traceback" not in message


# -- backend failures become TokenStoreError -----------------------------------------------


class Broken(MemoryKeyring):
    def __init__(self, error: Exception):
        super().__init__()
        self.error = error

    def get_password(self, service: str, username: str) -> str | None:
        raise self.error

    set_password = delete_password = get_password  # type: ignore[assignment]


@pytest.mark.parametrize(
    ("error", "retryable", "words"),
    [
        (KeyringLocked("Failed to unlock the collection!"), True, "it is locked"),
        (ConnectionRefusedError(111, "Connection refused"), True, "not reachable"),
        (PasswordSetError("refused\nsecond line"), False, "PasswordSetError: refused$"),
    ],
    ids=["locked", "unreachable", "other-keyring-error"],
)
def test_every_backend_failure_is_a_token_store_error_with_its_cause(
    tmp_path: Path, error: Exception, retryable: bool, words: str
) -> None:
    store = KeyringStore(SERVICE, ACCOUNT, backend=Broken(error), state_dir=tmp_path / "state")
    for call in (store.load, lambda: store.save(new_tokens()), store.clear):
        with pytest.raises(TokenStoreError, match=words) as info:
            call()
        assert info.value.retryable is retryable
        assert info.value.__cause__ is error
        assert str(info.value).isprintable()


def test_a_backend_failure_of_unknown_kind_is_named_but_neither_quoted_nor_chained(
    tmp_path: Path,
) -> None:
    error = RuntimeError("odd: at_secret_value")
    store = KeyringStore(SERVICE, ACCOUNT, backend=Broken(error), state_dir=tmp_path / "state")
    with pytest.raises(TokenStoreError, match="its backend failed with RuntimeError") as info:
        store.load()
    assert "at_secret_value" not in str(info.value)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__ is True


@pytest.mark.parametrize(
    "content",
    [
        b"acct = c2VjcmV0\n",
        b"[pleo_2Dauth_2Dtest]\nclient_2d1 = x\nc2VjcmV0\n",
        b"\xff\xfec2VjcmV0",
    ],
    ids=["no-section", "bad-line", "not-utf8"],
)
def test_a_garbled_keyring_file_is_a_clear_error_that_quotes_none_of_it(
    tmp_path: Path, content: bytes
) -> None:
    """keyrings.alt's parser quotes the file's lines (base64 of the tokens) in its
    errors; none of it may reach the message, the repr or the cause chain."""
    backend = file_backend(tmp_path / "keyring.cfg")
    (tmp_path / "keyring.cfg").write_bytes(content)
    store = KeyringStore(SERVICE, ACCOUNT, backend=backend, state_dir=tmp_path / "state")
    with pytest.raises(TokenStoreError, match="cannot read the keyring") as info:
        store.load()
    chain: list[BaseException] = []
    current: BaseException | None = info.value
    while current is not None:
        chain.append(current)
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )
    for exc in chain:
        assert "c2VjcmV0" not in str(exc) + repr(exc)
    assert str(info.value).isprintable()


# -- one lock per keyring entry, whatever the environment ------------------------------
#
# The lock file and change marker of the default state directory were once in
# $XDG_RUNTIME_DIR when that was set, else in ~/.cache: a login shell and a cron job
# of one user took different locks on one keyring entry, both refreshed, and Pleo
# revoked the grant. They now live under the home directory the user database gives
# this uid, read by no environment variable.

REPORT_PATHS = textwrap.dedent(
    """
    import json, sys
    from keyrings.alt.file import PlaintextKeyring
    from pleo_auth import KeyringStore

    backend = PlaintextKeyring()
    backend.file_path = sys.argv[1]
    store = KeyringStore(sys.argv[2], sys.argv[3], backend=backend)
    print(json.dumps({"lock": str(store.lock_path), "marker": str(store.marker_path)}))
    """
)


def user_database_home() -> Path:
    import pwd

    return Path(pwd.getpwuid(os.geteuid()).pw_dir)


def environment_without(*names: str, **values: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in names}
    env.update(values)
    return env


@pytest.fixture
def unique_service() -> Iterator[str]:
    """A service name of this test alone; its lock and marker files go afterwards."""
    service = f"pleo-auth-test-{uuid.uuid4().hex}"
    yield service
    tag = KeyringStore(service, ACCOUNT, state_dir="/").lock_path.stem
    for leftover in (user_database_home() / ".cache" / "pleo-auth").glob(f"{tag}.*"):
        leftover.unlink()


def test_the_default_lock_and_marker_are_the_same_in_every_environment_of_one_user(
    tmp_path: Path, unique_service: str
) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir()
    environments = {
        "login shell": environment_without(XDG_RUNTIME_DIR=str(runtime)),
        "cron": environment_without("XDG_RUNTIME_DIR", "XDG_CACHE_HOME"),
        # sudo -u keeping the caller's environment: another HOME and cache.
        "sudo -u": environment_without(
            "XDG_RUNTIME_DIR",
            HOME=str(tmp_path / "callers-home"),
            XDG_CACHE_HOME=str(tmp_path / "callers-cache"),
        ),
        "bare": {"PATH": os.environ.get("PATH", "")},
    }
    script = tmp_path / "paths.py"
    script.write_text(REPORT_PATHS)
    seen = {}
    for name, env in environments.items():
        result = subprocess.run(
            [sys.executable, str(script), str(tmp_path / "keyring.cfg"), unique_service, ACCOUNT],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        seen[name] = json.loads(result.stdout)
    assert len({json.dumps(paths, sort_keys=True) for paths in seen.values()}) == 1, seen
    lock = Path(seen["cron"]["lock"])
    assert lock.parent == user_database_home() / ".cache" / "pleo-auth"
    assert Path(seen["cron"]["marker"]).parent == lock.parent
    assert not (runtime / "pleo-auth").exists()


def test_an_explicit_state_dir_is_still_used_as_given(tmp_path: Path) -> None:
    store = KeyringStore(SERVICE, ACCOUNT, backend=MemoryKeyring(), state_dir=tmp_path / "s")
    assert store.lock_path.parent == tmp_path / "s"
    assert store.marker_path.parent == tmp_path / "s"
    store.save(new_tokens())
    assert store.marker_path.exists()


def test_the_key_names_the_entry_and_backend_not_the_state_dir(tmp_path: Path) -> None:
    backend = MemoryKeyring()
    here = KeyringStore(SERVICE, ACCOUNT, backend=backend, state_dir=tmp_path / "a")
    there = KeyringStore(SERVICE, ACCOUNT, backend=backend, state_dir=tmp_path / "b")
    # One entry: sessions over either share one coordinator, so one refresh at a time.
    assert here.key == there.key
    # Another backend with the same names is another place, with other tokens.
    assert KeyringStore(SERVICE, ACCOUNT, backend=MemoryKeyring()).key != here.key
    assert KeyringStore(SERVICE, ACCOUNT).key != here.key


def test_an_unusable_default_state_dir_is_a_clear_error_naming_state_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    monkeypatch.setattr("pleo_auth.stores._files.default_state_dir", lambda: blocked / "pleo-auth")
    store = KeyringStore(SERVICE, ACCOUNT, backend=MemoryKeyring())
    with pytest.raises(TokenStoreError, match="state_dir=") as info:
        store.save(new_tokens())
    assert str(blocked / "pleo-auth") in str(info.value)


SHARED_ENTRY_WORKER = textwrap.dedent(
    """
    import json, sys
    import filelock
    from keyrings.alt.file import PlaintextKeyring
    from pleo_auth import KeyringStore, PleoSession

    config = json.loads(sys.stdin.readline())
    backend = PlaintextKeyring()
    backend.file_path = config["keyring_file"]
    store = KeyringStore(config["service"], config["account"], backend=backend)
    session = PleoSession(
        config["client_id"], config["client_secret"], store=store,
        token_url=config["token_url"], api_url=config["api_url"],
    )

    def say(line):
        print(line, flush=True)

    def refresh():
        try:
            session.refresh()
        except Exception as exc:  # reported, never a token: only the type
            say(f"error {type(exc).__name__}")
        else:
            say("refreshed")

    say("ready")
    for command in sys.stdin:
        command = command.strip()
        if command == "refresh":
            refresh()
        elif command == "probe-then-refresh":
            # Is the lock this process would take held by someone else right now?
            probe = filelock.FileLock(str(store.lock_path), timeout=0, thread_local=False)
            try:
                probe.acquire()
            except filelock.Timeout:
                say("held")
            else:
                probe.release()
                say("free")
            refresh()
        elif command == "get":
            say(f"status {session.get('/v2/employees').status_code}")
        elif command == "quit":
            session.close()
            break
    """
)


class Worker:
    """A child process running SHARED_ENTRY_WORKER, answering one line per command."""

    def __init__(self, script: Path, env: dict[str, str], config: dict[str, Any]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(script)], env=env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.send(json.dumps(config))
        assert self.answer() == "ready"

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.strip())
        self.lines.put("<exited>")

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def answer(self) -> str:
        try:
            return self.lines.get(timeout=60)  # a bound against hangs, not a schedule
        except queue.Empty:
            pytest.fail("a worker gave no answer within 60 s")

    def stop(self) -> str:
        if self.process.poll() is None:
            with contextlib.suppress(OSError):
                self.send("quit")
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
        assert self.process.stderr is not None
        return self.process.stderr.read()


def test_a_login_shell_and_a_cron_job_on_one_entry_refresh_once_per_rotation(
    emulator: Emulator, tmp_path: Path, unique_service: str
) -> None:
    """Two real processes of one user, one with XDG_RUNTIME_DIR and one without,
    refresh one keyring entry at the same moment, round after round.

    Each round the emulator holds the first refresh request, sent while its
    process holds the entry's lock, until the other process has looked at that
    lock: found held, it waits and adopts the new pair; found free (its own lock
    is another file), it loads the pair being replaced and spends it too.
    """
    keyring_file = tmp_path / "keyring.cfg"
    backend = file_backend(keyring_file)
    backend.set_password(
        unique_service,
        ACCOUNT,
        encode_tokens(TokenSet.from_response(emulator.issue_tokens())),
    )
    runtime = tmp_path / "run"
    runtime.mkdir()
    script = tmp_path / "worker.py"
    script.write_text(SHARED_ENTRY_WORKER)
    config = {
        "keyring_file": str(keyring_file), "service": unique_service, "account": ACCOUNT,
        "client_id": emulator.client_id, "client_secret": emulator.client_secret,
        "token_url": emulator.token_url, "api_url": emulator.api_url,
    }  # fmt: skip

    arrived = threading.Semaphore(0)
    release = threading.Event()

    def hold_refreshes(grant_type: str | None) -> None:
        if grant_type == "refresh_token":
            arrived.release()
            release.wait(60)  # a bound against hangs; the test releases it

    workers = [
        Worker(script, environment_without(XDG_RUNTIME_DIR=str(runtime)), config),
        Worker(script, environment_without("XDG_RUNTIME_DIR", "XDG_CACHE_HOME"), config),
    ]
    emulator.set_token_request_hook(hold_refreshes)
    try:
        rotations = 4
        for rotation in range(1, rotations + 1):
            leader, follower = workers[rotation % 2], workers[(rotation + 1) % 2]
            release.clear()
            leader.send("refresh")
            assert arrived.acquire(timeout=60), "the leader sent no refresh"
            follower.send("probe-then-refresh")
            probe = follower.answer()
            if probe == "free":
                # A lock of its own: it refreshes with the pair being replaced.
                assert arrived.acquire(timeout=60), "the follower sent no refresh"
            release.set()
            answers = (leader.answer(), follower.answer())
            counters = emulator.counters
            assert (
                counters.refresh_grants,
                counters.reuse_detections,
                counters.rejected_refreshes,
            ) == (rotation, 0, 0), f"rotation {rotation}: the follower found the lock {probe}"
            assert probe == "held"
            assert answers == ("refreshed", "refreshed")
            for worker in workers:
                worker.send("get")
                assert worker.answer() == "status 200"
    finally:
        release.set()
        emulator.set_token_request_hook(None)
        errors = [worker.stop() for worker in workers]
    assert all(worker.process.returncode == 0 for worker in workers), errors
    assert not (runtime / "pleo-auth").exists()


def test_two_file_backend_objects_on_one_file_are_one_place_and_on_two_files_two(
    tmp_path: Path,
) -> None:
    from keyrings.alt.file import PlaintextKeyring

    def on(path: Path) -> KeyringStore:
        backend = PlaintextKeyring()
        backend.file_path = str(path)  # type: ignore[misc]
        return KeyringStore(SERVICE, ACCOUNT, backend=backend)

    assert on(tmp_path / "a.cfg").key == on(tmp_path / "a.cfg").key
    assert on(tmp_path / "a.cfg").key != on(tmp_path / "b.cfg").key
