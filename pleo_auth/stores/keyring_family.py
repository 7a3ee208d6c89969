"""Grants of a few Pleo companies in the operating system's keyring: :class:`KeyringStoreFamily`."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..company import Company
from ..errors import ConfigurationError, TokenStoreError
from ..tokens import TokenSet
from . import _files
from .family import TokenStoreFamily
from .keyring import KeyringStore
from .locks import FileRefreshLock

if TYPE_CHECKING:
    from keyring.backend import KeyringBackend

__all__ = ["KeyringStoreFamily"]

logger = logging.getLogger(__name__)

#: How long a save, clear or listing waits for the family's lock.
_LOCK_TIMEOUT = 60.0

_INDEX_FORMAT = "pleo-auth-keyring-family/1"


class _FamilyKeyringStore(KeyringStore):
    """A family member: the family's one lock, and the family's index kept up to date."""

    def __init__(self, family: KeyringStoreFamily, company: Company):
        super().__init__(
            family.service,
            company.urn,
            backend=family.backend,
            state_dir=family.state_dir,
            max_entry_bytes=family.max_entry_bytes,
        )
        self.company = company
        self._family = family
        self.refresh_lock = family.refresh_lock
        self.lock_path = family.refresh_lock.path

    def save(self, tokens: TokenSet, *, replaces: TokenSet | None = None) -> None:
        with self.lock(timeout=_LOCK_TIMEOUT, lease=_LOCK_TIMEOUT):
            # Listed before it is written: the index may name a company without a
            # grant (it is checked when read), never miss one that has a grant.
            # Best effort: the tokens are the grant, and a refresh saving them has
            # already spent the old pair at Pleo, so an index that cannot be kept
            # must never cost the save.
            self._family.index_add(self.company)
            super().save(tokens, replaces=replaces)

    def clear(self, *, only: TokenSet | None = None) -> None:
        with self.lock(timeout=_LOCK_TIMEOUT, lease=_LOCK_TIMEOUT):
            super().clear(only=only)
            if not self.holds_entry():
                self._family.index_discard(self.company)

    def holds_entry(self) -> bool:
        """Whether the keyring holds this company's entry (call holding the lock)."""
        return self._get(self._keyring(), self.account) is not None

    @property
    def spec(self) -> None:
        return None  # `--store keyring` names the client's own entry, not this one


class KeyringStoreFamily(TokenStoreFamily):
    """One keyring entry per company, under one service: for a desktop or a
    command line that holds the grants of a few companies.

    Each company's grant is a :class:`~pleo_auth.KeyringStore` entry under
    ``(service, "urn:pleo:company:<uuid>")``: the account is the company's URN,
    made from its checked id, so it never collides with the client-id account a
    plain ``KeyringStore`` uses.

    **Listing.** A keyring cannot list its entries (keyring has no such call, and
    the Secret Service, Keychain and Credential Manager each differ), so the
    family keeps an index of company ids in a file in the state directory,
    ``keyring-family-<hash of service>.json``. The index is written before a
    company's first entry and trimmed after its entry is deleted, so it may name
    too many companies but never too few; :meth:`companies` keeps only those
    whose entry exists. Company ids are not secrets, and the tokens never leave
    the keyring: the index is written mode 0600 (which customers an integration
    serves is nobody else's business), but one that others can read is still
    used; one that others can *write*, or that another user owns, is not (they
    could hide a company from the list).

    **The index never costs a grant.** Keeping it up is best effort: a save or
    clear that finds it unreadable (corrupt, or refused as above) logs a
    warning, moves it aside as ``<index>.bad-<time>`` and starts a new one, and
    one that cannot write it logs a warning; the tokens are saved either way.
    Until each company saves again (its next refresh), a new index misses the
    others, as does a lost one (the state directory wiped). :meth:`companies`
    raises on an index it cannot read, naming the file.

    **One lock for the family.** Every save, clear, refresh and listing of every
    company takes one lock file, ``keyring-family-<hash>.lock``, not one per
    company. Some backends keep every entry in one file and rewrite it whole
    (keyrings.alt), so two processes saving two companies at once would lose one
    save, and a reader could find a half-written file, with per-company locks.
    Refreshes of different companies therefore take turns; for many companies,
    use :meth:`FileStore.family <pleo_auth.FileStore.family>` or
    :meth:`RedisStore.family <pleo_auth.RedisStore.family>`.

    Args:
        service: The keyring service name of every entry of the family.
        backend: A keyring backend, as for :class:`~pleo_auth.KeyringStore`.
        state_dir: Where the lock, the index and the change markers live, the
            same in every process; as for :class:`~pleo_auth.KeyringStore`.
        max_entry_bytes: As for :class:`~pleo_auth.KeyringStore`.

    Raises:
        ConfigurationError: ``service`` is not a non-empty string.

    Thread safety:
        Every method may be called from any thread and any process at once, as
        far as the keyring backend allows.
    """

    def __init__(
        self,
        service: str = "pleo-auth",
        *,
        backend: KeyringBackend | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        max_entry_bytes: int | None = None,
    ):
        if not isinstance(service, str) or not service:
            raise ConfigurationError("KeyringStore.family needs a service name, a non-empty string")
        self.service = service
        self.backend = backend
        self.state_dir = state_dir
        self.max_entry_bytes = max_entry_bytes
        base = Path(state_dir) if state_dir is not None else _files.default_state_dir()
        tag = hashlib.sha256(f"family\0{service}".encode()).hexdigest()[:16]
        self.index_path = base / f"keyring-family-{tag}.json"
        self.refresh_lock = FileRefreshLock(base / f"keyring-family-{tag}.lock")
        # Checks max_entry_bytes now, as KeyringStore would, not at the first store().
        KeyringStore(service, backend=backend, state_dir=base, max_entry_bytes=max_entry_bytes)

    def build_store(self, company: Company) -> KeyringStore:
        return _FamilyKeyringStore(self, company)

    def companies(self) -> list[Company]:
        with self.refresh_lock.hold(timeout=_LOCK_TIMEOUT, lease=_LOCK_TIMEOUT):
            return [
                company
                for company in self._read_index()
                if _FamilyKeyringStore(self, company).holds_entry()
            ]

    # -- the index ---------------------------------------------------------------------

    def _read_index(self) -> list[Company]:
        raw = _files.read_private(self.index_path, secret=False)
        if raw is None:
            return []
        try:
            data = json.loads(raw)
            if data.get("format") != _INDEX_FORMAT:
                raise ValueError("not a keyring family index")
            return sorted({Company(item) for item in data["companies"]})
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise TokenStoreError(
                f"{self.index_path} is not the index of a keyring family; delete it "
                "(the grants stay in the keyring, and each is listed again at its next save)"
            ) from exc

    def _write_index(self, companies: list[Company]) -> None:
        document = {
            "format": _INDEX_FORMAT,
            "service": self.service,
            "companies": sorted(company.id for company in companies),
        }
        try:
            _files.atomic_write(self.index_path, json.dumps(document, indent=1).encode())
        except OSError as exc:
            raise TokenStoreError(f"cannot write {self.index_path}: {exc.strerror or exc}") from exc

    def index_add(self, company: Company) -> None:
        """List ``company`` in the index, best effort (the caller holds :attr:`refresh_lock`).

        An index that cannot be read is moved aside and a fresh one started; one
        that cannot be written is logged. Neither raises: the index only lists
        companies, and the save it comes with must go on.
        """
        listed = self._readable_index()
        if company not in listed:
            self._write_best_effort([*listed, company])

    def index_discard(self, company: Company) -> None:
        """Drop ``company`` from the index, best effort, as :meth:`index_add`."""
        listed = self._readable_index()
        if company in listed:
            self._write_best_effort([item for item in listed if item != company])

    def _readable_index(self) -> list[Company]:
        """The index, or (when it cannot be read) an empty one, the bad file moved aside."""
        try:
            return self._read_index()
        except TokenStoreError as exc:
            aside = self.index_path.with_name(f"{self.index_path.name}.bad-{time.time_ns()}")
            try:
                os.replace(self.index_path, aside)
            except OSError as move:
                aside_note = f"could not move it aside ({move.strerror or move})"
            else:
                aside_note = f"moved it to {aside}"
            logger.warning(
                "the keyring family index cannot be used (%s); %s and started a new one: "
                "the other companies' grants stay in the keyring, and each is listed "
                "again at its next save",
                exc,
                aside_note,
            )
            return []

    def _write_best_effort(self, companies: list[Company]) -> None:
        try:
            self._write_index(companies)
        except TokenStoreError as exc:
            logger.warning(
                "could not update the keyring family index (%s); the grants are saved, "
                "but companies() may miss or still list some until it can be written",
                exc,
            )

    def describe(self) -> str:
        return f"keyring service {self.service!r}, one entry per company"
