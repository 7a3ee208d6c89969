"""``pleo-auth status --json`` (issue 15, part 3): every grant of a store or family,
its expiry and whether it needs a login, in schema 1, never a token."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pleo_auth import Company, FileStore, TokenSet
from pleo_auth.cli import main
from pleo_auth.stores.family import FileStoreFamily
from pleo_auth.testing import Emulator, free_port

A = Company("3f2504e0-4f89-11d3-9a0c-0305e82c3301")
B = Company("9b2c1f6e-1d2a-4c3b-8e4f-5a6b7c8d9e0f")
C = Company("0c1d2e3f-4a5b-4c6d-8e7f-8091a2b3c4d5")

#: Schema 1's keys: a change here is a change of the documented schema.
DOCUMENT_KEYS = {"schema", "store", "family", "checked_at", "needs_login", "error", "grants"}
GRANT_KEYS = {
    "company", "needs_login", "reason", "expires_at", "expires_in", "expired",
    "refreshed_at", "token_url", "error",
}  # fmt: skip


@pytest.fixture
def grants_dir(tmp_path: Path) -> Path:
    return tmp_path / "grants"


@pytest.fixture
def env(emulator: Emulator, grants_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PLEO_CLIENT_ID": emulator.client_id,
        "PLEO_CLIENT_SECRET": emulator.client_secret or "",
        "PLEO_STORE": f"family:file:{grants_dir}",
        "PLEO_TOKEN_URL": emulator.token_url,
        "PLEO_API_URL": emulator.api_url,
    }


def status(env: dict[str, str], *args: str) -> tuple[int, dict[str, Any], str]:
    out = io.StringIO()
    code = main(["status", "--json", *args], env=env, out=out)
    text = out.getvalue()
    document = json.loads(text)
    assert set(document) == DOCUMENT_KEYS
    assert document["schema"] == 1
    for grant in document["grants"]:
        assert set(grant) == GRANT_KEYS
    return code, document, text


def seed(emulator: Emulator, family: FileStoreFamily, company: Company) -> TokenSet:
    tokens = TokenSet.from_response(emulator.issue_tokens(company=company))
    family.store(company).save(tokens)
    return tokens


def test_a_family_lists_every_grant_its_expiry_and_which_need_a_login(
    emulator: Emulator, grants_dir: Path, env: dict[str, str]
) -> None:
    family = FileStore.family(grants_dir)
    before = time.time()
    tokens = {company: seed(emulator, family, company) for company in (A, B, C)}
    (grants_dir / f"{B.id}.json").write_text("not tokens")
    family.remove(C)
    code, document, text = status(env)
    assert code == 1
    assert document["family"] is True
    assert document["store"] == f"one file per company in {grants_dir}"
    assert document["needs_login"] is True
    assert document["error"] is None
    assert before <= document["checked_at"] <= time.time()
    by_company = {grant["company"]: grant for grant in document["grants"]}
    assert set(by_company) == {A.id, B.id}  # a removed grant is no company of the family
    a, b = by_company[A.id], by_company[B.id]
    assert a["needs_login"] is False
    assert a["reason"] is None
    assert a["expires_at"] == tokens[A].expires_at
    assert a["expires_in"] == pytest.approx(tokens[A].expires_at - document["checked_at"], abs=0.01)
    assert 3500 < a["expires_in"] <= 3600
    assert a["expired"] is False
    assert a["refreshed_at"] == tokens[A].issued_at
    assert a["token_url"] == tokens[A].token_url  # None: saved by hand, not by a login
    assert (b["needs_login"], b["reason"], b["expires_at"]) == (True, "unreadable", None)
    for pair in tokens.values():
        assert pair.access_token not in text
        assert pair.refresh_token not in text
    assert (emulator.client_secret or "-") not in text

    code, document, _ = status(env, "--company", A.id)
    assert code == 0
    assert [grant["company"] for grant in document["grants"]] == [A.id]
    assert document["needs_login"] is False


def test_one_grant_store_has_one_entry_with_no_company(
    emulator: Emulator, tmp_path: Path, env: dict[str, str]
) -> None:
    path = tmp_path / "tokens.json"
    code, document, _ = status(env, "--store", f"file:{path}")
    assert code == 1
    assert document["family"] is False
    assert document["grants"] == [
        {
            "company": None, "needs_login": True, "reason": "no_grant", "expires_at": None,
            "expires_in": None, "expired": None, "refreshed_at": None, "token_url": None,
            "error": None,
        }
    ]  # fmt: skip
    tokens = TokenSet.from_response({**emulator.issue_tokens(), "expires_in": 1}, now=0)
    FileStore(path).save(tokens)
    code, document, _ = status(env, "--store", f"file:{path}")
    assert code == 0
    (grant,) = document["grants"]
    assert grant["expired"] is True  # the next use refreshes it: no login needed
    assert grant["expires_in"] < 0
    assert grant["needs_login"] is False


def test_an_empty_family_needs_a_login(env: dict[str, str]) -> None:
    code, document, _ = status(env)
    assert code == 1
    assert (document["grants"], document["needs_login"]) == ([], True)


def test_a_store_that_fails_is_reported_as_unknown_and_exits_3(env: dict[str, str]) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    code, document, _ = status(env, "--store", closed)
    assert code == 3
    (grant,) = document["grants"]
    assert (grant["needs_login"], grant["reason"]) == (None, "store_error")
    assert grant["error"]
    assert document["needs_login"] is False


def test_the_installed_command_prints_the_same_document(
    emulator: Emulator, grants_dir: Path, env: dict[str, str]
) -> None:
    seed(emulator, FileStore.family(grants_dir), A)
    script = Path(sys.executable).with_name("pleo-auth")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "pleo_auth.cli"]
    result = subprocess.run(
        [*command, "status", "--json"], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert [grant["company"] for grant in document["grants"]] == [A.id]
