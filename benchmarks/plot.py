"""Part 5: request latency over time across several rotations, one line per library.

Drawn from the 8 threads x 4 processes contention runs: the upper panel is the
99th-percentile latency in each 200 ms bin (log scale), the lower one the share
of requests that failed for their caller in that bin. Dotted lines mark the
refresh grants the emulator made for PleoSession; a cross marks the moment the
emulator revoked a library's grant for presenting a spent refresh token.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ._common import percentile

BIN = 0.2  # seconds

COLOURS = {
    "pleo_auth": "#1b7837",
    "static": "#888888",
    "requests-oauthlib": "#d6604d",
    "authlib": "#4393c3",
}

LABELS = {
    "pleo_auth": "pleo_auth PleoSession",
    "static": "static token, plain Session (no refresh)",
    "requests-oauthlib": "requests-oauthlib OAuth2Session",
    "authlib": "Authlib OAuth2Session",
}


@dataclass(frozen=True)
class Series:
    """One library's run: every request's (start, latency), the start of every
    failed request, when the emulator granted a refresh, and when it detected a
    spent refresh token and revoked the grant (all in seconds from the start signal)."""

    timeline: Sequence[tuple[float, float]]
    failures: Sequence[float]
    grants: Sequence[float]
    revocations: Sequence[float] = ()


def _bins(series: Series, duration: float) -> tuple[list[float], list[float], list[float]]:
    count = max(1, math.ceil(duration / BIN))
    latencies: list[list[float]] = [[] for _ in range(count)]
    failed = [0] * count
    for start, latency in series.timeline:
        index = int(start / BIN)
        if 0 <= index < count:
            latencies[index].append(latency)
    for start in series.failures:
        index = int(start / BIN)
        if 0 <= index < count:
            failed[index] += 1
    xs, p99, share = [], [], []
    for index in range(count):
        xs.append((index + 0.5) * BIN)
        values = latencies[index]
        p99.append(percentile(values, 99) * 1e3 if values else math.nan)
        share.append(100.0 * failed[index] / len(values) if values else math.nan)
    return xs, p99, share


def render(series: Mapping[str, Series], duration: float, path: Path, title: str) -> Path:
    """Draw the plot to ``path`` (PNG) with matplotlib's Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (upper, lower) = plt.subplots(
        2, 1, figsize=(11, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1.3]}
    )
    for name, data in series.items():
        xs, p99, share = _bins(data, duration)
        colour = COLOURS.get(name)
        label = LABELS.get(name, name)
        upper.plot(xs, p99, label=label, color=colour, linewidth=1.4)
        lower.plot(xs, share, label=label, color=colour, linewidth=1.4)
        if data.revocations:
            first = min(data.revocations)
            lower.plot([first], [100], marker="X", markersize=10, color=colour, linestyle="")
            lower.annotate(
                "grant revoked",
                (first, 100),
                textcoords="offset points",
                xytext=(4, -14),
                fontsize=7,
                color=colour,
            )
    pleo = series.get("pleo_auth")
    if pleo is not None:
        for index, grant in enumerate(pleo.grants):
            for axis in (upper, lower):
                axis.axvline(
                    grant,
                    color=COLOURS["pleo_auth"],
                    linestyle=":",
                    linewidth=1,
                    label="refresh grant (pleo_auth)" if index == 0 and axis is upper else None,
                )
    upper.set_yscale("log")
    upper.set_ylabel(f"p99 latency per {BIN * 1000:.0f} ms (ms)")
    upper.set_title(title)
    upper.grid(True, which="both", alpha=0.25)
    upper.legend(loc="upper left", fontsize=8, framealpha=0.9)
    lower.set_ylabel("failed requests (%)")
    lower.set_xlabel("seconds since the load started")
    lower.set_ylim(-5, 105)
    lower.grid(True, alpha=0.25)
    lower.set_xlim(0, duration)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
