"""Part 9: what idle grants cost, on a FakeClock (issue 12).

An ``Integration`` with the default policy holds G idle grants (1,000): half
have a session built and kept but never send a request, half are only stored.
One more grant is used: its session sends a request every fifth of a token
lifetime. The clock (a :class:`~pleo_auth.testing.FakeClock`, shared with an
emulator in this process) then runs through 10 token lifetimes of 15 minutes,
in steps, and the scheduler is let finish whatever each step made due before
the next.

With the default ``keep_alive`` (7 days) no idle grant may be refreshed at
all. A second run sets ``keep_alive`` to 3 lifetimes: then each idle grant may
be refreshed only by the keep-alive, each refresh at least ``keep_alive`` after
the grant's previous pair was issued. In both, the used grant must be refreshed
ahead of expiry by the scheduler: no request of it may find its token due.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any

from pleo_auth.testing import settle

from ._common import CLIENT_ID, CLIENT_SECRET, Section, Table, Verdict
from ._remote import _TimedEmulator
from .many_grants import PATH, company_ids


@dataclass(frozen=True)
class IdleGrantsConfig:
    """Settings of the idle-grants part.

    Attributes:
        grants: Idle grants (G); half with a session built.
        token_lifetime: Seconds an access token lives (fake time).
        lifetimes: How many lifetimes the clock runs through.
        step: Seconds of fake time per step.
        uses_per_lifetime: Requests of the used grant per lifetime.
        keep_alive_lifetimes: ``keep_alive`` of the second run, in lifetimes.
    """

    grants: int = 1_000
    token_lifetime: float = 900.0
    lifetimes: int = 10
    step: float = 15.0
    uses_per_lifetime: int = 5
    keep_alive_lifetimes: float = 3.0

    @classmethod
    def quick(cls) -> IdleGrantsConfig:
        return cls(grants=40, step=60.0)


def _settled(clock: Any, timeout: float = 60.0) -> None:
    """Wait until the clock's scheduler has nothing due and runs no tick."""
    if not settle(clock, timeout):
        raise RuntimeError(f"the scheduler did not settle within {timeout:g} s")


def run_policy(config: IdleGrantsConfig, keep_alive: float | None) -> dict[str, Any]:
    """One run through ``config.lifetimes`` lifetimes; ``keep_alive`` None: the default."""
    from pleo_auth import Integration, MemoryStore
    from pleo_auth.testing import FakeClock
    from pleo_auth.tokens import TokenSet

    clock = FakeClock()
    lifetime = config.token_lifetime
    idle = company_ids(config.grants, seed=41)
    with_session, stored_only = idle[: len(idle) // 2], idle[len(idle) // 2 :]
    used = company_ids(1, seed=42)[0]
    options: dict[str, Any] = {} if keep_alive is None else {"keep_alive": keep_alive}
    emulator = _TimedEmulator(
        access_token_lifetime=lifetime,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        clock=clock,
    )
    with emulator:
        integration = Integration(
            CLIENT_ID,
            CLIENT_SECRET,
            store=MemoryStore.family(),
            token_url=emulator.token_url,
            api_url=emulator.api_url,
            clock=clock,
            **options,
        )
        for company in [*idle, used]:
            reply = emulator.issue_tokens(company=company)
            integration.add(company, TokenSet.from_response(reply, now=clock.time()))
        sessions = [integration.session(company) for company in with_session]
        session = integration.session(used)
        margin = integration.settings.refresh_margin
        start = clock.time()
        end = start + config.lifetimes * lifetime
        every = lifetime / config.uses_per_lifetime
        next_use = start
        requests = found_due = errors = 0
        _settled(clock)
        while clock.time() < end:
            if clock.time() >= next_use:
                status = integration.status(used)
                assert status.expires_at is not None
                if clock.time() >= status.expires_at - min(margin, lifetime / 2):
                    found_due += 1  # this request would refresh on the caller's thread
                try:
                    session.get(PATH, timeout=30).raise_for_status()
                except Exception:  # counted; the verdict fails on any
                    errors += 1
                requests += 1
                next_use += every
            clock.advance(config.step)
            _settled(clock)
        rotations = list(emulator.rotations)
        integration.close()
        del sessions
    issued: dict[str, list[float]] = collections.defaultdict(lambda: [start])
    for company, when in rotations:
        issued[company].append(when)
    urn = "urn:pleo:company:"
    idle_gaps = [
        later - earlier
        for company in idle
        for earlier, later in zip(issued[urn + company], issued[urn + company][1:], strict=False)
    ]
    return {
        "keep_alive": keep_alive,
        "idle_refreshes_with_session": sum(len(issued[urn + c]) - 1 for c in with_session),
        "idle_refreshes_stored_only": sum(len(issued[urn + c]) - 1 for c in stored_only),
        "idle_refreshes_by_grant": collections.Counter(len(issued[urn + c]) - 1 for c in idle),
        "shortest_idle_gap": min(idle_gaps) if idle_gaps else None,
        "used_refreshes": len(issued[urn + used]) - 1,
        "used_requests": requests,
        "used_found_due": found_due,
        "used_errors": errors,
    }


def run(config: IdleGrantsConfig) -> Section:
    section = Section(
        f"9. Idle grants: {config.grants:,} idle and 1 used, {config.lifetimes} lifetimes "
        f"of {config.token_lifetime / 60:g}-minute tokens (FakeClock)"
    )
    keep_alive = config.keep_alive_lifetimes * config.token_lifetime
    runs = [run_policy(config, None), run_policy(config, keep_alive)]
    section.raw = {"runs": runs}
    table = Table(
        f"Refresh grants over {config.lifetimes} token lifetimes, default policy",
        ["keep_alive", "idle grants with a session: refreshes", "idle grants stored only: "
         "refreshes", "idle grants by refreshes", "shortest gap between an idle grant's pairs",
         "used grant: refreshes", "used grant: requests that found their token due",
         "used grant: errors"],
    )  # fmt: skip
    for r in runs:
        gap = r["shortest_idle_gap"]
        table.rows.append(
            [
                "7 days (default)" if r["keep_alive"] is None else f"{r['keep_alive']:g} s",
                f"{r['idle_refreshes_with_session']:,}",
                f"{r['idle_refreshes_stored_only']:,}",
                ", ".join(
                    f"{n} refreshes: {count}"
                    for n, count in sorted(r["idle_refreshes_by_grant"].items())
                ),
                "n/a" if gap is None else f"{gap:,.0f} s",
                f"{r['used_refreshes']} ({r['used_requests']} requests)",
                str(r["used_found_due"]),
                str(r["used_errors"]),
            ]
        )
    table.notes.append(
        f"The clock moves in steps of {config.step:g} s; after each the scheduler finishes "
        "what the step made due. Before each request of the used grant the store is read: "
        "a token found inside its refresh margin would be refreshed by the request itself, "
        "so 0 means every refresh was the scheduler's, ahead of time. The emulator runs in "
        "this process on the same FakeClock."
    )
    section.tables.append(table)
    default, kept = runs
    lifetimes = f"{config.lifetimes} lifetimes"
    idle_default = default["idle_refreshes_with_session"] + default["idle_refreshes_stored_only"]
    section.verdicts.append(
        Verdict(
            f"idle grants: {config.grants:,} idle grants over {lifetimes}, default policy, "
            "cost no refreshes",
            idle_default == 0,
            f"{idle_default} refreshes",
        )
    )
    gap = kept["shortest_idle_gap"]
    keep_alive_only = gap is None or gap >= keep_alive
    section.verdicts.append(
        Verdict(
            f"idle grants: with keep_alive = {config.keep_alive_lifetimes:g} lifetimes, only "
            "keep-alive refreshes",
            keep_alive_only and kept["idle_refreshes_with_session"] > 0,
            f"{kept['idle_refreshes_with_session'] + kept['idle_refreshes_stored_only']:,} "
            f"refreshes, none sooner than {keep_alive:g} s after the pair before"
            if keep_alive_only
            else f"an idle grant refreshed {gap:.0f} s after its previous pair",
        )
    )
    for r in runs:
        label = "default" if r["keep_alive"] is None else f"keep_alive {r['keep_alive']:g} s"
        section.verdicts.append(
            Verdict(
                f"idle grants ({label}): the used grant keeps its proactive refresh",
                r["used_found_due"] == 0 and r["used_errors"] == 0 and r["used_refreshes"] > 0,
                f"{r['used_refreshes']} refreshes; {r['used_found_due']} of "
                f"{r['used_requests']} requests found their token due; "
                f"{r['used_errors']} errors",
            )
        )
    return section
