"""docs/migrating.md's snippets do what the page says, against the emulator."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pleo_auth import FileStore, TokenSet
from pleo_auth.testing import Emulator

PAGE = Path(__file__).resolve().parents[2] / "docs" / "migrating.md"
_BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.DOTALL)


def _blocks(language: str) -> list[str]:
    return [code for lang, code in _BLOCK.findall(PAGE.read_text()) if lang == language]


def _checked_block() -> str:
    text = PAGE.read_text()
    marker = text.index("<!-- checked: tests/project/test_migrating_doc.py")
    found = _BLOCK.search(text, marker)
    assert found is not None
    assert found.group(1) == "python"
    return found.group(2)


def test_the_saved_dict_shown_on_the_page_is_read_with_its_expires_at() -> None:
    (shown,) = _blocks("json")
    tokens = TokenSet.from_response(json.loads(shown), now=1767225600.0 - 60)
    assert tokens.expires_at == 1767225600.5
    assert tokens.issued_at == 1767225600.5 - 3600
    assert tokens.scope == "users:read"


def test_the_migration_snippet_moves_a_requests_oauthlib_dict_into_the_store_unrefreshed(
    emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    issued = emulator.issue_tokens()
    saved = {  # what requests-oauthlib gave its token_updater
        **issued,
        "scope": issued.get("scope", "users:read").split(),
        "expires_at": TokenSet.from_response(issued).expires_at,
    }
    (tmp_path / "token.json").write_text(json.dumps(saved))
    monkeypatch.chdir(tmp_path)
    for name, value in {
        "PLEO_CLIENT_ID": emulator.client_id,
        "PLEO_CLIENT_SECRET": emulator.client_secret or "",
        "PLEO_TOKEN_URL": emulator.token_url,
        "PLEO_API_URL": emulator.api_url,
    }.items():
        monkeypatch.setenv(name, value)

    for _start in range(2):  # leaving tokens= in place for a second start is safe
        namespace: dict[str, object] = {}
        exec(compile(_checked_block(), str(PAGE), "exec"), namespace)
        assert namespace["employees"]

    stored = FileStore(tmp_path / "pleo-tokens.json").load()
    assert stored is not None
    assert stored.refresh_token == issued["refresh_token"]
    assert stored.expires_at == saved["expires_at"]
    assert emulator.counters.refresh_grants == 0
    assert emulator.counters.api_requests == 2
