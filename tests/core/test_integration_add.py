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

import pytest
from support.adversarial import session_args
from support.integration_helpers import grant, integration, new_companies
from support.session_doubles import ReadFailsOnce

from pleo_auth import FileStore, PleoSession, TokenSet, TokenStoreError
from pleo_auth.stores.base import save_login
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


@pytest.mark.parametrize("retryable", [True, False])
def test_saving_a_login_again_while_the_stored_pair_cannot_be_read_saves_nothing(
    emulator: Emulator, tmp_path: Path, retryable: bool
) -> None:
    """A read that failed for a moment is not "unreadable leftovers": what it could not
    read may be the login's rotated continuation, and a login saved over it would put
    a spent refresh token back. The save is refused with the read's error, whether or
    not the store calls it retryable: only unreadable leftovers are replaced."""
    store = ReadFailsOnce(tmp_path / "tokens.json")
    store.retryable = retryable
    login = TokenSet.from_response(emulator.issue_tokens(), now=time.time())
    save_login(store, login)
    with PleoSession(**session_args(emulator), store=store) as session:
        session.refresh()  # the grant rotates past the login
    live = store.load()
    assert live is not None
    assert live.descends_from(login)
    store.fail_next_load = True
    with pytest.raises(TokenStoreError, match="timed out") as caught:
        save_login(store, login)  # the app's start-up, as before
    assert caught.value.retryable is retryable
    assert store.load() == live
    save_login(store, login)  # read again: the stored pair descends from it, kept
    assert store.load() == live
    assert emulator.counters.refresh_grants == 1
    assert emulator.counters.reuse_detections == 0
