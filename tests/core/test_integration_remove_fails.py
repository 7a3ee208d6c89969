"""A ``remove()`` whose store fails leaves nothing of the company behind in the
integration: ``close()`` still stops its timer.

Found by review: ``remove()`` took the company's grant out of the integration's table first,
then deleted it from the store under the store's lock, and only after that
detached the coordinator from the registry. When the lock or the delete fails (a
Redis that is down for a moment, a lock held elsewhere past the timeout), the
``TokenStoreError`` skipped the detach: the coordinator stayed attached with the
integration's handle, but the integration no longer knew it, so ``close()``
never detached it. Its timer went on refreshing the company's grant after the
integration was closed, for the life of the process.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import pytest
from support.integration_helpers import grant, integration, new_companies

from pleo_auth import Company, Lease, MemoryStore, TokenStoreError
from pleo_auth._registry import REGISTRY
from pleo_auth.stores.family import MemoryStoreFamily
from pleo_auth.testing import Emulator


class _FlakyLock(MemoryStore):
    """A store whose lock fails while ``down`` is set."""

    down = False

    @contextlib.contextmanager
    def lock(self, *, timeout: float, lease: float) -> Iterator[Lease]:
        if self.down:
            raise TokenStoreError("the store is down", retryable=True)
        with super().lock(timeout=timeout, lease=lease) as held:
            yield held


class _Family(MemoryStoreFamily):
    def build_store(self, company: Company) -> MemoryStore:
        with self._guard:
            store = self._stores.get(company)
            if store is None:
                store = self._stores[company] = _FlakyLock()
            return store


def test_close_after_a_failed_remove_detaches_the_companys_coordinator(
    emulator: Emulator,
) -> None:
    (company,) = new_companies(1)
    family = _Family()
    with integration(emulator, family) as pleo:
        pleo.add(company, grant(emulator, company, now=time.time()))
        assert pleo.session(company).get("/v2/employees").status_code == 200
        key = pleo._grants[Company(company)].key
        store = family.store(company)
        assert isinstance(store, _FlakyLock)
        store.down = True
        with pytest.raises(TokenStoreError):
            pleo.remove(company)
        store.down = False
        # The grant is still stored, and a new session of the company takes it up.
        assert pleo.session(company).get("/v2/employees").status_code == 200
    assert REGISTRY.get(key) is None, "the closed integration's coordinator is still attached"
