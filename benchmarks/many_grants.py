"""Part 6: many grants, one per Pleo company, behind one ``pleo_auth.Integration``
(issue 12): threads, memory per grant, the cost of ``integration.session(company)``,
and the hot path of such a session beside a plain ``PleoSession``.

The client is one fresh process (spawned, so nothing of this one leaks into its
memory); the emulator runs in another, so its threads and memory are never the
client's. In the client, in this order:

1. An ``Integration`` over ``MemoryStore.family()`` and, for the hot path, a
   plain ``PleoSession`` over a ``MemoryStore``, each of which sends a few
   requests (imports, the connection pools): then the *baseline* RSS.
2. The emulator's grants for N companies are stored with ``integration.add``
   (*stored*: the store's own cost, the tokens included).
3. ``integration.session(company)`` once per company, each session kept
   (*idle*: no request yet), each call timed; then once more per company (a
   grant that already has a session), timed.
4. One ``GET /v2/employees`` per session, from a few caller threads (*used*).
5. The hot path: the same GET through a plain ``PleoSession`` and through
   sessions from the integration, interleaved request by request, each
   request's CPU time charged to its subject.

RSS is read from ``/proc/self/status`` after a full collection at the end of
each phase. A second client process runs the same phases on fewer grants under
``tracemalloc``, and charges every allocation to the innermost ``pleo_auth``
line that made it: what an idle and a used grant are made of.
"""

# ruff: noqa: RUF001 - the tables print ratios with a multiplication sign

from __future__ import annotations

import gc
import linecache
import os
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ._common import CLIENT_ID, CLIENT_SECRET, Section, Table, Verdict, fmt, median, percentile
from ._remote import Child, ChildPipe, RemoteEmulator, process_rss_kib

PATH = "/v2/employees"
LIBRARY_THREAD_PREFIX = "pleo-auth"

MAX_LIBRARY_THREADS = 3
MAX_IDLE_KIB = 16.0
MAX_USED_KIB = 32.0
MAX_SESSION_US = 50.0
MAX_HOT_RATIO = 1.03


@dataclass(frozen=True)
class ManyGrantsConfig:
    """Settings of the many-grants part.

    Attributes:
        grants: Companies, one grant each (N).
        caller_threads: Threads that send the one request per grant.
        hot_batches: Batches of the hot-path comparison.
        hot_batch: Rounds per batch; each round sends one request per subject.
        trace_grants: Grants in the tracemalloc pass (0: no pass).
    """

    grants: int = 10_000
    caller_threads: int = 4
    hot_batches: int = 15
    hot_batch: int = 100
    trace_grants: int = 1_000

    @classmethod
    def quick(cls) -> ManyGrantsConfig:
        return cls(grants=300, caller_threads=4, hot_batches=3, hot_batch=20, trace_grants=100)


def company_ids(count: int, seed: int = 12) -> list[str]:
    """``count`` distinct company ids (lower-case UUIDs), the same every run."""
    return [str(uuid.UUID(int=(seed << 96) + n + 1, version=4)) for n in range(count)]


# -- the client process -------------------------------------------------------------------


class Threads:
    """The caller's own threads, and what the library runs beside them."""

    def __init__(self) -> None:
        self.caller: list[threading.Thread] = [threading.current_thread()]
        self.peak_library = 0
        self.peak_beyond = 0
        self.names: set[str] = set()
        #: Threads beyond the caller's that are not the library's, by name.
        self.strangers: set[str] = set()

    def ours(self, thread: threading.Thread) -> threading.Thread:
        self.caller.append(thread)  # before it starts: a sample meanwhile knows it
        thread.start()
        return thread

    def sample(self) -> tuple[int, int]:
        """The library's threads (by name) and every thread of the process, C ones
        included, that is not the caller's (by the kernel's list)."""
        library = [t for t in threading.enumerate() if t.name.startswith(LIBRARY_THREAD_PREFIX)]
        self.names.update(t.name for t in library)
        caller = {str(t.native_id) for t in self.caller}
        others = set(os.listdir("/proc/self/task")) - caller
        beyond = len(others)
        if beyond > len(library):
            known = {str(t.native_id): t.name for t in threading.enumerate()}
            self.strangers.update(known.get(tid, "(not a Python thread)") for tid in others)
        self.peak_library = max(self.peak_library, len(library))
        self.peak_beyond = max(self.peak_beyond, beyond)
        return len(library), beyond


class Sampler:
    """Samples the threads every ``every`` seconds while a phase runs."""

    def __init__(self, threads: Threads, every: float = 0.02):
        self._threads = threads
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-thread-sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._threads.ours(self._thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._threads.sample()

    def _loop(self) -> None:
        while not self._stop.wait(self._every):
            self._threads.sample()


class _GcWatch:
    """Counts the collections of each generation, and their CPU time, meanwhile."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self._started = 0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.thread_time_ns()
        else:
            generation = info["generation"]
            self.count[generation] += 1
            self.seconds[generation] += (time.thread_time_ns() - self._started) / 1e9

    def __enter__(self) -> _GcWatch:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


def _rss() -> int:
    gc.collect()
    return process_rss_kib()


def _reference() -> int:
    """A fixed piece of pure-Python work (about 20 µs here), timed beside each call:
    how far this machine alone spreads the percentiles of a constant cost."""
    total = 0
    for n in range(400):
        total += n
    return total


def _timed_calls(
    call: Callable[[Any], Any], args: Sequence[Any], keep: list[Any] | None
) -> dict[str, Any]:
    """Call ``call(arg)`` for each arg; each call's CPU and wall time, in µs, and the
    same for :func:`_reference`, run after each call."""
    cpu: list[float] = []
    quiet: list[float] = []  # the calls in which the collector did not run
    wall: list[float] = []
    reference: list[float] = []
    thread_ns, wall_ns = time.thread_time_ns, time.perf_counter_ns
    with _GcWatch() as collections:
        for arg in args:
            ran = sum(collections.count)
            c0 = thread_ns()
            w0 = wall_ns()
            value = call(arg)
            w1 = wall_ns()
            c1 = thread_ns()
            _reference()
            c2 = thread_ns()
            if keep is not None:
                keep.append(value)
            cpu.append((c1 - c0) / 1e3)
            if sum(collections.count) == ran:
                quiet.append(cpu[-1])
            wall.append((w1 - w0) / 1e3)
            reference.append((c2 - c1) / 1e3)
    # What the clocks themselves add to each call, for the notes.
    c0 = thread_ns()
    for _ in range(1000):
        thread_ns()
        wall_ns()
        wall_ns()
        thread_ns()
    overhead = (thread_ns() - c0) / 1e3 / 1000
    return {
        "cpu_p50": median(cpu),
        "cpu_mean": statistics.fmean(cpu),
        "cpu_p99": percentile(cpu, 99),
        "cpu_p99_quiet": percentile(quiet, 99),
        "collected_share": 1 - len(quiet) / len(cpu),
        "wall_p50": median(wall),
        "wall_p99": percentile(wall, 99),
        "cpu_max": max(cpu),
        "reference_p50": median(reference),
        "reference_p99": percentile(reference, 99),
        "clock_overhead": overhead,
        "collections": collections.count,
        "collection_seconds": collections.seconds,
    }


def _client(pipe: ChildPipe, config: ManyGrantsConfig, url: str, trace: bool) -> dict[str, Any]:
    """The client process: see the module's doc. With ``trace``, the same under
    tracemalloc, reporting where the memory goes instead of timings."""
    import tracemalloc

    from pleo_auth import Integration, MemoryStore, PleoSession
    from pleo_auth.tokens import TokenSet

    threads = Threads()
    api = dict(token_url=url + "/oauth/token", api_url=url)
    integration = Integration(CLIENT_ID, CLIENT_SECRET, store=MemoryStore.family(), **api)
    warm_company, warm_reply, plain_reply = pipe.recv()
    integration.add(warm_company, TokenSet.from_response(warm_reply))
    plain = PleoSession(
        CLIENT_ID,
        CLIENT_SECRET,
        store=MemoryStore(),
        tokens=TokenSet.from_response(plain_reply),
        **api,
    )
    hot = integration.session(warm_company)
    for _ in range(20):
        hot.get(PATH, timeout=60).raise_for_status()
        plain.get(PATH, timeout=60).raise_for_status()
    if trace:
        tracemalloc.start(12)
    snapshots: dict[str, Any] = {}
    rss: dict[str, int] = {}
    thread_counts: dict[str, tuple[int, int]] = {}

    def checkpoint(name: str) -> None:
        if trace:
            gc.collect()
            snapshots[name] = tracemalloc.take_snapshot()
        else:
            rss[name] = _rss()
        thread_counts[name] = threads.sample()

    checkpoint("baseline")
    pipe.send("ready")
    companies: list[str] = []
    while (chunk := pipe.recv()) is not None:
        for company, reply in chunk:
            integration.add(company, TokenSet.from_response(reply))
            companies.append(company)
        del chunk
    checkpoint("stored")

    sessions: list[Any] = []
    first = _timed_calls(integration.session, companies, sessions)
    checkpoint("idle")
    again = _timed_calls(integration.session, companies, None)

    errors: list[str] = []

    def call(share: Sequence[Any]) -> None:
        for session in share:
            try:
                session.get(PATH, timeout=60).raise_for_status()
            except Exception as exc:  # counted, and reported by kind
                errors.append(type(exc).__name__)

    started = time.perf_counter()
    with Sampler(threads):
        step = config.caller_threads
        callers = [
            threads.ours(threading.Thread(target=call, args=(sessions[n::step],)))
            for n in range(step)
        ]
        for caller in callers:
            caller.join()
    requests_seconds = time.perf_counter() - started
    checkpoint("used")

    result: dict[str, Any] = {
        "grants": len(companies),
        "first_session": first,
        "again_session": again,
        "errors": errors,
        "requests_seconds": requests_seconds,
        "threads": thread_counts,
        "library_thread_names": sorted(threads.names),
        "other_threads": sorted(threads.strangers),
    }
    if trace:
        result["where"] = _where(snapshots, len(companies))
        tracemalloc.stop()
    else:
        result["rss"] = rss
        result["hot_path"] = _hot_path(plain, hot, sessions, config)
        threads.sample()
        result["peak_library_threads"] = threads.peak_library
        result["peak_threads_beyond_caller"] = threads.peak_beyond
    plain.close()
    integration.close()
    return result


def _hot_path(
    plain: Any, hot: Any, sessions: Sequence[Any], config: ManyGrantsConfig
) -> dict[str, list[float]]:
    """CPU µs per request of each subject, per batch, taking turns request by request."""
    subjects: dict[str, Callable[[int], Any]] = {
        "plain": lambda n: plain.get(PATH, timeout=60),
        "same": lambda n: hot.get(PATH, timeout=60),
        "spread": lambda n: sessions[n % len(sessions)].get(PATH, timeout=60),
    }
    names = list(subjects)
    batches: dict[str, list[float]] = {name: [] for name in names}
    clock = time.thread_time
    sent = 0
    for _ in range(config.hot_batches):
        spent = dict.fromkeys(names, 0.0)
        gc.collect()
        for round_ in range(config.hot_batch):
            for offset in range(len(names)):
                name = names[(round_ + offset) % len(names)]
                started = clock()
                subjects[name](sent).raise_for_status()
                spent[name] += clock() - started
            sent += 1
        for name in names:
            batches[name].append(spent[name] / config.hot_batch * 1e6)
    return batches


def _source(filename: str, lineno: int) -> str:
    """``file:line (code)``, the file relative to its package."""
    if filename.endswith("multiprocessing/connection.py"):
        return "the token strings, as received (unpickled)"
    code = linecache.getline(filename, lineno).strip()
    if len(code) > 60:
        code = code[:57] + "..."
    if "/pleo_auth/" in filename:
        filename = "pleo_auth/" + filename.rsplit("/pleo_auth/", 1)[1]
    elif "/site-packages/" in filename:
        filename = filename.rsplit("/site-packages/", 1)[1]
    else:
        filename = filename.rsplit("/", 1)[-1]
    return f"{filename}:{lineno} `{code}`"


def _where(snapshots: dict[str, Any], grants: int) -> dict[str, list[tuple[str, float]]]:
    """Bytes per grant that each phase added, by the innermost pleo_auth line that
    allocated them (else the innermost line), largest first."""
    phases = {"stored": "baseline", "idle": "stored", "used": "idle"}
    where: dict[str, list[tuple[str, float]]] = {}
    for phase, before in phases.items():
        totals: dict[str, float] = {}
        for diff in snapshots[phase].compare_to(snapshots[before], "traceback"):
            if diff.size_diff == 0:
                continue
            frames = list(reversed(diff.traceback))  # innermost first
            frame = next((f for f in frames if "/pleo_auth/" in f.filename), frames[0])
            key = _source(frame.filename, frame.lineno)
            totals[key] = totals.get(key, 0.0) + diff.size_diff / grants
        total = sum(totals.values())
        ranked = sorted(totals.items(), key=lambda item: -item[1])
        where[phase] = [("total", total), *ranked[:8]]
    return where


# -- the part ------------------------------------------------------------------------------


def _drive(
    emulator: RemoteEmulator, config: ManyGrantsConfig, grants: int, trace: bool
) -> dict[str, Any]:
    companies = company_ids(grants)
    extra = company_ids(2, seed=13)
    with Child(_client, config, emulator.url, trace, name="bench-many-grants") as child:
        warm, plain = emulator.issue_many(extra)
        child.send((extra[0], warm, plain))
        if child.recv() != "ready":
            raise RuntimeError("the client process did not get ready")
        for start in range(0, len(companies), 1000):
            share = companies[start : start + 1000]
            child.send(list(zip(share, emulator.issue_many(share), strict=True)))
        child.send(None)
        result: dict[str, Any] = child.result()
    return result


def run(config: ManyGrantsConfig) -> Section:
    section = Section(f"6. Many grants: {config.grants:,} companies behind one Integration")
    with RemoteEmulator(access_token_lifetime=86_400.0) as emulator:
        result = _drive(emulator, config, config.grants, trace=False)
        counters = emulator.counters
        emulator_rss = emulator.rss_kib()
        where = (
            _drive(emulator, config, config.trace_grants, trace=True)["where"]
            if config.trace_grants
            else None
        )
    if counters.refresh_grants or counters.unauthorized or counters.rejected_refreshes:
        raise RuntimeError(f"the many-grants run refreshed or was refused: {counters}")
    section.raw = {
        "result": result,
        "emulator_counters": counters,
        "emulator_rss_kib": emulator_rss,
    }
    if where is not None:
        section.raw["where"] = where
    section.tables.append(_memory_table(result, config, emulator_rss))
    section.tables.append(_session_table(result))
    section.tables.append(_hot_table(result["hot_path"], config))
    if where is not None:
        section.tables.append(_where_table(where, config.trace_grants))
    section.verdicts.extend(_verdicts(result, config))
    return section


def _per_grant(result: dict[str, Any], phase: str, since: str) -> float:
    rss = result["rss"]
    return float(rss[phase] - rss[since]) / result["grants"]


def _memory_table(result: dict[str, Any], config: ManyGrantsConfig, emulator_rss: int) -> Table:
    rss = result["rss"]
    table = Table(
        f"Memory and threads of the client process, {result['grants']:,} grants "
        "(MemoryStore.family)",
        ["phase", "RSS MiB", "KiB / grant, this phase", "KiB / grant since baseline",
         "pleo-auth-* threads", "threads beyond the caller's"],
    )  # fmt: skip
    previous = "baseline"
    for phase in ("baseline", "stored", "idle", "used"):
        library, beyond = result["threads"][phase]
        table.rows.append(
            [
                phase,
                fmt(rss[phase] / 1024, 1),
                "" if phase == "baseline" else fmt(_per_grant(result, phase, previous), 2),
                "" if phase == "baseline" else fmt(_per_grant(result, phase, "baseline"), 2),
                str(library),
                str(beyond),
            ]
        )
        previous = phase
    errors = result["errors"]
    table.notes.append(
        "*stored*: every grant saved with `integration.add` (the store's own cost: "
        "MemoryStore objects and their TokenSets); *idle*: `integration.session(company)` "
        "once per company, every session kept, no request; *used*: each session then sent "
        f"one GET ({config.caller_threads} caller threads, {result['requests_seconds']:.0f} s, "
        f"{len(errors)} errors). RSS after `gc.collect()`, from `/proc/self/status`. "
        f"The emulator runs in another process (its RSS at the end: "
        f"{emulator_rss / 1024:.0f} MiB, not counted). Peak over the run, sampled every "
        f"20 ms while the requests ran: {result['peak_library_threads']} pleo-auth-* "
        f"threads ({', '.join(result['library_thread_names']) or 'none'}), "
        f"{result['peak_threads_beyond_caller']} threads beyond the caller's own (as the "
        "kernel counts them)."
    )
    return table


def _session_table(result: dict[str, Any]) -> Table:
    table = Table(
        "`integration.session(company)`, one call per company",
        ["call", "CPU µs p50", "CPU µs p99", "wall µs p50", "wall µs p99",
         "gen-2 collections (ms)", "reference CPU µs p50 / p99"],
    )  # fmt: skip
    for key, label in (
        ("first_session", "first for the company (builds its coordinator)"),
        ("again_session", "a company that already has a session"),
    ):
        timing = result[key]
        table.rows.append(
            [
                label,
                fmt(timing["cpu_p50"]),
                fmt(timing["cpu_p99"]),
                fmt(timing["wall_p50"]),
                fmt(timing["wall_p99"]),
                f"{timing['collections'][2]} ({timing['collection_seconds'][2] * 1e3:.0f})",
                f"{fmt(timing['reference_p50'])} / {fmt(timing['reference_p99'])}",
            ]
        )
    table.notes.append(
        "CPU time is the calling thread's (`time.thread_time_ns`), which other processes "
        "on the shared machine do not inflate; wall time includes being preempted. Each "
        f"call's figure includes about {result['first_session']['clock_overhead']:.1f} µs "
        "of reading the two clocks. A gen-2 collection that falls inside a call is "
        "charged to it (they walk every live object: the kept sessions included). "
        "*Reference*: a fixed loop of pure Python timed right after each call, the same "
        "work every time: its p99 over its p50 is what this machine alone does to a "
        "constant cost."
    )
    return table


def _hot_table(batches: dict[str, list[float]], config: ManyGrantsConfig) -> Table:
    labels = {
        "plain": "plain PleoSession (MemoryStore)",
        "same": "Integration session, one company",
        "spread": "Integration sessions, another company each request",
    }
    table = Table(
        f"Hot path through the emulator: CPU µs per request, {config.hot_batches} batches "
        f"of {config.hot_batch} requests per subject, interleaved request by request",
        ["subject", "median µs", "min µs", "ratio to plain (median of batches)",
         "ratio spread (min–max)"],
    )  # fmt: skip
    for name, label in labels.items():
        ratios = [a / b for a, b in zip(batches[name], batches["plain"], strict=True)]
        table.rows.append(
            [
                label,
                fmt(median(batches[name])),
                fmt(min(batches[name])),
                fmt(statistics.median(ratios), 3) + "×",
                f"{min(ratios):.3f}–{max(ratios):.3f}×",
            ]
        )
    table.notes.append(
        "The same GET /v2/employees on the same emulator (another process, loopback), "
        "with tokens that live a day. Each request's CPU time (`time.thread_time`) is "
        "charged to the session that sent it; the ratio of each batch is taken, and the "
        "median and range of those ratios are shown. The client holds all "
        f"{config.grants:,} grants and their sessions meanwhile."
    )
    return table


def _where_table(where: dict[str, list[tuple[str, float]]], grants: int) -> Table:
    table = Table(
        f"Where a grant's memory goes: tracemalloc, {grants:,} grants, bytes per grant "
        "by the innermost pleo_auth line that allocated them",
        ["phase", "total B / grant", "largest sources (B / grant)"],
    )
    for phase, entries in where.items():
        total = entries[0][1]
        sources = "; ".join(f"{name} {size:,.0f}" for name, size in entries[1:6])
        table.rows.append([phase, fmt(total, 0), sources])
    table.notes.append(
        "Python's heap only (no allocator slack, no C libraries), so below the RSS figures. "
        "An allocation made by requests or the standard library for pleo_auth is charged "
        "to the pleo_auth line that called it."
    )
    return table


def _verdicts(result: dict[str, Any], config: ManyGrantsConfig) -> list[Verdict]:
    verdicts = []
    grants = f"{result['grants']:,} grants"
    library, beyond = result["peak_library_threads"], result["peak_threads_beyond_caller"]
    verdicts.append(
        Verdict(
            f"{grants}: library threads ≤ {MAX_LIBRARY_THREADS} beyond the caller's",
            library <= MAX_LIBRARY_THREADS and beyond <= MAX_LIBRARY_THREADS,
            f"{library} pleo-auth-* threads at most; {beyond} threads beyond the caller's",
        )
    )
    idle = _per_grant(result, "idle", "baseline")
    store = _per_grant(result, "stored", "baseline")
    verdicts.append(
        Verdict(
            f"{grants}: RSS per idle grant ≤ {MAX_IDLE_KIB:g} KiB",
            idle <= MAX_IDLE_KIB,
            f"{idle:.2f} KiB (of which the MemoryStore family {store:.2f} KiB)",
            "",
        )
    )
    used = _per_grant(result, "used", "baseline")
    verdicts.append(
        Verdict(
            f"{grants}: RSS per grant after one request, session kept, ≤ {MAX_USED_KIB:g} KiB",
            used <= MAX_USED_KIB and not result["errors"],
            f"{used:.2f} KiB (store included); {len(result['errors'])} caller errors",
        )
    )
    for key, label in (("first_session", "first call"), ("again_session", "later calls")):
        timing = result[key]
        # The call's own cost: its median, and its p99 over the calls in which CPython's
        # collector did not run (a young collection walks every object the whole
        # process allocated since the last; the call that crosses the threshold pays).
        met = timing["cpu_p50"] <= MAX_SESSION_US and timing["cpu_p99_quiet"] <= MAX_SESSION_US
        verdicts.append(
            Verdict(
                f"{grants}: `integration.session(company)` ≤ {MAX_SESSION_US:g} µs, {label}",
                met,
                f"CPU p50 {timing['cpu_p50']:.1f} µs, mean {timing['cpu_mean']:.1f}, p99 "
                f"{timing['cpu_p99_quiet']:.1f} without a collection; p99 of all "
                f"{timing['cpu_p99']:.1f} (wall p50 {timing['wall_p50']:.1f}, p99 "
                f"{timing['wall_p99']:.1f})",
                _gc_note(timing) if met else _why_session(key, timing),
            )
        )
    batches = result["hot_path"]
    for name, label in (("same", "one company"), ("spread", "another company each request")):
        ratios = [a / b for a, b in zip(batches[name], batches["plain"], strict=True)]
        ratio = statistics.median(ratios)
        verdicts.append(
            Verdict(
                f"{grants}: Integration session hot path ≤ {MAX_HOT_RATIO}× a plain "
                f"PleoSession ({label})",
                ratio <= MAX_HOT_RATIO,
                f"{ratio:.3f}× (batches {min(ratios):.3f}–{max(ratios):.3f}×)",
            )
        )
    return verdicts


def _gc_note(timing: dict[str, Any]) -> str:
    share = timing["collected_share"]
    if timing["cpu_p99"] <= MAX_SESSION_US:
        return ""
    return (
        f"the collector ran inside {share:.1%} of the calls (more than 1%, so it sets the "
        "p99 of all calls): a young collection walks every object allocated since the "
        f"last; {timing['collections'][2]} gen-2 collections fell inside calls"
    )


def _why_session(key: str, timing: dict[str, Any]) -> str:
    gen2 = timing["collections"][2]
    if key == "first_session":
        return (
            "the first call per company builds the grant's coordinator (Coordinator, its "
            "lock, the registry entry, its store); "
            f"{gen2} gen-2 collections fell inside calls"
        )
    return f"{gen2} gen-2 collections fell inside calls"
