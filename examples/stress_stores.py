"""4 processes x 8 threads against the emulator, once per store, with tokens that
live 1.5 s, for 9 s each; prints what callers and the emulator saw.

    python examples/stress_stores.py [redis://127.0.0.1:6379/5]

Every line should read caller_errors=0 rejected=0 reuse=0, with refresh_grants
equal to rotations_expected: one refresh per rotation, across processes.
"""

from __future__ import annotations

import sys
import tempfile

from pleo_auth.testing import Emulator, run_workload


def main() -> None:
    redis_url = sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:6379/5"
    scratch = tempfile.mkdtemp(prefix="pleo-auth-stress-")
    specs = (
        f"file:{scratch}/tokens.json",
        f"keyring-file:{scratch}/keyring.cfg",
        f"{redis_url}#pleo-auth:stress",
    )
    for spec in specs:
        with Emulator(access_token_lifetime=1.5) as emu:
            r = run_workload(emu, spec, processes=4, threads=8, duration=9.0, refresh_margin=0.5)
        print(
            f"{spec.split(':')[0]:13} requests={r.requests} caller_errors={r.caller_errors} "
            f"refresh_grants={r.refresh_grants} rotations_expected={r.rotations_expected} "
            f"rejected={r.rejected_refreshes} reuse={r.reuse_detections} "
            f"server_401s={r.unauthorized} caller_401s={r.caller_401s}",
            flush=True,
        )


if __name__ == "__main__":
    main()
