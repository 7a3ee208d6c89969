"""The program tests/core/test_fork_warmup.py runs in a fresh interpreter, one per moment.

It must start cold: nothing a refresh imports lazily may be imported yet, so it
imports no test helpers and no pytest. It builds a PleoSession over a FileStore
against the emulator, forks worker processes at one chosen moment of the
warm-up, lets each worker refresh in turn, and prints one JSON report line.

The moment is chosen with a gate on the import system: a meta-path finder that
blocks the ``gate_at``-th import made by a thread other than the main one after
the session starts being built. A finder runs inside importlib's lock for that
module, so while the gate is closed that thread holds the lock, exactly as a
real import does for its whole duration. ``gate_at`` 0 forks as soon as the
session is built, without a gate. When the warm-up makes fewer imports than
``gate_at``, the workers are forked after it ended and the report says
``reached: false``: the moments are exhausted.

The gate opens when a fork asks pleo_auth to wait for the warm-up (a debug
record of ``pleo_auth._warmup``), or else once the workers are forked, so that
this process finishes its own warm-up.

Usage: ``python fork_warmup_child.py CONFIG_JSON``, with keys ``token_url``,
``api_url``, ``client_id``, ``client_secret``, ``store_path``, ``mode``
(``"main"``: the main thread builds the session and forks, as gunicorn
``--preload`` does; ``"thread"``: another thread builds it while the main thread
forks), ``gate_at``, ``workers`` and ``worker_timeout``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from importlib.machinery import ModuleSpec
from multiprocessing.connection import Connection, Pipe
from types import ModuleType
from typing import Any

#: Modules a refresh needs that nothing but pleo_auth imports here.
COLD = ("backoff", "filelock", "netrc")
PRELOADED = [name for name in COLD if name in sys.modules]  # before pleo_auth: none

# Imported before the test begins, as an app that builds a session at import time
# would have: the library itself, not what it loads later.
import pleo_auth._timer as timer_module  # noqa: E402
from pleo_auth import FileStore, PleoSession  # noqa: E402

BOUND = 30.0  # seconds; only a deadlock ever gets near it


class Gate:
    """Blocks the ``at``-th import made by a thread other than the main one."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.armed = False
        self.count = 0
        self.module: str | None = None
        self.thread: str | None = None
        self.background_imports: list[str] = []
        self.reached = threading.Event()
        self.moment = threading.Event()  # the gate is reached, or the warm-up is over
        self.opened = threading.Event()
        self._main = threading.main_thread()

    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if not self.armed or threading.current_thread() is self._main:
            return None
        self.count += 1
        self.background_imports.append(name)
        if self.count == self.at:
            self.module = name
            self.thread = threading.current_thread().name
            self.reached.set()
            self.moment.set()
            self.opened.wait(BOUND)
        return None  # let the real finders find it


class OpenOnForkWait(logging.Handler):
    """Opens the gate when a fork announces that it waits for the warm-up."""

    def __init__(self, gate: Gate) -> None:
        super().__init__(logging.DEBUG)
        self.gate = gate
        self.fork_waited = False

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "pleo_auth._warmup" and record.getMessage().startswith("fork waits"):
            self.fork_waited = True
            self.gate.opened.set()


def fork_worker(body: Callable[[Connection], None]) -> tuple[int, Connection]:
    parent_end, child_end = Pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            parent_end.close()
            body(child_end)
            code = 0
        except BaseException as exc:
            with contextlib.suppress(BaseException):
                child_end.send({"error": f"{type(exc).__name__}: {exc}"})
        finally:
            os._exit(code)
    child_end.close()
    return pid, parent_end


def main(config: dict[str, Any]) -> dict[str, Any]:
    gate = Gate(config["gate_at"])
    sys.meta_path.insert(0, gate)
    handler = OpenOnForkWait(gate)
    warmup_logger = logging.getLogger("pleo_auth")
    warmup_logger.addHandler(handler)
    warmup_logger.setLevel(logging.DEBUG)

    timer_warmed = threading.Event()
    builder_done = threading.Event()
    original_warm_up = timer_module._warm_up

    def warm_up_over() -> None:
        # Called after setting either event: whichever comes last sees both.
        if timer_warmed.is_set() and builder_done.is_set():
            gate.moment.set()

    def observed_warm_up(*args: Any, **kwargs: Any) -> Any:
        try:
            return original_warm_up(*args, **kwargs)
        finally:
            timer_warmed.set()
            warm_up_over()

    timer_module._warm_up = observed_warm_up  # type: ignore[assignment]

    def build() -> PleoSession:
        return PleoSession(
            config["client_id"],
            config["client_secret"],
            store=FileStore(config["store_path"]),
            token_url=config["token_url"],
            api_url=config["api_url"],
        )

    built: list[PleoSession] = []

    def build_and_note() -> None:
        built.append(build())
        builder_done.set()
        warm_up_over()

    gate.armed = True
    if config["mode"] == "main":
        build_and_note()
    else:
        threading.Thread(target=build_and_note, name="builder").start()
    if gate.at > 0 and not gate.moment.wait(BOUND):
        raise RuntimeError("neither the gate nor the end of the warm-up came")

    workers: list[tuple[int, Connection]] = []
    inherited = built[0] if config["mode"] == "main" and built else None
    for _ in range(config["workers"]):

        def work(pipe: Connection) -> None:
            if not pipe.poll(BOUND):
                return
            pipe.recv()  # our turn
            session = inherited if inherited is not None else build()
            session.tokens  # noqa: B018  # what this worker knows before it refreshes
            session.refresh()
            pipe.send({"status": session.get("/v2/employees").status_code})

        workers.append(fork_worker(work))
    gate.opened.set()  # without a fork that waited: let this process's warm-up finish

    results: list[dict[str, Any]] = []
    for pid, pipe in workers:
        pipe.send("go")  # one at a time: each worker rotates exactly once
        if pipe.poll(config["worker_timeout"]):
            results.append(pipe.recv())
        else:
            results.append({"hung": True})
            os.kill(pid, 9)
        os.waitpid(pid, 0)

    builder_done.wait(BOUND)
    for session in built:
        session.close()
    return {
        "preloaded": PRELOADED,
        "reached": gate.reached.is_set(),
        "module": gate.module,
        "thread": gate.thread,
        "background_imports": gate.background_imports,
        "fork_waited": handler.fork_waited,
        "workers": results,
    }


if __name__ == "__main__":
    report = main(json.loads(sys.argv[1]))
    print(json.dumps(report), flush=True)
