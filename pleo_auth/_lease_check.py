"""Whether a refresh may send its token request under the lease it holds."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ._clock import Clock
from .errors import RefreshError

logger = logging.getLogger(__name__)


class LeaseLapsed(RefreshError):
    """A refresh that sent no token request: its lock's lease was no longer known to be
    held (see :attr:`~pleo_auth.Lease.held_until`). Retryable; the coordinator looks
    again under the lock at once, for another process may have refreshed."""


class LeaseStop(Exception):
    """Why the next attempt of a refresh is not sent; :meth:`refusal` says it to the caller."""

    def refusal(self, attempts: int) -> RefreshError:
        raise NotImplementedError


class _Expiring(LeaseStop):
    """The lease would run out before another attempt could finish."""

    def refusal(self, attempts: int) -> RefreshError:
        return RefreshError(
            "gave up: the refresh lock's lease would run out before the token endpoint "
            f"could answer another attempt (after {attempts} attempts)",
            retryable=True,
        )


class _Lapsed(LeaseStop):
    """The lease was last confirmed too long ago: it may be another's."""

    def refusal(self, attempts: int) -> RefreshError:
        logger.warning(
            "token endpoint: not sending the refresh token: the refresh lock's lease was last "
            "renewed too long ago (this process was frozen, or cut off from the store, for "
            "longer than the lease), so another process may hold it and have spent that token"
        )
        return LeaseLapsed(
            "gave up: the refresh lock's lease may have run out (this process was frozen, or "
            "cut off from the store, for longer than the lease) and another process may have "
            f"refreshed meanwhile: the refresh token was not sent (after {attempts} attempts)",
            retryable=True,
        )


def check_lease(
    deadline: float | None, held_until: Callable[[], float] | None, clock: Clock, timeout: float
) -> None:
    """Raise :class:`LeaseStop` unless an attempt of ``timeout`` seconds may be sent now:
    it must end before ``deadline`` (``clock``'s monotonic time), and the lease must
    still be known to be held (``held_until``, on real monotonic time, which the
    renewals keep). Asked just before each attempt: the last moment before sending."""
    if deadline is not None and deadline - clock.monotonic() < timeout:
        raise _Expiring
    if held_until is not None and time.monotonic() >= held_until():
        raise _Lapsed
