"""Secrets never leak: the leak guard itself, every repr, and every CLI command.

The whole suite runs under the guard (tests/support/leakguard.py). These tests prove the
guard catches what it claims to, and drive the places a secret could show most
directly: the reprs of every object that holds one, and every ``pleo-auth``
command, run in-process so the guard sees their logs and errors too.
"""

from __future__ import annotations

import io
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import responses
from support.leakguard import (
    ACCESS_TOKEN,
    CODE,
    REFRESH_TOKEN,
    Leak,
    LeakGuard,
    counts_as_secret,
    find_leaks,
    fingerprint,
)

from pleo_auth import (
    AuthorizationError,
    AuthorizationFlow,
    FileStore,
    KeyringStore,
    MemoryStore,
    PleoAuthError,
    PleoSession,
    RefreshError,
    TokenSet,
    cli,
)
from pleo_auth._endpoint import TokenEndpoint
from pleo_auth._urls import ApiScope
from pleo_auth.cli import main
from pleo_auth.session import _Bearer
from pleo_auth.testing import Emulator, Fault

TESTS = Path(__file__).parents[1]


def secret(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(24)


def assert_no_leak(guard: LeakGuard) -> None:
    """Scan what the guard saw so far, here, for a message that points at this step."""
    leaks = guard.check()
    assert not leaks, "\n".join(map(str, leaks))


# -- the guard itself ---------------------------------------------------------------


def test_find_leaks_names_the_kind_and_place_but_never_the_secret() -> None:
    token = secret("rt_")
    other = secret("at_")
    leaks = find_leaks(
        {token: REFRESH_TOKEN, other: ACCESS_TOKEN},
        {f"refreshing with {token} now": "log record x DEBUG (a.py:1) message", "clean": "y"},
    )
    assert len(leaks) == 1
    leak = leaks[0]
    assert (leak.kind, leak.where) == (REFRESH_TOKEN, "log record x DEBUG (a.py:1) message")
    assert (leak.fingerprint, leak.length) == (fingerprint(token), len(token))
    assert "[SECRET]" in leak.excerpt
    assert token not in str(leak)


def test_short_or_repetitive_values_are_not_tracked() -> None:
    assert not counts_as_secret("a1b2c3d")  # 7 characters
    assert not counts_as_secret("00000000000000")
    assert not counts_as_secret(None)
    assert counts_as_secret("at_new_1")


def test_a_code_in_a_request_log_of_the_callback_url_is_exempt_but_nowhere_else() -> None:
    code = secret("ac_")
    line = f'http://127.0.0.1:1 "GET /callback?code={code}&state=s HTTP/1.1" 200 10'
    texts = {
        line: "log record urllib3.connectionpool DEBUG (connectionpool.py:1) message",
        f"{{'request': <WSGIRequest: GET '/cb/?state=s&code={code}'>}}": (
            "log record django.request WARNING (log.py:1) extra"
        ),
        f"exchanging {code}": "log record pleo_auth.flow DEBUG (flow.py:1) message",
        f"GET /x?next={code}": "log record urllib3.connectionpool DEBUG (c.py:1) message",
    }
    leaks = find_leaks({code: CODE}, texts)
    assert sorted(leak.where for leak in leaks) == [
        "log record pleo_auth.flow DEBUG (flow.py:1) message",
        "log record urllib3.connectionpool DEBUG (c.py:1) message",
    ]
    # The exemption is for codes only: a token in the same place is a leak.
    assert len(find_leaks({code: ACCESS_TOKEN}, {line: texts[line]})) == 1


def test_a_value_also_used_as_a_scope_is_not_tracked(leak_guard: LeakGuard) -> None:
    shared = secret("")
    tokens = TokenSet("at_" + shared, shared, expires_at=2e9, scope=shared)  # as hypothesis may
    assert shared in repr(tokens)  # the scope, rightly shown
    assert leak_guard.check() == []
    logging.getLogger("pleo_auth.test").debug("%s", tokens.access_token)
    assert [leak.kind for leak in leak_guard.check()] == [ACCESS_TOKEN, ACCESS_TOKEN]


def test_the_guard_sees_a_log_record_an_error_chain_and_cli_output(
    leak_guard: LeakGuard, capsys: pytest.CaptureFixture[str]
) -> None:
    tokens = TokenSet(secret("at_"), secret("rt_"), expires_at=2e9)
    logging.getLogger("pleo_auth.test").debug("tokens are %s", tokens.access_token)
    try:
        try:
            raise KeyError(tokens.refresh_token)
        except KeyError as exc:
            raise RefreshError("wrapped") from exc
    except RefreshError:
        pass
    cli.print(f"secret {tokens.refresh_token}", file=sys.stderr)  # type: ignore[attr-defined]
    capsys.readouterr()  # the test took the output: the guard saw it at print()

    leaks = leak_guard.check()
    places = {(leak.kind, re.sub(r" \(test_secrets.py:\d+\)", "", leak.where)) for leak in leaks}
    assert places == {
        (ACCESS_TOKEN, "log record pleo_auth.test DEBUG message"),
        (ACCESS_TOKEN, "log record pleo_auth.test DEBUG args"),
        (REFRESH_TOKEN, "RefreshError -> __cause__ KeyError str()"),
        (REFRESH_TOKEN, "RefreshError -> __cause__ KeyError repr()"),
        (REFRESH_TOKEN, "pleo-auth output (stderr)"),
    }
    assert all(tokens.access_token not in str(leak) for leak in leaks)
    assert all(tokens.refresh_token not in str(leak) for leak in leaks)


LEAKY_TESTS = """
import logging
import sys

import pytest

from pleo_auth import RefreshError, TokenSet

ACCESS = "at_{access}"
REFRESH = "rt_{refresh}"


def tokens():
    return TokenSet(ACCESS, REFRESH, expires_at=2e9)


def test_clean():
    logging.getLogger("pleo_auth.x").debug("refreshed %s", tokens().fingerprint)


def test_logs_a_token():
    logging.getLogger("pleo_auth.x").debug("refreshed %s", tokens().access_token)


def test_raises_an_error_with_a_token():
    with pytest.raises(RefreshError):
        raise RefreshError("refused", description="bad token " + tokens().refresh_token)


def test_prints_a_token():
    print("token", tokens().refresh_token)
"""


def test_a_run_under_the_guard_errors_each_leaking_test_and_never_shows_the_secret(
    tmp_path: Path,
) -> None:
    access, refresh = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    (tmp_path / "conftest.py").write_text(
        "from support.leakguard import _leak_guard_installed, leak_guard  # noqa: F401\n"
    )
    (tmp_path / "test_leaky.py").write_text(
        textwrap.dedent(LEAKY_TESTS).format(access=access, refresh=refresh)
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rfEs", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)])},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "4 passed, 3 errors" in output, output
    assert "test_leaky.py::test_clean" not in output  # only failures are listed
    for name in ("test_logs_a_token", "test_raises_an_error_with_a_token", "test_prints_a_token"):
        assert f"ERROR test_leaky.py::{name} - Failed: leak guard: " in output, output
    assert f"access token (sha256 {fingerprint('at_' + access)}, 35 chars) in log record" in output
    assert f"(sha256 {fingerprint('rt_' + refresh)}, 35 chars) in RefreshError str()" in output
    assert "in captured stdout of the call phase" in output
    assert access not in output
    assert refresh not in output


# -- reprs ----------------------------------------------------------------------------


def shown(obj: object) -> str:
    return f"{obj!r} {obj!s} {obj} {[obj]} {obj!a}"


@pytest.fixture
def grant(emulator: Emulator) -> TokenSet:
    return TokenSet.from_response(emulator.issue_tokens())


def assert_hidden(text: str, *hidden: str | None) -> None:
    for value in hidden:
        assert value
        assert value not in text


def test_token_set_shows_expiry_and_scope_only(grant: TokenSet) -> None:
    text = shown(grant)
    assert "expires_at=" in text
    assert_hidden(text, grant.access_token, grant.refresh_token)


def test_sessions_stores_and_flows_hide_tokens_and_the_client_secret(
    private_emulator: Emulator, tmp_path: Path, keyring_backend: Any
) -> None:
    emulator = private_emulator
    client_secret = emulator.client_secret
    assert client_secret is not None
    grant = TokenSet.from_response(emulator.issue_tokens())
    stores = [
        MemoryStore(grant),
        FileStore(tmp_path / "tokens.json"),
        KeyringStore(account="x", backend=keyring_backend, state_dir=tmp_path),  # type: ignore[arg-type]
    ]
    stores[1].save(grant)
    stores[2].save(grant)
    texts = [shown(store) for store in stores]
    with PleoSession(
        emulator.client_id,
        client_secret,
        store=MemoryStore(grant),
        token_url=emulator.token_url,
        api_url=emulator.api_url,
    ) as session:
        session.get(emulator.api_url + "/v2/employees").raise_for_status()
        refreshed = session.refresh()
        texts.append(shown(session))
        texts.append(shown(refreshed))
        texts.append(shown(session.store))
    flow = AuthorizationFlow(
        emulator.client_id,
        client_secret,
        redirect_uri="http://127.0.0.1:1/callback",
        store=MemoryStore(),
        authorize_url=emulator.authorize_url,
        token_url=emulator.token_url,
    )
    pending = flow.start()
    endpoint = TokenEndpoint(emulator.token_url, emulator.client_id, client_secret)
    texts += [
        shown(flow),
        shown(pending),
        shown(endpoint),
        shown(_Bearer(grant.access_token, ApiScope(emulator.api_url))),
    ]
    endpoint.close()
    assert "<Bearer auth>" in texts[-1]
    for text in texts:
        assert_hidden(text, grant.access_token, grant.refresh_token, client_secret)
        assert_hidden(text, refreshed.access_token, refreshed.refresh_token, pending.code_verifier)


def test_redis_store_hides_the_password_in_its_url(redis_url: str) -> None:
    from pleo_auth.stores.redis import RedisStore

    password = secret("pw_")
    store = RedisStore(redis_url.replace("redis://", f"redis://:{password}@", 1), key="k")
    assert_hidden(shown(store) + store.describe() + store.spec, password)


def test_the_emulator_hides_its_client_secret() -> None:
    client_secret = secret("cs_")
    with Emulator(client_secret=client_secret) as emu:
        assert_hidden(shown(emu), client_secret)


def test_refresh_error_with_a_response_hides_what_was_sent(emulator: Emulator) -> None:
    tokens = TokenSet.from_response(emulator.issue_tokens())
    emulator.inject_fault(Fault(status=400, error="invalid_request"))
    endpoint = TokenEndpoint(emulator.token_url, emulator.client_id, emulator.client_secret)
    with pytest.raises(RefreshError) as caught:
        endpoint.refresh(tokens.refresh_token)
    endpoint.close()
    error = caught.value
    assert error.response is not None
    assert error.response.status_code == 400
    # The request kept on the error has no body and no Authorization header.
    assert error.response.request.body is None
    assert "Authorization" not in error.response.request.headers
    assert error.response.request.url == emulator.token_url
    for text in (shown(error), shown(error.response), str(vars(error))):
        assert_hidden(text, tokens.refresh_token, tokens.access_token)


TOKEN_URL = "https://auth.example.test/oauth/token"


@pytest.mark.parametrize("echoed", ["refresh_token", "client_secret"])
def test_a_refusal_that_echoes_a_secret_in_its_error_description_does_not_leak_it(
    leak_guard: LeakGuard, echoed: str
) -> None:
    sent = {"refresh_token": secret("rt_"), "client_secret": secret("cs_")}
    with responses.RequestsMock() as mocked:
        mocked.post(
            TOKEN_URL,
            status=400,
            json={"error": f"e {sent[echoed]}", "error_description": f"bad {sent[echoed]}"},
        )
        endpoint = TokenEndpoint(TOKEN_URL, "client-1", sent["client_secret"])
        with pytest.raises(RefreshError, match=r"bad \[redacted\]"):
            endpoint.refresh(sent["refresh_token"])
        endpoint.close()
    assert_no_leak(leak_guard)


@pytest.mark.parametrize("echoed", ["code", "code_verifier", "client_secret"])
def test_a_refused_code_exchange_that_echoes_a_secret_does_not_leak_it(
    leak_guard: LeakGuard, echoed: str
) -> None:
    sent = {"code": secret("ac_"), "code_verifier": secret("v_"), "client_secret": secret("cs_")}
    with responses.RequestsMock() as mocked:
        mocked.post(
            TOKEN_URL,
            status=400,
            json={"error": "invalid_grant", "error_description": sent[echoed]},
        )
        endpoint = TokenEndpoint(TOKEN_URL, "client-1", sent["client_secret"], client_auth="body")
        with pytest.raises(AuthorizationError) as caught:
            endpoint.exchange_code(
                sent["code"],
                redirect_uri="http://127.0.0.1:1/cb",
                code_verifier=sent["code_verifier"],
            )
        endpoint.close()
    assert caught.value.description == "[redacted]"
    assert_no_leak(leak_guard)


# -- the command line ---------------------------------------------------------------


class Output(io.StringIO):
    """The CLI's ``out``: tells a waiting browser when the authorize URL is printed."""

    def __init__(self) -> None:
        super().__init__()
        self.url_printed = threading.Event()

    def write(self, text: str) -> int:
        written = super().write(text)
        if re.search(r"^\s+http\S+/oauth/authorize\?", self.getvalue(), re.MULTILINE):
            self.url_printed.set()
        return written


@pytest.fixture
def private_emulator() -> Iterator[Emulator]:
    """An emulator with a client secret that is not the public demo default."""
    with Emulator(access_token_lifetime=3600, client_secret=secret("cs_")) as emu:
        yield emu


@pytest.fixture
def cli_env(private_emulator: Emulator, tmp_path: Path) -> dict[str, str]:
    assert private_emulator.client_secret is not None
    return {
        "PLEO_CLIENT_ID": private_emulator.client_id,
        "PLEO_CLIENT_SECRET": private_emulator.client_secret,
        "PLEO_TOKEN_URL": private_emulator.token_url,
        "PLEO_API_URL": private_emulator.api_url,
        "PLEO_STORE": f"file:{tmp_path / 'tokens.json'}",
    }


def run(args: list[str], env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> str:
    out = io.StringIO()
    code = main([*args, "-v"], env=env, out=out)
    captured = capsys.readouterr()
    return f"exit {code}\n{out.getvalue()}{captured.out}{captured.err}"


def login(env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> str:
    """``pleo-auth login -v`` in-process, with a thread playing the browser."""
    out = Output()
    pages: list[requests.Response] = []

    def browser() -> None:
        if out.url_printed.wait(60):
            url = re.findall(r"^\s+(http\S+)$", out.getvalue(), re.MULTILINE)[0]
            pages.append(requests.get(url, timeout=60))

    thread = threading.Thread(target=browser, daemon=True)
    thread.start()
    code = main(["login", "--no-browser", "--timeout", "60", "-v"], env=env, out=out)
    thread.join(60)
    captured = capsys.readouterr()
    assert len(pages) == 1
    return f"exit {code}\n{out.getvalue()}{captured.out}{captured.err}{pages[0].text}"


def test_every_cli_command_keeps_tokens_codes_and_the_secret_out_of_its_output(
    private_emulator: Emulator,
    cli_env: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    leak_guard: LeakGuard,
) -> None:
    store = FileStore(tmp_path / "tokens.json")
    outputs = {}
    outputs["login"] = login(cli_env, capsys)
    assert outputs["login"].startswith("exit 0"), outputs["login"]
    first = store.load()
    assert first is not None
    outputs["status"] = run(["status"], cli_env, capsys)
    assert f"fingerprint {first.fingerprint}" in outputs["status"]
    outputs["refresh"] = run(["refresh"], cli_env, capsys)
    second = store.load()
    assert second is not None
    assert second != first
    outputs["logout"] = run(["logout"], cli_env, capsys)
    assert store.load() is None
    assert [output.splitlines()[0] for output in outputs.values()] == ["exit 0"] * 4
    assert_no_leak(leak_guard)
    everything = "\n".join(outputs.values())
    assert private_emulator.client_secret is not None
    assert_hidden(everything, private_emulator.client_secret)
    for tokens in (first, second):
        assert_hidden(everything, tokens.access_token, tokens.refresh_token)


def test_cli_failures_keep_secrets_out_of_their_messages(
    private_emulator: Emulator,
    cli_env: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    leak_guard: LeakGuard,
) -> None:
    store = FileStore(tmp_path / "tokens.json")
    tokens = TokenSet.from_response(private_emulator.issue_tokens())
    store.save(tokens)
    wrong = {**cli_env, "PLEO_CLIENT_SECRET": secret("cs_wrong_")}
    refused = run(["refresh"], wrong, capsys)  # invalid_client: the secret was wrong
    assert refused.startswith("exit 3"), refused
    private_emulator.revoke_all()
    revoked = run(["refresh"], cli_env, capsys)
    assert revoked.startswith("exit 1"), revoked
    torn_file = tmp_path / "tokens.json"
    torn_file.write_text('{"access_token": "' + tokens.access_token + '"')
    torn_file.chmod(0o600)
    torn = run(["status"], cli_env, capsys)
    assert torn.startswith("exit 3"), torn
    assert_no_leak(leak_guard)
    everything = refused + revoked + torn
    assert_hidden(
        everything, tokens.access_token, tokens.refresh_token, wrong["PLEO_CLIENT_SECRET"]
    )
    assert private_emulator.client_secret is not None
    assert_hidden(everything, private_emulator.client_secret)


def test_demo_command_keeps_secrets_out_of_its_output(
    capsys: pytest.CaptureFixture[str], leak_guard: LeakGuard
) -> None:
    args = ["demo", "--duration", "1", "--processes", "1", "--threads", "2"]
    args += ["--token-lifetime", "1.5", "--refresh-margin", "0.5"]
    output = run(args, {}, capsys)
    assert output.startswith("exit 0"), output
    assert "OK: every call succeeded" in output
    assert_no_leak(leak_guard)
    # The demo's emulator lives inside main(); the guard learnt what it issued.
    issued = leak_guard.known(ACCESS_TOKEN, REFRESH_TOKEN, CODE)
    assert len(issued) >= 3  # the login's code and first pair at least
    assert_hidden(output, *issued)


def test_emulator_command_does_not_echo_a_client_secret_it_was_given() -> None:
    client_secret = secret("cs_")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pleo_auth.cli", "emulator", "--client-secret", client_secret],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C" in line:
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    output = "".join(lines) + out + err
    assert "Pleo OAuth emulator running at" in output
    assert client_secret not in output


def test_every_error_class_routes_through_the_guarded_root_init(leak_guard: LeakGuard) -> None:
    import pleo_auth.errors

    classes = [
        cls
        for module in (pleo_auth.errors, cli)
        for cls in vars(module).values()
        if isinstance(cls, type) and issubclass(cls, PleoAuthError) and cls is not PleoAuthError
    ]
    assert len(classes) >= 6
    token = secret("rt_")
    TokenSet(secret("at_"), token, expires_at=2e9)
    for cls in classes:
        cls(f"message with {token}")
    leaks: list[Leak] = leak_guard.check()
    assert {re.match(r"\w+", leak.where).group(0) for leak in leaks} == {  # type: ignore[union-attr]
        cls.__name__ for cls in classes
    }
