"""Token store families: one grant per Pleo company, behind one OAuth client.

A partner's integration holds one grant per customer company. A
:class:`TokenStoreFamily` is where all of them live: ask it for the
:class:`~pleo_auth.TokenStore` of one :class:`~pleo_auth.Company` with
:meth:`~TokenStoreFamily.store`, list the companies that have a grant with
:meth:`~TokenStoreFamily.companies`, and forget one with
:meth:`~TokenStoreFamily.remove`. Build one with :meth:`MemoryStore.family()
<pleo_auth.MemoryStore.family>`, :meth:`FileStore.family(directory)
<pleo_auth.FileStore.family>`, :meth:`RedisStore.family(url)
<pleo_auth.RedisStore.family>` or :meth:`KeyringStore.family(service)
<pleo_auth.KeyringStore.family>`.

Every key, path and file name a family makes comes from a checked
:class:`~pleo_auth.Company` (a lower-case UUID), never from the string a caller
passed: a company string that is not a company id or URN is refused with a
:class:`~pleo_auth.ConfigurationError` before anything is touched.
"""

from __future__ import annotations

import abc
import os
import re
import stat
import threading
from pathlib import Path

from ..company import Company
from ..errors import ConfigurationError, TokenStoreError
from ..tokens import TokenSet
from .base import TokenStore
from .file import FileStore
from .memory import MemoryStore

__all__ = ["FileStoreFamily", "MemoryStoreFamily", "TokenStoreFamily"]

#: A family file's name: the company's UUID, lower case, and ``.json``.
_FILE_NAME = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.json")


class TokenStoreFamily(abc.ABC):
    """A family of token stores keyed by Pleo company: one grant per company.

    Each company's grant lives in its own :class:`~pleo_auth.TokenStore`, which
    honours the whole store contract on its own: its own tokens, its own refresh
    lock, its own version. A save or clear for one company never touches another
    company's grant.

    Implementations provide :meth:`build_store` and :meth:`companies`, and may
    override :meth:`remove` and :meth:`describe`.
    :class:`~pleo_auth.testing.TokenStoreFamilyContract` is the test class a
    family's tests subclass.

    Thread safety:
        Implementations must allow every method from any thread at once.
    """

    def store(self, company: Company | str) -> TokenStore:
        """The store of ``company``'s grant.

        Cheap: it does no I/O and opens no socket until the store is used, so it
        may be called per request. Two calls for one company give the same store
        object, or equivalent ones over the same stored tokens (equal
        :attr:`~pleo_auth.TokenStore.key`).

        Args:
            company: A :class:`~pleo_auth.Company`, Pleo's company id (a UUID) or
                ``urn:pleo:company:<uuid>``.

        Raises:
            ConfigurationError: ``company`` names no company.
        """
        return self.build_store(Company(company))

    @abc.abstractmethod
    def build_store(self, company: Company) -> TokenStore:
        """Build (or find) the store of ``company``, already checked: implement this,
        and call :meth:`store`. Must do no I/O."""

    @abc.abstractmethod
    def companies(self) -> list[Company]:
        """The companies that have a grant stored, sorted by id.

        A company whose grant was cleared (after a logout, or a refresh token that
        died) is not listed.

        Raises:
            TokenStoreError: The family could not be read.
        """

    def remove(self, company: Company | str) -> None:
        """Delete ``company``'s grant, whatever it holds; other companies keep theirs.

        Only the stored tokens go: this does not end the installation at Pleo.

        Raises:
            ConfigurationError: ``company`` names no company.
            TokenStoreError: The grant could not be deleted.
        """
        self.store(company).clear()

    @property
    def spec(self) -> str | None:
        """The ``--store`` argument that names this family, or None when there is none."""
        return None

    def describe(self) -> str:
        """A human description of where the grants live, free of secrets."""
        return type(self).__name__

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


# -- memory --------------------------------------------------------------------------


class MemoryStoreFamily(TokenStoreFamily):
    """Grants kept in this process's memory, one :class:`~pleo_auth.MemoryStore`
    per company: for tests and short-lived scripts.

    :meth:`store` gives the same MemoryStore object for a company every time
    (the tokens live in it). A forked child cannot use it, as a MemoryStore.

    Thread safety:
        Every method may be called from any thread.
    """

    def __init__(self) -> None:
        self._stores: dict[Company, MemoryStore] = {}
        self._guard = threading.Lock()

    def build_store(self, company: Company) -> MemoryStore:
        with self._guard:
            store = self._stores.get(company)
            if store is None:
                store = self._stores[company] = MemoryStore()
            return store

    def companies(self) -> list[Company]:
        with self._guard:
            stores = sorted(self._stores.items())
        return [company for company, store in stores if store.load() is not None]

    def describe(self) -> str:
        return "memory, one store per company"


# -- files ---------------------------------------------------------------------------


class _FamilyFileStore(FileStore):
    """A family member: a FileStore that also refuses an unsafe family directory."""

    def __init__(self, family: FileStoreFamily, company: Company):
        super().__init__(family.directory / f"{company.id}.json")
        self._family = family

    def load(self) -> TokenSet | None:
        self._family.check_directory()
        return super().load()

    def save(self, tokens: TokenSet, *, replaces: TokenSet | None = None) -> None:
        self._family.check_directory()
        super().save(tokens, replaces=replaces)

    def clear(self, *, only: TokenSet | None = None) -> None:
        self._family.check_directory()
        super().clear(only=only)


class FileStoreFamily(TokenStoreFamily):
    """One private JSON file per company in one directory.

    Each company's grant is a :class:`~pleo_auth.FileStore` at
    ``<directory>/<uuid>.json``, its name made from the company's lower-case UUID
    only. Files are mode 0600; a missing directory is created mode 0700. As
    FileStore does, a file that group or others can read, or that another user
    owns, is refused; so is a directory that group or others can write, or that
    another user owns (they could replace the files).

    **Locks.** Each company has its own lock file, ``<uuid>.json.lock``, so
    refreshes of different companies never wait for each other, in one process
    or many; one lock for the whole directory would make every refresh of every
    company take turns. Listing the companies takes no lock: a file appears and
    goes whole (written by rename, deleted by unlink). A lock file is empty and
    stays after :meth:`remove`: deleting it could let two processes hold
    "the" lock on two different files.

    Args:
        directory: The directory of the token files. ``~`` is expanded.

    Raises:
        ConfigurationError: ``directory`` is not a path (not text, or holds NUL).

    Thread safety:
        Every method may be called from any thread and any process at once.
    """

    def __init__(self, directory: str | os.PathLike[str]):
        try:
            text = os.fspath(directory)
        except TypeError:
            raise ConfigurationError(
                f"FileStore.family needs a directory path, not {type(directory).__name__}"
            ) from None
        if not isinstance(text, str) or not text or "\0" in text:
            raise ConfigurationError("FileStore.family needs a directory path as text, without NUL")
        self.directory = Path(os.path.expanduser(text)).absolute()

    def build_store(self, company: Company) -> FileStore:
        return _FamilyFileStore(self, company)

    def companies(self) -> list[Company]:
        if not self.check_directory():
            return []
        try:
            with os.scandir(self.directory) as entries:
                # Regular files only, not followed: load() refuses a symlink, and a
                # directory named <uuid>.json holds no grant.
                names = [
                    entry.name
                    for entry in entries
                    if _FILE_NAME.fullmatch(entry.name) and entry.is_file(follow_symlinks=False)
                ]
        except OSError as exc:
            raise TokenStoreError(f"cannot list {self.directory}: {exc.strerror or exc}") from exc
        return sorted(Company(name[:-5]) for name in names)

    def check_directory(self) -> bool:
        """Refuse a directory others could write to; False when it does not exist yet.

        Raises:
            TokenStoreError: The directory is writable by group or others, belongs
                to another user, is not a directory, or cannot be read.
        """
        try:
            info = os.stat(self.directory)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise TokenStoreError(f"cannot read {self.directory}: {exc.strerror or exc}") from exc
        if not stat.S_ISDIR(info.st_mode):
            raise TokenStoreError(f"refusing to use {self.directory}: it is not a directory")
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise TokenStoreError(
                f"refusing to use {self.directory}: group or others can write to it "
                f"(mode {stat.S_IMODE(info.st_mode):04o}), so they could replace the "
                f"token files; fix it with `chmod 700 {self.directory}`."
            )
        if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
            raise TokenStoreError(
                f"refusing to use {self.directory}: it belongs to uid {info.st_uid}, "
                f"not to this user (uid {os.geteuid()})."
            )
        return True

    def describe(self) -> str:
        return f"one file per company in {self.directory}"
