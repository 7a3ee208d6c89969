"""MemoryStore across ``os.fork()``: the child refuses, clearly and at once.

A forked child's MemoryStore is a copy of its parent's. Were the child to
refresh, its parent would then present the spent refresh token and Pleo would
revoke the grant; and a lock some parent thread held at the fork stays held in
the child for ever. So every MemoryStore method in a forked child raises a
TokenStoreError naming the stores that do work across processes, before it
touches a lock.

Each scenario runs in a fresh interpreter (a subprocess) that forks; the child
has an alarm, so a child that hangs dies and fails the test instead of hanging it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from pleo_auth import MemoryStore, TokenSet, TokenStoreError
from pleo_auth.testing import Emulator

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

#: Seconds a forked child may live: only a hung child comes near it.
CHILD_ALARM = 20

#: Where every child writes its outcome, the parent reads it and both report it.
CHILD_HELPERS = textwrap.dedent(
    f"""
    import json, os, signal, sys, threading, time

    def outcome(call):
        started = time.monotonic()
        try:
            result = call()
        except Exception as exc:  # the type, message and retryability; never a token
            shown = [type(exc).__name__, str(exc), getattr(exc, "retryable", None)]
        else:
            shown = ["ok", result if isinstance(result, (int, str)) else None, None]
        return shown + [round(time.monotonic() - started, 3)]

    def in_child(work):
        '''Fork; run work() in the child, under an alarm; its JSON result, or how it died.'''
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            signal.alarm({CHILD_ALARM})  # SIGALRM kills a hung child
            os.close(read_end)
            try:
                os.write(write_end, json.dumps(work()).encode())
            finally:
                os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            data = pipe.read()
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            return {{"died of signal": os.WTERMSIG(status)}}
        return json.loads(data)
    """
)


def run_script(tmp_path: Path, body: str, config: dict[str, Any]) -> dict[str, Any]:
    script = tmp_path / "scenario.py"
    script.write_text(CHILD_HELPERS + textwrap.dedent(body))
    result = subprocess.run(
        [sys.executable, str(script)],
        input=json.dumps(config) + "\n",
        capture_output=True,
        text=True,
        timeout=CHILD_ALARM * 3,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def assert_refused_across_processes(shown: list[Any]) -> None:
    """``shown`` (from outcome()) is MemoryStore's clear refusal in a forked child."""
    kind, message, retryable, _ = shown
    assert kind == "TokenStoreError", shown
    assert "MemoryStore cannot be shared across processes" in message
    assert "FileStore" in message
    assert "RedisStore" in message
    assert retryable is False


# -- a session over a MemoryStore, forked ---------------------------------------------

FORKED_SESSION = """
    from pleo_auth import MemoryStore, PleoSession, TokenSet

    config = json.loads(sys.stdin.readline())
    session = PleoSession(
        config["client_id"], config["client_secret"], store=MemoryStore(),
        tokens=TokenSet.from_dict(config["tokens"]),
        token_url=config["token_url"], api_url=config["api_url"],
    )
    get = lambda: session.get("/v2/employees").status_code
    report = {"parent before": outcome(get)}
    report["child"] = in_child(lambda: {"refresh": outcome(session.refresh), "get": outcome(get)})
    report["parent refresh"] = outcome(lambda: session.refresh() and "refreshed")
    report["parent after"] = outcome(get)
    session.close()
    print(json.dumps(report))
"""


def test_a_forked_child_of_a_memory_store_session_refuses_and_the_parent_keeps_the_grant(
    emulator: Emulator, tmp_path: Path
) -> None:
    """The child tries to refresh first, as in the report: it must be refused, so
    the parent's own rotation later spends a refresh token nobody else spent."""
    tokens = TokenSet.from_response(emulator.issue_tokens())
    report = run_script(
        tmp_path,
        FORKED_SESSION,
        {
            "client_id": emulator.client_id,
            "client_secret": emulator.client_secret,
            "token_url": emulator.token_url,
            "api_url": emulator.api_url,
            "tokens": tokens.to_dict(),
        },
    )
    counters = emulator.counters
    assert (counters.refresh_grants, counters.reuse_detections, counters.rejected_refreshes) == (
        1,
        0,
        0,
    ), report
    assert report["parent before"][:2] == ["ok", 200]
    child = report["child"]
    assert "died of signal" not in child, child
    assert_refused_across_processes(child["refresh"])
    # The child may keep using the access token it inherited (still valid then),
    # or be refused outright; it never refreshes.
    if child["get"][0] != "ok":
        assert_refused_across_processes(child["get"])
    else:
        assert child["get"][1] == 200
    assert report["parent refresh"][:2] == ["ok", "refreshed"]
    assert report["parent after"][:2] == ["ok", 200]


# -- a fork while another thread is inside the store ------------------------------------

FORK_WHILE_HELD = """
    from pleo_auth import MemoryStore, TokenSet

    config = json.loads(sys.stdin.readline())
    tokens = TokenSet.from_dict(config["tokens"])
    store = MemoryStore(tokens)
    inside, leave = threading.Event(), threading.Event()

    class PausesInsideTheComparison:
        '''Compared with the stored tokens inside save(), under the store's mutex.'''

        def __ne__(self, other):
            inside.set()
            leave.wait()
            return True

        __eq__ = __ne__

    def hold_the_refresh_lock():
        with store.lock(timeout=5.0, lease=5.0):
            inside.set()
            leave.wait()

    def be_inside_save():
        try:
            store.save(tokens, replaces=PausesInsideTheComparison())
        except Exception:
            pass  # refused: the "stored" tokens differ

    holder = {"refresh lock": hold_the_refresh_lock, "mutex": be_inside_save}[config["held"]]
    thread = threading.Thread(target=holder)
    thread.start()
    inside.wait()
    child = in_child(lambda: {
        "load": outcome(store.load),
        "version": outcome(store.version),
        "save": outcome(lambda: store.save(tokens)),
        "clear": outcome(store.clear),
        "lock": outcome(lambda: store.lock(timeout=3600.0, lease=3600.0).__enter__()),
    })
    leave.set()
    thread.join()
    print(json.dumps({"child": child, "parent load": outcome(lambda: str(store.load() == tokens))}))
"""


@pytest.mark.parametrize("held", ["refresh lock", "mutex"])
def test_a_fork_while_another_thread_holds_a_memory_store_lock_does_not_hang_the_child(
    tmp_path: Path, held: str
) -> None:
    tokens = TokenSet.from_response({"access_token": "a" * 40, "refresh_token": "r" * 40})
    report = run_script(tmp_path, FORK_WHILE_HELD, {"tokens": tokens.to_dict(), "held": held})
    child = report["child"]
    assert "died of signal" not in child, f"the child hung and was killed: {child}"
    assert set(child) == {"load", "version", "save", "clear", "lock"}
    for shown in child.values():
        assert_refused_across_processes(shown)
    # The parent's store is untouched by the child, and works once its thread is done.
    assert report["parent load"][:2] == ["ok", "True"]


# -- what still works -----------------------------------------------------------------

STORE_MADE_IN_THE_CHILD = """
    from pleo_auth import MemoryStore, TokenSet

    config = json.loads(sys.stdin.readline())
    tokens = TokenSet.from_dict(config["tokens"])

    def child():
        store = MemoryStore(tokens)
        with store.lock(timeout=5.0, lease=5.0):
            store.save(tokens, replaces=tokens)
        return {"load": outcome(lambda: str(store.load() == tokens))}

    print(json.dumps({"child": in_child(child)}))
"""


def test_a_memory_store_made_in_a_forked_child_works_there(tmp_path: Path) -> None:
    tokens = TokenSet.from_response({"access_token": "a" * 40, "refresh_token": "r" * 40})
    report = run_script(tmp_path, STORE_MADE_IN_THE_CHILD, {"tokens": tokens.to_dict()})
    assert report["child"]["load"][:2] == ["ok", "True"]


def test_a_memory_store_keeps_working_in_the_process_that_made_it() -> None:
    tokens = TokenSet.from_response({"access_token": "a" * 40, "refresh_token": "r" * 40})
    store = MemoryStore(tokens)
    with store.lock(timeout=1.0, lease=1.0):
        store.save(tokens, replaces=tokens)
    assert store.load() == tokens
    store.clear(only=tokens)
    assert store.load() is None
    with pytest.raises(TokenStoreError, match="changed while refreshing"):
        store.save(tokens, replaces=tokens)


def test_memory_stores_docstring_says_it_cannot_coordinate_across_processes() -> None:
    doc = " ".join((MemoryStore.__doc__ or "").split())
    assert "cannot coordinate across processes" in doc
    assert "os.fork()" in doc
