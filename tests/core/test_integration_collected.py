"""An Integration dropped without ``close()`` lets go of its grants, as a
PleoSession collected without ``close()`` does.

Found by review: the integration attached each company's coordinator to the process-wide
registry and detached it only in ``remove()`` or ``close()``. An integration the
app drops without closing (built per request or per job, as sessions may be)
leaves every coordinator it attached registered for ever: each keeps its
scheduler entry, its tokens in memory and the integration's token endpoint. With
``on_reauthentication_required`` set, each coordinator's callback is a bound
method of the integration, so the integration itself, its connection pool and
its keep-alive sweep are never collected either: the process grows with every
integration it ever built.
"""

from __future__ import annotations

import gc
import time
import weakref
from pathlib import Path

from support.integration_helpers import grant, integration, new_companies

from pleo_auth import Company, FileStore
from pleo_auth._registry import REGISTRY
from pleo_auth.testing import Emulator


def test_an_integration_dropped_without_close_is_collected_and_detaches_its_grants(
    emulator: Emulator, tmp_path: Path
) -> None:
    (company,) = new_companies(1)
    told: list[Company] = []
    pleo = integration(emulator, FileStore.family(tmp_path / "grants"),
                       on_reauthentication_required=told.append)  # fmt: skip
    pleo.add(company, grant(emulator, company, now=time.time()))
    session = pleo.session(company)
    assert session.get("/v2/employees").status_code == 200
    key = pleo._grants[Company(company)].key
    coordinator = weakref.ref(session._coordinator)
    dropped = weakref.ref(pleo)
    del pleo, session
    gc.collect()
    REGISTRY.reap()  # what the next attach, detach or timer tick does
    gc.collect()
    assert dropped() is None, "the integration was never collected"
    assert REGISTRY.get(key) is None, "its coordinator stays registered for ever"
    assert coordinator() is None
    assert told == []


def test_a_session_kept_after_its_integration_was_collected_keeps_working(
    emulator: Emulator, tmp_path: Path
) -> None:
    (company,) = new_companies(1)
    pleo = integration(emulator, FileStore.family(tmp_path / "grants"))
    pleo.add(company, grant(emulator, company, now=time.time()))
    session = pleo.session(company)
    dropped = weakref.ref(pleo)
    del pleo
    gc.collect()
    REGISTRY.reap()
    assert dropped() is None
    assert session.get("/v2/employees").status_code == 200
    session.refresh()
    assert session.get("/v2/employees").status_code == 200
    assert emulator.counters.refresh_grants == 1
    assert emulator.counters.rejected_refreshes == 0
