"""pleo_auth.otel (issue 15, part 2): the OpenTelemetry metrics, read with the SDK's
InMemoryMetricReader, equal the emulator's own counters after a multi-thread run."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from support.integration_helpers import integration
from support.session_helpers import MakeSession, TimerlessClock

from pleo_auth import MemoryStore, PleoSession, ReauthenticationRequired, TokenSet, events, otel
from pleo_auth._clock import FakeClock
from pleo_auth.testing import Emulator

THREADS = 8
REQUESTS = 5


class Metrics:
    """What an InMemoryMetricReader holds, by instrument name and attributes."""

    def __init__(self, reader: InMemoryMetricReader):
        assert events.flush(10)
        self.points: dict[str, list[Any]] = {}
        data = reader.get_metrics_data()
        resources = data.resource_metrics if data is not None else []
        for resource in resources:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    self.points.setdefault(metric.name, []).extend(metric.data.data_points)
        self.units = {
            metric.name: metric.unit
            for resource in resources
            for scope in resource.scope_metrics
            for metric in scope.metrics
        }

    def value(self, name: str, **attributes: str) -> int | float:
        """A counter's value (or a gauge's) for exactly ``attributes``; 0 if none."""
        found = [p.value for p in self.points.get(name, []) if dict(p.attributes) == attributes]
        assert len(found) <= 1
        return found[0] if found else 0

    def count(self, name: str, **attributes: str) -> int:
        """A histogram's count of measurements with exactly ``attributes``."""
        found = [p.count for p in self.points.get(name, []) if dict(p.attributes) == attributes]
        assert len(found) <= 1
        return found[0] if found else 0


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    instrumentation = otel.instrument(MeterProvider(metric_readers=[reader]))
    yield reader
    instrumentation.close()


def _run_round(session: Any, dead: bool = False) -> None:
    """THREADS threads, started together, send REQUESTS requests each."""
    barrier = threading.Barrier(THREADS)
    outcomes: list[object] = []

    def work() -> None:
        barrier.wait()
        for _ in range(REQUESTS):
            try:
                outcomes.append(session.get("/v2/employees").status_code)
            except BaseException as exc:
                outcomes.append(type(exc))

    threads = [threading.Thread(target=work) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    expected = ReauthenticationRequired if dead else 200
    assert outcomes == [expected] * THREADS * REQUESTS


def test_metrics_equal_the_emulators_counters_after_a_multi_thread_run(
    reader: InMemoryMetricReader, timerless: TimerlessClock, make_session: MakeSession
) -> None:
    held: list[events.Event] = []
    with Emulator(access_token_lifetime=100, clock=timerless) as emu:
        # The session believes the first token lives 50 s longer than Pleo lets it:
        # the first round's requests are refused with 401, refreshed and replayed.
        tokens = TokenSet.from_response(emu.issue_tokens(), now=timerless.time() + 50)
        session = make_session(
            emu, MemoryStore(), tokens=tokens, refresh_margin=10, clock=timerless,
            on_event=lambda event: held.append(event) if event.kind == "request_held" else None,
        )  # fmt: skip
        timerless.advance(110)
        _run_round(session)
        for _ in range(3):
            timerless.advance(95)  # due, not expired: the first request refreshes
            _run_round(session)
        emu.revoke_all()
        timerless.advance(95)
        _run_round(session, dead=True)
        counters = emu.counters

    metrics = Metrics(reader)
    assert counters.refresh_grants >= 4  # one per round at least: the run did rotate
    assert metrics.value("pleo_auth.refreshes", outcome="success") == counters.refresh_grants
    assert counters.rejected_refreshes == 1
    failed = {"outcome": "failure", "error.type": "ReauthenticationRequired"}
    assert metrics.value("pleo_auth.refreshes", **failed) == counters.rejected_refreshes
    assert metrics.value("pleo_auth.reauthentications_needed") == 1
    assert counters.unauthorized >= 1
    assert metrics.value("pleo_auth.unauthorized.replays") == counters.unauthorized
    assert metrics.count("pleo_auth.refresh.duration", outcome="success") == counters.refresh_grants
    assert metrics.count("pleo_auth.lock.wait_time") == (
        counters.refresh_grants + counters.rejected_refreshes
    )
    assert metrics.count("pleo_auth.request.held_time") == len(held)
    assert metrics.units["pleo_auth.refresh.duration"] == "s"
    assert metrics.units["pleo_auth.refreshes"] == "{refresh}"


def test_the_gauge_is_each_grants_time_to_expiry_by_company_only_when_asked(
    clock: FakeClock, emulator: Emulator
) -> None:
    companies = ["3b4c5d6e-0000-4000-8000-00000000000a", "3b4c5d6e-0000-4000-8000-00000000000b"]
    by_company, soonest = InMemoryMetricReader(), InMemoryMetricReader()
    with_company = otel.instrument(
        MeterProvider(metric_readers=[by_company]), company_attributes=True
    )
    without = otel.instrument(MeterProvider(metric_readers=[soonest]))
    try:
        with integration(emulator, MemoryStore.family(), clock=clock) as pleo:
            expiries = {}
            for lifetime, company in zip((1000, 2000), companies, strict=True):
                reply = {**emulator.issue_tokens(company=company), "expires_in": lifetime}
                tokens = TokenSet.from_response(reply, now=clock.time())
                pleo.add(company, tokens)
                pleo.session(company).tokens  # noqa: B018 (held in memory from here on)
                expiries[company] = tokens.expires_at
            clock.advance(100)
            by = Metrics(by_company)
            one = Metrics(soonest)
    finally:
        with_company.close()
        without.close()
    gauge = "pleo_auth.access_token.time_to_expiry"
    for company in companies:
        expected = expiries[company] - clock.time()
        assert by.value(gauge, **{"pleo.company.id": company}) == expected
    assert one.value(gauge) == min(expiries.values()) - clock.time() == 900
    assert len(one.points[gauge]) == 1


def test_company_ids_are_attributes_only_when_asked(emulator: Emulator) -> None:
    company = "3b4c5d6e-0000-4000-8000-00000000000c"
    by_company, plain = InMemoryMetricReader(), InMemoryMetricReader()
    with_company = otel.instrument(
        MeterProvider(metric_readers=[by_company]), company_attributes=True
    )
    without = otel.instrument(MeterProvider(metric_readers=[plain]))
    try:
        with integration(emulator, MemoryStore.family()) as pleo:
            pleo.add(company, TokenSet.from_response(emulator.issue_tokens(company=company)))
            pleo.session(company).refresh()
        by, one = Metrics(by_company), Metrics(plain)
    finally:
        with_company.close()
        without.close()
    refreshes = "pleo_auth.refreshes"
    assert by.value(refreshes, outcome="success", **{"pleo.company.id": company}) == 1
    assert one.value(refreshes, outcome="success") == 1
    assert emulator.counters.refresh_grants == 1


def test_rate_limited_waits_are_a_histogram(reader: InMemoryMetricReader) -> None:
    assert events.active()
    events.emit(events.RateLimited(company=None, wait=0.25))
    events.emit(events.RateLimited(company=None, wait=0.5))
    metrics = Metrics(reader)
    (point,) = metrics.points["pleo_auth.rate_limit.wait_time"]
    assert (point.count, point.sum) == (2, 0.75)


def test_closed_instrumentation_records_nothing_more(emulator: Emulator) -> None:
    reader = InMemoryMetricReader()
    instrumentation = otel.instrument(MeterProvider(metric_readers=[reader]))
    instrumentation.close()
    assert not events.active()
    events.emit(events.RateLimited(company=None, wait=1.0))
    metrics = Metrics(reader)
    assert "pleo_auth.rate_limit.wait_time" not in metrics.points
    assert "pleo_auth.access_token.time_to_expiry" not in metrics.points


def test_the_guides_prometheus_names_are_what_the_exporter_writes(emulator: Emulator) -> None:
    """docs/guide/observability.md's table of metrics, checked against the
    OpenTelemetry Prometheus exporter's output after a refresh of each outcome."""
    import prometheus_client
    from opentelemetry.exporter.prometheus import PrometheusMetricReader

    guide = Path(__file__).resolve().parents[2] / "docs" / "guide" / "observability.md"
    rows = [
        [cell.strip().strip("`") for cell in line.strip("|").split("|")]
        for line in guide.read_text().split("### Metric names")[1].split("\n\n")[2].splitlines()
        if line.startswith("| `pleo_auth.")
    ]
    documented = {row[0]: row[-1] for row in rows}
    assert len(documented) == 10
    provider = MeterProvider(metric_readers=[PrometheusMetricReader()])
    instrumentation = otel.instrument(provider)
    try:
        store = MemoryStore()
        with PleoSession(
            emulator.client_id, emulator.client_secret, store=store,
            token_url=emulator.token_url, api_url=emulator.api_url,
            tokens=TokenSet.from_response(emulator.issue_tokens()),
        ) as session:  # fmt: skip
            session.refresh()
            for event in (
                events.Replayed401(), events.Adopted(), events.RequestHeld(duration=0.2),
                events.RateLimited(wait=0.3), events.GrantDead(),
            ):  # fmt: skip
                events.emit(event)
            assert events.flush(10)
            text = prometheus_client.generate_latest(prometheus_client.REGISTRY).decode()
    finally:
        instrumentation.close()
        provider.shutdown()  # takes its collector off prometheus_client's registry
    written = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}
    for name, prometheus in documented.items():
        if prometheus.endswith("_*"):
            stem = prometheus[:-2]
            assert {f"{stem}_bucket", f"{stem}_count", f"{stem}_sum"} <= written, name
        else:
            assert prometheus in written, name
    refresh = 'pleo_auth_refresh_duration_seconds_bucket{le="0.005"'
    assert refresh in text  # seconds' buckets, not the SDK's default ones
