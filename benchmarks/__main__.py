"""``python -m benchmarks``: run every benchmark, print the tables, draw the plots.

    python -m benchmarks                  # the full run (about 15 minutes on 2 cores)
    python -m benchmarks --quick          # the smoke version, in a minute or two
    python -m benchmarks --out DIR        # raw results, report and plots go to DIR
    python -m benchmarks many_grants      # one part (or several; or a group: issue5, grants)
    python -m benchmarks --only hot_path --only cold_start

A full run of every part also writes ``benchmarks/RESULTS.md``,
``docs/latency.png`` and ``docs/grants.png``, which are committed; ``--quick``,
naming parts, and ``--no-publish`` leave them alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import (
    cold_start,
    contention,
    hot_path,
    idle_grants,
    integration_cold_start,
    many_grants,
    observability,
    plot,
    rate_limit,
    scaling,
    shared_grants,
    sql,
)
from ._common import Section, anchor_available, machine, verdict_table

ROOT = Path(__file__).resolve().parent.parent
PUBLISHED_REPORT = ROOT / "benchmarks" / "RESULTS.md"
PUBLISHED_PLOT = ROOT / "docs" / "latency.png"
PUBLISHED_GRANTS_PLOT = ROOT / "docs" / "grants.png"
DEFAULT_OUT = ROOT / "benchmarks" / "results"

#: Every part, in the order a run takes them.
PARTS = (
    "hot_path",
    "contention",
    "cold_start",
    "scaling",
    "many_grants",
    "integration_cold_start",
    "shared_grants",
    "idle_grants",
    "sql",
    "observability",
    "rate_limit",
)

#: Names for several parts at once: the issue each answers.
GROUPS = {
    "issue5": ("hot_path", "contention", "cold_start", "scaling"),
    "grants": ("many_grants", "integration_cold_start", "shared_grants", "idle_grants"),
    "issue13": ("sql",),
    "issue15": ("observability", "rate_limit"),
}

FULL: dict[str, Any] = {
    "hot_path": hot_path.HotPathConfig(),
    "scaling": scaling.ScalingConfig(),
    "cold_start": cold_start.ColdStartConfig(),
    "contention": contention.ContentionConfig(),
    "many_grants": many_grants.ManyGrantsConfig(),
    "integration_cold_start": integration_cold_start.IntegrationColdStartConfig(),
    "shared_grants": shared_grants.SharedGrantsConfig(),
    "idle_grants": idle_grants.IdleGrantsConfig(),
    "sql": sql.SqlConfig(),
    "observability": observability.ObservabilityConfig(),
    "rate_limit": rate_limit.RateLimitConfig(),
}

QUICK: dict[str, Any] = {
    "hot_path": hot_path.HotPathConfig(batch=100, repeats=3, warmup=20),
    "scaling": scaling.ScalingConfig(requests=64, repeats=1, many_sessions=20),
    "cold_start": cold_start.ColdStartConfig(import_runs=3, first_request_runs=2),
    "contention": contention.ContentionConfig.quick(),
    "many_grants": many_grants.ManyGrantsConfig.quick(),
    "integration_cold_start": integration_cold_start.IntegrationColdStartConfig.quick(),
    "shared_grants": shared_grants.SharedGrantsConfig.quick(),
    "idle_grants": idle_grants.IdleGrantsConfig.quick(),
    "sql": sql.SqlConfig.quick(),
    "observability": observability.ObservabilityConfig.quick(),
    "rate_limit": rate_limit.RateLimitConfig.quick(),
}

RUNNERS: dict[str, Callable[[Any], Section]] = {
    "hot_path": hot_path.run,
    "scaling": scaling.run,
    "cold_start": cold_start.run,
    "contention": contention.run,
    "many_grants": many_grants.run,
    "integration_cold_start": integration_cold_start.run,
    "shared_grants": shared_grants.run,
    "idle_grants": idle_grants.run,
    "sql": sql.run,
    "observability": observability.run,
    "rate_limit": rate_limit.run,
}


def chosen_parts(names: Sequence[str]) -> list[str]:
    """The parts ``names`` (parts or groups) pick, in run order; every part if none."""
    if not names:
        return list(PARTS)
    picked: set[str] = set()
    for name in names:
        if name in GROUPS:
            picked.update(GROUPS[name])
        elif name in PARTS:
            picked.add(name)
        else:
            raise SystemExit(
                f"python -m benchmarks: unknown part {name!r}; choose from "
                f"{', '.join([*PARTS, *GROUPS])}"
            )
    return [part for part in PARTS if part in picked]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark pleo_auth beside requests-oauthlib and Authlib.",
    )
    parser.add_argument(
        "parts",
        nargs="*",
        metavar="PART",
        help=f"parts or groups to run (default: all): {', '.join([*PARTS, *GROUPS])}",
    )
    parser.add_argument("--quick", action="store_true", help="the smoke version: correctness only")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"results directory ({DEFAULT_OUT})"
    )
    parser.add_argument(
        "--only", action="append", choices=PARTS, help="run only this part (repeatable)"
    )
    parser.add_argument(
        "--no-publish",
        action="store_true",
        help="do not update benchmarks/RESULTS.md and docs/latency.png",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress in detail")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    # requests-oauthlib logs whole tokens at DEBUG ("Adding token %s to request."):
    # keep the anchors quiet whatever the level.
    for name in ("requests_oauthlib", "oauthlib", "authlib"):
        logging.getLogger(name).setLevel(logging.WARNING)
    configs = QUICK if args.quick else FULL
    parts = chosen_parts([*args.parts, *(args.only or [])])
    publish = not (args.quick or args.only or args.parts or args.no_publish)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    started = time.monotonic()
    by_part: dict[str, Section] = {}
    for part in parts:
        _say(f"running {part} ... ({_load()})")
        part_started = time.monotonic()
        by_part[part] = RUNNERS[part](configs[part])
        _say(f"  {part} took {time.monotonic() - part_started:.0f}s ({_load()})")
    sections = list(by_part.values())

    plots: list[Path] = []
    if "contention" in by_part:
        plot_path = contention.draw(by_part["contention"], out / "latency.png")
        if plot_path is not None:
            plots.append(plot_path)
            if publish:
                PUBLISHED_PLOT.parent.mkdir(parents=True, exist_ok=True)
                PUBLISHED_PLOT.write_bytes(plot_path.read_bytes())
    grants_plot = draw_grants(by_part, out / "grants.png")
    if grants_plot is not None:
        plots.append(grants_plot)
        if publish:
            PUBLISHED_GRANTS_PLOT.write_bytes(grants_plot.read_bytes())

    elapsed = time.monotonic() - started
    given = list(sys.argv[1:] if argv is None else argv)
    command = shlex.join(["python", "-m", "benchmarks", *given])
    report = render(sections, command, elapsed, configs, parts, plots, quick=args.quick)
    (out / "RESULTS.md").write_text(report)
    (out / "results.json").write_text(
        json.dumps(
            {
                "machine": machine(),
                "load": _load(),
                "elapsed": elapsed,
                "quick": args.quick,
                "sections": {s.title: s.raw for s in sections},
                "verdicts": [dataclasses.asdict(v) for s in sections for v in s.verdicts],
            },
            indent=1,
            default=_jsonable,
        )
    )
    if publish:
        PUBLISHED_REPORT.write_text(report)
    print(report)
    _say(f"done in {elapsed:.0f}s; results in {out}" + ("; published" if publish else ""))
    return 0


def render(
    sections: Sequence[Section],
    command: str,
    elapsed: float,
    configs: dict[str, Any],
    parts: Sequence[str],
    plots: Sequence[Path],
    *,
    quick: bool = False,
) -> str:
    info = machine()
    lines = [
        "## Benchmark results",
        "",
        f"Command: `{command}` (took {elapsed:.0f} s).",
        "",
        f"Machine: {info['cpus']} CPUs ({info['cpu']}), {info['os']}, "
        f"{info['implementation']} {info['python']}; requests {info['version requests']}, "
        f"requests-oauthlib {info['version requests-oauthlib']}, "
        f"Authlib {info['version authlib']}, pleo-auth {info['version pleo-auth']}.",
        "",
        "Every ratio compares figures measured side by side, interleaved, in this one run.",
        f"Load average (1, 5, 15 min) at the end of the run: {_load()}.",
        "",
    ]
    if quick:
        lines += [
            "**Quick run**: too few samples for the timing targets to mean anything; "
            "only the correctness figures (grants per rotation, errors, rejected "
            "refreshes, reuse detections) count. Run without `--quick` for the real figures.",
            "",
        ]
    lines += [
        verdict_table(sections).markdown(),
    ]
    for section in sections:
        lines += ["", section.markdown()]
    for path in plots:
        lines += ["", f"Plot: `{path.name}` (published as `docs/{path.name}`)."]
    lines += ["", "<details><summary>Settings</summary>", ""]
    for part in parts:
        lines.append(f"- {part}: `{configs[part]!r}`")
    lines += ["", "</details>", ""]
    return "\n".join(lines)


def draw_grants(by_part: dict[str, Section], path: Path) -> Path | None:
    """The many-grants figure, from the cold start and shared-grants parts, if run."""
    cold = by_part.get("integration_cold_start")
    if cold is None or not anchor_available("matplotlib"):
        return None
    shared = by_part.get("shared_grants")
    return plot.render_grants(
        cold.raw["runs"],
        shared.raw["runs"] if shared is not None else [],
        per_second=cold.raw["per_second"],
        deadline=cold.raw["deadline"],
        path=path,
    )


def _load() -> str:
    """The load averages, as the kernel reports them."""
    try:
        with open("/proc/loadavg") as loadavg:
            return ", ".join(loadavg.read().split()[:3])
    except OSError:
        return "unknown"


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return repr(value)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
