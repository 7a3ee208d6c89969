"""The login an Integration's dead grant asks for is a login *for that company*,
through the family.

Found by review: each company's coordinator got ``settings.login_hint(store)`` for the
family's member store, so ``ReauthenticationRequired`` (and its ``login_hint``)
said ``pleo-auth login --store file:<dir>/<company>.json``: a one-grant login
into the company's file, which asks Pleo nothing about the company. A person who
follows it and picks another company at Pleo saves that company's grant as this
company's, and the app then serves one company's data as another's.

Fix: the hint names the family's spec and the company (``--store family:...
--company <id>``), as ``pleo-auth status`` does.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from support.integration_helpers import grant, integration, new_companies

from pleo_auth import Company, FileStore, ReauthenticationRequired
from pleo_auth.testing import Emulator


def test_a_dead_grant_asks_for_a_login_for_its_company_through_the_family(
    emulator: Emulator, tmp_path: Path
) -> None:
    (company,) = new_companies(1)
    directory = tmp_path / "grants"
    with integration(emulator, FileStore.family(directory)) as pleo:
        pleo.add(company, grant(emulator, company, now=time.time()))
        emulator.revoke(company)
        with pytest.raises(ReauthenticationRequired) as raised:
            pleo.session(company).refresh()
    login = raised.value.login
    assert login is not None
    assert login.store == f"family:file:{directory}"
    assert login.company == Company(company).id
    assert f"--store family:file:{directory} " in raised.value.login_hint
    assert raised.value.login_hint.endswith(f"--company {Company(company).id}`.")
