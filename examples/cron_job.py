"""A cron job that calls Pleo with tokens kept in a file, and says clearly when a
person must log in again.

Log in once, as the user the job runs as:

    export PLEO_CLIENT_ID=... PLEO_CLIENT_SECRET=...
    pleo-auth login --store file:~/.config/pleo/tokens.json

Then, from cron (the secret from the environment, never the command line):

    */15 * * * *  PLEO_CLIENT_ID=... PLEO_CLIENT_SECRET=... python cron_job.py

Every setting comes from the environment, read into one ``pleo_auth.Settings``
(``PLEO_CLIENT_ID``, ``PLEO_CLIENT_SECRET``, ``PLEO_ENVIRONMENT``,
``PLEO_TOKEN_URL``, ``PLEO_API_URL``, ...). The token file is
``PLEO_TOKEN_FILE``, by default ~/.config/pleo/tokens.json. For the local
emulator, set PLEO_TOKEN_URL and PLEO_API_URL as ``pleo-auth emulator`` prints them.

Exit status, as the ``pleo-auth`` command's: 0 done; 1 a person must log in (the
message gives the command, URLs included); 2 bad settings; 3 anything else (the
token file is unsafe or unreadable, Pleo could not be reached).
"""

from __future__ import annotations

import logging
import os
import sys

from pleo_auth import (
    ConfigurationError,
    FileStore,
    PleoAuthError,
    PleoSession,
    ReauthenticationRequired,
    Settings,
)
from pleo_auth.cli import login_command

TOKEN_FILE = os.environ.get("PLEO_TOKEN_FILE", "~/.config/pleo/tokens.json")


def fail(message: str, *details: str) -> None:
    print(f"cron_job: {message}", file=sys.stderr)
    for detail in details:
        print(f"  {detail}", file=sys.stderr)


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings.from_env(store=f"file:{TOKEN_FILE}")
        settings.require_client_id()
        store = settings.build_store()
    except ConfigurationError as exc:
        fail(f"bad settings: {exc}")
        return 2
    assert isinstance(store, FileStore)
    login = login_command(settings.login_hint(store))
    try:
        # Without tokens there is nothing to do but ask for a login.
        if store.load() is None:
            fail(f"no Pleo tokens in {store.describe()}. A person must log in:", login)
            return 1
        with PleoSession(settings=settings, store=store) as pleo:
            response = pleo.get("/v2/employees")
            response.raise_for_status()
    except ReauthenticationRequired as exc:
        # The grant is gone (revoked, expired, or a refresh token spent twice):
        # only a person can fix that.
        fail(f"Pleo needs a new login: {exc.reason}", login)
        return 1
    except PleoAuthError as exc:
        # An unsafe token file (readable by others), an unreadable store, Pleo down.
        fail(f"could not authenticate to Pleo: {exc}")
        return 3
    employees = response.json().get("data", [])
    print(f"cron_job: {len(employees)} employees")
    return 0


if __name__ == "__main__":
    sys.exit(main())
