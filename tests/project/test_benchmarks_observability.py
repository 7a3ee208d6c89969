"""Smoke test of the benchmark of the hot path with events and metrics on (part
``observability``, issue 15): the harness runs both states on one session and
leaves nothing subscribed. Never a timing: this machine is noisy."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # benchmarks/ is not installed with the package

from benchmarks import observability  # noqa: E402
from pleo_auth import events  # noqa: E402


def test_the_observability_part_measures_both_states_and_leaves_nothing_subscribed() -> None:
    config = observability.ObservabilityConfig(batch=20, repeats=2, warmup=5)
    section = observability.run(config)
    timings = section.raw["cpu_seconds_per_request"]
    assert set(timings) == {observability.OFF, observability.ON, observability.PLAIN}
    assert all(len(values) == 2 and min(values) > 0 for values in timings.values())
    (verdict,) = section.verdicts
    assert verdict.met is not None  # measured (the SDK is in the test extra)
    assert not events.active()
