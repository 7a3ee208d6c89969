"""Part 5: request latency over time across several rotations, one line per library;
and the many-grants figure (:func:`render_grants`).

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
from typing import Any

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


# -- many grants (issue 12) ------------------------------------------------------------------

GRANT_COLOURS = {
    "delay": "#1b7837",
    "reject": "#d6604d",
    "file": "#4393c3",
    "redis": "#762a83",
}


def _per_second(times: Sequence[float], duration: float, width: float = 1.0) -> tuple[
    list[float], list[float]
]:  # fmt: skip
    count = max(1, math.ceil(duration / width))
    bins = [0] * count
    for when in times:
        index = int(when / width)
        if 0 <= index < count:
            bins[index] += 1
    return [(n + 0.5) * width for n in range(count)], [b / width for b in bins]


def render_grants(
    cold: Sequence[Mapping[str, Any]],
    shared: Sequence[Mapping[str, Any]],
    *,
    per_second: int,
    deadline: float,
    path: Path,
) -> Path:
    """The many-grants figure: the cold start's refresh grants per second and its
    callers' progress, one line per capacity mode; and, if given, the refresh grants
    per second of the shared-grants runs, one line per store family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 3 if shared else 2
    figure, axes = plt.subplots(panels, 1, figsize=(11, 3.2 * panels))
    rate, progress = axes[0], axes[1]
    end = max([deadline, *(r["elapsed"] for r in cold)]) * 1.05
    for run in cold:
        colour = GRANT_COLOURS.get(run["mode"])
        xs, ys = _per_second(run["grant_times"], end)
        rate.plot(xs, ys, color=colour, linewidth=1.4, label=f'mode="{run["mode"]}"')
        finished = sorted(done for _start, done in run["done"])
        share = [100.0 * (n + 1) / len(finished) for n in range(len(finished))]
        progress.plot(finished, share, color=colour, linewidth=1.4, label=f'mode="{run["mode"]}"')
    rate.axhline(per_second, color="#888888", linestyle="--", linewidth=1, label="capacity")
    for axis in (rate, progress):
        axis.axvline(deadline, color="#888888", linestyle=":", linewidth=1, label="target")
        axis.set_xlim(0, end)
        axis.grid(True, alpha=0.25)
        axis.legend(loc="lower right", fontsize=8, framealpha=0.9)
    grants = cold[0]["grants"] if cold else 0
    rate.set_title(
        f"Cold start: {grants:,} expired grants, one request per company from 32 threads, "
        f"token endpoint capped at {per_second}/s"
    )
    rate.set_ylabel("refresh grants / s")
    progress.set_ylabel("requests answered (%)")
    progress.set_xlabel("seconds since the callers started")
    if shared:
        axis = axes[2]
        end = max(max(r["timeline"], default=1.0) for r in shared) * 1.02
        for run in shared:
            xs, ys = _per_second(run["timeline"], end, width=0.25)
            axis.plot(xs, ys, color=GRANT_COLOURS.get(run["store"]), linewidth=1.2,
                      label=f'{run["store"].capitalize()}Store.family')  # fmt: skip
        axis.set_title(
            f"{shared[0]['processes']} processes sharing {shared[0]['grants']:,} grants, "
            f"{shared[0]['token_lifetime']:g} s tokens: refresh grants per second"
        )
        axis.set_ylabel("refresh grants / s")
        axis.set_xlabel("seconds since the load started")
        axis.set_xlim(0, end)
        axis.grid(True, alpha=0.25)
        axis.legend(loc="upper right", fontsize=8, framealpha=0.9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
