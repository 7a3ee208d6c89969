"""Tokens in a private JSON file, for servers and cron jobs without a desktop keyring."""

from __future__ import annotations

import errno
import os
import stat
import urllib.parse
from collections.abc import Hashable
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigurationError, TokenStoreError
from ..tokens import TokenSet
from . import _files
from .base import TokenStore, decode_tokens, encode_tokens
from .locks import FileRefreshLock

if TYPE_CHECKING:
    from .family import FileStoreFamily

__all__ = ["FileStore"]

#: How long a save or clear waits for a refresh in another process to finish.
_LOCK_TIMEOUT = 60.0


class FileStore(TokenStore):
    """Keeps both tokens in one JSON file, replaced atomically on every save.

    * A save writes a temporary file, fsyncs it and renames it over the old one,
      so a crash leaves the old tokens or the new ones, never a torn file.
    * The file is mode 0600; a missing directory is created mode 0700. A file that
      group or others can read, or that another user owns, is refused.
    * Refreshes, saves and clears are serialised across processes by a lock file
      beside it (``<path>.lock``, a :class:`~pleo_auth.stores.locks.FileRefreshLock`);
      a save with ``replaces`` is fenced. Other
      processes notice a rotation by a ``stat`` of the token file: no read per request.

    The file is not encrypted: protect it as you would an SSH key, or prefer
    :class:`~pleo_auth.KeyringStore` where a keyring exists.

    Args:
        path: The token file. ``~`` is expanded.

    Raises:
        ConfigurationError: ``path`` is not a path to a file (a directory such as
            ``/``, a NUL character, not text).

    Thread safety:
        Every method may be called from any thread and any process at once.
    """

    fenced = True

    def __init__(self, path: str | os.PathLike[str]):
        try:
            text = os.fspath(path)
        except TypeError:
            raise ConfigurationError(f"FileStore needs a path, not {type(path).__name__}") from None
        if not isinstance(text, str) or "\0" in text:
            raise ConfigurationError("FileStore needs a path as text, without NUL")
        self.path = Path(os.path.expanduser(text)).absolute()
        if not self.path.name:
            raise ConfigurationError(f"FileStore needs a file path, not the directory {self.path}")
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.refresh_lock = FileRefreshLock(self.lock_path)

    @staticmethod
    def family(directory: str | os.PathLike[str]) -> FileStoreFamily:
        """One private file per Pleo company in ``directory``: a
        :class:`~pleo_auth.stores.family.FileStoreFamily`.

        >>> family = FileStore.family("/srv/pleo-grants")
        >>> family.store("urn:pleo:company:3f2504e0-4f89-11d3-9a0c-0305e82c3301").path
        PosixPath('/srv/pleo-grants/3f2504e0-4f89-11d3-9a0c-0305e82c3301.json')
        """
        from .family import FileStoreFamily

        return FileStoreFamily(directory)

    def load(self) -> TokenSet | None:
        # O_NONBLOCK: a FIFO put at the path must not hang the open; it is refused below.
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            fd = os.open(self.path, flags)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise TokenStoreError(f"refusing to follow a symlink at {self.path}") from exc
            raise TokenStoreError(f"cannot read {self.path}: {exc.strerror or exc}") from exc
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise TokenStoreError(
                    f"refusing to use {self.path}: it is not a regular file. "
                    "Point the store at a file path."
                )
            _files.check_private(self.path, info)
            with os.fdopen(fd, "rb", closefd=False) as handle:
                raw = handle.read()
        except OSError as exc:
            raise TokenStoreError(f"cannot read {self.path}: {exc.strerror or exc}") from exc
        finally:
            os.close(fd)
        return decode_tokens(raw, str(self.path))

    def save(self, tokens: TokenSet, *, replaces: TokenSet | None = None) -> None:
        data = encode_tokens(tokens).encode()
        with self.lock(timeout=_LOCK_TIMEOUT, lease=_LOCK_TIMEOUT):
            if replaces is not None and self.load() != replaces:
                raise TokenStoreError(
                    f"the tokens in {self.path} changed during the refresh; not saved"
                )
            try:
                _files.atomic_write(self.path, data)
            except OSError as exc:
                raise TokenStoreError(f"cannot write {self.path}: {exc.strerror or exc}") from exc

    def clear(self, *, only: TokenSet | None = None) -> None:
        # Under the lock, so a logout cannot be undone by a refresh finishing after it.
        with self.lock(timeout=_LOCK_TIMEOUT, lease=_LOCK_TIMEOUT):
            if only is not None and self.load() != only:
                return
            try:
                self.path.unlink(missing_ok=True)
            except OSError as exc:
                raise TokenStoreError(f"cannot delete {self.path}: {exc.strerror or exc}") from exc
            _files.remove_leftovers(self.path)  # a killed writer's tokens go too
            _files.fsync_dir(self.path.parent)

    def version(self) -> Hashable:
        return _files.stat_version(self.path)

    @property
    def key(self) -> Hashable:
        return ("file", os.path.realpath(self.path))

    @property
    def spec(self) -> str:
        path = str(self.path)
        if path.startswith("//"):
            # file://HOST/... would name a host: write it as a file URL with an empty one.
            return "file://" + urllib.parse.quote(path)
        return f"file:{path}"

    def describe(self) -> str:
        return f"file {self.path}"
