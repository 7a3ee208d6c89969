"""examples/cron_job.py, run as cron runs it, against the real emulator."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pleo_auth import FileStore, TokenSet
from pleo_auth.testing import Emulator

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "cron_job.py"


def run(emulator: Emulator, token_path: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PLEO_CLIENT_ID": emulator.client_id,
        "PLEO_CLIENT_SECRET": emulator.client_secret or "",
        "PLEO_TOKEN_URL": emulator.token_url,
        "PLEO_API_URL": emulator.api_url,
        "PLEO_TOKEN_FILE": str(token_path),
    }
    return subprocess.run(
        [sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def token_path(tmp_path: Path) -> Path:
    return tmp_path / "tokens.json"


def test_without_tokens_it_exits_1_with_the_login_command_and_its_urls(
    emulator: Emulator, token_path: Path
) -> None:
    result = run(emulator, token_path)
    assert result.returncode == 1, result.stderr
    assert (
        f"pleo-auth login --client-id {emulator.client_id} --store file:{token_path} "
        f"--token-url {emulator.token_url} --api-url {emulator.api_url}"
    ) in result.stderr


def test_a_token_file_others_can_read_is_a_clear_message_not_a_traceback(
    emulator: Emulator, token_path: Path
) -> None:
    FileStore(token_path).save(TokenSet.from_response(emulator.issue_tokens()))
    token_path.chmod(0o644)
    result = run(emulator, token_path)
    assert result.returncode == 3
    assert "Traceback" not in result.stderr
    assert "readable or writable by group or others" in result.stderr


def test_with_tokens_it_calls_the_api(emulator: Emulator, token_path: Path) -> None:
    FileStore(token_path).save(TokenSet.from_response(emulator.issue_tokens()))
    result = run(emulator, token_path)
    assert result.returncode == 0, result.stderr
    assert "employees" in result.stdout
