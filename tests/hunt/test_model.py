"""A model-based test: random interleavings of sessions, processes, restarts, forks,
store failures and token-endpoint faults, with one invariant checked after every step.

**The invariant.** No refresh token is ever presented twice unless a reply was lost,
and no call hangs. Spelled out, after every step:

* the emulator saw no refresh token twice, and no reuse detection, on a grant none
  of whose replies was lost (a reply the emulator made after rotating, then dropped,
  cut, or delayed past the client's timeout);
* no caller got :class:`~pleo_auth.ReauthenticationRequired` on such a grant;
* a caller got :class:`~pleo_auth.RefreshError`, :class:`~pleo_auth.TokenStoreError`
  or a 401 only after a fault was injected, and nothing else ever went wrong;
* every command returned within its bound, and every proactive timer fell asleep
  again (a child that hangs has its stacks dumped by faulthandler, then is killed).

At the end of each example every fault is cleared, time moves past every token's
expiry, and each process must then get a 200: the grant still works.

**Two documented exceptions, and nothing else.** docs/reliability.md, "Known limits" (the
bullet beginning "If a refresh succeeds but the store cannot be written") documents
what happens while a process owes a write-back. tests/hunt/test_adversarial_2.py pins
the second below with a strict xfail,

    test_a_process_started_with_tokens_while_a_failed_save_left_the_store_empty_never_spends_them

and its other strict xfail,

    test_a_store_that_refuses_the_save_and_the_withdrawal_never_leaves_the_spent_pair_to_others

the same hole when the withdrawal fails too (a refused delete, which the model never
injects, so it stays forbidden here). All wait for store tombstones and renewable
leases. The model recognises them from its own state
(:class:`OwedWriteBack`), never from the product's:

* **The window.** It opens at the step where the tokens rotated at the emulator, a
  process's :class:`~pleo_auth.testing.FaultyStore` failed a save, and the store
  (read by the model itself) is left without the grant's current pair although the
  grant lives and no reply was lost: the save failed beyond its retries and the spent
  pair was withdrawn. It closes when the store holds the current pair again (the
  write-back), or the grant dies. Once the owing process has no store fault left,
  a second has passed since its last one and its timer ticks, the write-back is due:
  a window still open then fails the model.
* **Known limit A.** Inside the window, a call in any coordinator but the one owing
  the write-back may raise ``ReauthenticationRequired`` with "No Pleo tokens in ...":
  it found the store empty, a false alarm by design.
* **Known limit B.** A process that starts with ``tokens=`` rebuilt from the first
  login reply inside the window, while its own saves do not fail, seeds the spent
  first pair; its next 401 presents that refresh token again and Pleo revokes the
  grant. A reuse detection is excused only then, and only if the one refresh token
  presented twice is the first reply's; the grant then counts as lost.

Each run prints how often it met each ("known limit A seen 3 times").

**Replies a slow machine loses.** The client's ``refresh_timeout`` is real time
(half a second here, so that an injected "timeout" fault stays cheap). On a loaded
machine the emulator can answer later than that with no fault injected: the client
gives up, retries with the same refresh token, as it must, and Pleo's rules revoke
the grant. That is a lost reply like any other, and the model counts it as one:
each process counts its token-endpoint attempts that went unanswered (from the
product's own log records, model_worker.UnansweredAttempts), the emulator counts
the faults it served that leave one unanswered, and a step with more of the first
than the second is judged as if a fault had been injected (the grant is tainted if
it rotated). Each run prints how many steps and lost replies this excused; on a
quiet machine both are 0. A refresh token presented twice with no unanswered
attempt still fails the model. (Seed 15008772006548993735 failed this way once, on
a loaded machine, and never again when replayed: that is how this was found; with
the real-time timeout cut to 0.01 s under three CPU burners, the model without this
rule fails within seconds with exactly that signature, and with it passes.)

**The parts are real.** The emulator (a real HTTP server) runs here, with its clock
driven by the model. Each "process" is a real child process (tests/support/model_worker.py)
driven over a pipe, with two apps (two coordinators) over one store: a FileStore
in a temporary directory, or a RedisStore on a private redis-server. Store failures
come from :class:`pleo_auth.testing.FaultyStore` around the real store, in one
process or both, once or for several calls. A restart closes every session of a
process and, as many apps do at every start, may pass
``tokens=TokenSet.from_response(first_reply)`` again. A crash kills the child
(SIGKILL). A fork runs one request in a real ``os.fork()`` child, which then lets
its own timer finish what is due before it exits (finding E). A dropped session
is left unclosed in a reference cycle for the garbage collector. Concurrent GETs
run in every process at once, from threads started on a barrier. A lost reply lets
the grant die; the model then logs in again, as a user would.

**Time** is fake and moves only when the model says so; a proactive timer wakes at
a ``tick``, never by itself (model_worker.ModelClock), so every timer refresh is a
step of the model and a failure can be replayed.

**Budget.** The default run is derandomized and bounded (about half a minute); the
soak run (``pytest -m soak tests/hunt/test_model.py -s``, about a minute and a half on
two cores) runs CI's fixed seed; ``PLEO_MODEL_RANDOM=1`` explores new interleavings;
it prints its seed first, and ``PLEO_MODEL_SEED=<seed>`` replays it (a failure also prints a
``@reproduce_failure`` blob). Each prints how many interleavings (examples) and
steps it explored. ``PLEO_MODEL_OFF`` (rule
names, comma-separated) leaves rules out, to hunt one bug while another is known.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import multiprocessing
import os
import random
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis.core
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from support import model_worker
from support.model_worker import SESSION_SETTINGS, TIMEOUT_DELAY, ModelClock, Outcome

from pleo_auth import FileStore, TokenSet
from pleo_auth.stores.base import TokenStore
from pleo_auth.testing import Emulator, Fault, redis_server

#: Real seconds one command may take. The longest legitimate one waits out a
#: token-endpoint timeout twice and a store lock; only a hang comes near this.
COMMAND_TIMEOUT = 20.0

#: Seconds an access token lives on the emulator (fake time).
LIFETIME = 100.0

PROCESSES = ("A", "B")

#: Rules to leave out, by method name, comma-separated (to hunt one bug at a time
#: while another is known): PLEO_MODEL_OFF=drop_unclosed,crash pytest tests/hunt/test_model.py
OFF = frozenset(filter(None, os.environ.get("PLEO_MODEL_OFF", "").split(",")))


def on(name: str, needs_sessions: bool = False) -> Any:
    """A precondition: the rule is not switched off (and there is a session to use)."""
    return lambda self: name not in OFF and (not needs_sessions or bool(self.sessions))


DEFAULT_BUDGET = settings(
    # One failure, shrunk well, is worth more than several shrunk halfway.
    report_multiple_bugs=False,
    max_examples=20,
    stateful_step_count=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
#: The soak's seed in CI: about 60 interleavings, about a minute and a half.
SOAK_SEED = 5231860187830823865

# About a minute and a half on a 2-core machine: the soak suite as a whole must fit CI
# (PLEO_MODEL_RANDOM=1 runs of it hunt further; see the module's docstring).
SOAK_BUDGET = settings(
    report_multiple_bugs=False,
    max_examples=60,
    stateful_step_count=50,
    print_blob=True,
    deadline=None,
    derandomize=False,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:12]


# -- the emulator, with a record of every refresh token presented --------------------------


@dataclass
class Presentation:
    granted: bool
    lost: bool = False


_current = threading.local()


class _WatchedFaults(deque[Any]):
    """The emulator's fault queue, telling each request's thread which fault it took."""

    #: Faults served so far that leave the client's attempt unanswered: no reply, a
    #: cut one, or one later than the client's ``refresh_timeout``.
    unanswering = 0

    def popleft(self) -> Any:
        fault = super().popleft()
        _current.fault = fault
        if (
            getattr(fault, "drop", False)
            or getattr(fault, "reset", False)
            or getattr(fault, "truncate", None) is not None
            or getattr(fault, "delay", 0.0) >= SESSION_SETTINGS["refresh_timeout"]
        ):
            self.unanswering += 1
        return fault


class RecordingEmulator(Emulator):
    """The emulator, recording each presentation of each refresh token and whether
    the reply to it was lost after the grant rotated."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._record_lock = threading.Lock()
        self.presentations: dict[str, list[Presentation]] = {}
        self._tainted: set[int] = set()  # ids of grants allowed to see reuse
        self.reused: set[int] = set()  # ids of grants revoked by reuse detection

        self._faults = _WatchedFaults()

    def _token_endpoint(self, request: Any) -> Any:
        _current.fault = None
        return super()._token_endpoint(request)

    def _refresh(self, form: Any) -> Any:
        token = form.get("refresh_token")
        grant = None if token is None else self.grant_of(token)
        reuses = self.counters.reuse_detections
        response = super()._refresh(form)
        if self.counters.reuse_detections > reuses and grant is not None:
            with self._record_lock:
                self.reused.add(grant)
        if token is not None:
            fault = getattr(_current, "fault", None)
            granted = response.status == 200
            # Marked before the fault delays or spoils the reply: the client's retry
            # may arrive while this thread still sleeps.
            lost = granted and fault is not None and fault.after_grant
            with self._record_lock:
                self.presentations.setdefault(token, []).append(Presentation(granted, lost))
        return response

    @property
    def unanswering_served(self) -> int:
        """Faults served so far that leave the client's attempt unanswered."""
        return self._faults.unanswering

    def grant_of(self, refresh_token: str) -> int | None:
        with self._lock:
            grant = self._grants_by_refresh.get(refresh_token)
        return None if grant is None else id(grant)

    def taint(self, refresh_token: str) -> None:
        """Allow reuse on this token's grant: its newest pair was lost with a process."""
        grant = self.grant_of(refresh_token)
        if grant is not None:
            with self._record_lock:
                self._tainted.add(grant)

    def grant_live(self, refresh_token: str) -> bool:
        """Whether this token's grant exists and was not revoked."""
        with self._lock:
            grant = self._grants_by_refresh.get(refresh_token)
            return grant is not None and not grant.revoked

    def reused_grant(self, refresh_token: str) -> bool:
        """Whether reuse detection revoked this token's grant."""
        grant = self.grant_of(refresh_token)
        with self._record_lock:
            return grant is not None and grant in self.reused

    def repeated_on_grant(self, refresh_token: str) -> set[str]:
        """The refresh tokens of this token's grant presented more than once."""
        grant = self.grant_of(refresh_token)
        with self._record_lock:
            repeated = [t for t, records in self.presentations.items() if len(records) > 1]
        return {token for token in repeated if self.grant_of(token) == grant}

    def tainted(self, refresh_token: str) -> bool:
        """Whether a reply of this token's grant was lost, or the grant was tainted."""
        return self._grant_tainted(self.grant_of(refresh_token))

    def untainted_reuses(self) -> int:
        """Reuse detections on grants none of whose replies was lost."""
        with self._record_lock:
            reused = set(self.reused)
        return sum(1 for grant in reused if not self._grant_tainted(grant))

    def _grant_tainted(self, grant: int | None) -> bool:
        with self._record_lock:
            if grant in self._tainted:
                return True
            lost = [t for t, records in self.presentations.items() if any(r.lost for r in records)]
        return any(self.grant_of(token) == grant for token in lost)

    def duplicates(self) -> list[str]:
        """Fingerprints of refresh tokens presented twice on a grant with no lost reply."""
        with self._record_lock:
            repeated = [t for t, records in self.presentations.items() if len(records) > 1]
        return [
            f"{fingerprint(token)} x{len(self.presentations[token])}"
            for token in repeated
            if not self.tainted(token)
        ]

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()


# -- the child processes -----------------------------------------------------------------


class Hang(AssertionError):
    pass


class Zygote:
    """A child process that forks the model's processes (model_worker.zygote).

    Started once per test run; every example forks fresh workers from it.
    """

    def __init__(self, name: str):
        fd, self.dump_path = tempfile.mkstemp(prefix=f"model-{name}-", suffix=".stacks")
        os.close(fd)
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=model_worker.zygote, args=(child, self.dump_path), daemon=True
        )
        self.process.start()
        child.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(None)
        self.process.join(COMMAND_TIMEOUT)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(COMMAND_TIMEOUT)
        self.conn.close()
        with contextlib.suppress(OSError):
            os.unlink(self.dump_path)


_ZYGOTES: dict[str, Zygote] = {}


def zygote(name: str) -> Zygote:
    existing = _ZYGOTES.get(name)
    if existing is None or not existing.process.is_alive():
        existing = _ZYGOTES[name] = Zygote(name)
    return existing


@pytest.fixture(scope="module", autouse=True)
def _zygotes() -> Iterator[None]:
    yield
    for each in _ZYGOTES.values():
        each.close()
    _ZYGOTES.clear()


class Proc:
    """One process of the model: a worker forked from its zygote, driven over a pipe."""

    def __init__(self, name: str):
        self.name = name
        self.zygote = zygote(name)
        self.conn = self.zygote.conn
        self.pid: int | None = None

    def start(self) -> None:
        self.pid = self.call("fork", 0.0)

    def stop(self) -> None:
        """Close every session and end the worker (killed if it does not end)."""
        if self.pid is None:
            return
        with contextlib.suppress(OSError):
            self.conn.send(None)
        if not self._exited(COMMAND_TIMEOUT):
            self.kill()
        self.pid = None

    def kill(self) -> None:
        """SIGKILL the worker, as a crash or the OOM killer would."""
        if self.pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        if not self._exited(COMMAND_TIMEOUT):
            # The zygote itself is stuck: the next example starts another.
            self.zygote.process.kill()
        self.pid = None

    def _exited(self, timeout: float) -> bool:
        """Read up to the zygote's report that the worker exited."""
        give_up_at = time.monotonic() + timeout
        while self.conn.poll(max(0.0, give_up_at - time.monotonic())):
            try:
                status, _, _ = self.conn.recv()
            except (EOFError, OSError):
                return False
            if status == "exited":
                return True
        return False

    def stacks(self) -> str:
        """Every thread's stack in the worker (and in a forked child of it, if one hung)."""
        path = Path(self.zygote.dump_path)
        path.write_text("")
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGUSR1)
        # faulthandler writes from a signal handler: read once it has had time to.
        give_up_at = time.monotonic() + 5
        text = ""
        while time.monotonic() < give_up_at and "Current thread" not in text:
            time.sleep(0.05)
            text = path.read_text(errors="replace")
        return text or "(no stacks dumped)"

    def call(self, name: str, now: float, *args: Any, timeout: float = COMMAND_TIMEOUT) -> Any:
        self.send(name, now, *args)
        return self.receive(name, timeout)

    def send(self, name: str, now: float, *args: Any) -> None:
        """Start a command; :meth:`receive` its result (other processes may run meanwhile)."""
        self.conn.send((name, now, args))

    def receive(self, name: str, timeout: float = COMMAND_TIMEOUT) -> Any:
        if not self.conn.poll(timeout):
            stacks = self.stacks()
            self.kill()
            raise Hang(f"process {self.name}: {name} did not return in {timeout:g}s\n{stacks}")
        status, result, settled = self.conn.recv()
        if status == "exited":
            self.pid = None
            raise AssertionError(f"process {self.name} died during {name}: exit status {result}")
        if status == "crash":
            raise AssertionError(f"process {self.name}: {name} crashed:\n{result}")
        if not settled:
            stacks = self.stacks()
            self.kill()
            raise Hang(f"process {self.name}: a proactive timer never went back to sleep "
                       f"after {name}\n{stacks}")  # fmt: skip
        return result


#: A private redis-server for the whole module, started on first use.
_REDIS: dict[str, Any] = {}


def redis_url() -> str | None:
    if "url" not in _REDIS:
        if shutil.which("redis-server") is None:
            if os.environ.get("CI"):
                pytest.fail("redis-server is not installed; .ci/run should have installed it")
            _REDIS["url"] = None
        else:
            stack = contextlib.ExitStack()
            _REDIS["url"] = stack.enter_context(redis_server())
            _REDIS["stack"] = stack
    return _REDIS["url"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module", autouse=True)
def _redis() -> Iterator[None]:
    yield
    stack = _REDIS.pop("stack", None)
    _REDIS.clear()
    if stack is not None:
        stack.close()


# -- the model ---------------------------------------------------------------------------

#: One clock for the whole run: examples follow each other in time, so a child's
#: clock never has to go back.
CLOCK = ModelClock(1_000_000.0)


@dataclass
class Explored:
    examples: int = 0
    steps: int = 0
    faults: int = 0
    by_rule: dict[str, int] = field(default_factory=dict)
    #: How often each documented known limit (module docstring) was met.
    known_a: int = 0
    known_b: int = 0
    windows: int = 0  # write-back windows opened
    #: Replies lost with no fault injected: the client gave up waiting on a loaded
    #: machine (``refresh_timeout`` is real time) after the emulator had rotated.
    unforced_lost: int = 0
    unanswered_unforced: int = 0  # steps with an attempt unanswered, no fault injected


EXPLORED = Explored()

ENDPOINT_FAULTS: dict[str, dict[str, Any]] = {
    "503": {"status": 503},
    "500 twice": {"status": 500, "count": 2},
    "429 retry-after": {"status": 429, "retry_after": 0.2},
    "reset": {"reset": True},
    "drop": {"drop": True},
    "timeout": {"delay": TIMEOUT_DELAY, "status": 503},
    "lost: dropped": {"after_grant": True, "drop": True},
    "lost: reset": {"after_grant": True, "reset": True},
    "lost: cut": {"after_grant": True, "truncate": 40},
    "lost: late": {"after_grant": True, "delay": TIMEOUT_DELAY},
}

STORE_FAULTS = ["save", "save landed", "load", "version", "lock"]

#: Errors a caller may see once a fault was injected (all retryable).
RETRYABLE = {"RefreshError", "TokenStoreError"}

#: Model seconds after a process's last store fault by which its timer writes an
#: owed pair back (the product's pause between write-back attempts).
WRITE_BACK_PAUSE = 1.0

#: What a coordinator says when it finds the store empty (known limit A).
EMPTY_STORE = "No Pleo tokens in "


@dataclass
class OwedWriteBack:
    """A refresh rotated the tokens, its save failed beyond its retries, and the spent
    pair was withdrawn: the store is empty until the owing process writes back."""

    owners: frozenset[str]  # processes whose save failed as the tokens rotated
    #: Coordinators (process, app) one of which holds the unsaved pair.
    holders: frozenset[tuple[str, int]]
    last_fault_at: float  # model time of an owner's last store fault
    #: Processes that started with tokens= from the first reply inside the window,
    #: their own saves not failing (known limit B).
    reseeded: set[str] = field(default_factory=set)


class SessionsModel(RuleBasedStateMachine):
    """See the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self.emu: RecordingEmulator | None = None
        self.procs: dict[str, Proc] = {}
        self.tmp: str | None = None
        self.sessions: list[tuple[str, int]] = []
        self.faulted = False  # any fault injected in this example
        self.checked = False  # the last step passed its invariants
        self.store: TokenStore | None = None
        self.first_reply: dict[str, Any] = {}
        self.config: dict[str, Any] = {}
        self.violations: list[str] = []
        self.apps: dict[tuple[str, int], int] = {}  # session -> app (its coordinator)
        # The write-back window (module docstring), and what it is judged by.
        self.owed: OwedWriteBack | None = None
        self.owed_at_start = False  # the window was open as this step began
        self.faults: dict[str, dict[str, Any]] = {}  # per process: the last do_status
        self.injected_at_start: dict[str, dict[str, int]] = {}
        self.grants_at_start = 0
        self.unanswered_at_start: dict[str, int] = {}  # per process, as this step began
        self.unanswering_at_start = 0  # unanswering faults the emulator had served
        self.lost_to_load = False  # this step, an attempt went unanswered unforced
        self.actors: set[tuple[str, int]] = set()  # coordinators this step drove
        self.ticked: set[str] = set()  # processes whose timers this step ticked
        self.store_faulted = False  # a store fault was armed in this example
        #: Per process: whether its last armed save fault writes before failing.
        self.saves_land: dict[str, bool] = {}
        self.history: list[str] = []  # this example's steps, for a failure's message
        self.started_at = 0.0

    # -- set-up -----------------------------------------------------------------------

    @initialize(kind=st.sampled_from(["file", "redis"]))
    def start(self, kind: str) -> None:
        EXPLORED.examples += 1
        CLOCK.advance(10_000.0)
        self.started_at = CLOCK.time()
        self.history.append(f"start(kind={kind!r})")
        self.emu = RecordingEmulator(access_token_lifetime=LIFETIME, clock=CLOCK)
        self.emu.start()
        self.tmp = tempfile.mkdtemp(prefix="pleo-model-")
        url = redis_url() if kind == "redis" else None
        config: dict[str, Any] = {
            "port": int(self.emu.url.rsplit(":", 1)[1]),
            "client_id": self.emu.client_id,
            "client_secret": self.emu.client_secret,
        }
        if url is None:
            config.update(store="file", path=os.path.join(self.tmp, "tokens.json"))
            self.store = FileStore(config["path"])
        else:
            from pleo_auth.stores.redis import RedisStore

            config.update(store="redis", redis_url=url, redis_key=f"model:{uuid.uuid4().hex}")
            self.store = RedisStore(url, key=config["redis_key"], clock=CLOCK)
        self.config = config
        self.login()
        for name in PROCESSES:
            self.spawn(name)
            # Each process starts as an app does: with one session.
            self.open_session_in(name, reseed=False)
        self.checked = True

    def spawn(self, name: str) -> None:
        child = self.procs[name] = Proc(name)
        child.start()
        child.call("setup", CLOCK.time(), self.config)
        # A new worker, a new FaultyStore: nothing armed, nothing injected yet.
        self.faults[name] = {"pending": {}, "injected": {}}
        self.saves_land.pop(name, None)
        self.injected_at_start[name] = {}

    def add_session(self, where: str, sid: int, app: int) -> None:
        self.sessions.append((where, sid))
        self.apps[(where, sid)] = app

    def proc(self, name: str) -> Proc:
        return self.procs[name]

    def login(self) -> None:
        """A new grant, saved to the store as ``pleo-auth login`` does."""
        assert self.emu is not None
        assert self.store is not None
        self.first_reply = self.emu.issue_tokens()
        self.store.save(TokenSet.from_response(self.first_reply, now=CLOCK.time()))

    def teardown(self) -> None:
        try:
            if self.checked and self.emu is not None:
                self.still_works()
        finally:
            for child in self.procs.values():
                child.stop()
            if self.emu is not None:
                self.emu.stop()
            if self.tmp is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
            if self.store is not None and self.config.get("store") == "redis":
                with contextlib.suppress(Exception):
                    self.store.clear()

    def still_works(self) -> None:
        """With every fault cleared and every token expired, each process gets a 200."""
        assert self.emu is not None
        self.emu.clear_faults()
        for name in PROCESSES:
            self.proc(name).call("clear_faults", CLOCK.time())
        if self.grant_tainted():
            self.login()
        CLOCK.advance(LIFETIME + 10)
        self.observe()
        if self.owed is not None:
            # An owed pair is written back by the owner's timer, once its store works.
            self.step_begins()
            for name in sorted(self.owed.owners):
                self.proc(name).call("tick", CLOCK.time())
            self.ticked = set(self.owed.owners)
            self.observe()
            assert self.owed is None, (
                "the store still lacks the current pair after every fault was cleared "
                f"and the timers of {sorted(self.ticked)} ran: the unsaved pair was lost"
            )
        for name in PROCESSES:
            mine = [sid for where, sid in self.sessions if where == name]
            if not mine:
                sid, outcome = self.proc(name).call("open", CLOCK.time(), 0, None)
                self.expect(outcome, f"{name}: open after the faults cleared", healthy=True)
                self.add_session(name, sid, 0)
                mine = [sid]
            outcome = self.proc(name).call("get", CLOCK.time(), mine[0])
            self.expect(outcome, f"{name}: GET after the faults cleared", healthy=True)
        self.check()

    # -- judging ----------------------------------------------------------------------

    def grant_tainted(self) -> bool:
        assert self.emu is not None
        return self.emu.tainted(self.first_reply["refresh_token"])

    def expect(
        self,
        outcome: Outcome,
        what: str,
        *,
        healthy: bool = False,
        actor: tuple[str, int] | None = None,
    ) -> None:
        """Judge what one call did. ``healthy``: no fault may excuse a failure.
        ``actor``: the coordinator (process, app) that made the call; None for a
        forked child (another process) or a call that may have used either."""
        if outcome.kind == "ok" or (outcome.kind == "status" and outcome.status == 200):
            return
        self.observe()
        # A reply the slow machine lost is a fault like an injected one, healthy or not.
        excused = (self.faulted and not healthy) or self.lost_to_load
        if (
            not healthy
            and outcome.kind == "raised"
            and outcome.error == "ReauthenticationRequired"
            and outcome.message.startswith(EMPTY_STORE)
            and self.in_window(actor)
        ):
            EXPLORED.known_a += 1
            return
        if outcome.kind == "status" and outcome.status == 401 and (excused or self.grant_tainted()):
            return
        if outcome.kind == "raised":
            if outcome.error in RETRYABLE and excused:
                return
            if outcome.error == "ReauthenticationRequired" and self.grant_tainted():
                return
        detail = outcome.status if outcome.kind == "status" else outcome.error
        raise AssertionError(
            f"{what}: {outcome.kind} {detail} {outcome.message}".strip()
            + ("" if self.grant_tainted() else " (no reply was lost on this grant)")
            + self.record()
        )

    def record(self) -> str:
        """This example's steps and the emulator's counters, for a failure's message."""
        counters = self.emu.counters if self.emu is not None else None
        return f"\nemulator: {counters}\nsteps:\n  " + "\n  ".join(self.history)

    def in_window(self, actor: tuple[str, int] | None) -> bool:
        """Known limit A: the write-back window was open as this step began or opened
        during it, and ``actor`` is not the one coordinator owing the write-back."""
        if not self.owed_at_start and self.owed is None:
            return False
        holders = self.owed.holders if self.owed is not None else frozenset()
        return actor is None or holders != {actor}

    def step(self, name: str) -> None:
        self.checked = False
        # What this step was called with, for the record a failure prints: a failure
        # that hangs on timing cannot be replayed or shrunk, so this is all there is.
        caller = inspect.currentframe()
        arguments = {} if caller is None or caller.f_back is None else caller.f_back.f_locals
        shown = ", ".join(f"{k}={v!r}" for k, v in arguments.items() if k != "self")
        self.history.append(f"{name}({shown}) at {CLOCK.time() - self.started_at:+g}s")
        EXPLORED.steps += 1
        EXPLORED.by_rule[name] = EXPLORED.by_rule.get(name, 0) + 1
        self.step_begins()

    def step_begins(self) -> None:
        self.owed_at_start = self.owed is not None
        self.lost_to_load = False
        self.actors = set()
        self.ticked = set()
        self.injected_at_start = {
            name: dict(status["injected"]) for name, status in self.faults.items()
        }
        self.unanswered_at_start = {
            name: status.get("unanswered", 0) for name, status in self.faults.items()
        }
        if self.emu is not None:
            self.grants_at_start = self.emu.counters.refresh_grants
            self.unanswering_at_start = self.emu.unanswering_served

    def observe(self) -> None:
        """Bring the write-back window (module docstring) up to date with what the
        store, the emulator and each process's FaultyStore show now."""
        assert self.emu is not None
        assert self.store is not None
        first = self.first_reply["refresh_token"]
        now = CLOCK.time()
        owed = self.owed
        if (
            owed is not None
            and owed.reseeded
            and not self.grant_tainted()
            and self.emu.reused_grant(first)
            and self.emu.repeated_on_grant(first) == {first}
        ):
            # Known limit B: a tokens= start seeded the spent first pair into the
            # emptied store, and its 401 presented that refresh token again.
            EXPLORED.known_b += 1
            self.emu.taint(first)
        for name in PROCESSES:
            if self.procs[name].pid is not None:
                self.faults[name] = self.proc(name).call("status", now)
        self.lost_without_fault(first)
        failed = {
            name
            for name in PROCESSES
            if sum(self.faults[name]["injected"].values())
            > sum(self.injected_at_start.get(name, {}).values())
        }
        failed_save = {
            name
            for name in failed
            if self.faults[name]["injected"].get("save", 0)
            > self.injected_at_start.get(name, {}).get("save", 0)
        }
        live = self.emu.grant_live(first) and not self.grant_tainted()
        stored = self.store.load()
        current = stored is not None and self.emu.is_current(
            stored.access_token, stored.refresh_token
        )
        if owed is not None:
            if not live or current:
                self.owed = None  # written back, or the grant is gone
                return
            if owed.owners & failed:
                owed.last_fault_at = now
            (owner,) = owed.owners if len(owed.owners) == 1 else (None,)
            assert not (
                owner in self.ticked
                and not any(self.faults[owner]["pending"].values())
                and now >= owed.last_fault_at + WRITE_BACK_PAUSE
            ), (
                f"process {owner} owes a write-back (the store lacks the current pair), "
                f"has no store fault left, its last at {owed.last_fault_at - now:+g}s, and "
                "its timers ran: the write-back never happened"
            )
        elif (
            live
            and not current
            and failed_save
            and (self.emu.counters.refresh_grants > self.grants_at_start)
        ):
            holders = {actor for actor in self.actors if actor[0] in failed_save}
            holders = holders or {(name, app) for name in failed_save for app in (0, 1)}
            self.owed = OwedWriteBack(frozenset(failed_save), frozenset(holders), now)
            EXPLORED.windows += 1

    def lost_without_fault(self, first: str) -> None:
        """A reply lost with no fault injected counts as lost (it is: the client never
        read it), and is counted apart. On a loaded machine the emulator can answer
        later than the client's real-time ``refresh_timeout``; the client then retries
        with the same refresh token, as it must, and the grant is lost. Seen when the
        processes report more unanswered attempts this step than the emulator served
        faults that leave one unanswered. Such a step also excuses what a fault would:
        a retryable error, or a 401 and re-login once the grant is lost."""
        assert self.emu is not None
        unanswered = sum(
            max(0, status.get("unanswered", 0) - self.unanswered_at_start.get(name, 0))
            for name, status in self.faults.items()
        )
        served = self.emu.unanswering_served - self.unanswering_at_start
        if unanswered <= served or self.lost_to_load:
            return
        self.lost_to_load = True
        EXPLORED.unanswered_unforced += 1
        rotated = self.emu.counters.refresh_grants > self.grants_at_start
        if rotated and not self.grant_tainted():
            EXPLORED.unforced_lost += 1
            self.emu.taint(first)

    def starting_with_tokens(self, where: str) -> None:
        """A start with ``tokens=`` from the first reply, inside the window, by a
        process whose saves land (they do not fail, or fail only after writing, as a
        "save landed" fault does): known limit B may follow."""
        self.observe()  # a restart's close may have written the pair back
        failing = self.faults[where]["pending"].get("save", 0) and not self.saves_land.get(where)
        if self.owed is not None and not failing:
            self.owed.reseeded.add(where)

    @invariant()
    def check(self) -> None:
        if self.emu is None:
            return
        self.observe()
        duplicates = self.emu.duplicates()
        assert not duplicates, (
            f"refresh tokens presented more than once with no reply lost: {duplicates}"
            + self.record()
        )
        assert self.emu.untainted_reuses() == 0, (
            "reuse detected on a grant with no reply lost" + self.record()
        )
        self.checked = True

    # -- sessions ---------------------------------------------------------------------

    def pick(self, index: int) -> tuple[str, int]:
        return self.sessions[index % len(self.sessions)]

    @precondition(on("open_session"))
    @rule(where=st.sampled_from(PROCESSES), app=st.sampled_from([0, 1]), reseed=st.booleans())
    def open_session(self, where: str, app: int, reseed: bool) -> None:
        """A new session; ``reseed``: with ``tokens=`` rebuilt from the first login reply."""
        self.step("open")
        self.actors = {(where, app)}
        if reseed:
            self.starting_with_tokens(where)
        first = self.first_reply if reseed else None
        sid, outcome = self.proc(where).call("open", CLOCK.time(), app, first)
        self.expect(outcome, f"{where}: open(app={app}, reseed={reseed})", actor=(where, app))
        if sid is not None:
            self.add_session(where, sid, app)

    @precondition(on("get", needs_sessions=True))
    @rule(index=st.integers(0, 15))
    def get(self, index: int) -> None:
        self.step("get")
        where, sid = self.pick(index)
        actor = (where, self.apps[(where, sid)])
        self.actors = {actor}
        outcome = self.proc(where).call("get", CLOCK.time(), sid)
        self.expect(outcome, f"{where}: GET via session {sid}", actor=actor)

    @precondition(on("concurrent_gets", needs_sessions=True))
    @rule(threads=st.integers(2, 6))
    def concurrent_gets(self, threads: int) -> None:
        """Every process at once, each with ``threads`` threads started on a barrier,
        GETs through its sessions."""
        self.step("concurrent gets")
        now = CLOCK.time()
        busy = {where: [sid for w, sid in self.sessions if w == where] for where in PROCESSES}
        busy = {where: sids for where, sids in busy.items() if sids}
        self.actors = {
            (where, self.apps[(where, sid)]) for where, sids in busy.items() for sid in sids
        }
        for where, sids in busy.items():
            self.proc(where).send("get_many", now, sids, threads)
        results = {where: self.proc(where).receive("get_many") for where in busy}
        for where, outcomes in results.items():
            sids = busy[where]
            for index, outcome in enumerate(outcomes):
                actor = (where, self.apps[(where, sids[index % len(sids)])])
                self.expect(outcome, f"{where}: one of {threads} concurrent GETs", actor=actor)

    @precondition(on("refresh", needs_sessions=True))
    @rule(index=st.integers(0, 15))
    def refresh(self, index: int) -> None:
        self.step("refresh")
        where, sid = self.pick(index)
        actor = (where, self.apps[(where, sid)])
        self.actors = {actor}
        outcome = self.proc(where).call("refresh", CLOCK.time(), sid)
        self.expect(outcome, f"{where}: refresh() via session {sid}", actor=actor)

    @precondition(on("close", needs_sessions=True))
    @rule(index=st.integers(0, 15))
    def close(self, index: int) -> None:
        self.step("close")
        where, sid = self.pick(index)
        self.proc(where).call("close", CLOCK.time(), sid)
        self.sessions.remove((where, sid))

    @precondition(on("drop_unclosed", needs_sessions=True))
    @rule(index=st.integers(0, 15), collect=st.booleans())
    def drop_unclosed(self, index: int, collect: bool) -> None:
        """Let go of a session in a reference cycle; ``collect``: gc.collect() now."""
        self.step("drop")
        where, sid = self.pick(index)
        self.proc(where).call("drop", CLOCK.time(), sid, collect)
        self.sessions.remove((where, sid))

    @precondition(on("fork_and_get", needs_sessions=True))
    @rule(index=st.integers(0, 15))
    def fork_and_get(self, index: int) -> None:
        """os.fork(); the child sends one GET through the inherited session, lets its
        own timer finish what is due, and exits."""
        self.step("fork")
        where, sid = self.pick(index)
        # The child is another process: it owes no write-back (actor None).
        outcome = self.proc(where).call("fork_get", CLOCK.time(), sid)
        self.expect(outcome, f"{where}: GET in a child forked from session {sid}")

    @precondition(on("restart"))
    @rule(where=st.sampled_from(PROCESSES), reseed=st.booleans())
    def restart(self, where: str, reseed: bool) -> None:
        """Close every session of a process, then start one as the app does at start."""
        self.step("restart")
        self.proc(where).call("close_all", CLOCK.time())
        self.sessions = [s for s in self.sessions if s[0] != where]
        self.open_session_in(where, reseed)

    @precondition(on("crash"))
    @rule(where=st.sampled_from(PROCESSES), reseed=st.booleans())
    def crash(self, where: str, reseed: bool) -> None:
        """Kill a process (SIGKILL) and start it again."""
        self.step("crash")
        assert self.emu is not None
        assert self.store is not None
        self.proc(where).kill()
        self.sessions = [s for s in self.sessions if s[0] != where]
        stored = self.store.load()
        owed_elsewhere = self.owed is not None and where not in self.owed.owners
        if not owed_elsewhere and (
            stored is None or not self.emu.is_current(stored.access_token, stored.refresh_token)
        ):
            # The newest pair was in the dead process's memory only: a lost reply.
            # (While another process owes a write-back, that one holds it.)
            self.emu.taint(self.first_reply["refresh_token"])
        self.spawn(where)
        self.open_session_in(where, reseed)

    def open_session_in(self, where: str, reseed: bool) -> None:
        self.actors.add((where, 0))
        if reseed:
            self.starting_with_tokens(where)
        first = self.first_reply if reseed else None
        sid, outcome = self.proc(where).call("open", CLOCK.time(), 0, first)
        self.expect(outcome, f"{where}: start(reseed={reseed})", actor=(where, 0))
        if sid is not None:
            self.add_session(where, sid, 0)

    @precondition(lambda self: "log_in_again" not in OFF and self.grant_tainted())
    @rule()
    def log_in_again(self) -> None:
        """After a lost reply killed the grant: a new login, saved to the store."""
        self.step("login")
        self.login()

    # -- time -------------------------------------------------------------------------

    @precondition(on("advance"))
    @rule(seconds=st.sampled_from([1.0, 10.0, 30.0, 61.0, 79.0, 85.0, 150.0]))
    def advance(self, seconds: float) -> None:
        self.step("advance")
        CLOCK.advance(seconds)

    @precondition(on("timer_tick"))
    @rule(where=st.sampled_from(PROCESSES))
    def timer_tick(self, where: str) -> None:
        """Let the process's proactive timers run whatever is due."""
        self.step("tick")
        self.actors = {(where, 0), (where, 1)}
        self.ticked = {where}
        self.proc(where).call("tick", CLOCK.time())

    # -- faults -----------------------------------------------------------------------

    @precondition(on("endpoint_fault"))
    @rule(kind=st.sampled_from(sorted(ENDPOINT_FAULTS)))
    def endpoint_fault(self, kind: str) -> None:
        """The next token request meets this fault."""
        self.step("endpoint fault")
        assert self.emu is not None
        self.faulted = True
        EXPLORED.faults += 1
        fault = dict(ENDPOINT_FAULTS[kind])
        count = fault.pop("count", 1)
        self.emu.inject_fault(Fault(**fault), count=count)

    @precondition(on("store_fault"))
    @rule(
        where=st.sampled_from([*PROCESSES, "both"]),
        operation=st.sampled_from(STORE_FAULTS),
        count=st.sampled_from([1, 3, 10]),
    )
    def store_fault(self, where: str, operation: str, count: int = 1) -> None:
        """The next ``count`` store calls of this kind fail, in one process or in both
        (a shared disk that is full); ``save landed``: each fails after writing."""
        self.step("store fault")
        self.faulted = True
        self.store_faulted = True
        EXPLORED.faults += 1
        after = operation == "save landed"
        for name in PROCESSES if where == "both" else (where,):
            self.proc(name).call("fail_next", CLOCK.time(), operation.split()[0], after, count)
            if operation.startswith("save"):
                self.saves_land[name] = after


def _run(budget: settings, label: str) -> None:
    before = Explored(
        EXPLORED.examples,
        EXPLORED.steps,
        EXPLORED.faults,
        known_a=EXPLORED.known_a,
        known_b=EXPLORED.known_b,
        windows=EXPLORED.windows,
        unforced_lost=EXPLORED.unforced_lost,
        unanswered_unforced=EXPLORED.unanswered_unforced,
    )
    seed: int | None = None
    if not budget.derandomize:
        # CI runs one fixed seed, so that a landing is reproducible. PLEO_MODEL_RANDOM=1
        # explores new interleavings; PLEO_MODEL_SEED replays one (its steps, not the
        # machine's timing: see "Replies a slow machine loses" in the module docstring).
        fresh = (
            random.SystemRandom().getrandbits(64) if os.environ.get("PLEO_MODEL_RANDOM") else None
        )
        seed = int(os.environ.get("PLEO_MODEL_SEED") or fresh or SOAK_SEED)
        print(f"\nmodel-based test ({label}): seed {seed}; replay with PLEO_MODEL_SEED={seed}")
    forced = hypothesis.core.global_force_seed
    started = time.monotonic()
    passed = False
    try:
        if seed is not None:
            hypothesis.core.global_force_seed = seed  # as pytest --hypothesis-seed does
        run_state_machine_as_test(SessionsModel, settings=budget)
        passed = True
    finally:
        hypothesis.core.global_force_seed = forced
        examples = EXPLORED.examples - before.examples
        steps = EXPLORED.steps - before.steps
        print(
            f"\nmodel-based test ({label}): explored {examples} interleavings, "
            f"{steps} steps, {EXPLORED.faults - before.faults} faults injected, "
            f"in {time.monotonic() - started:.0f}s; "
            f"{EXPLORED.windows - before.windows} write-back windows; "
            f"known limit A seen {EXPLORED.known_a - before.known_a} times, "
            f"known limit B seen {EXPLORED.known_b - before.known_b} times; "
            "a slow machine left token requests unanswered with no fault injected in "
            f"{EXPLORED.unanswered_unforced - before.unanswered_unforced} steps, losing "
            f"{EXPLORED.unforced_lost - before.unforced_lost} replies; "
            f"steps by rule: {dict(sorted(EXPLORED.by_rule.items()))}"
        )
        if not passed and seed is not None:
            print(f"model-based test ({label}) FAILED; replay with PLEO_MODEL_SEED={seed}")


# Hypothesis shrinks a failure for up to five minutes: let it finish and report.
@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.redis
def test_no_refresh_token_is_presented_twice_and_nothing_hangs() -> None:
    _run(DEFAULT_BUDGET, "default budget")


@pytest.mark.soak
@pytest.mark.long
@pytest.mark.timeout(3600)
@pytest.mark.redis
def test_no_refresh_token_is_presented_twice_and_nothing_hangs_soak() -> None:
    _run(SOAK_BUDGET, "soak")


# -- the sequences the model found in 0.1, replayed as plain tests ------------------------
#
# Hypothesis found these (shrunk, then trimmed by hand to the steps that matter); each
# lost the grant in 0.1. Each runs the same model, so the same invariants judge it.

FOUND: dict[str, list[tuple[str, dict[str, Any]]]] = {
    # Bug 1: a refresh whose save fails once; the other process then refreshes from
    # the store, which still holds the pair that refresh spent.
    "save fails, other process refreshes": [
        ("store_fault", {"where": "A", "operation": "save"}),
        ("refresh", {"index": 0}),
        ("get", {"index": 1}),
    ],
    # Bug 1, in the same process: the next refresh spends the stored (spent) token.
    "save fails, same process refreshes again": [
        ("store_fault", {"where": "A", "operation": "save"}),
        ("refresh", {"index": 0}),
        ("advance", {"seconds": 85.0}),
        ("get", {"index": 0}),
    ],
    # Bug 1, refresh(): the second adopts the stale stored pair, and a GET spends it.
    "save fails, refresh() twice": [
        ("store_fault", {"where": "A", "operation": "save"}),
        ("refresh", {"index": 0}),
        ("refresh", {"index": 0}),
        ("get", {"index": 0}),
    ],
    # Bug 1, across os.fork(): the child reloads the store and spends the old pair.
    "save fails, forked child": [
        ("store_fault", {"where": "A", "operation": "save"}),
        ("refresh", {"index": 0}),
        ("fork_and_get", {"index": 0}),
    ],
    # Bug 4: a restart that passes tokens= rebuilt from the first login reply puts
    # that (spent) pair back over its rotated descendant.
    "restart with tokens= from the first reply": [
        ("refresh", {"index": 0}),
        ("advance", {"seconds": 1.0}),
        ("restart", {"where": "A", "reseed": True}),
        ("get", {"index": 0}),
    ],
    "crash, then restart with tokens= from the first reply": [
        ("refresh", {"index": 0}),
        ("advance", {"seconds": 1.0}),
        ("crash", {"where": "A", "reseed": True}),
        ("fork_and_get", {"index": 0}),
    ],
    # Known limit B, met while a "save landed" fault was armed in the seeding process:
    # its seed of the spent first pair lands (then raises), so the limit applies.
    "seed lands under a save-landed fault while a write-back is owed": [
        ("open_session", {"where": "A", "app": 0, "reseed": False}),
        ("refresh", {"index": 0}),
        ("crash", {"where": "A", "reseed": False}),
        ("advance", {"seconds": 1.0}),
        ("store_fault", {"where": "A", "operation": "save", "count": 10}),
        ("close", {"index": 0}),
        ("refresh", {"index": 0}),
        ("advance", {"seconds": 1.0}),
        ("advance", {"seconds": 1.0}),
        ("restart", {"where": "A", "reseed": False}),
        ("concurrent_gets", {"threads": 2}),
        ("restart", {"where": "A", "reseed": False}),
        ("concurrent_gets", {"threads": 2}),
        ("store_fault", {"where": "B", "operation": "save landed", "count": 1}),
        ("get", {"index": 0}),
        ("open_session", {"where": "B", "app": 0, "reseed": False}),
        ("open_session", {"where": "B", "app": 0, "reseed": True}),
        ("concurrent_gets", {"threads": 2}),
    ],
    # Finding C: the last session closes (a restart) while the store still refuses
    # the save, and the pair only that process held was dropped with its coordinator.
    "save keeps failing, restart while it does": [
        ("advance", {"seconds": 150.0}),
        ("store_fault", {"where": "A", "operation": "save", "count": 10}),
        ("refresh", {"index": 0}),
        ("restart", {"where": "A", "reseed": False}),
        ("get", {"index": 1}),
    ],
}


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.parametrize("kind", ["file", "redis"])
@pytest.mark.parametrize("name", list(FOUND))
def test_a_sequence_the_model_found_keeps_the_grant(name: str, kind: str) -> None:
    if kind == "redis" and redis_url() is None:
        pytest.skip("redis-server is not installed")
    state = SessionsModel()
    try:
        state.start(kind=kind)
        state.check()
        for rule_name, arguments in FOUND[name]:
            getattr(state, rule_name)(**arguments)
            state.check()
    finally:
        state.teardown()


# Finding E: a forked child's request starts a timer of its own, which refreshes at once
# when the tokens are due for the timer (the parent's timers wait for a tick). The child
# used to exit as soon as its GET returned, killing that refresh wherever it was: usually
# before it reached Pleo (leaving a RedisStore's lock held for its lease), and on a loaded
# machine after Pleo rotated but before the save, so the store kept the spent pair and the
# next refresh anywhere was refused ("the authorisation has expired or was revoked").


@pytest.mark.redis
@pytest.mark.parametrize("kind", ["file", "redis"])
def test_a_forked_childs_due_timer_refresh_is_saved_before_the_child_exits(kind: str) -> None:
    if kind == "redis" and redis_url() is None:
        pytest.skip("redis-server is not installed")
    state = SessionsModel()
    try:
        state.start(kind=kind)
        state.check()
        assert state.emu is not None
        assert state.store is not None
        # Due for a timer (any jitter share above 0.0002), not yet for a request.
        state.advance(seconds=LIFETIME - SESSION_SETTINGS["refresh_margin"] - 0.001)
        state.fork_and_get(index=0)
        state.check()
        assert state.emu.counters.refresh_grants == 1
        stored = state.store.load()
        assert stored is not None
        assert state.emu.is_current(stored.access_token, stored.refresh_token)
        if kind == "redis":
            import redis

            client = redis.Redis.from_url(state.config["redis_url"])
            assert not client.exists(f"{state.config['redis_key']}:lock")
        state.refresh(index=1)  # process B adopts the child's rotation from the store
        state.check()
        assert state.emu.counters.refresh_grants == 1
        assert state.emu.counters.rejected_refreshes == 0
    finally:
        state.teardown()
