"""File-system helpers shared by the stores that live on one machine."""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
import threading
from collections.abc import Hashable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import TokenStoreError
from .base import Lease

if TYPE_CHECKING:
    import filelock

# Lock objects held by some thread at the moment of a fork. In the child that
# thread does not exist; if the object were collected, its finaliser would
# unlock a descriptor shared with the parent and release the parent's lock.
# So the child keeps them, unused, for the rest of its life.
_held: set[filelock.BaseFileLock] = set()
_held_guard = threading.Lock()
_orphaned: list[filelock.BaseFileLock] = []


def _after_fork_in_child() -> None:
    global _held_guard
    _held_guard = threading.Lock()
    _orphaned.extend(_held)
    _held.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


_depths = threading.local()


@contextlib.contextmanager
def file_lock(path: Path, timeout: float) -> Iterator[Lease]:
    """Hold an exclusive lock on ``path`` shared by every process on this machine.

    Re-entrant within a thread, so a store's own methods may take the lock that the
    coordinator already holds around a refresh.
    """
    depths: dict[str, int] = _depths.__dict__.setdefault("by_path", {})
    key = str(path)
    if depths.get(key):
        depths[key] += 1
        try:
            yield Lease()
        finally:
            depths[key] -= 1
        return
    with _acquire(path, timeout) as lease:
        depths[key] = 1
        try:
            yield lease
        finally:
            depths[key] = 0


def holds(path: Path) -> bool:
    """Whether this thread holds :func:`file_lock` on ``path``."""
    depths: dict[str, int] = _depths.__dict__.get("by_path", {})
    return depths.get(str(path), 0) > 0


@contextlib.contextmanager
def _acquire(path: Path, timeout: float) -> Iterator[Lease]:
    import filelock  # deferred: only processes that refresh need it

    ensure_private_dir(path.parent)
    # A fresh object per acquisition: no state is shared between threads, and a
    # forked child never finds a lock object its parent's thread was holding.
    lock = filelock.FileLock(str(path), timeout=max(timeout, 0.0), thread_local=False)
    try:
        lock.acquire()
    except filelock.Timeout as exc:
        raise TokenStoreError(
            f"timed out after {timeout:.1f}s waiting for the refresh lock {path}", retryable=True
        ) from exc
    except OSError as exc:
        raise TokenStoreError(f"cannot lock {path}: {exc.strerror or exc}") from exc
    with _held_guard:
        _held.add(lock)
    try:
        yield Lease()
    finally:
        with _held_guard:
            _held.discard(lock)
        lock.release()


def ensure_private_dir(directory: Path) -> None:
    """Create ``directory`` (and parents) readable only by this user, if missing."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise TokenStoreError(
            f"cannot create directory {directory}: {exc.strerror or exc}"
        ) from exc


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, never a mix.

    The data goes to a private temporary file in the same directory, is flushed to
    disk, and is then renamed over ``path``; the directory is synced so the rename
    survives a crash. The caller holds the path's lock: temporary files left by a
    writer that was killed are removed first (see :func:`remove_leftovers`).
    """
    ensure_private_dir(path.parent)
    remove_leftovers(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def remove_leftovers(path: Path) -> None:
    """Delete the temporary files of :func:`atomic_write` calls that never finished.

    A writer killed between creating its temporary file and renaming it leaves the
    file behind, holding tokens. Only call this holding the path's lock: then no
    live writer has a temporary file, and every one found belongs to a dead one.
    """
    # Exactly what mkstemp makes for this path: eight random characters. A looser
    # match would take the live temporary file of a store at "<path>.<suffix>",
    # which another lock guards.
    leftover = re.compile(re.escape(f".{path.name}.") + r"[a-z0-9_]{8}\.tmp")
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        if leftover.fullmatch(name):
            with contextlib.suppress(OSError):
                os.unlink(path.parent / name)


def fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def stat_version(path: Path) -> Hashable:
    """A cheap fingerprint of ``path``: it changes on every :func:`atomic_write`."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise TokenStoreError(f"cannot stat {path}: {exc.strerror or exc}") from exc
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def check_private(path: Path, st: os.stat_result) -> None:
    """Refuse a token file that others could read or that belongs to someone else."""
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TokenStoreError(
            f"refusing to use {path}: it is readable or writable by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}). It holds secrets; "
            f"fix it with `chmod 600 {path}`."
        )
    if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
        raise TokenStoreError(
            f"refusing to use {path}: it belongs to uid {st.st_uid}, not to this user "
            f"(uid {os.geteuid()})."
        )


def default_state_dir() -> Path:
    """Where locks and change markers live by default: ``.cache/pleo-auth`` in this user's home.

    The home is the one the user database (``pwd``) gives the effective uid, not
    ``$HOME``, and no ``XDG_*`` variable is read: every process of one user must
    take the same lock on the same tokens, whatever its environment. A login
    shell has ``XDG_RUNTIME_DIR``, while cron, ``sudo -u`` and system services
    usually do not, and ``sudo`` may keep the caller's ``HOME``. Only without a
    user database (Windows) or an entry for this uid (a container run under an
    arbitrary uid) does it fall back to ``~``.
    """
    return Path(_home_of_this_user()) / ".cache" / "pleo-auth"


def _home_of_this_user() -> str:
    if hasattr(os, "geteuid"):
        import pwd

        try:
            home = pwd.getpwuid(os.geteuid()).pw_dir
        except KeyError:
            home = ""
        if home:
            return home
    return os.path.expanduser("~")
