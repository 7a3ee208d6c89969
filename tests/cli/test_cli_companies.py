"""Tests for the ``pleo-auth`` command over a grant per company (``--store
family:...`` and ``--company``), run as real processes against the emulator; the
test plays the browser with requests."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import pytest
import requests

from pleo_auth import Company, FileStore, ReauthenticationRequired, TokenSet
from pleo_auth._endpoint import TokenEndpoint
from pleo_auth.cli import build_parser, main
from pleo_auth.stores.family import FileStoreFamily
from pleo_auth.testing import Emulator, free_port

SECRET = "demo-secret"
A = Company("3f2504e0-4f89-11d3-9a0c-0305e82c3301")
B = Company("9b2c1f6e-1d2a-4c3b-8e4f-5a6b7c8d9e0f")

#: Company strings every command refuses before touching anything.
BAD = ["../etc/passwd", "*", "", "rt_a-refresh-token-by-mistake"]


def command() -> list[str]:
    script = Path(sys.executable).with_name("pleo-auth")
    return [str(script)] if script.exists() else [sys.executable, "-m", "pleo_auth.cli"]


@pytest.fixture
def grants_dir(tmp_path: Path) -> Path:
    return tmp_path / "grants"


@pytest.fixture
def family(grants_dir: Path) -> FileStoreFamily:
    return FileStore.family(grants_dir)


@pytest.fixture
def env(emulator: Emulator, grants_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PLEO_CLIENT_ID": emulator.client_id,
        "PLEO_CLIENT_SECRET": SECRET,
        "PLEO_STORE": f"family:file:{grants_dir}",
        "PLEO_TOKEN_URL": emulator.token_url,
        "PLEO_API_URL": emulator.api_url,
        "PYTHONUNBUFFERED": "1",
    }


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command(), *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def seed(emulator: Emulator, family: FileStoreFamily, company: Company) -> TokenSet:
    tokens = TokenSet.from_response(emulator.issue_tokens(company=company))
    family.store(company).save(tokens)
    return tokens


def with_subject(url: str, company: Company) -> str:
    """The authorize URL as if the person picked ``company`` at Pleo."""
    parts = urlsplit(url)
    query = {name: values[0] for name, values in parse_qs(parts.query).items()}
    query["urn_pleo_params_oauth_subject"] = company.urn
    return urlunsplit(parts._replace(query=urlencode(query)))


class Login:
    """``pleo-auth login --no-browser`` in a process of its own."""

    def __init__(self, env: dict[str, str], *args: str):
        self.proc = subprocess.Popen(
            [*command(), "login", "--no-browser", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: list[str] = []

    def authorize_url(self) -> str:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.strip().startswith("http"):
                return line.strip()
        raise AssertionError("no URL printed: " + "".join(self.lines) + self.proc.stderr.read())

    def finish(self) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=120)
        return self.proc.returncode, "".join(self.lines) + out, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()


@pytest.fixture
def logins(env: dict[str, str]) -> object:
    started: list[Login] = []

    def start(*args: str) -> Login:
        login = Login(env, *args)
        started.append(login)
        return login

    yield start
    for login in started:
        login.kill()


def run_main(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """The command in this process, for what needs no process of its own."""
    out = io.StringIO()
    return main(args, env=env, out=out), out.getvalue()


# -- login ------------------------------------------------------------------------


def test_login_learns_the_company_from_pleo_and_saves_its_grant(
    logins: object, emulator: Emulator, family: FileStoreFamily
) -> None:
    emulator.set_default_company(A)  # the person picks A on Pleo's page
    run_ = logins()  # type: ignore[operator]
    page = requests.get(run_.authorize_url(), timeout=60)
    code, out, err = run_.finish()
    assert code == 0, err
    assert page.status_code == 200
    assert f"Logged in to {A}." in out
    assert family.companies() == [A]
    stored = family.store(A).load()
    assert stored is not None
    assert emulator.is_current(stored.access_token, stored.refresh_token)
    for secret in (stored.access_token, stored.refresh_token, SECRET):
        assert secret not in out + err


def test_login_for_another_company_than_given_is_refused_and_saves_nothing(
    logins: object, emulator: Emulator, family: FileStoreFamily
) -> None:
    run_ = logins("--company", A.id)  # type: ignore[operator]
    url = run_.authorize_url()
    assert parse_qs(urlsplit(url).query)["urn_pleo_params_oauth_subject"] == [A.urn]
    page = requests.get(with_subject(url, B), timeout=60)
    code, _, err = run_.finish()
    assert code == 3
    assert page.status_code == 400
    assert f"this login is for {B}, not for {A} as asked" in err
    assert family.companies() == []


def test_two_companies_logging_in_at_the_same_moment_each_get_their_own_grant(
    logins: object, emulator: Emulator, family: FileStoreFamily
) -> None:
    old_a = seed(emulator, family, A)  # A logs in again: its grant is replaced
    runs = {company: logins("--company", company.urn) for company in (A, B)}  # type: ignore[operator]
    urls = {company: run_.authorize_url() for company, run_ in runs.items()}
    barrier = threading.Barrier(2)
    pages: dict[Company, int] = {}

    def browse(company: Company) -> None:
        barrier.wait()
        pages[company] = requests.get(urls[company], timeout=60).status_code

    threads = [threading.Thread(target=browse, args=(company,)) for company in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results = {company: run_.finish() for company, run_ in runs.items()}

    assert pages == {A: 200, B: 200}
    for company, (code, out, err) in results.items():
        assert code == 0, err
        assert f"Logged in to {company}." in out
        stored = family.store(company).load()
        assert stored is not None
        assert emulator.is_current(stored.access_token, stored.refresh_token)
        assert emulator.counters_for(company).code_exchanges == 1
    assert family.companies() == [A, B]
    new_a = family.store(A).load()
    assert new_a is not None
    assert new_a.access_token != old_a.access_token


# -- status -------------------------------------------------------------------------


def test_status_lists_every_company_in_a_table_and_exits_1_when_one_needs_a_login(
    emulator: Emulator, family: FileStoreFamily, grants_dir: Path, env: dict[str, str]
) -> None:
    tokens = {company: seed(emulator, family, company) for company in (A, B)}
    result = run(["status"], env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"Store: one file per company in {grants_dir}"
    assert lines[1].split() == [
        "COMPANY",
        "ACCESS",
        "TOKEN",
        "EXPIRES",
        "REFRESHED",
        "NEEDS",
        "LOGIN",
    ]
    assert lines[1].index("ACCESS TOKEN EXPIRES") == len(A.id) + 2  # the columns line up
    assert [line.split()[0] for line in lines[2:4]] == [A.id, B.id]
    assert all(line.endswith("  no") and "(in 60 min)" in line for line in lines[2:4])
    assert lines[4] == "2 companies; none needs a login."
    for pair in tokens.values():
        assert pair.access_token not in result.stdout
        assert pair.refresh_token not in result.stdout

    (grants_dir / f"{B.id}.json").write_text("not tokens")
    code, out = run_main(["status"], env)
    assert code == 1
    lines = out.splitlines()
    assert lines[3].startswith(B.id)
    assert lines[3].endswith("yes: its tokens are unreadable")
    assert lines[4] == "2 companies; 1 needs a login:"
    assert lines[5].startswith("  pleo-auth login ")
    assert f" --store family:file:{grants_dir} " in lines[5]
    assert lines[5].endswith(f" --company {B.id}")


def test_status_of_an_empty_family_exits_1_and_of_a_plain_store_works_as_before(
    tmp_path: Path, env: dict[str, str]
) -> None:
    code, out = run_main(["status"], env)
    assert code == 1
    assert "Companies: none. A person must log in for each company:" in out

    code, out = run_main(["status", "--store", f"file:{tmp_path / 'tokens.json'}"], env)
    assert code == 1
    assert "Tokens: none. A person must log in:" in out


# -- refresh and logout -------------------------------------------------------------


def test_refresh_company_rotates_that_grant_only(
    emulator: Emulator, family: FileStoreFamily, env: dict[str, str]
) -> None:
    seed(emulator, family, A)
    before_b = seed(emulator, family, B)
    result = run(["refresh", "--company", A.urn], env)
    assert result.returncode == 0, result.stderr
    assert emulator.counters_for(A).refresh_grants == 1
    assert emulator.counters_for(B).refresh_grants == 0
    assert family.store(B).load() == before_b


def test_logout_company_removes_that_grant_here_and_says_it_stays_valid_at_pleo(
    emulator: Emulator, family: FileStoreFamily, env: dict[str, str]
) -> None:
    gone = seed(emulator, family, A)
    seed(emulator, family, B)
    result = run(["logout", "--company", A.id], env)
    assert result.returncode == 0, result.stderr
    assert "stays valid at Pleo until it expires: `logout --revoke` ends it" in result.stdout
    assert family.companies() == [B]
    assert emulator.is_current(gone.access_token, gone.refresh_token)  # still live at Pleo
    assert emulator.counters.installations_deleted == 0


def test_logout_revoke_ends_the_installation_and_the_refresh_token_is_refused_afterwards(
    emulator: Emulator, family: FileStoreFamily, env: dict[str, str]
) -> None:
    revoked = seed(emulator, family, A)
    kept = seed(emulator, family, B)
    result = run(["logout", "--company", A.id, "--revoke"], env)
    assert result.returncode == 0, result.stderr
    assert "Ended the installation at Pleo" in result.stdout
    assert emulator.counters.installations_deleted == 1
    assert emulator.counters_for(A).installations_deleted == 1
    assert family.companies() == [B]
    endpoint = TokenEndpoint(emulator.token_url, emulator.client_id, SECRET)
    try:
        with pytest.raises(ReauthenticationRequired):
            endpoint.refresh(revoked.refresh_token)
    finally:
        endpoint.close()
    assert emulator.counters_for(A).rejected_refreshes == 1
    assert emulator.is_current(kept.access_token, kept.refresh_token)


def test_logout_revoke_that_pleo_does_not_confirm_keeps_the_tokens(
    emulator: Emulator, tmp_path: Path, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "tokens.json"
    FileStore(path).save(TokenSet.from_response(emulator.issue_tokens()))
    nowhere = f"http://127.0.0.1:{free_port()}"
    code, _ = run_main(["logout", "--revoke", "--store", f"file:{path}", "--api-url", nowhere], env)
    err = capsys.readouterr().err
    assert code == 3
    assert "could not reach Pleo to end the installation" in err
    assert f"the tokens are kept in file {path}" in err
    assert FileStore(path).load() is not None
    assert emulator.counters.installations_deleted == 0


def test_logout_revoke_of_one_grants_store_ends_its_installation(
    emulator: Emulator, tmp_path: Path, env: dict[str, str]
) -> None:
    path = tmp_path / "tokens.json"
    FileStore(path).save(TokenSet.from_response(emulator.issue_tokens()))
    code, out = run_main(["logout", "--revoke", "--store", f"file:{path}"], env)
    assert code == 0
    assert "Ended the installation at Pleo" in out
    assert emulator.counters.installations_deleted == 1
    assert FileStore(path).load() is None


# -- refused before anything is touched ----------------------------------------------


def test_a_bad_company_is_refused_before_anything_is_touched(
    grants_dir: Path, env: dict[str, str]
) -> None:
    result = run(["login", "--company", "../etc/passwd"], env)
    assert result.returncode == 2
    assert result.stderr.startswith("pleo-auth: error: --company: not a Pleo company id: ")
    assert "../etc/passwd" not in result.stderr
    assert result.stdout == ""  # no URL: no login started
    assert not grants_dir.exists()


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize(
    "args", [["login"], ["status"], ["refresh"], ["logout", "--revoke"]], ids=lambda a: a[0]
)
def test_every_command_refuses_a_bad_company_without_echoing_it(
    args: list[str],
    bad: str,
    grants_dir: Path,
    env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out = run_main([*args, "--company", bad], env)
    err = capsys.readouterr().err
    assert code == 2
    assert "--company: not a Pleo company id" in err
    if bad:
        assert bad not in err + out
    assert not grants_dir.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["refresh"], "refresh works on one company's grant: name it with --company"),
        (["logout"], "logout works on one company's grant: name it with --company"),
        (
            ["status", "--store", "file:/tmp/x.json", "--company", A.id],
            "--company picks a grant of a store family",
        ),
        (["status", "--store", "family:fiel:/tmp"], "unknown store family 'family:fiel:/tmp'"),
        (["status"], "(PLEO_STORE)"),
    ],
)
def test_commands_that_need_a_company_or_a_family_say_so(
    args: list[str],
    message: str,
    env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    if args == ["status"]:
        env = {**env, "PLEO_STORE": "family:redis://h/0?key=x"}
    code, _ = run_main(args, env)
    assert code == 2
    assert message in capsys.readouterr().err


def test_logout_help_says_a_local_logout_leaves_a_live_grant() -> None:
    parser = build_parser()
    text = " ".join(parser._subparsers._group_actions[0].choices["logout"].format_help().split())  # type: ignore[union-attr]
    assert "the grant stays valid at Pleo until it expires" in text
    assert "DELETE /v1/installations/me" in text
