"""What the encrypted stores' multi-process tests run in each spawned process: the
Integration's load workers (support.integration_workers) over an encrypted family."""

from __future__ import annotations

from dataclasses import dataclass

from pleo_auth import EncryptedStore
from pleo_auth.stores.family import TokenStoreFamily
from support.integration_workers import FamilySpec


@dataclass(frozen=True)
class EncryptedFamilySpec(FamilySpec):
    """A :class:`FamilySpec` whose family is encrypted with ``keys`` (test keys only),
    bound to ``client_id``."""

    keys: tuple[str, ...] = ()

    def build(self) -> TokenStoreFamily:
        return EncryptedStore(super().build(), list(self.keys), client_id=self.client_id)

    def cli_spec(self) -> str:
        """The family as ``pleo-auth --store`` names it."""
        if self.kind == "file":
            return f"family:file:{self.where}"
        return f"family:{self.where}?prefix={self.prefix}"
