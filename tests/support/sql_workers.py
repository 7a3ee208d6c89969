"""What the SQLStore process tests run in each spawned process: a lease holder that
waits to be killed, and an Integration over a SQLStore calling the emulator.

Processes share nothing but the database and the emulator's URLs, as hosts would.
"""

from __future__ import annotations

import threading
import time
import traceback
from typing import Any

from pleo_auth import Integration
from pleo_auth.stores import SQLStore


def hold_the_lease(
    url: str, table: str, client_id: str, company: str, lease: float, outbox: Any
) -> None:
    """Take ``company``'s lock with a row lease of ``lease`` seconds, say so, and
    hold it (renewing it) until killed."""
    family = SQLStore(url, client_id=client_id, table=table, lease=lease)
    with family.for_company(company).lock(timeout=30.0, lease=600.0):
        outbox.put(("holding", family.database_time()))
        while True:
            time.sleep(3600)


def call_companies(
    url: str,
    table: str,
    client: dict[str, str],
    companies: list[str],
    threads: int,
    barrier: Any,
    outbox: Any,
) -> None:
    """An Integration over ``table``: ``threads`` threads, started together with the
    other processes', each calling every company once. Puts ("done", statuses) or
    ("failed", traceback)."""
    try:
        family = SQLStore(url, client_id=client["client_id"], table=table)
        statuses: list[int] = []
        errors: list[str] = []
        guard = threading.Lock()
        with Integration(
            client["client_id"],
            client["client_secret"],
            store=family,
            token_url=client["token_url"],
            api_url=client["api_url"],
        ) as pleo:
            start = threading.Barrier(threads)

            def work(n: int) -> None:
                start.wait()
                for company in companies[n % len(companies) :] + companies[: n % len(companies)]:
                    try:
                        status = pleo.session(company).get("/v2/employees").status_code
                        with guard:
                            statuses.append(status)
                    except Exception as exc:
                        with guard:
                            errors.append(type(exc).__name__)

            workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
            barrier.wait(60)
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join(120)
        family.close()
        outbox.put(("done", {"statuses": statuses, "errors": errors}))
    except BaseException:
        outbox.put(("failed", traceback.format_exc()))
