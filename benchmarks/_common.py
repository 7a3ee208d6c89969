"""Pieces every benchmark shares: the stub transport, a private redis-server,
statistics, and the tables and verdicts a part reports."""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import platform
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict

from pleo_auth.tokens import TokenSet

#: Where no request ever goes: the stub adapter answers everything.
STUB_API_URL = "https://api.bench.invalid"
STUB_TOKEN_URL = "https://auth.bench.invalid/oauth/token"
STUB_PATH = "/v2/employees"
CLIENT_ID = "pleo-auth-demo"
CLIENT_SECRET = "demo-secret"

_STUB_BODY = b'{"data":[],"pagination":{"hasNextPage":false}}'


class StubAdapter(BaseAdapter):
    """Answers every request with the same canned 200, without any I/O.

    Mounted on both sessions of a comparison, so that only the auth layer's work
    differs between them.

    Thread safety:
        Stateless; any number of threads may send through one adapter.
    """

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: Any = True,
        cert: Any = None,
        proxies: Any = None,
    ) -> requests.Response:
        response = requests.Response()
        response.status_code = 200
        response.reason = "OK"
        response.headers = CaseInsensitiveDict({"Content-Type": "application/json"})
        response._content = _STUB_BODY
        response.encoding = "utf-8"
        response.url = request.url or ""
        response.request = request
        return response

    def close(self) -> None:
        pass


def mount_stub(session: requests.Session) -> requests.Session:
    """Replace every adapter of ``session`` (PleoSession mounts its own) with the stub."""
    for prefix in ("https://", "http://"):
        session.mount(prefix, StubAdapter())
    return session


def long_lived_tokens(lifetime: float = 86400.0) -> TokenSet:
    """Random opaque tokens that will not need a refresh during a benchmark."""
    return TokenSet(
        access_token="at_" + secrets.token_urlsafe(32),
        refresh_token="rt_" + secrets.token_urlsafe(32),
        expires_at=time.time() + lifetime,
    )


def anchor_available(module: str) -> bool:
    """Whether an anchor library (or matplotlib) is installed."""
    return importlib.util.find_spec(module) is not None


@contextlib.contextmanager
def redis_server() -> Iterator[str | None]:
    """A private redis-server on a free loopback port, or None when there is none."""
    if shutil.which("redis-server") is None or importlib.util.find_spec("redis") is None:
        yield None
        return
    from pleo_auth.testing import redis_server as private_redis

    with private_redis() as url:
        yield url


def redis_store_class() -> Any | None:
    """``pleo_auth.stores.redis.RedisStore``, or None when it cannot be imported."""
    try:
        from pleo_auth.stores.redis import RedisStore
    except ImportError:
        return None
    return RedisStore


# -- statistics -----------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0-100) of ``values``; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def median(values: Sequence[float]) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def interleaved(
    subjects: Mapping[str, Callable[[], float]], repeats: int
) -> dict[str, list[float]]:
    """Run each subject ``repeats`` times, round-robin, starting one further along
    each round, so slow drifts of the machine hit every subject alike.

    Each callable runs one measurement and returns its figure.
    """
    names = list(subjects)
    results: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            results[name].append(subjects[name]())
    return results


# -- reporting -------------------------------------------------------------------


def fmt(value: float | None, digits: int = 1, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}{suffix}"


@dataclass
class Table:
    """A markdown table with a title and notes under it."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [f"#### {self.title}", ""]
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append("|" + "|".join("---" for _ in self.columns) + "|")
        lines.extend("| " + " | ".join(row) + " |" for row in self.rows)
        if self.notes:
            lines.append("")
            lines.extend(self.notes)
        return "\n".join(lines)


@dataclass
class Verdict:
    """One target of the issue, and whether this run met it.

    ``met`` is None when the target could not be measured in this run.
    """

    target: str
    met: bool | None
    measured: str
    why: str = ""

    @property
    def status(self) -> str:
        return {True: "met", False: "**missed**", None: "not measured"}[self.met]


@dataclass
class Section:
    """What one benchmark part reports."""

    title: str
    tables: list[Table] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def markdown(self) -> str:
        parts = [f"### {self.title}"]
        parts.extend(table.markdown() for table in self.tables)
        return "\n\n".join(parts)


def verdict_table(sections: Sequence[Section]) -> Table:
    table = Table("Targets", ["target", "measured", "status", "why, or a caveat"])
    for section in sections:
        for verdict in section.verdicts:
            table.rows.append([verdict.target, verdict.measured, verdict.status, verdict.why])
    return table


def machine() -> dict[str, str]:
    """The machine a run was made on, for the report."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for dist in ("requests", "requests-oauthlib", "authlib", "pleo-auth", "redis"):
        try:
            from importlib.metadata import version

            versions[dist] = version(dist)
        except Exception:
            versions[dist] = "not installed"
    return {
        "cpus": str(os.cpu_count()),
        "cpu": model,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "os": f"{platform.system()} {platform.release()}",
        "executable": sys.executable,
        **{f"version {name}": value for name, value in versions.items()},
    }
