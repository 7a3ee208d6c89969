"""A cron job that calls Pleo with tokens kept in a file, and says clearly when a
person must log in again.

Log in once, as the user the job runs as:

    export PLEO_CLIENT_ID=... PLEO_CLIENT_SECRET=...
    pleo-auth login --client-id "$PLEO_CLIENT_ID" --store file:~/.config/pleo/tokens.json

Then, from cron (the secret from the environment, never the command line):

    */15 * * * *  PLEO_CLIENT_ID=... PLEO_CLIENT_SECRET=... python cron_job.py

Exit status: 0 done; 2 a person must log in (the message says how); 1 anything else.
A shell wrapper can check first with ``pleo-auth status --store file:...``, which
exits 1 when there are no tokens.

For the local emulator, also set PLEO_TOKEN_URL and PLEO_API_URL (printed by
``pleo-auth emulator``) and PLEO_TOKEN_FILE.
"""

from __future__ import annotations

import logging
import os
import sys

from pleo_auth import FileStore, PleoAuthError, PleoSession, ReauthenticationRequired

TOKEN_FILE = os.environ.get("PLEO_TOKEN_FILE", "~/.config/pleo/tokens.json")


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    client_id = os.environ.get("PLEO_CLIENT_ID")
    if not client_id:
        print("cron_job: set PLEO_CLIENT_ID and PLEO_CLIENT_SECRET", file=sys.stderr)
        return 1
    store = FileStore(TOKEN_FILE)

    # Check the status first: without tokens there is nothing to do but ask for a login.
    if store.load() is None:
        print(
            f"cron_job: no Pleo tokens in {store.describe()}. A person must log in:\n"
            f"  pleo-auth login --client-id {client_id} --store {store.spec}",
            file=sys.stderr,
        )
        return 2

    with PleoSession(
        client_id,
        os.environ.get("PLEO_CLIENT_SECRET"),
        store=store,
        token_url=os.environ.get("PLEO_TOKEN_URL"),
        api_url=os.environ.get("PLEO_API_URL"),
    ) as pleo:
        try:
            response = pleo.get("/v2/employees")
            response.raise_for_status()
        except ReauthenticationRequired as exc:
            # The grant is gone (revoked, expired, or a refresh token spent twice):
            # only a person can fix that. The message names the command to run.
            print(f"cron_job: Pleo needs a new login. {exc}", file=sys.stderr)
            return 2
        except PleoAuthError as exc:
            print(f"cron_job: could not authenticate to Pleo: {exc}", file=sys.stderr)
            return 1
    employees = response.json().get("data", [])
    print(f"cron_job: {len(employees)} employees")
    return 0


if __name__ == "__main__":
    sys.exit(main())
