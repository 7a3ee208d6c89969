"""Tests for the ``pleo-auth`` command, against the real emulator.

``login`` runs as a real subprocess; the test plays the browser with requests.
The other commands run in-process through ``main()``.
"""

from __future__ import annotations

import io
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, urlencode, urlsplit

import attrs
import pytest
import requests

from pleo_auth import FileStore, PleoSession, ReauthenticationRequired, TokenSet
from pleo_auth.cli import build_parser, main
from pleo_auth.testing import Emulator, free_port

SECRET = "demo-secret"


def command() -> list[str]:
    script = Path(sys.executable).with_name("pleo-auth")
    return [str(script)] if script.exists() else [sys.executable, "-m", "pleo_auth.cli"]


def query(url: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(urlsplit(url).query).items()}


@pytest.fixture
def token_path(tmp_path: Path) -> Path:
    return tmp_path / "tokens.json"


@pytest.fixture
def env(emulator: Emulator) -> dict[str, str]:
    return {
        **os.environ,
        "PLEO_CLIENT_ID": emulator.client_id,
        "PLEO_CLIENT_SECRET": SECRET,
        "PYTHONUNBUFFERED": "1",
    }


class Login:
    """``pleo-auth login --no-browser`` in a subprocess."""

    def __init__(self, args: list[str], env: dict[str, str]):
        self.proc = subprocess.Popen(
            [*command(), "login", "--no-browser", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: list[str] = []

    def authorize_url(self) -> str:
        """Read the output until the printed authorize URL."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.strip().startswith("http"):
                return line.strip()
        err = self.proc.stderr.read() if self.proc.stderr is not None else ""
        raise AssertionError("no URL printed: " + "".join(self.lines) + err)

    def finish(self) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=120)
        return self.proc.returncode, "".join(self.lines) + out, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture
def login(emulator: Emulator, env: dict[str, str], token_path: Path) -> Iterator[type[Login]]:
    started: list[Login] = []

    class Started(Login):
        def __init__(self, *extra: str) -> None:
            args = ["--store", f"file:{token_path}", "--token-url", emulator.token_url, *extra]
            super().__init__(args, env)
            started.append(self)

    yield Started
    for run in started:
        run.kill()


# -- login ------------------------------------------------------------------------


def test_login_through_the_browser_stores_tokens_and_prints_none(
    login: type[Login], emulator: Emulator, token_path: Path
) -> None:
    run = login("--scope", "users:read")
    url = run.authorize_url()
    assert url.startswith(emulator.authorize_url + "?")
    page = requests.get(url, timeout=60)  # the browser: authorize, then the loopback callback
    code, out, err = run.finish()

    assert code == 0, err
    assert page.status_code == 200
    assert "You can close this tab" in page.text
    tokens = FileStore(token_path).load()
    assert tokens is not None
    assert tokens.scope == "users:read"
    assert emulator.counters.code_exchanges == 1
    assert f"file {token_path}" in out
    assert "users:read" in out
    authorization_code = query(page.url)["code"]
    for secret in (tokens.access_token, tokens.refresh_token, authorization_code, SECRET):
        assert secret not in out
        assert secret not in err


def test_login_listens_on_127_0_0_1_at_path_callback(login: type[Login]) -> None:
    run = login()
    redirect_uri = query(run.authorize_url())["redirect_uri"]
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/callback", redirect_uri)


def test_login_uses_the_given_redirect_uri(login: type[Login], token_path: Path) -> None:
    redirect_uri = f"http://localhost:{free_port()}/pleo/done"
    run = login("--redirect-uri", redirect_uri)
    url = run.authorize_url()
    assert query(url)["redirect_uri"] == redirect_uri
    requests.get(url, timeout=60)
    code, _, err = run.finish()
    assert code == 0, err
    assert FileStore(token_path).load() is not None


def test_login_refuses_a_callback_with_another_state(
    login: type[Login], emulator: Emulator, token_path: Path
) -> None:
    run = login()
    response = requests.get(run.authorize_url(), allow_redirects=False, timeout=10)
    forged = response.headers["Location"].replace("state=", "state=forged", 1)
    page = requests.get(forged, timeout=60)
    code, _, err = run.finish()
    assert code == 3
    assert page.status_code == 400
    assert "state does not match" in err
    assert "state does not match" in page.text
    assert not token_path.exists()
    assert emulator.counters.token_requests == 0


def test_login_reports_a_denied_authorisation(
    login: type[Login], emulator: Emulator, token_path: Path
) -> None:
    run = login()
    params = query(run.authorize_url())
    callback = (
        params["redirect_uri"]
        + "?"
        + urlencode(
            {"error": "access_denied", "error_description": "denied", "state": params["state"]}
        )
    )
    page = requests.get(callback, timeout=60)
    code, _, err = run.finish()
    assert code == 3
    assert page.status_code == 400
    assert "access_denied" in err
    assert not token_path.exists()
    assert emulator.counters.token_requests == 0


def test_login_gives_up_after_its_timeout(login: type[Login], token_path: Path) -> None:
    run = login("--timeout", "0.2")
    run.authorize_url()
    code, _, err = run.finish()
    assert code == 3
    assert "no login arrived within 0.2 s" in err
    assert not token_path.exists()


def test_login_without_client_id_is_a_usage_error(
    token_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["login", "--no-browser", "--store", f"file:{token_path}"], env={})
    assert code == 2
    assert "PLEO_CLIENT_ID" in capsys.readouterr().err


# -- status, refresh, logout --------------------------------------------------------


def run_main(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    out = io.StringIO()
    return main(args, env=env, out=out), out.getvalue()


@pytest.fixture
def stored(emulator: Emulator, token_path: Path) -> TokenSet:
    tokens = TokenSet.from_response(emulator.issue_tokens(scope="users:read"))
    FileStore(token_path).save(tokens)
    return tokens


def test_status_without_tokens_exits_1_and_names_the_login_command(
    env: dict[str, str], token_path: Path
) -> None:
    code, out = run_main(["status", "--store", f"file:{token_path}"], env)
    assert code == 1
    assert f"pleo-auth login --client-id pleo-auth-demo --store file:{token_path}" in out


def test_status_with_tokens_exits_0_and_shows_expiry_but_no_token(
    env: dict[str, str], token_path: Path, stored: TokenSet
) -> None:
    code, out = run_main(["status", "--store", f"file:{token_path}"], env)
    assert code == 0
    assert f"file {token_path}" in out
    assert "access token expires" in out
    assert "users:read" in out
    assert stored.access_token not in out
    assert stored.refresh_token not in out


def test_status_reads_the_store_from_pleo_store(
    env: dict[str, str], token_path: Path, stored: TokenSet
) -> None:
    code, out = run_main(["status"], {**env, "PLEO_STORE": f"file:{token_path}"})
    assert code == 0
    assert f"file {token_path}" in out


def test_a_bad_store_spec_exits_2_with_a_clear_message(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = run_main(["status", "--store", "sqlite:tokens.db"], env)
    assert code == 2
    err = capsys.readouterr().err
    assert "invalid database URL: write sqlite:///PATH (relative) or sqlite:////PATH" in err
    code, _ = run_main(["status", "--store", "mongodb:tokens.db"], env)
    assert code == 2
    assert "unknown token store 'mongodb:tokens.db'" in capsys.readouterr().err


def test_a_bad_environment_variable_exits_2(
    env: dict[str, str], token_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = run_main(
        ["status", "--store", f"file:{token_path}"], {**env, "PLEO_ENVIRONMENT": "dev"}
    )
    assert code == 2
    assert "unknown environment 'dev'" in capsys.readouterr().err


def test_a_secret_on_the_command_line_is_warned_about_and_never_echoed(
    env: dict[str, str], token_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run_main(
        ["status", "--store", f"file:{token_path}", "--client-secret", "s3cr3t-value"], env
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "prefer the PLEO_CLIENT_SECRET environment variable" in err
    assert "s3cr3t-value" not in out + err


def test_refresh_rotates_once_at_the_server(
    env: dict[str, str], emulator: Emulator, token_path: Path, stored: TokenSet
) -> None:
    code, out = run_main(
        ["refresh", "--store", f"file:{token_path}", "--token-url", emulator.token_url], env
    )
    assert code == 0
    assert emulator.counters.refresh_grants == 1
    assert emulator.counters.rejected_refreshes == 0
    new = FileStore(token_path).load()
    assert new is not None
    assert new.refresh_token != stored.refresh_token
    assert new.access_token not in out
    assert new.refresh_token not in out


def test_refresh_without_tokens_exits_1_without_calling_pleo(
    env: dict[str, str], emulator: Emulator, token_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = run_main(
        ["refresh", "--store", f"file:{token_path}", "--token-url", emulator.token_url], env
    )
    assert code == 1
    assert "pleo-auth login" in capsys.readouterr().err
    assert emulator.counters.token_requests == 0


def test_refresh_of_a_revoked_grant_exits_1_and_clears_the_store(
    env: dict[str, str],
    emulator: Emulator,
    token_path: Path,
    stored: TokenSet,
    capsys: pytest.CaptureFixture[str],
) -> None:
    emulator.revoke_all()
    code, _ = run_main(
        ["refresh", "--store", f"file:{token_path}", "--token-url", emulator.token_url], env
    )
    err = capsys.readouterr().err
    assert code == 1
    assert f"pleo-auth login --client-id pleo-auth-demo --store file:{token_path}" in err
    assert emulator.counters.rejected_refreshes == 1
    assert FileStore(token_path).load() is None


def test_logout_clears_the_store(env: dict[str, str], token_path: Path, stored: TokenSet) -> None:
    code, out = run_main(["logout", "--store", f"file:{token_path}"], env)
    assert code == 0
    assert "removed the tokens" in out
    assert FileStore(token_path).load() is None
    code, out = run_main(["logout", "--store", f"file:{token_path}"], env)
    assert code == 0
    assert "nothing to remove" in out


# -- the login hint and the CLI agree -------------------------------------------------


@pytest.mark.parametrize("environment", ["production", "staging"])
def test_the_sessions_login_hint_is_a_valid_login_command(
    environment: Literal["production", "staging"], tmp_path: Path
) -> None:
    store = FileStore(tmp_path / "tokens.json")
    session = PleoSession("client-7", "secret", store=store, environment=environment)
    with session, pytest.raises(ReauthenticationRequired) as caught:
        session.get("/v2/employees")
    hint = re.search(r"`(pleo-auth [^`]+)`", caught.value.login_hint)
    assert hint is not None
    argv = shlex.split(hint.group(1))
    args = build_parser().parse_args(argv[1:])
    assert args.command == "login"
    assert args.client_id == "client-7"
    assert args.store == store.spec
    assert (args.environment or "production") == environment


# -- emulator ---------------------------------------------------------------------------


def test_emulator_command_serves_until_interrupted() -> None:
    proc = subprocess.Popen(
        [*command(), "emulator", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(2)]
        url = re.search(r"http://127\.0\.0\.1:\d+", lines[0])
        assert url is not None
        assert requests.get(url.group(0) + "/", timeout=10).status_code == 200
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C" in line:
                break
        assert any("client secret: demo-secret" in line for line in lines)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


# -- demo -------------------------------------------------------------------------------


@pytest.mark.slow
def test_demo_logs_in_and_runs_a_clean_concurrent_workload() -> None:
    result = subprocess.run(
        [*command(), "demo", "--duration", "3", "--processes", "2", "--threads", "4"],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "Logged in. Stored the tokens in file " in out
    report = dict(
        (label.strip(), value.split()[0])
        for label, value in re.findall(r"^  (\S[^\n]*?)  +(\S[^\n]*)$", out, re.MULTILINE)
    )
    assert int(report["requests made"]) > 0
    assert report["errors seen by callers"] == "0"
    assert report["401s seen by callers"] == "0"
    assert report["rejected refreshes"] == "0"
    assert report["reuse detections"] == "0"
    # The expectation follows the sessions' real schedule, and says how exact it is
    # (0.1 printed "7 (about 6 expected)").
    assert re.search(
        r"^  refreshes at the server +\d+ \(the schedule calls for \d+, give or take one\)$",
        out,
        re.MULTILINE,
    ), out


# -- the cron job example ----------------------------------------------------------------


def test_cron_job_example_asks_for_a_login_then_works_once_logged_in(
    env: dict[str, str], emulator: Emulator, token_path: Path
) -> None:
    script = Path(__file__).parents[2] / "examples" / "cron_job.py"
    cron_env = {
        **env,
        "PLEO_TOKEN_FILE": str(token_path),
        "PLEO_TOKEN_URL": emulator.token_url,
        "PLEO_API_URL": emulator.api_url,
    }
    before = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=cron_env
    )
    assert before.returncode == 1  # "a person must log in", as the CLI says it (issue 11)
    assert f"pleo-auth login --client-id pleo-auth-demo --store file:{token_path}" in before.stderr

    FileStore(token_path).save(TokenSet.from_response(emulator.issue_tokens()))
    after = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=cron_env
    )
    assert after.returncode == 0, after.stderr
    assert "3 employees" in after.stdout


# -- issue 11: what a new user tripped on -------------------------------------------------


@pytest.fixture
def issued(emulator: Emulator, token_path: Path) -> TokenSet:
    """Tokens a login through the emulator saved: they record their issuer."""
    tokens = TokenSet.from_response(emulator.issue_tokens(scope="users:read"))
    tokens = attrs.evolve(tokens, token_url=emulator.token_url, api_url=emulator.api_url)
    FileStore(token_path).save(tokens)
    return tokens


def test_login_refuses_an_unusable_store_before_showing_the_url(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import keyring.core
    from keyring.backends import fail

    monkeypatch.setattr(keyring.core, "_keyring_backend", fail.Keyring())
    code, out = run_main(["login", "--no-browser", "--store", "keyring"], env)
    err = capsys.readouterr().err
    assert code == 2
    assert "http" not in out  # no authorize URL was shown: nobody logged in for nothing
    lines = err.splitlines()
    assert lines[0].startswith("pleo-auth: error: keyring found no usable backend on this machine")
    assert lines[1].startswith("  Use a file (--store file:PATH")
    assert len(lines) == 2


def test_status_and_refresh_need_no_urls_for_tokens_that_recorded_their_issuer(
    env: dict[str, str], emulator: Emulator, token_path: Path, issued: TokenSet
) -> None:
    code, out = run_main(["status", "--store", f"file:{token_path}"], env)
    assert code == 0
    assert f"issued by: {emulator.token_url} (API {emulator.api_url})" in out
    code, out = run_main(["refresh", "--store", f"file:{token_path}"], env)
    assert code == 0, out
    assert emulator.counters.refresh_grants == 1
    new = FileStore(token_path).load()
    assert new is not None
    assert (new.token_url, new.api_url) == (emulator.token_url, emulator.api_url)


def test_settings_naming_another_issuer_are_a_clear_error(
    env: dict[str, str],
    emulator: Emulator,
    token_path: Path,
    issued: TokenSet,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _ = run_main(
        ["refresh", "--store", f"file:{token_path}", "--environment", "staging"], env
    )
    err = capsys.readouterr().err
    assert code == 2
    assert f"were issued by {emulator.token_url}" in err
    assert "https://auth.staging.pleo.io/oauth/token" in err
    assert emulator.counters.token_requests == 0


def test_a_refresh_that_cannot_connect_names_the_url_it_tried(
    env: dict[str, str], token_path: Path, stored: TokenSet, capsys: pytest.CaptureFixture[str]
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}/oauth/token"
    code, _ = run_main(
        ["refresh", "--store", f"file:{token_path}", "--token-url", nowhere],
        {**env, "PLEO_MAX_REFRESH_ATTEMPTS": "1"},
    )
    err = capsys.readouterr().err
    assert code == 3
    assert f"token endpoint tried: {nowhere}" in err


@pytest.mark.parametrize("name", ["status", "refresh", "logout"])
def test_every_settings_command_has_a_description_in_its_help(name: str) -> None:
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices[name]  # type: ignore[union-attr]
    assert sub.description
    assert len(sub.description) > 40


def test_the_emulators_help_shows_its_defaults_and_the_top_help_the_exit_codes() -> None:
    parser = build_parser()
    emulator = parser._subparsers._group_actions[0].choices["emulator"]  # type: ignore[union-attr]
    text = emulator.format_help()
    assert "(default: 3600.0)" in text
    assert "(default: pleo-auth-demo)" in text
    top = parser.format_help()
    assert "exit status:" in top
    for code in ("0 ", "1 ", "2 ", "3 ", "130"):
        assert f"  {code}" in top


def test_emulator_verbose_logs_each_request_and_ctrl_c_prints_the_counts() -> None:
    proc = subprocess.Popen(
        [*command(), "emulator", "-v", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline()]
        url = re.search(r"http://127\.0\.0\.1:\d+", lines[0])
        assert url is not None
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C" in line:
                break
        response = requests.get(
            url.group(0) + "/v2/employees?token=not-logged", timeout=10, headers={}
        )
        assert response.status_code == 401
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "GET /v2/employees -> 401" in err
    assert "not-logged" not in err  # the path only: never a query string
    assert "Stopped. What the emulator saw:" in out
    assert "  unauthorized: 1" in out


# -- login over leftovers, its client authentication, and the issuer's flags ---------------


def test_login_replaces_unreadable_leftovers_in_the_store(
    login: type[Login], emulator: Emulator, token_path: Path
) -> None:
    """Logging in again is how a person repairs a store: the check of the store
    before the URL refuses only a store that cannot work, not leftovers that the
    login replaces (as AuthorizationFlow does, and 0.1's login did)."""
    token_path.write_text('{"not": "pleo-auth tokens"}')
    token_path.chmod(0o600)

    run = login()
    page = requests.get(run.authorize_url(), timeout=60).status_code
    code, out, err = run.finish()

    assert code == 0, err
    assert page == 200
    assert f"{token_path} holds no pleo-auth tokens; logging in replaces it" in out
    assert FileStore(token_path).load() is not None
    assert emulator.counters.code_exchanges == 1


def test_login_still_refuses_a_token_file_others_can_read_before_showing_the_url(
    env: dict[str, str], token_path: Path, stored: TokenSet, capsys: pytest.CaptureFixture[str]
) -> None:
    token_path.chmod(0o644)

    code, out = run_main(["login", "--no-browser", "--store", f"file:{token_path}"], env)

    assert code == 3
    assert "http" not in out
    assert "readable or writable by group or others" in capsys.readouterr().err


class _TokenForwarder:
    """A loopback /oauth/token that records whether the client authenticated with
    HTTP Basic, then forwards the request to the emulator and relays its reply."""

    def __init__(self, target: str):
        self.basic: list[bool] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                owner.basic.append(self.headers.get("Authorization", "").startswith("Basic "))
                headers = {
                    name: value
                    for name, value in self.headers.items()
                    if name.lower() in ("authorization", "content-type", "accept")
                }
                reply = requests.post(target, data=body, headers=headers, timeout=30)
                self.send_response(reply.status_code)
                self.send_header("Content-Type", reply.headers.get("Content-Type", ""))
                self.send_header("Content-Length", str(len(reply.content)))
                self.end_headers()
                self.wfile.write(reply.content)

            def log_message(self, format: str, *args: object) -> None:
                pass  # request lines are not logged

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/oauth/token"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(10)


@pytest.fixture
def forwarder(emulator: Emulator) -> Iterator[_TokenForwarder]:
    forwarder = _TokenForwarder(emulator.token_url)
    yield forwarder
    forwarder.close()


@pytest.mark.slow
@pytest.mark.parametrize(("variable", "flag", "basic"), [
    ("body", None, False),
    ("body", "basic", True),
    (None, None, True),
])  # fmt: skip
def test_login_takes_pleo_client_auth_from_the_environment_and_the_flag_wins(
    emulator: Emulator,
    forwarder: _TokenForwarder,
    env: dict[str, str],
    token_path: Path,
    variable: str | None,
    flag: str | None,
    basic: bool,
) -> None:
    run = Login(
        [
            "--store", f"file:{token_path}",
            "--token-url", forwarder.url,
            "--authorize-url", emulator.authorize_url,
            *(["--client-auth", flag] if flag else []),
        ],
        {**env, **({"PLEO_CLIENT_AUTH": variable} if variable else {})},
    )  # fmt: skip
    try:
        requests.get(run.authorize_url(), timeout=60)
        code, _out, err = run.finish()
    finally:
        run.kill()

    assert code == 0, err
    assert forwarder.basic == [basic], "the code exchange authenticated the other way"


@pytest.mark.parametrize("flag", ["--token-url", "--api-url"])
def test_refresh_naming_the_tokens_own_issuer_in_one_flag_is_not_a_mismatch(
    env: dict[str, str], emulator: Emulator, token_path: Path, issued: TokenSet, flag: str
) -> None:
    """0.1 scripts run ``pleo-auth refresh --token-url URL``: naming the URL that
    issued the tokens, without the other one, refreshes there."""
    value = emulator.token_url if flag == "--token-url" else emulator.api_url

    code, out = run_main(["refresh", "--store", f"file:{token_path}", flag, value], env)

    assert code == 0, out
    assert emulator.counters.refresh_grants == 1


def test_refresh_with_pleo_token_url_naming_the_tokens_own_issuer_refreshes(
    env: dict[str, str], emulator: Emulator, token_path: Path, issued: TokenSet
) -> None:
    # Written with a trailing slash: the same endpoint, as a person would judge.
    code, out = run_main(
        ["refresh", "--store", f"file:{token_path}"],
        {**env, "PLEO_TOKEN_URL": emulator.token_url + "/"},
    )

    assert code == 0, out
    assert emulator.counters.refresh_grants == 1


def test_refresh_with_a_token_url_naming_another_issuer_is_a_clear_error(
    env: dict[str, str],
    emulator: Emulator,
    token_path: Path,
    issued: TokenSet,
    capsys: pytest.CaptureFixture[str],
) -> None:
    elsewhere = f"http://127.0.0.1:{free_port()}/oauth/token"

    code, _ = run_main(["refresh", "--store", f"file:{token_path}", "--token-url", elsewhere], env)

    err = capsys.readouterr().err
    assert code == 2
    assert f"the settings name {elsewhere} as the token endpoint" in err
    assert emulator.counters.token_requests == 0


def test_a_keyring_store_without_a_client_id_names_the_flag_and_variable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The core says the keyring store needs the client_id; the command says how to give it."""
    code = main(["status", "--store", "keyring"], env={})

    assert code == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("it needs the client_id: give --client-id or set PLEO_CLIENT_ID")
    )
