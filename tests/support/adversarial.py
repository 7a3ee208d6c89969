"""Helpers the adversarial tests (tests/hunt/test_adversarial*.py) share: a clock only a
publish wakes, a fresh interpreter that runs a snippet, and a small real disk to fill."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pleo_auth._clock import SystemClock
from pleo_auth.testing import Emulator

ROOT = Path(__file__).resolve().parents[2]


class SleepyClock(SystemClock):
    """Real time, but the proactive timer never wakes by itself: only a publish wakes
    it, and it then goes back to sleep. The test alone decides what runs when."""

    def wait(self, event: threading.Event, timeout: float) -> bool:
        return event.wait()


def run_child(code: str, timeout: float = 60.0, **args: Any) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter; ``ARGS`` is its argument dict (sent on
    stdin, so no secret shows in a process listing), and it prints one JSON line.
    A child still running after ``timeout`` dumps its threads' stacks and exits:
    the test fails with them instead of hanging."""
    program = (
        "import faulthandler, json, sys\n"
        f"faulthandler.dump_traceback_later({timeout!r}, exit=True)\n"
        "ARGS = json.loads(sys.stdin.readline())\n"
    ) + textwrap.dedent(code)
    try:
        done = subprocess.run(
            [sys.executable, "-c", program],
            input=json.dumps(args) + "\n",
            capture_output=True,
            text=True,
            timeout=timeout + 30,
            cwd=ROOT,
        )
    except subprocess.TimeoutExpired:
        raise pytest.fail(f"the child process hung for {timeout + 30:.0f}s") from None
    if "Timeout (" in done.stderr:
        pytest.fail(f"the child process hung for {timeout:.0f}s:\n{done.stderr[-4000:]}")
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def session_args(emu: Emulator) -> dict[str, Any]:
    return {
        "client_id": emu.client_id,
        "client_secret": emu.client_secret,
        "token_url": emu.token_url,
        "api_url": emu.api_url,
    }


@contextlib.contextmanager
def small_disk(where: Path, size: str = "256k") -> Iterator[Path]:
    """A real filesystem of its own (tmpfs), which the test can fill up."""
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def fill(disk: Path) -> None:
    """Fill ``disk`` up to its last block: every later write fails with ENOSPC."""
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    assert os.statvfs(disk).f_bavail == 0
