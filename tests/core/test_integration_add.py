"""``Integration.add(company, tokens)`` never puts back a pair the company's grant
has already rotated past.

Found by review: ``add`` saved ``tokens`` over whatever the store held (``save_login``), even
when the stored pair is a rotated descendant of ``tokens`` (its lineage names
them): an app that passes its login's reply again at every start, as
``PleoSession(tokens=...)`` documents to be safe, puts a spent refresh token back
into the store. The next refresh presents it, Pleo sees a spent refresh token,
and revokes the whole grant: the company needs a person to log in again.

Fix: like ``PleoSession``'s seeding, a login that the stored pair descends from
(or the stored pair itself) is not saved again; the stored pair is that login's
live continuation.
"""

from __future__ import annotations

import time
from pathlib import Path

from support.integration_helpers import grant, integration, new_companies

from pleo_auth import FileStore
from pleo_auth.testing import Emulator


def test_adding_a_login_again_after_its_grant_rotated_keeps_the_live_pair(
    emulator: Emulator, tmp_path: Path
) -> None:
    (company,) = new_companies(1)
    family = FileStore.family(tmp_path / "grants")
    login = grant(emulator, company, now=time.time())
    with integration(emulator, family) as first_run:
        first_run.add(company, login)
        first_run.session(company).refresh()  # the grant rotates past the login
    with integration(emulator, family) as next_run:
        next_run.add(company, login)  # the app's start-up, as before
        assert next_run.session(company).get("/v2/employees").status_code == 200
        next_run.session(company).refresh()
        assert not next_run.status(company).needs_login
    assert emulator.counters.refresh_grants == 2
    assert emulator.counters.reuse_detections == 0
    assert emulator.counters.rejected_refreshes == 0
