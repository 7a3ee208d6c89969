"""What the single flight does when the store lost its data: loss is not logout.

A store that holds no tokens says, through :meth:`TokenStore.lost`, whether a
logout left its tombstone there (``pleo-auth logout``, ``store.clear()``, a dead
grant), or nothing at all: a Redis key evicted or flushed, a restart without
persistence, a truncated table. Pleo revoked nothing in the second case, and a
process may still hold the live pair in memory. Under the store's lock, such a
process writes its pair back (:meth:`TokenStore.restore`), and the grant goes on,
unless one of these holds:

* **It knows a newer pair exists.** It saw the store's version move past the one
  its pair came from, and has not loaded what moved it (another process rotated,
  or logged out). Its pair may be spent: presented once, a spent refresh token
  revokes the grant. It never writes it back; it waits, with its pair in memory and
  a retryable :class:`~pleo_auth.TokenStoreError`, for the process that holds the
  newer pair to restore it, and asks for a login once its access token expired and
  :data:`GIVE_UP_AFTER` seconds passed.
* **Its pair may be mid-rotation elsewhere.** From the earliest moment any
  process's timer refreshes the pair (:meth:`RefreshSchedule.timer_due_at` with
  the whole jitter), another process may have spent it just before the data
  vanished, and be retrying the save of the new pair (a fenced save into a lost
  store restores it) or writing it back. The holder then waits
  :data:`RESTORE_GRACE` seconds from when it first found the store lost, using the
  access token it holds, and restores only if nobody did meanwhile.

A process that holds no pair gets :class:`~pleo_auth.ReauthenticationRequired`, as
before, saying that the store lost its data.

What this cannot see: a process that spent the pair through a forced refresh (a
401, ``session.refresh()``) before its due time, whose new pair nobody else had
read when the data vanished, and that then cannot reach the store until another
holder has restored the old pair and spent it. docs/reliability.md lists it.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from .errors import PleoAuthError, ReauthenticationRequired, TokenStoreError
from .tokens import TokenSet

if TYPE_CHECKING:
    from ._rotation import _Outcome, _StoreProtocol

logger = logging.getLogger("pleo_auth")

#: Seconds a holder whose pair may be mid-rotation elsewhere waits before it
#: restores it: more than the pause between a process's attempts to write back a
#: pair it could not save (one second), and than its first retries of the save.
RESTORE_GRACE = 1.5

#: Seconds a process whose pair is superseded waits, once its access token expired
#: too, for the holder of the newer pair to restore it, before it asks for a login.
GIVE_UP_AFTER = 4 * RESTORE_GRACE


def lost_message(where: str) -> str:
    """What ReauthenticationRequired says when the store lost its data."""
    return (
        f"No Pleo tokens in {where}, and no logout recorded there: it lost its data "
        "(a Redis key evicted or flushed, a restart without persistence, a truncated "
        "table), or no login was ever saved to it, and no process held a live pair "
        "to restore."
    )


class _Restoring:
    """The coordinator's state about a lost store; mixed into the coordinator."""

    #: (a version read, the version our pair came from then): the store moved past
    #: our pair, to tokens or a tombstone we have not loaded.
    _newer_seen: tuple[Hashable, Hashable] | None = None
    #: A pair this process knows to be superseded: never written back.
    _superseded: TokenSet | None = None
    #: Monotonic time this process first found the store lost, in this loss.
    _lost_since: float | None = None
    #: The last read found the store lost with no pair held here: the dead grant's
    #: ReauthenticationRequired says so.
    _found_lost = False

    def _note_version(self, version: Hashable) -> None:
        """Remember a version read from the store that is not our pair's. Called
        outside the Condition: the pair's version is read first, so a note made
        across a publish names the older version and is ignored."""
        base = getattr(self, "_version", None)
        if version is not None and version != base:
            self._newer_seen = (version, base)

    def _replay_after_restore_locked(self: Any, used: TokenSet) -> TokenSet | None:
        """After a 401 for ``used``, a pair this process knows to be superseded, in a
        store that lost its data: reload every 0.1 s, for at most twice
        :data:`RESTORE_GRACE`, until the process holding the newer pair has restored
        it. The tokens to replay with, or None (the caller gets the 401). Called, and
        returns, holding the coordinator's Condition (released while it waits)."""
        deadline = self._clock.monotonic() + 2 * RESTORE_GRACE
        while True:
            tokens: TokenSet | None = self._tokens
            if tokens is not None and tokens.access_token != used.access_token:
                return tokens
            if tokens is None or self._closed or self._clock.monotonic() >= deadline:
                return None
            self._cond.wait(0.1)  # a pause, not a signal: the restore is in another process
            if self._busy is None:
                self._run_locked("sync", self._sync)

    def _behind(self: Any, held: TokenSet, lost_version: Hashable) -> bool:
        """Whether ``held`` is known to be older than what the store held: a version
        seen since our pair's that is not the lost store's own."""
        if self._superseded is not None and self._superseded == held:
            return True
        seen = self._newer_seen
        return seen is not None and seen[1] == self._version and seen[0] != lost_version


def store_is_lost(proto: _StoreProtocol) -> bool:
    """Whether the store lost its data (see :meth:`TokenStore.lost`)."""
    return bool(proto.store.lost())


def on_lost(
    proto: _StoreProtocol, held: TokenSet | None, version: Hashable, *, refused: bool = False
) -> _Outcome:
    """The outcome for a store found lost under its lock, with ``held`` in memory.
    ``refused``: Pleo answered 401 to ``held``'s access token, which then was
    rotated elsewhere (or is refused for another reason): it is never restored."""
    from ._rotation import _Outcome

    store = proto.store
    where = store.describe()
    failure: PleoAuthError
    if held is None:
        # Not a failure to keep: the next read of a changed version (a login, another
        # process's restore) must find the tokens. Only the message says it was lost.
        proto._found_lost = True
        return _Outcome(tokens=None, version=version, grant_dead=True)
    now = proto._clock.time()
    mono = proto._clock.monotonic()
    schedule = proto.schedule
    since = proto._lost_since
    if since is None or mono - since > RESTORE_GRACE + 2 * schedule.failure_cooldown + 1:
        since = proto._lost_since = mono  # a new loss (another process restored the last)
    if refused:
        proto._superseded = held
    if proto._behind(held, version):
        proto._superseded = held
        if held.expires_at <= now and mono - since >= GIVE_UP_AFTER:
            logger.warning(
                "%s lost its data, and tokens %s held here are older than tokens this "
                "process saw stored; no process restored newer ones before they expired",
                where,
                held.fingerprint,
            )
            failure = ReauthenticationRequired(lost_message(where), login_hint=proto.login_hint)
            return _Outcome(tokens=None, version=version, failure=failure, grant_dead=True)
        logger.warning(
            "%s lost its data; not restoring tokens %s: this process saw newer tokens "
            "stored, and this pair may be spent. Waiting for the process holding them",
            where,
            held.fingerprint,
        )
        failure = TokenStoreError(
            f"{where} lost its data, and the tokens this process holds are older than "
            "tokens it saw stored: waiting for another process to restore the newest",
            retryable=True,
        )
        return _Outcome(tokens=held, version=version, failure=failure)
    earliest = schedule.timer_due_at(held, 1.0)
    if now >= earliest and mono - since < RESTORE_GRACE:
        logger.info(
            "%s lost its data while tokens %s were due: waiting %.1fs for a process "
            "that may have rotated them to restore its pair",
            where,
            held.fingerprint,
            RESTORE_GRACE - (mono - since),
        )
        failure = TokenStoreError(
            f"{where} lost its data; waiting for a process that may hold newer "
            "tokens before restoring the pair held here",
            retryable=True,
        )
        wait = RESTORE_GRACE - (mono - since) + 0.05
        return _Outcome(tokens=held, version=version, failure=failure, retry_in=wait)
    store.restore(held)
    proto._lost_since = None
    logger.warning(
        "%s lost its data (no tokens, and no logout recorded): restored tokens %s, the "
        "newest this process knows; the grant goes on",
        where,
        held.fingerprint,
    )
    _emit_restored(proto, where)
    return _Outcome(tokens=held, version=store.version())


def restore_spent(proto: _StoreProtocol, new: TokenSet) -> bool:
    """After a failed save of ``new``, just refreshed from the pair read under the
    lock: restore it if the store lost its data meanwhile. No newer pair can exist.
    Whether it did."""
    store = proto.store
    try:
        if not store.lost():
            return False
        store.restore(new)
    except TokenStoreError:
        return False
    logger.warning(
        "%s lost its data during a refresh: restored the new tokens %s",
        store.describe(),
        new.fingerprint,
    )
    _emit_restored(proto, store.describe())
    return True


def _emit_restored(proto: _StoreProtocol, where: str) -> None:
    """Tell the grant's observers (pleo_auth.events), where the coordinator has them."""
    from . import events

    observers = getattr(proto, "observers", None)
    if observers is not None:
        if observers:
            events.emit(events.StoreRestored(company=observers.company, store=where), observers)
    elif events.active():
        events.emit(events.StoreRestored(store=where))
