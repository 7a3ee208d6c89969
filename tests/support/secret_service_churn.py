"""gnome-keyring under keyring's connection per call, and under one per process.

Run ``python tests/support/secret_service_churn.py [seconds] [processes]`` (defaults 90
and 4). For each backend in turn it starts a private Secret Service (see
secret_service.py), has the processes read one item in a loop for the given
time, and prints the calls made, the errors they saw and how many times the
daemon crashed and D-Bus started it again. gnome-keyring 42 to 50 crashes now
and then under keyring's churn (upstream issues 190, 196 and 199); KeyringStore
uses the shared connection for that reason.

Not a test: how often a third-party daemon crashes is no pass or fail of ours.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/, for the support package

from support.secret_service import daemon_starts, private_secret_service

SERVICE, USER = "pleo-auth-churn", "reader"


def make_backend(kind: str) -> Any:
    if kind == "stock":
        from keyring.backends import SecretService

        return SecretService.Keyring()
    from pleo_auth.stores._secret_service import SharedConnectionKeyring

    return SharedConnectionKeyring()


def read_until(kind: str, stop_at: float, results: Any) -> None:
    backend = make_backend(kind)
    calls, errors = 0, []
    while time.time() < stop_at:
        try:
            backend.get_password(SERVICE, USER)
            calls += 1
        except Exception as exc:
            errors.append(type(exc).__name__)
    results.put((calls, errors))


def run(kind: str, seconds: float, processes: int) -> tuple[int, list[str], int]:
    workdir = Path(tempfile.mkdtemp(prefix=f"churn-{kind}-"))
    with private_secret_service(workdir) as env:
        os.environ.update(env)
        make_backend("stock").set_password(SERVICE, USER, "not a token")
        results: Any = multiprocessing.Queue()
        stop_at = time.time() + seconds
        workers = [
            multiprocessing.Process(target=read_until, args=(kind, stop_at, results))
            for _ in range(processes)
        ]
        for worker in workers:
            worker.start()
        outcomes = [results.get() for _ in workers]
        for worker in workers:
            worker.join()
        crashes = daemon_starts(workdir) - 1
    calls = sum(calls for calls, _ in outcomes)
    errors = [error for _, errors in outcomes for error in errors]
    return calls, errors, crashes


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 90.0
    processes = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    print(f"{processes} processes reading for {seconds:.0f} s per backend")
    print("| backend | calls | caller errors | daemon crashes |")
    print("|---|---|---|---|")
    for kind, name in (
        ("stock", "keyring's (a connection per call)"),
        ("shared", "KeyringStore's (one per process)"),
    ):
        calls, errors, crashes = run(kind, seconds, processes)
        kinds = ", ".join(sorted(set(errors)))
        print(f"| {name} | {calls:,} | {len(errors)}{f' ({kinds})' if kinds else ''} | {crashes} |")


if __name__ == "__main__":
    main()
