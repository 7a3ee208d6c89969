"""A process that exits while a refresh is under way: the refresh saves its tokens
first. The scheduler's workers are daemon threads, and the interpreter kills those
at exit: one killed between Pleo's reply and the save leaves the store holding a
spent refresh token, and the grant is lost."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pleo_auth import FileStore, TokenSet
from pleo_auth.testing import Emulator

# The timer refreshes the 4 s token 1.5 to 2 s after it was issued; the
# main thread waits until the emulator holds that refresh's request, then returns.
CHILD = """
import json, logging, sys
from pleo_auth import FileStore, PleoSession
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
args = json.loads(sys.stdin.readline())
session = PleoSession(args["client_id"], args["client_secret"], store=FileStore(args["path"]),
                      token_url=args["token_url"], api_url=args["api_url"], refresh_margin=2)
assert session.get("/v2/employees").status_code == 200
sys.stdin.readline()  # the test: the timer's refresh has reached the emulator
print("exiting", flush=True)
"""


@pytest.mark.slow
def test_a_process_exiting_during_a_proactive_refresh_saves_the_new_tokens_first(
    tmp_path: Path,
) -> None:
    reached = threading.Event()
    release = threading.Event()

    def hold(grant_type: str | None) -> None:
        if grant_type == "refresh_token":
            reached.set()
            release.wait(60)

    with Emulator(access_token_lifetime=4) as emu:
        store = FileStore(tmp_path / "tokens.json")
        first = TokenSet.from_response(emu.issue_tokens())
        store.save(first)
        emu.set_token_request_hook(hold)
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert child.stdin is not None
        assert child.stdout is not None
        assert child.stderr is not None
        try:
            args = {
                "client_id": emu.client_id,
                "client_secret": emu.client_secret,
                "token_url": emu.token_url,
                "api_url": emu.api_url,
                "path": str(store.path),
            }
            child.stdin.write(json.dumps(args) + "\n")
            child.stdin.flush()
            assert reached.wait(60), "the timer never refreshed"
            child.stdin.write("go\n")
            child.stdin.flush()
            assert child.stdout.readline().strip() == "exiting"
            # The main thread is done: the interpreter is exiting. Without the wait it
            # is gone at once, and the reply it would have saved is lost.
            waited = False
            for line in child.stderr:
                if "waiting for a proactive refresh under way" in line:
                    waited = True
                    break
            release.set()
            assert child.wait(60) == 0
        finally:
            release.set()
            if child.poll() is None:
                child.kill()
                child.wait()
        counters = emu.counters
        stored = store.load()
    assert waited, "the process exited without waiting for its refresh"
    assert counters.refresh_grants == 1
    assert stored is not None
    assert stored.refresh_token != first.refresh_token, "the refreshed pair was never saved"
    assert stored.descends_from(first)
