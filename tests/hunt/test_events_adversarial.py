"""Hunting pleo_auth.events and pleo_auth.otel (issue 15): subscribers that do what
a subscriber should not (exit, flush, call back into the session, change the
subscriptions while they are delivered to), replies that quote tokens, and
instrument() called twice."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest
from support.session_helpers import MakeSession, issued

from pleo_auth import MemoryStore, PleoSession, RefreshError
from pleo_auth import events as ev
from pleo_auth.testing import Emulator, Fault

REFRESH = ["lock_waited", "refresh_started", "refresh_succeeded"]


class Recorder:
    """A subscriber that keeps what it is given, in order."""

    def __init__(self) -> None:
        self.seen: list[ev.Event] = []

    def __call__(self, event: ev.Event) -> None:
        self.seen.append(event)

    def kinds(self, *, held: bool = True) -> list[str]:
        assert ev.flush(10), "events still undelivered after 10 s"
        return [event.kind for event in self.seen if held or event.kind != "request_held"]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


# -- the dispatcher survives its subscribers -------------------------------------------


@pytest.mark.parametrize("raised", [SystemExit, KeyboardInterrupt, GeneratorExit])
def test_a_subscriber_raising_a_base_exception_stops_no_later_event(
    raised: type[BaseException],
    emulator: Emulator,
    make_session: MakeSession,
    recorder: Recorder,
) -> None:
    """A subscriber that calls sys.exit() (or raises another BaseException) on the
    dispatcher thread must not end that thread: it is the only one, for every
    grant of the process, so every later event would be lost for good."""
    calls = []

    def exits(event: ev.Event) -> None:
        calls.append(event.kind)
        raise raised()

    unsubscribe = ev.subscribe(exits)
    try:
        session = make_session(emulator, tokens=issued(emulator), on_event=recorder)
        session.refresh()
        session.refresh()
        assert recorder.kinds() == REFRESH * 2
    finally:
        unsubscribe()
    assert calls == REFRESH * 2
    assert emulator.counters.refresh_grants == 2


def test_flush_called_by_a_subscriber_returns_instead_of_waiting_for_itself(
    emulator: Emulator, make_session: MakeSession, recorder: Recorder
) -> None:
    """flush() waits for the dispatcher to be idle; called on the dispatcher (by a
    subscriber, e.g. an exporter's hook) it used to wait for itself: its timeout,
    or for ever with timeout=None, and with it every later event of the process."""
    returned = threading.Event()
    results: list[bool] = []

    def flushes(event: ev.Event) -> None:
        if not results:
            results.append(ev.flush(None))
            returned.set()

    session = make_session(emulator, tokens=issued(emulator), on_event=flushes)
    session.refresh()
    assert returned.wait(10), "flush() on the dispatcher thread never returned"
    assert results == [False]  # it cannot wait for the event it is delivering
    unsubscribe = ev.subscribe(recorder)
    try:
        session.refresh()
        assert recorder.kinds() == REFRESH
    finally:
        unsubscribe()


def test_a_subscriber_that_calls_back_into_the_session_and_resubscribes_deadlocks_nothing(
    emulator: Emulator, make_session: MakeSession, recorder: Recorder
) -> None:
    """On the dispatcher: a request, a refresh, ending its own subscription and
    subscribing another. Each event goes to the subscribers of its emission."""
    holder: dict[str, object] = {}
    sessions: list[PleoSession] = []
    statuses: list[int] = []
    later = Recorder()

    def meddles(event: ev.Event) -> None:
        if event.kind != "refresh_succeeded" or "done" in holder:
            return
        holder["done"] = True
        session = sessions[0]
        statuses.append(session.get("/v2/employees").status_code)
        session.refresh()  # its events are queued behind this one: no deadlock
        unsubscribe_me()
        holder["unsubscribe_later"] = ev.subscribe(later)

    unsubscribe_me = ev.subscribe(meddles)
    try:
        session = make_session(emulator, tokens=issued(emulator), on_event=recorder)
        sessions.append(session)
        session.refresh()
        # The subscriber's request may wait for the refresh that emitted its event
        # to finish: a request_held of its own, at a moment that depends on timing.
        assert recorder.kinds(held=False) == REFRESH * 2
        # Subscribed after the second refresh's events were queued: it saw none.
        assert later.seen == []
        session.refresh()
        assert recorder.kinds(held=False) == REFRESH * 3
        assert later.kinds() == REFRESH
    finally:
        unsubscribe_me()
        unsubscribe_later = holder.get("unsubscribe_later")
        if callable(unsubscribe_later):
            unsubscribe_later()
    assert statuses == [200]
    assert emulator.counters.refresh_grants == 3


# -- no token in an event, whatever the server says --------------------------------------


def test_a_refusal_that_quotes_the_access_token_puts_no_token_in_an_event(
    emulator: Emulator, make_session: MakeSession, recorder: Recorder
) -> None:
    """A gateway's refusal quoting the bearer it saw: the endpoint scrubbed only the
    refresh token it spent and the client secret, so the access token reached the
    RefreshError (its message, its description) and RefreshFailed.reason."""
    store = MemoryStore()
    tokens = issued(emulator)
    session = make_session(
        emulator, store, tokens=tokens, max_refresh_attempts=1, on_event=recorder
    )
    # No "error" member: a proxy's or a gateway's JSON, which the reason then quotes.
    body = json.dumps({"error_description": f"token {tokens.access_token} is not valid here"})
    emulator.inject_fault(Fault(status=400, body=body, content_type="application/json"))
    with pytest.raises(RefreshError):
        session.refresh()
    assert recorder.kinds() == ["lock_waited", "refresh_started", "refresh_failed"]
    text = repr(recorder.seen)
    for secret in (tokens.access_token, tokens.refresh_token, emulator.client_secret or ""):
        assert secret
        # no substring of 8 characters or more of a token
        assert not any(secret[i : i + 8] in text for i in range(len(secret) - 7))


def test_a_refusal_that_quotes_the_refresh_token_puts_no_token_in_an_event(
    emulator: Emulator, make_session: MakeSession, recorder: Recorder
) -> None:
    tokens = issued(emulator)
    session = make_session(emulator, tokens=tokens, max_refresh_attempts=1, on_event=recorder)
    for body in (
        {"error_description": f"refresh_token={tokens.refresh_token} refused"},
        {"error": f"bad_{tokens.refresh_token}", "error_description": "x"},
    ):
        emulator.inject_fault(
            Fault(status=400, body=json.dumps(body), content_type="application/json")
        )
        with pytest.raises(RefreshError):
            session.refresh()
    kinds = recorder.kinds()
    assert kinds == ["lock_waited", "refresh_started", "refresh_failed"] * 2
    text = repr(recorder.seen)
    assert tokens.refresh_token not in text
    assert (emulator.client_secret or "") not in text
    assert emulator.counters.refresh_grants == 0


# -- OpenTelemetry -----------------------------------------------------------------------


@pytest.fixture
def reader() -> Iterator[object]:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    reader.provider = provider  # type: ignore[attr-defined]
    yield reader
    provider.shutdown()


def _refreshes(reader: object) -> int:
    data = reader.get_metrics_data()  # type: ignore[attr-defined]
    total = 0
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == "pleo_auth.refreshes":
                    total += sum(point.value for point in metric.data.data_points)
    return int(total)


def test_instrument_twice_on_one_provider_counts_each_refresh_once(
    reader: object, emulator: Emulator, make_session: MakeSession
) -> None:
    """A library and the app (or a Django app's ready() run twice) both call
    instrument() on the global provider: each refresh is still one refresh."""
    from pleo_auth import otel

    provider = reader.provider  # type: ignore[attr-defined]
    first = otel.instrument(provider)
    second = otel.instrument(provider)
    try:
        session = make_session(emulator, tokens=issued(emulator))
        session.refresh()
        assert ev.flush(10)
        assert _refreshes(reader) == emulator.counters.refresh_grants == 1
    finally:
        first.close()
        second.close()


def test_instrument_twice_on_one_provider_records_until_the_last_close(
    reader: object, emulator: Emulator, make_session: MakeSession
) -> None:
    from pleo_auth import ConfigurationError, otel

    provider = reader.provider  # type: ignore[attr-defined]
    first = otel.instrument(provider)
    second = otel.instrument(provider)
    with pytest.raises(ConfigurationError, match="company_attributes"):
        otel.instrument(provider, company_attributes=True)
    session = make_session(emulator, tokens=issued(emulator))
    first.close()  # the other caller still records
    session.refresh()
    assert ev.flush(10)
    assert _refreshes(reader) == 1
    second.close()
    session.refresh()
    assert ev.flush(10)
    assert _refreshes(reader) == 1  # closed: the second refresh is not counted
    assert emulator.counters.refresh_grants == 2
    third = otel.instrument(provider)  # after the last close(), a new one records
    try:
        session.refresh()
        assert ev.flush(10)
        assert _refreshes(reader) == 2
    finally:
        third.close()


class _ClosesOnValues(dict):  # type: ignore[type-arg]
    """The registry's entries, closing a session the first time they are read: a
    ``__del__`` the garbage collector runs at that moment, made certain."""

    def __init__(self, entries: dict[object, object], session: PleoSession) -> None:
        super().__init__(entries)
        self.session: PleoSession | None = session

    def values(self):  # type: ignore[no-untyped-def]
        session, self.session = self.session, None
        if session is not None:
            session.close()  # what an app object's __del__ does
        return super().values()


def test_the_expiry_gauge_read_while_a_finaliser_closes_a_session_deadlocks_nothing(
    reader: object, emulator: Emulator, make_session: MakeSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gauge's callback holds the registry's lock while it lists the grants; a
    collection there may run an app's ``__del__`` that closes a session, on the
    same thread: its release must not wait for that lock (the exporter's thread
    hung, and with it every session made or closed in the process)."""
    from pleo_auth import otel
    from pleo_auth._registry import REGISTRY

    kept = make_session(emulator, tokens=issued(emulator))
    closed = make_session(emulator, tokens=issued(emulator))
    instrumentation = otel.instrument(reader.provider)  # type: ignore[attr-defined]
    try:
        monkeypatch.setattr(REGISTRY, "_entries", _ClosesOnValues(REGISTRY._entries, closed))
        read = threading.Event()

        def collect() -> None:
            reader.get_metrics_data()  # type: ignore[attr-defined]
            read.set()

        threading.Thread(target=collect, daemon=True, name="exporter").start()
        assert read.wait(10), "the gauge's callback deadlocked on the registry's lock"
        monkeypatch.undo()
        assert kept.get("/v2/employees").status_code == 200
    finally:
        instrumentation.close()


_PROXY_THEN_SET = """
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from pleo_auth import events, otel

early = otel.instrument()  # a library, at import: the API's proxy provider
reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
late = otel.instrument()  # the app, once it configured the SDK
events.emit(events.RefreshSucceeded(duration=0.1, attempts=1))
assert events.flush(10)
total = 0
for resource in reader.get_metrics_data().resource_metrics:
    for scope in resource.scope_metrics:
        for metric in scope.metrics:
            if metric.name == "pleo_auth.refreshes":
                total += sum(point.value for point in metric.data.data_points)
print(int(total))
"""


@pytest.mark.xfail(
    strict=True,
    reason="instrument() before the app sets the global MeterProvider subscribes through "
    "the API's proxy provider, which forwards to the provider set later: a second "
    "instrument() after it is another subscriber on the same instruments, and each "
    "refresh counts twice",
)
def test_instrument_before_and_after_the_global_provider_is_set_counts_each_refresh_once() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _PROXY_THEN_SET], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "1"
