"""Part 3: cold start, for cron jobs, measured as whole processes.

* ``import pleo_auth`` and ``from pleo_auth import PleoSession`` against
  ``import requests`` (and against an interpreter that imports nothing, to show
  what the imports themselves cost).
* Time to the first authenticated request: a fresh process builds a PleoSession
  over a FileStore seeded with tokens and GETs one API path on an emulator
  running in this (the parent) process; against a fresh process that reads the
  same token file with ``json`` and sends the GET through a plain
  ``requests.Session``.

Every command runs many times, interleaved, and the minimum and median of the
wall-clock time from spawn to exit are reported.
"""

# ruff: noqa: RUF001 - the tables print ratios with a multiplication sign

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pleo_auth import FileStore
from pleo_auth.testing import Emulator
from pleo_auth.tokens import TokenSet

from ._common import CLIENT_ID, CLIENT_SECRET, Section, Table, Verdict, fmt, interleaved, median

TARGET_RATIO = 1.15

IMPORTS: Mapping[str, str] = {
    "python -c pass": "pass",
    "import requests": "import requests",
    "import pleo_auth": "import pleo_auth",
    "from pleo_auth import PleoSession": "from pleo_auth import PleoSession",
}

_FIRST_PLEO = """
import sys
from pleo_auth import FileStore, PleoSession
api_url, path = sys.argv[1], sys.argv[2]
with PleoSession("{client_id}", "{client_secret}", store=FileStore(path),
                 token_url=api_url + "/oauth/token", api_url=api_url) as pleo:
    pleo.get("/v2/employees").raise_for_status()
"""

_FIRST_PLAIN = """
import json, sys
import requests
api_url, path = sys.argv[1], sys.argv[2]
with open(path) as handle:
    access_token = json.load(handle)["access_token"]
with requests.Session() as session:
    session.headers["Authorization"] = "Bearer " + access_token
    session.get(api_url + "/v2/employees").raise_for_status()
"""


@dataclass(frozen=True)
class ColdStartConfig:
    import_runs: int = 25
    first_request_runs: int = 10


def _spawn(args: Sequence[str], env: Mapping[str, str]) -> Callable[[], float]:
    def measure() -> float:
        started = time.perf_counter()
        subprocess.run(args, env=env, check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - started

    return measure


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # No bytecode writes (every run finds the same cache), no stray warnings.
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("PYTHONWARNINGS", None)
    return env


def run(config: ColdStartConfig) -> Section:
    section = Section("3. Cold start (whole processes)")
    env = _child_env()
    python = sys.executable
    # Compile every module once, so no run pays for writing bytecode.
    subprocess.run([python, "-c", "from pleo_auth import PleoSession"], env=os.environ, check=True)

    imports = interleaved(
        {name: _spawn([python, "-c", code], env) for name, code in IMPORTS.items()},
        config.import_runs,
    )
    section.tables.append(_import_table(imports, config.import_runs))

    with (
        tempfile.TemporaryDirectory(prefix="pleo-bench-cold-") as tmp,
        Emulator(
            access_token_lifetime=86400, client_id=CLIENT_ID, client_secret=CLIENT_SECRET
        ) as emulator,
    ):
        path = Path(tmp) / "tokens.json"
        FileStore(path).save(TokenSet.from_response(emulator.issue_tokens()))
        args = [emulator.url, str(path)]
        pleo_code = _FIRST_PLEO.format(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
        first = interleaved(
            {
                "PleoSession over a FileStore": _spawn([python, "-c", pleo_code, *args], env),
                "requests.Session, token read from the same file": _spawn(
                    [python, "-c", _FIRST_PLAIN, *args], env
                ),
            },
            config.first_request_runs,
        )
        counters = emulator.counters
        if counters.refresh_grants or counters.unauthorized:
            raise RuntimeError("the first-request benchmark refreshed or was refused")
    section.tables.append(_first_table(first, config.first_request_runs))
    section.raw = {"imports": imports, "first_request": first}

    base = min(imports["import requests"])
    base_median = median(imports["import requests"])
    bare = min(imports["python -c pass"])
    breakdown_ms = import_breakdown(python, env)
    section.raw["import_breakdown_ms"] = breakdown_ms
    breakdown = ", ".join(f"{name} {ms:.0f} ms" for name, ms in breakdown_ms[:4])
    for name in ("import pleo_auth", "from pleo_auth import PleoSession"):
        ratio = min(imports[name]) / base
        ratio_median = median(imports[name]) / base_median
        met = ratio <= TARGET_RATIO
        why = ""
        if not met:
            extra = (min(imports[name]) - base) * 1e3
            why = (
                f"{extra:.0f} ms more than `import requests`. PleoSession needs requests "
                f"itself; on top of it, `python -X importtime` charges {breakdown} "
                "(pleo_auth's own modules include building their attrs classes)"
            )
        net = (min(imports[name]) - bare) / (base - bare) if base > bare else float("nan")
        section.verdicts.append(
            Verdict(
                f"cold start: `{name}` ≤ {TARGET_RATIO}× `import requests`",
                met,
                f"{ratio:.2f}× (median {ratio_median:.2f}×; imports alone, interpreter "
                f"start-up subtracted: {net:.2f}×)",
                why,
            )
        )
    return section


def import_breakdown(python: str, env: Mapping[str, str]) -> list[tuple[str, float]]:
    """What ``from pleo_auth import PleoSession`` imports beyond ``import requests``:
    ``-X importtime`` self times summed by top-level package, largest first, in ms.
    pleo_auth's own time includes building its attrs classes."""
    done = subprocess.run(
        [python, "-X", "importtime", "-c", "import requests; from pleo_auth import PleoSession"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    totals: dict[str, float] = {}
    after_requests = False
    for line in done.stderr.splitlines():
        fields = line.split("|")
        if len(fields) != 3 or not fields[0].startswith("import time:"):
            continue
        try:
            self_us = float(fields[0].removeprefix("import time:"))
        except ValueError:
            continue  # the header line
        module = fields[2].strip()
        if after_requests:
            package = module.split(".")[0].lstrip("_")
            if package == "attr":
                package = "attrs"
            elif package in sys.stdlib_module_names:
                package = "standard-library modules requests does not need"
            totals[package] = totals.get(package, 0.0) + self_us / 1e3
        elif fields[2].rstrip() == " requests":
            after_requests = True  # requests' own line closes its subtree
    return sorted(totals.items(), key=lambda item: -item[1])


def _import_table(imports: Mapping[str, list[float]], runs: int) -> Table:
    base = min(imports["import requests"])
    base_median = median(imports["import requests"])
    table = Table(
        f"Import, whole process, {runs} interleaved runs each",
        ["command", "min ms", "median ms", "min / import requests", "median / import requests"],
    )
    for name, values in imports.items():
        table.rows.append(
            [
                f"`{name}`",
                fmt(min(values) * 1e3),
                fmt(median(values) * 1e3),
                fmt(min(values) / base, 2) + "×",
                fmt(median(values) / base_median, 2) + "×",
            ]
        )
    table.notes.append(
        "`import pleo_auth` loads its public names lazily, so it does not import "
        "requests at all; `from pleo_auth import PleoSession` is what a cron job "
        "actually pays before its first request."
    )
    return table


def _first_table(first: Mapping[str, list[float]], runs: int) -> Table:
    names = list(first)
    base = min(first[names[1]])
    base_median = median(first[names[1]])
    table = Table(
        f"Time to the first authenticated request, fresh process, {runs} interleaved runs",
        ["process", "min ms", "median ms", "min ratio", "median ratio"],
    )
    for name, values in first.items():
        table.rows.append(
            [
                name,
                fmt(min(values) * 1e3),
                fmt(median(values) * 1e3),
                fmt(min(values) / base, 2) + "×",
                fmt(median(values) / base_median, 2) + "×",
            ]
        )
    table.notes.append(
        "From spawn to exit: start Python, import, load the tokens, GET /v2/employees "
        "from an emulator in the parent process over loopback, close."
    )
    return table
