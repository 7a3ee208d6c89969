"""Programs the coordinator regression tests run as real processes.

Each scenario is a function taking its arguments from the command line; it prints
one JSON line of results on stdout. A process of its own keeps what it does to
itself (a file-size limit, a garbage collector set to run at every allocation, a
deadlock) away from the test process, which waits for it with a timeout.

    python tests/support/coordinator_workers.py SCENARIO JSON_ARGS
"""

from __future__ import annotations

import gc
import json
import logging
import resource
import signal
import sys
import time
from typing import Any

import requests

from pleo_auth import FileStore, PleoSession, TokenSet, TokenStoreError


def _session(args: dict[str, Any], store: FileStore, **kwargs: Any) -> PleoSession:
    return PleoSession(
        args["client_id"],
        args["client_secret"],
        store=store,
        token_url=args["token_url"],
        api_url=args["api_url"],
        **kwargs,
    )


def failed_save(args: dict[str, Any]) -> dict[str, Any]:
    """A refresh whose save meets a real EFBIG (RLIMIT_FSIZE of 0), then requests."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death
    store = FileStore(args["path"])
    before = store.load()
    assert before is not None
    session = _session(args, store, refresh_margin=args["margin"])
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, hard))
    try:
        session.refresh()
        save_failed = False
    except TokenStoreError:
        save_failed = True
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    in_memory = session.tokens
    assert in_memory is not None
    spent_withdrawn = store.load() is None  # nobody can refresh from the spent pair
    # The timer writes the new pair back on its own, before anything is spent.
    deadline = time.monotonic() + 30
    while store.load() != in_memory and time.monotonic() < deadline:
        time.sleep(0.05)  # polling a background write-back, bounded
    written_back = store.load() == in_memory
    forced = session.refresh()  # must spend the new pair's refresh token, never the old one
    statuses = [session.get("/v2/employees").status_code for _ in range(args["requests"])]
    session.close()
    return {
        "save_failed": save_failed,
        "spent_withdrawn": spent_withdrawn,
        "written_back": written_back,
        "forced_is_new": forced.refresh_token not in (before.refresh_token,),
        "store_holds_forced": store.load() == forced,
        "statuses": statuses,
    }


def restart_with_first_reply(args: dict[str, Any]) -> dict[str, Any]:
    """An app that passes its first login reply as ``tokens=`` at every start."""
    store = FileStore(args["path"])
    tokens = TokenSet.from_response(args["first_reply"])  # stamped "now", as an app would
    session = _session(args, store, tokens=tokens, refresh_margin=args["margin"])
    statuses: list[int | str] = []
    end = time.monotonic() + args["seconds"]
    while time.monotonic() < end:
        try:
            statuses.append(session.get("/v2/employees").status_code)
        except Exception as exc:  # reported, not raised: the test counts them
            statuses.append(type(exc).__name__)
    session.close()
    return {"statuses": statuses}


class _Tenant:
    """Keeps a session in a reference cycle, as a retry loop keeping ``last_error`` does."""

    def __init__(self, session: PleoSession):
        self.session = session
        self.me = self


def collected_sessions(args: dict[str, Any]) -> dict[str, Any]:
    """A session per call, never closed, each in a cycle: the garbage collector
    runs finalisers inside the construction of later sessions."""
    gc.set_threshold(*args["gc_threshold"])
    built = 0
    for i in range(args["sessions"]):
        store = FileStore(f"{args['directory']}/tenant-{i % args['tenants']}.json")
        _Tenant(_session(args, store))
        built += 1
    gc.set_threshold(700, 10, 10)
    gc.collect()
    return {"built": built}


def refused_fresh_token(args: dict[str, Any]) -> dict[str, Any]:
    """GETs against a gateway that refuses every token with 401."""
    session = _session(args, FileStore(args["path"]))
    statuses = [session.get("/v2/employees").status_code for _ in range(args["requests"])]
    session.close()
    return {"statuses": statuses}


def exit_owing_write_back(args: dict[str, Any]) -> dict[str, Any]:
    """A refresh whose saves keep failing, the last session closed, then exit: with
    ``heal``, the store takes writes again just before the interpreter exits."""
    from pleo_auth.testing import FaultyStore

    logging.basicConfig(level=logging.WARNING)  # as an app does: warnings to stderr
    store = FaultyStore(FileStore(args["path"]))
    session = _session(args, store)  # type: ignore[arg-type]
    store.fail_next("save", 1000)
    try:
        session.refresh()
    except TokenStoreError as exc:
        refused = str(exc)
    session.close()  # the last session: its coordinator lingers, owing the pair
    if args["heal"]:
        store.clear_faults()
    return {"refused": refused}


SCENARIOS = {
    "exit_owing_write_back": exit_owing_write_back,
    "failed_save": failed_save,
    "restart_with_first_reply": restart_with_first_reply,
    "collected_sessions": collected_sessions,
    "refused_fresh_token": refused_fresh_token,
}

if __name__ == "__main__":
    requests.packages.urllib3.disable_warnings()  # type: ignore[attr-defined]
    result = SCENARIOS[sys.argv[1]](json.loads(sys.argv[2]))
    print(json.dumps(result), flush=True)
