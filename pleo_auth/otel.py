"""OpenTelemetry metrics for pleo_auth, through ``opentelemetry-api`` only.

Install the extra (``pip install pleo-auth[otel]``) and turn them on once per process::

    import pleo_auth.otel

    pleo_auth.otel.instrument()  # the global MeterProvider your app configured

The app chooses the SDK and the exporter, as OpenTelemetry's libraries do: this
module never imports ``opentelemetry-sdk``. Without an SDK, the API's no-op
provider makes every instrument free. :func:`instrument` subscribes to
:mod:`pleo_auth.events` (every grant of the process, whichever session or
integration holds it) and registers an observable gauge; nothing is measured on a
request's ordinary path.

Instruments (names follow OpenTelemetry's conventions, units UCUM; the table of
names, units and attributes is in docs/guide/observability.md):

* counters ``pleo_auth.refreshes`` (``outcome``: success or failure, and
  ``error.type`` on failure), ``pleo_auth.unauthorized.replays``,
  ``pleo_auth.reauthentications_needed``, ``pleo_auth.adoptions``;
* histograms, in seconds: ``pleo_auth.refresh.duration``,
  ``pleo_auth.lock.wait_time``, ``pleo_auth.request.held_time``,
  ``pleo_auth.rate_limit.wait_time``;
* observable: the gauge ``pleo_auth.access_token.time_to_expiry`` (s) and the
  counter ``pleo_auth.events.dropped``.

Every instrument but the last also carries ``pleo.company.id`` (the company's
UUID) when the app asks for it with ``company_attributes=True``: off by default,
because an integration with thousands of companies would make thousands of time
series per instrument. The gauge then has one point per company's grant held in
this process; without it, one point: the soonest expiry of any grant held here.
A grant with no tokens (it needs a login) has no point: count
``pleo_auth.reauthentications_needed``, or run ``pleo-auth status --json``.

Thread safety:
    :func:`instrument` and :meth:`Instrumentation.close` may be called from any
    thread. The instruments are recorded on the events' dispatcher thread.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from . import __version__, events
from .errors import ConfigurationError

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

__all__ = ["BUCKETS", "COMPANY_ATTRIBUTE", "Instrumentation", "instrument"]

#: The attribute that names a company, when the app opts in.
COMPANY_ATTRIBUTE = "pleo.company.id"

#: The histograms' buckets, in seconds (the SDK's default ones, 0 to 10,000, are for
#: milliseconds): OpenTelemetry's for HTTP durations, up to a refresh's retry budget.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _api() -> Any:
    try:
        from opentelemetry import metrics
    except ImportError:
        raise ConfigurationError(
            "pleo_auth.otel needs the OpenTelemetry API: pip install 'pleo-auth[otel]'"
        ) from None
    return metrics


class Instrumentation:
    """pleo_auth's instruments on one meter; :meth:`close` turns them off.

    Thread safety:
        Events are recorded on the dispatcher thread; the gauge is read on the
        exporter's. Neither holds a lock of pleo_auth's across the other's work.
    """

    def __init__(self, meter_provider: MeterProvider | None, company_attributes: bool):
        metrics = _api()
        provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
        meter = provider.get_meter("pleo_auth", __version__)
        self._provider = provider  # kept: its id() keys the live instrumentations
        self._users = 1
        self.company_attributes = company_attributes
        self._closed = threading.Event()
        self.refreshes = meter.create_counter(
            "pleo_auth.refreshes", unit="{refresh}", description="Refreshes, by outcome."
        )
        self.refresh_duration = meter.create_histogram(
            "pleo_auth.refresh.duration",
            unit="s",
            explicit_bucket_boundaries_advisory=BUCKETS,
            description="Time a refresh spent sending its token requests, retries included.",
        )
        self.replays = meter.create_counter(
            "pleo_auth.unauthorized.replays",
            unit="{request}",
            description="Requests refused with 401 and sent again with other tokens.",
        )
        self.reauthentications = meter.create_counter(
            "pleo_auth.reauthentications_needed",
            unit="{grant}",
            description="Grants found dead: a person must log in again.",
        )
        self.adoptions = meter.create_counter(
            "pleo_auth.adoptions",
            unit="{rotation}",
            description="Tokens another process stored, taken up by this one.",
        )
        self.lock_wait = meter.create_histogram(
            "pleo_auth.lock.wait_time",
            unit="s",
            explicit_bucket_boundaries_advisory=BUCKETS,
            description="Time a refresh waited for the store's refresh lock.",
        )
        self.held = meter.create_histogram(
            "pleo_auth.request.held_time",
            unit="s",
            explicit_bucket_boundaries_advisory=BUCKETS,
            description="Time a request waited for a refresh (or reload) before it was sent.",
        )
        self.rate_limited = meter.create_histogram(
            "pleo_auth.rate_limit.wait_time",
            unit="s",
            explicit_bucket_boundaries_advisory=BUCKETS,
            description="Time a request waited for Pleo's API rate limit.",
        )
        meter.create_observable_gauge(
            "pleo_auth.access_token.time_to_expiry",
            callbacks=[self._expiries],
            unit="s",
            description="Seconds until the access token of each grant held here expires.",
        )
        meter.create_observable_counter(
            "pleo_auth.events.dropped",
            callbacks=[self._dropped],
            unit="{event}",
            description="Events dropped because a subscriber was too slow.",
        )
        self._unsubscribe = events.subscribe(self._record)

    def close(self) -> None:
        """Stop recording; the observable instruments report nothing from now on.

        When :func:`instrument` returned this to several callers (one provider),
        it stops at the last of their ``close()`` calls.
        """
        with _instrumented_lock:
            self._users -= 1
            if self._users > 0:
                return
            if _instrumented.get(id(self._provider)) is self:
                del _instrumented[id(self._provider)]
        self._closed.set()
        self._unsubscribe()

    def _attributes(self, event: events.Event) -> dict[str, str]:
        if self.company_attributes and event.company is not None:
            return {COMPANY_ATTRIBUTE: event.company}
        return {}

    def _record(self, event: events.Event) -> None:
        attributes = self._attributes(event)
        if isinstance(event, events.RefreshSucceeded):
            attributes["outcome"] = "success"
            self.refreshes.add(1, attributes)
            self.refresh_duration.record(event.duration, attributes)
        elif isinstance(event, events.RefreshFailed):
            attributes["outcome"] = "failure"
            attributes["error.type"] = event.error_type
            self.refreshes.add(1, attributes)
        elif isinstance(event, events.Replayed401):
            self.replays.add(1, attributes)
        elif isinstance(event, events.GrantDead):
            self.reauthentications.add(1, attributes)
        elif isinstance(event, events.Adopted):
            self.adoptions.add(1, attributes)
        elif isinstance(event, events.LockWaited):
            self.lock_wait.record(event.duration, attributes)
        elif isinstance(event, events.RequestHeld):
            self.held.record(event.duration, attributes)
        elif isinstance(event, events.RateLimited):
            self.rate_limited.record(event.wait, attributes)

    def _expiries(self, options: CallbackOptions) -> Iterable[Observation]:
        from opentelemetry.metrics import Observation

        if self._closed.is_set():
            return []
        soonest: dict[str | None, float] = {}
        for company, left in _time_to_expiry():
            key = company if self.company_attributes else None
            soonest[key] = min(left, soonest.get(key, math.inf))
        return [
            Observation(left, {COMPANY_ATTRIBUTE: company} if company is not None else {})
            for company, left in soonest.items()
        ]

    def _dropped(self, options: CallbackOptions) -> Iterable[Observation]:
        from opentelemetry.metrics import Observation

        return [] if self._closed.is_set() else [Observation(events.dropped())]


def _time_to_expiry() -> list[tuple[str | None, float]]:
    """(company, seconds until its access token expires) of every grant this
    process holds tokens of, read from memory: no store is touched."""
    from ._registry import REGISTRY

    with REGISTRY._lock:
        # As attach() does: a session closed here by a __del__ that a collection ran
        # on this thread is released later, instead of waiting for this lock for ever.
        REGISTRY._owner = threading.get_ident()
        try:
            coordinators = [coordinator for coordinator, _ in REGISTRY._entries.values()]
        finally:
            REGISTRY._owner = None
    found = []
    for coordinator in coordinators:
        tokens = coordinator._tokens  # read whole, without the Condition
        if tokens is not None:
            left = tokens.expires_at - coordinator._clock.time()
            found.append((coordinator.observers.company, left))
    return found


def instrument(
    meter_provider: MeterProvider | None = None, *, company_attributes: bool = False
) -> Instrumentation:
    """Record pleo_auth's metrics on ``meter_provider`` (else the global one).

    Call it once per process, at start-up (after a fork, the child's events start
    empty; the instruments carry on). Call it again with another provider to
    record on both; :meth:`Instrumentation.close` ends one. Called again with a
    provider already instrumented (a library and the app both call it), it returns
    the same :class:`Instrumentation`, so each refresh is counted once; it then
    stops at the last of its callers' ``close()``.

    Args:
        meter_provider: The app's MeterProvider; None for OpenTelemetry's global
            one (``opentelemetry.metrics.set_meter_provider``).
        company_attributes: Add ``pleo.company.id`` to every measurement of an
            :class:`~pleo_auth.Integration`'s grant. Mind the cardinality.

    Raises:
        ConfigurationError: ``opentelemetry-api`` is not installed, or the provider
            is instrumented already with the other ``company_attributes``.
    """
    provider = meter_provider if meter_provider is not None else _api().get_meter_provider()
    with _instrumented_lock:
        live = _instrumented.get(id(provider))
        if live is not None:
            if live.company_attributes != company_attributes:
                raise ConfigurationError(
                    "this MeterProvider is instrumented already, with company_attributes="
                    f"{live.company_attributes}: close() that one first"
                )
            live._users += 1
            return live
        instrumentation = Instrumentation(provider, company_attributes)
        _instrumented[id(provider)] = instrumentation
        return instrumentation


#: The live instrumentation of each provider (by its id: each holds its provider).
_instrumented: dict[int, Instrumentation] = {}
_instrumented_lock = threading.Lock()
