"""A child process with a PleoSession over one company's grant in the Django model
store, answering one line per command on stdin (tests/contrib/test_django_store_processes.py).

The first line is the configuration (JSON): the parent's DATABASES, the alias, the
family's client id (the test's own: its rows), the emulator's client, the company
and the emulator's URLs; optionally the row lease (``lease``, seconds). Then, one per line:

* ``refresh``: force a refresh; answers ``refreshed`` or ``error <type>``;
* ``probe-then-refresh``: answers ``held`` or ``free`` (whether another owner holds
  the row's lease right now, by the database's clock), then refreshes as above;
* ``get``: calls the API; answers ``status <code>``;
* ``hold``: takes the row's lease, answers ``held``, and keeps it (renewed) until the
  process ends: the test kills it there;
* ``quit``.

Never prints a token: errors are reported by type only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for support.*


def main() -> None:
    from pleo_auth import PleoSession
    from support.django_project import family

    config = json.loads(sys.stdin.readline())
    options = {"lease": config["lease"]} if "lease" in config else {}
    grants = family(config["databases"], config["alias"], config["client_id"], **options)
    store = grants.store(config["company"])
    session = PleoSession(
        config["oauth_client_id"],
        config["client_secret"],
        store=store,
        token_url=config["token_url"],
        api_url=config["api_url"],
    )

    def say(line: str) -> None:
        print(line, flush=True)

    def lease_held() -> bool:
        from django.db.models.functions import Now

        rows = grants.rows().filter(company=store.company.id, lease_until__gt=Now())
        return bool(rows.exclude(lease_owner=None).exists())

    def refresh() -> None:
        try:
            session.refresh()
        except Exception as exc:  # reported, never a token: only the type
            say(f"error {type(exc).__name__}")
        else:
            say("refreshed")

    say("ready")
    for line in sys.stdin:
        command = line.strip()
        if command == "refresh":
            refresh()
        elif command == "probe-then-refresh":
            say("held" if lease_held() else "free")
            refresh()
        elif command == "hold":
            lease = store.lock(timeout=60.0, lease=600.0)
            lease.__enter__()
            say("held")
        elif command == "get":
            say(f"status {session.get('/v2/employees').status_code}")
        elif command == "quit":
            session.close()
            break


if __name__ == "__main__":
    main()
