"""``pleo-auth logout --company`` stays a logout when the app is refreshing that
company's grant at that moment.

Found by review: ``logout`` (without ``--revoke``) deleted the grant with
``family.remove(company)``, outside the store's refresh lock.
``Integration.remove`` takes that lock, so that a refresh under way saves its
pair first and is then removed with it; the command does not. A FileStore's or a
keyring's ``clear()`` takes the lock itself, a RedisStore's does not: the refresh
that held the lock across the logout then finds its fenced save refused (the
pair it replaced is gone), keeps the new pair in memory as *unsaved*, and its
write-back puts it back into the store. The company the operator logged out is
listed again, with a live grant, and its timer and keep-alive go on refreshing it.

Fix: the command removes the grant under the store's lock, as
``Integration.remove`` does.
"""

from __future__ import annotations

import io
import os
import threading
import time
import uuid

from support.integration_helpers import grant, integration, new_companies

from pleo_auth import RedisStore
from pleo_auth.cli import main
from pleo_auth.testing import Emulator


class _Held:
    """A token request hook that holds every request until the test opens it."""

    def __init__(self) -> None:
        self.inside = threading.Event()
        self.go = threading.Event()

    def __call__(self, grant_type: str | None) -> None:
        self.inside.set()
        self.go.wait(30)


def test_a_logout_while_the_app_refreshes_the_company_leaves_it_logged_out(
    emulator: Emulator, redis_url: str
) -> None:
    (company,) = new_companies(1)
    prefix = f"test-{uuid.uuid4().hex}:"
    family = RedisStore.family(redis_url, prefix=prefix)
    env = {
        **os.environ,
        "PLEO_CLIENT_ID": emulator.client_id,
        "PLEO_CLIENT_SECRET": emulator.client_secret,
        "PLEO_TOKEN_URL": emulator.token_url,
        "PLEO_API_URL": emulator.api_url,
    }
    held = _Held()
    results: list[object] = []
    with integration(emulator, family) as pleo:
        pleo.add(company, grant(emulator, company, now=time.time(), age=7200))  # expired
        emulator.set_token_request_hook(held)
        session = pleo.session(company)

        def call() -> None:
            try:
                results.append(session.get("/v2/employees").status_code)
            except Exception as exc:  # the refresh's save is refused
                results.append(type(exc).__name__)

        app = threading.Thread(target=call)
        app.start()
        assert held.inside.wait(10)  # the refresh holds the company's lock
        out = io.StringIO()
        logout = threading.Thread(
            target=lambda: main(
                ["logout", "--store", f"family:{redis_url}?prefix={prefix}", "--company", company],
                env=env,
                out=out,
            )
        )
        logout.start()
        # Time for a logout that takes no lock to run ahead of the refresh's save; one
        # that waits for the lock cannot finish before the refresh lets go of it.
        logout.join(1.0)
        held.go.set()
        app.join(30)
        logout.join(30)
        assert "Logged out" in out.getvalue()
        # Nothing for the app's coordinator to write back over the logout, and nothing
        # written back already.
        assert not session._coordinator.owes_write_back, "the grant will come back"
        assert family.companies() == [], "the grant came back after the logout"
    assert emulator.counters.rejected_refreshes == 0
