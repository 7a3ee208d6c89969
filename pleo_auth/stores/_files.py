"""File-system helpers shared by the stores that live on one machine.

Their lock file is :class:`pleo_auth.stores.locks.FileRefreshLock`.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
from collections.abc import Hashable
from pathlib import Path

from ..errors import TokenStoreError


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


def check_private(path: Path, st: os.stat_result, *, secret: bool = True) -> None:
    """Refuse a token file that others could read or that belongs to someone else.

    With ``secret=False`` (a file that holds no secret, such as a keyring family's
    index of company ids) only what lets others *change* it is refused: write
    access for group or others, or another owner. Reading it gives them nothing.
    """
    if secret and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TokenStoreError(
            f"refusing to use {path}: it is readable or writable by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}). It holds secrets; "
            f"fix it with `chmod 600 {path}`."
        )
    if not secret and st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise TokenStoreError(
            f"refusing to use {path}: group or others can write to it "
            f"(mode {stat.S_IMODE(st.st_mode):04o}), so they could change it; "
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


def read_private(path: Path, *, secret: bool = True) -> bytes | None:
    """The content of the private regular file ``path``, or None when it is missing.

    Refuses, as :class:`~pleo_auth.FileStore` does, a symlink, anything but a
    regular file, and a file that others could read or that another user owns.
    With ``secret=False``, a file others can read is accepted (see
    :func:`check_private`).

    Raises:
        TokenStoreError: The file is refused or cannot be read.
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise TokenStoreError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise TokenStoreError(f"refusing to use {path}: it is not a regular file")
        check_private(path, info, secret=secret)
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read()
    except OSError as exc:
        raise TokenStoreError(f"cannot read {path}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
