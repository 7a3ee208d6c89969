"""KeyringStore against the real desktop Secret Service (gnome-keyring over D-Bus).

The test starts a private D-Bus session and an unlocked gnome-keyring in a scratch
HOME, then runs a worker process inside it that talks to the emulator in this process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pleo_auth.testing import Emulator

WORKER = textwrap.dedent(
    """
    import json, sys
    from keyring.backends import SecretService
    from pleo_auth import KeyringStore, PleoSession, TokenSet

    token_url, api_url, client_id, secret, state_dir = sys.argv[1:6]
    seed = TokenSet.from_response(json.loads(sys.stdin.read()))
    backend = SecretService.Keyring()
    store = KeyringStore("pleo-auth-test", client_id, backend=backend, state_dir=state_dir)
    with PleoSession(client_id, secret, store=store, token_url=token_url, api_url=api_url,
                     tokens=seed) as session:
        status = session.get("/v2/employees").status_code
        refreshed = session.refresh()
    reread = KeyringStore("pleo-auth-test", client_id, backend=SecretService.Keyring(),
                          state_dir=state_dir).load()
    raw = backend.get_password("pleo-auth-test", client_id)
    store.clear()
    print(json.dumps({
        "status": status,
        "same_after_reread": reread == refreshed,
        "one_entry_has_both": refreshed.access_token in raw and refreshed.refresh_token in raw,
        "cleared": store.load() is None,
    }))
    """
)


def test_keyring_store_round_trips_through_the_real_secret_service(tmp_path: Path) -> None:
    for binary in ("dbus-run-session", "gnome-keyring-daemon"):
        if shutil.which(binary) is None:
            if os.environ.get("CI"):
                pytest.fail(f"{binary} is not installed; .ci/run should have installed it")
            pytest.skip(f"{binary} is not installed")
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    home = tmp_path / "home"
    home.mkdir()
    with Emulator() as emu:
        inner = (
            'echo "ci-keyring-password" | gnome-keyring-daemon --unlock --components=secrets '
            '>/dev/null 2>&1; exec "$0" "$@"'
        )
        result = subprocess.run(
            ["dbus-run-session", "--", "sh", "-c", inner, sys.executable, str(script),
             emu.token_url, emu.api_url, emu.client_id, emu.client_secret or "",
             str(tmp_path / "state")],
            input=json.dumps(emu.issue_tokens()),
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "HOME": str(home), "XDG_RUNTIME_DIR": ""},
            check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
        report = json.loads(result.stdout.strip().splitlines()[-1])
        assert report == {
            "status": 200,
            "same_after_reread": True,
            "one_entry_has_both": True,
            "cleared": True,
        }
        assert emu.counters.refresh_grants == 1
        assert emu.counters.reuse_detections == 0
