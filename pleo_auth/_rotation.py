"""The store-side half of the coordination protocol: what the single flight does
under the store's lock. It re-reads the store; adopts tokens another process
rotated, or spends the refresh token found in the store and saves the new pair
before letting go of the lock; and writes back a pair a failed save left only in
memory, before anything else is spent. See :mod:`pleo_auth._coordinator` for the
whole protocol.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Hashable
from typing import Literal, NamedTuple

from ._clock import Clock
from ._endpoint import TokenEndpoint
from ._gate import RefreshGate, _NoGate
from ._lease_check import LeaseLapsed
from ._restore import _Restoring, on_lost, restore_spent, store_is_lost
from ._schedule import RefreshSchedule
from ._urls import same_endpoint
from .errors import ConfigurationError, PleoAuthError, ReauthenticationRequired, TokenStoreError
from .events import Adopted, LockWaited, Observers, RefreshFailed, RefreshStarted, RefreshSucceeded
from .login_hint import LoginHint
from .stores.base import Lease, TokenStore
from .tokens import TokenSet

logger = logging.getLogger("pleo_auth")

#: Pauses between the attempts to save a pair whose parent was just spent.
_SAVE_RETRY_PAUSES = (0.1, 0.4, 1.0)


#: What the single flight does: spend the refresh token, or read the store.
Operation = Literal["refresh", "sync"]


class _Outcome(NamedTuple):
    tokens: TokenSet | None
    version: Hashable
    failure: PleoAuthError | None = None
    grant_dead: bool = False
    #: ``tokens`` are newer than the stored pair, which is spent: write them back
    #: before anything else is spent.
    unsaved: bool = False
    #: Seconds until the next attempt, in place of the failure's cooldown (a holder
    #: waiting to restore a lost store, see _restore).
    retry_in: float | None = None


class _StoreProtocol(_Restoring):
    """The coordinator's operations that run outside its Condition, as the single
    flight, holding (or taking) the store's lock. Only the single flight replaces
    ``_tokens`` and ``_unsaved``, so these read them without the Condition."""

    store: TokenStore
    endpoint: TokenEndpoint
    gate: RefreshGate | _NoGate
    schedule: RefreshSchedule
    observers: Observers
    _hint: str | LoginHint | Callable[[], LoginHint]
    _clock: Clock
    _tokens: TokenSet | None
    _unsaved: bool
    _lock_timeout: float
    _lease: float

    @property
    def login_hint(self) -> str | LoginHint:
        """What a person should do when the grant is dead: built when first needed,
        because most grants never need it (an Integration builds thousands)."""
        hint = self._hint
        if callable(hint):
            hint = self._hint = hint()
        return hint

    def _sync(self) -> _Outcome:
        version = self.store.version()
        self._note_version(version)
        tokens = self.store.load()
        self._found_lost = False
        held = self._tokens  # only the single flight, which this is, replaces it
        if held is not None and self._owes_write_back(tokens):
            # Our save of ``held`` failed: the store's pair is spent, or withdrawn.
            # Keep ours; the timer writes it back before anything else is spent.
            return _Outcome(tokens=held, version=version, unsaved=True)
        if tokens is None and held is not None:
            # Gone, or caught mid-write by a backend that is not atomic: writers
            # hold the lock, so a read under it is the truth.
            with self.store.lock(timeout=self._lock_timeout, lease=self._lease):
                version = self.store.version()
                tokens = self.store.load()
                if tokens is None and store_is_lost(self):
                    return on_lost(self, held, version)
        elif tokens is None and store_is_lost(self):
            return on_lost(self, None, version)  # says so in its ReauthenticationRequired
        if tokens is not None:
            logger.debug("loaded tokens %s from %s", tokens.fingerprint, self.store.describe())
            if held is not None and tokens.refresh_token != held.refresh_token and self.observers:
                self.observers.emit(Adopted(company=self.observers.company))
        return _Outcome(tokens=tokens, version=version, grant_dead=tokens is None)

    def _refresh(
        self,
        basis: TokenSet | None,
        force: bool,
        *,
        after_401: bool = False,
        slot_held: bool = False,
    ) -> _Outcome:
        """Refresh under the store's lock, or adopt what another process stored.

        Args:
            slot_held: The caller holds a slot of the refresh pool already: a
                proactive refresh takes its slot before it makes the coordinator
                busy, so requests never wait behind the pool for its sake. Else
                a request waits for this refresh, which takes the next free slot
                under the store's lock, just before it sends the token request:
                a refresh waiting for a lock another process holds (or died
                holding) holds no slot, so a few such companies never starve the
                others. If the wait for a slot eats the lock's lease, the
                endpoint refuses to send (see TokenEndpoint.refresh).
        """
        try:
            return self._refresh_locked(basis, force, after_401, slot_held)
        except LeaseLapsed:
            # This process froze (or lost the store) past its lease before it sent the
            # refresh token: another process may have refreshed meanwhile. Look again,
            # under the lock taken afresh: adopt its pair, or refresh with a new lease.
            return self._refresh_locked(basis, force, after_401, slot_held)

    def _refresh_locked(
        self, basis: TokenSet | None, force: bool, after_401: bool, slot_held: bool
    ) -> _Outcome:
        store, observers = self.store, self.observers
        asked = time.perf_counter()
        with store.lock(timeout=self._lock_timeout, lease=self._lease) as lease:
            if observers:
                waited = time.perf_counter() - asked
                observers.emit(LockWaited(company=observers.company, duration=waited))
            version = store.version()
            stored = store.load()
            if self._owes_write_back(stored):
                # The stored refresh token is spent: never present it. Save ours first.
                held = self._tokens
                assert held is not None
                version, failure = self._write_back_locked(held, stored, version)
                if failure is not None:
                    return _Outcome(tokens=held, version=version, failure=failure, unsaved=True)
                stored = held
            if stored is None:
                if store_is_lost(self):
                    return on_lost(self, self._tokens, version, refused=after_401)
                return _Outcome(tokens=None, version=version, grant_dead=True)
            now = self._clock.time()
            fresh = now < self.schedule.due_at(stored)
            rotated_elsewhere = basis is None or stored.refresh_token != basis.refresh_token
            if rotated_elsewhere and (force or fresh):
                logger.debug("adopting tokens %s rotated elsewhere", stored.fingerprint)
                if observers and stored != self._tokens:
                    observers.emit(Adopted(company=observers.company))
                return _Outcome(tokens=stored, version=version)
            if after_401 and stored.after_401 and fresh:
                logger.warning(
                    "Pleo refused access token %s with 401, though it is fresh and still the "
                    "stored one: a 401 already forced the refresh that issued it. Not refreshing "
                    "again before it is due in %.0fs; a 401 that a refresh does not cure means "
                    "the API refuses this grant for another reason (its scopes, or the path)",
                    stored.fingerprint,
                    self.schedule.due_at(stored) - now,
                )
                return _Outcome(tokens=self._tokens if self._tokens == stored else stored,
                                version=version)  # fmt: skip
            mismatch = self._foreign_issuer(stored)
            if mismatch is not None:
                # Never send the refresh token to a server that did not issue it: its
                # invalid_grant would pass for a dead grant and clear a live pair.
                return _Outcome(tokens=self._tokens, version=version, failure=mismatch)
            try:
                new, attempts, took = self._spend(stored, lease, slot_held)
            except ReauthenticationRequired as exc:
                exc = exc.with_login_hint(self.login_hint)
                logger.warning("the grant is dead (%s); clearing %s", exc.error, store.describe())
                store.clear(only=stored)
                return _Outcome(tokens=None, version=store.version(), failure=exc, grant_dead=True)
            new = new.succeeding(stored, after_401=after_401)
            failure = self._save_spent_over(new, stored, lease)
            if failure is not None:
                # Keep the new pair in memory, and write it back before anything else
                # is spent (see _write_back). Meanwhile no process may find the spent
                # pair and refresh from it: a store that cannot be written can often
                # still delete (a full disk, Redis out of memory).
                logger.error("refreshed, but could not save the new tokens: %s", failure)
                if observers:
                    observers.emit(_failed(observers, failure))
                version = self._withdraw_spent(stored, version)
                return _Outcome(tokens=new, version=version, failure=failure, unsaved=True)
            if observers:
                observers.emit(
                    RefreshSucceeded(company=observers.company, duration=took, attempts=attempts)
                )
            logger.info(
                "refreshed tokens %s -> %s; access expires in %.0fs",
                stored.fingerprint,
                new.fingerprint,
                new.expires_at - self._clock.time(),
            )
            return _Outcome(tokens=new, version=store.version())

    def _spend(
        self, stored: TokenSet, lease: Lease, slot_held: bool
    ) -> tuple[TokenSet, int, float]:
        """Spend ``stored``'s refresh token (in a slot of the pool, unless the caller
        holds one) and tell the observers. The new pair, the attempts, the seconds."""
        observers = self.observers
        tally: list[int] = []
        with contextlib.nullcontext() if slot_held else self.gate.slot(urgent=True):
            if observers:
                observers.emit(RefreshStarted(company=observers.company))
            started = time.perf_counter()
            try:
                new = self.endpoint.refresh(
                    stored.refresh_token,
                    deadline=lease.deadline,
                    held_until=lease.held_until,
                    tally=tally,
                    access_token=stored.access_token,
                )
            except PleoAuthError as exc:
                if observers:
                    observers.emit(_failed(observers, exc))
                raise
        return new, len(tally), time.perf_counter() - started

    def _foreign_issuer(self, stored: TokenSet) -> ConfigurationError | None:
        """Why ``stored`` must not be refreshed here: another token endpoint issued
        it. None when it came from this one, or does not say (saved by 0.1, or by a
        store of one's own: nothing tells, so it is refreshed here, as 0.1 did)."""
        if stored.token_url is None or same_endpoint(stored.token_url, self.endpoint.token_url):
            return None
        return ConfigurationError(
            f"the tokens in {self.store.describe()} were issued by {stored.token_url}, but "
            f"this session's token endpoint is {self.endpoint.token_url}: not refreshing "
            "there. Point the session's token_url (or environment) at the tokens' issuer, "
            "or log in again through this one"
        )

    def _owes_write_back(self, stored: TokenSet | None) -> bool:
        """Whether the tokens in memory are newer than ``stored``, which is then spent
        (an ancestor of ours), or gone because a failed save withdrew it."""
        held = self._tokens
        if held is None:
            return False
        if stored is None:
            return self._unsaved
        return held.descends_from(stored)

    def _withdraw_spent(self, spent: TokenSet, version: Hashable) -> Hashable:
        """Delete ``spent`` from the store if it can, so no process refreshes from it
        while the pair that replaced it waits to be written back."""
        try:
            self.store.clear(only=spent)
            return self.store.version()
        except TokenStoreError as exc:
            logger.warning("could not withdraw the spent tokens either: %s", exc)
            return version

    def _save_spent_over(
        self, new: TokenSet, stored: TokenSet, lease: Lease
    ) -> TokenStoreError | None:
        """Save ``new`` over ``stored``, whose refresh token was just spent, trying a few
        times within a second or two: the lock is still held, so no other process can
        spend the stored pair while a blip (a dropped connection, a moment of full disk)
        passes. None once saved."""
        pauses = iter(_SAVE_RETRY_PAUSES)
        while True:
            try:
                self.store.save(new, replaces=stored)
                return None
            except TokenStoreError as exc:
                if restore_spent(self, new):
                    return None
                pause = next(pauses, None)
                if pause is None or (
                    lease.deadline is not None and time.monotonic() + pause >= lease.deadline
                ):
                    return exc
                logger.warning("could not save the new tokens (%s); trying again", exc)
            time.sleep(pause)  # real time: the lock is held, and its lease runs in real time

    def _write_back(self) -> _Outcome:
        """Save the pair a failed save left only in memory, unless the store moved on."""
        with self.store.lock(timeout=self._lock_timeout, lease=self._lease):
            version = self.store.version()
            stored = self.store.load()
            held = self._tokens
            if held is None or not self._owes_write_back(stored):
                # A new login, or someone else's write-back: the store wins.
                return _Outcome(tokens=stored, version=version, grant_dead=stored is None)
            version, failure = self._write_back_locked(held, stored, version)
            return _Outcome(tokens=held, version=version, failure=failure, unsaved=bool(failure))

    def _write_back_locked(
        self, held: TokenSet, stored: TokenSet | None, version: Hashable
    ) -> tuple[Hashable, TokenStoreError | None]:
        """Save ``held`` over its spent ancestor ``stored``; the caller holds the lock."""
        try:
            self.store.save(held, replaces=stored)
        except TokenStoreError as exc:
            logger.error(
                "still cannot save tokens %s; %s holds spent ones: %s",
                held.fingerprint,
                self.store.describe(),
                exc,
            )
            return version, exc
        logger.warning(
            "saved tokens %s, which an earlier failed save had left only in memory",
            held.fingerprint,
        )
        return self.store.version(), None


def _failed(observers: Observers, error: PleoAuthError) -> RefreshFailed:
    """The event of a refresh that gave up with ``error``, whose message holds no token."""
    reason = getattr(error, "error", None) or str(error)
    return RefreshFailed(
        company=observers.company,
        reason=reason,
        error_type=type(error).__name__,
        retryable=bool(getattr(error, "retryable", False)),
    )
