"""``python -m benchmarks``: run every benchmark, print the tables, draw the plot.

    python -m benchmarks                  # the full run (a few minutes on 2 cores)
    python -m benchmarks --quick          # the smoke version, in under a minute
    python -m benchmarks --out DIR        # raw results, report and plot go to DIR
    python -m benchmarks --only hot_path --only cold_start

A full run of every part also writes ``benchmarks/RESULTS.md`` and
``docs/latency.png``, which are committed; ``--quick``, ``--only`` and
``--no-publish`` leave them alone.
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

from . import cold_start, contention, hot_path, scaling
from ._common import Section, machine, verdict_table

ROOT = Path(__file__).resolve().parent.parent
PUBLISHED_REPORT = ROOT / "benchmarks" / "RESULTS.md"
PUBLISHED_PLOT = ROOT / "docs" / "latency.png"
DEFAULT_OUT = ROOT / "benchmarks" / "results"

PARTS = ("hot_path", "contention", "cold_start", "scaling")

FULL: dict[str, Any] = {
    "hot_path": hot_path.HotPathConfig(),
    "scaling": scaling.ScalingConfig(),
    "cold_start": cold_start.ColdStartConfig(),
    "contention": contention.ContentionConfig(),
}

QUICK: dict[str, Any] = {
    "hot_path": hot_path.HotPathConfig(batch=100, repeats=3, warmup=20),
    "scaling": scaling.ScalingConfig(requests=64, repeats=1, many_sessions=20),
    "cold_start": cold_start.ColdStartConfig(import_runs=3, first_request_runs=2),
    "contention": contention.ContentionConfig.quick(),
}

RUNNERS: dict[str, Callable[[Any], Section]] = {
    "hot_path": hot_path.run,
    "scaling": scaling.run,
    "cold_start": cold_start.run,
    "contention": contention.run,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark pleo_auth beside requests-oauthlib and Authlib.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="the smoke version (under a minute): correctness only"
    )
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
    parts = [part for part in PARTS if not args.only or part in args.only]
    publish = not (args.quick or args.only or args.no_publish)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    started = time.monotonic()
    sections: list[Section] = []
    for part in parts:
        _say(f"running {part} ...")
        part_started = time.monotonic()
        sections.append(RUNNERS[part](configs[part]))
        _say(f"  {part} took {time.monotonic() - part_started:.0f}s")

    plot_path: Path | None = None
    contention_section = next((s for s in sections if s.raw.get("plot")), None)
    if contention_section is not None:
        plot_path = contention.draw(contention_section, out / "latency.png")
        if plot_path is not None and publish:
            PUBLISHED_PLOT.parent.mkdir(parents=True, exist_ok=True)
            PUBLISHED_PLOT.write_bytes(plot_path.read_bytes())

    elapsed = time.monotonic() - started
    given = list(sys.argv[1:] if argv is None else argv)
    command = shlex.join(["python", "-m", "benchmarks", *given])
    report = render(
        sections, command, elapsed, configs, parts, plot_path is not None, quick=args.quick
    )
    (out / "RESULTS.md").write_text(report)
    (out / "results.json").write_text(
        json.dumps(
            {
                "machine": machine(),
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
    plotted: bool,
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
    if plotted:
        lines += ["", "Plot: `latency.png` (published as `docs/latency.png`)."]
    lines += ["", "<details><summary>Settings</summary>", ""]
    for part in parts:
        lines.append(f"- {part}: `{configs[part]!r}`")
    lines += ["", "</details>", ""]
    return "\n".join(lines)


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
