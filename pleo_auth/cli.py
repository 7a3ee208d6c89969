"""The ``pleo-auth`` command: log in, check, refresh and log out, and a local demo.

Settings come from flags or the environment (flags win):

=====================  ======================  ======================================
flag                   environment             meaning
=====================  ======================  ======================================
``--client-id``        ``PLEO_CLIENT_ID``      your integration's OAuth client id
(avoid the flag)       ``PLEO_CLIENT_SECRET``  its secret; ``--client-secret`` shows
                                               it to every user of ``ps``
``--environment``      ``PLEO_ENVIRONMENT``    ``production`` (default) or ``staging``
``--store``            ``PLEO_STORE``          ``keyring`` (default), ``file:PATH``
                                               or ``redis://HOST:PORT/DB?key=NAME``
``--token-url``        ``PLEO_TOKEN_URL``      overrides the token endpoint (emulator)
``--api-url``          ``PLEO_API_URL``        overrides the API base URL
``--authorize-url``    ``PLEO_AUTHORIZE_URL``  overrides /oauth/authorize (default:
                                               beside ``--token-url`` when given)
``--scope`` (login)    ``PLEO_SCOPES``         space-separated scopes to ask for
=====================  ======================  ======================================

Exit status: 0 success; 1 a person must log in (``status``, ``refresh``) or the
demo saw errors; 2 bad usage or settings; 3 any other failure (the login was
refused or timed out, the token endpoint or the store failed).

Nothing this command prints contains a token, a code or the client secret.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import html
import logging
import os
import shlex
import socket
import sys
import tempfile
import threading
import time
import urllib.parse
import webbrowser
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import TYPE_CHECKING, Any, TextIO, cast

import attrs
import requests

from . import __version__
from ._store_spec import DEFAULT_SPEC, SPEC_HELP, store_from_spec
from ._text import one_line, shown
from ._urls import check_secure_url
from .errors import (
    AuthorizationError,
    ConfigurationError,
    PleoAuthError,
    ReauthenticationRequired,
)
from .flow import AuthorizationFlow, normalize_scopes
from .session import ENVIRONMENTS, Environment, PleoSession
from .stores.base import TokenStore
from .tokens import TokenSet

if TYPE_CHECKING:
    from .testing import Emulator
    from .testing._workload import WorkloadProgress, WorkloadReport

logger = logging.getLogger(__name__)

__all__ = ["main"]

EXIT_OK = 0
EXIT_LOGIN_NEEDED = 1
EXIT_USAGE = 2
EXIT_FAILURE = 3

_LOOPBACK_HOSTS = {"127.0.0.1": "127.0.0.1", "localhost": "127.0.0.1", "::1": "::1"}
_CALLBACK_PATH = "/callback"
# How long the browser's callback request waits for the code exchange to finish.
_VERDICT_TIMEOUT = 120.0
# The longest error message printed: longer ones are cut.
_MESSAGE_LIMIT = 2000


# -- settings -------------------------------------------------------------------


@attrs.frozen
class _Settings:
    client_id: str
    client_secret: str | None
    environment: Environment
    store_spec: str
    token_url: str | None
    api_url: str | None
    authorize_url: str | None
    scopes: str | None


def _settings(args: argparse.Namespace, env: Mapping[str, str]) -> _Settings:
    def pick(flag: str, variable: str) -> str | None:
        value = getattr(args, flag, None)
        if value is None:
            value = env.get(variable) or None
        # Blank is unset, as an empty variable is.
        return (value.strip() or None) if isinstance(value, str) else None

    environment = pick("environment", "PLEO_ENVIRONMENT") or "production"
    if environment not in ENVIRONMENTS:
        raise ConfigurationError(
            f"unknown environment {shown(environment)} (--environment or PLEO_ENVIRONMENT): "
            f"use one of {', '.join(sorted(ENVIRONMENTS))}"
        )
    scope_flags: list[str] | None = getattr(args, "scope", None)
    scopes = normalize_scopes(scope_flags or env.get("PLEO_SCOPES") or None)
    secret = getattr(args, "client_secret", None)
    if secret is not None:
        print(
            "pleo-auth: warning: --client-secret is visible to other users of this machine; "
            "prefer the PLEO_CLIENT_SECRET environment variable",
            file=sys.stderr,
        )
    else:
        secret = env.get("PLEO_CLIENT_SECRET") or None
    client_id = pick("client_id", "PLEO_CLIENT_ID") or ""
    # A byte the locale cannot decode reaches os.environ as a lone surrogate, which
    # no request can carry: refuse it here, not with a traceback at the first request.
    if not client_id.isprintable():
        raise ConfigurationError(
            "the client id (--client-id or PLEO_CLIENT_ID) must be printable text, without "
            "a control character or undecodable byte"
        )
    if secret is not None and not secret.isprintable():
        raise ConfigurationError(
            "the client secret (PLEO_CLIENT_SECRET or --client-secret) must be printable "
            "text, without a newline, control character or undecodable byte"
        )
    urls = {
        name: pick(name, variable)
        for name, variable in (
            ("token_url", "PLEO_TOKEN_URL"),
            ("api_url", "PLEO_API_URL"),
            ("authorize_url", "PLEO_AUTHORIZE_URL"),
        )
    }
    for name, url in urls.items():
        if url is not None:
            check_secure_url(name, url)
    return _Settings(
        client_id=client_id,
        client_secret=secret,
        environment=cast(Environment, environment),
        store_spec=pick("store", "PLEO_STORE") or DEFAULT_SPEC,
        token_url=urls["token_url"],
        api_url=urls["api_url"],
        authorize_url=urls["authorize_url"],
        scopes=scopes,
    )


def _require_client_id(settings: _Settings) -> str:
    if not settings.client_id:
        raise ConfigurationError("no client id: give --client-id or set PLEO_CLIENT_ID")
    return settings.client_id


def login_command(settings: _Settings) -> str:
    """The ``pleo-auth login`` command line that logs in with these settings."""
    parts = ["pleo-auth", "login"]
    if settings.client_id:
        parts += ["--client-id", settings.client_id]
    if settings.environment != "production":
        parts += ["--environment", settings.environment]
    if settings.store_spec != DEFAULT_SPEC:
        parts += ["--store", settings.store_spec]
    for flag, value in (
        ("--token-url", settings.token_url),
        ("--authorize-url", settings.authorize_url),
    ):
        if value:
            parts += [flag, value]
    return shlex.join(parts)


def _when(expires_at: float, now: float) -> str:
    moment = datetime.datetime.fromtimestamp(expires_at).astimezone()
    left = expires_at - now
    span = _span(abs(left))
    relative = f"in {span}" if left >= 0 else f"{span} ago"
    return f"{moment:%Y-%m-%d %H:%M:%S %Z} ({relative})"


def _span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


def _say(out: TextIO, text: str = "") -> None:
    print(text, file=out, flush=True)


# -- the loopback callback receiver -------------------------------------------------


class CallbackTimeout(AuthorizationError):
    """No callback arrived in time."""


class CallbackServer:
    """Receives the browser's redirect from Pleo on a loopback port.

    The browser's request is held open until :meth:`respond` gives the outcome
    of the code exchange, so the page the person sees tells the truth.

    Args:
        host: The loopback address to listen on.
        port: The port; 0 picks a free one.
        path: The callback path.

    Thread safety:
        :meth:`wait`, :meth:`respond` and :meth:`fail` may be called from any
        thread; the first callback wins and later ones are turned away.
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, path: str = _CALLBACK_PATH):
        self.path = path
        self._lock = threading.Lock()
        self._arrived = threading.Event()
        self._params: dict[str, str] | None = None
        self._failure: str | None = None
        self._verdict_ready = threading.Event()
        self._verdict: tuple[int, str] = (500, "")
        self._page_sent = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 15.0  # an idle (preconnected) socket does not hold a thread for long

            def do_GET(self) -> None:
                owner._serve(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the request line carries the authorization code: never log it

        family = socket.AF_INET6 if ":" in host else socket.AF_INET

        class Server(ThreadingHTTPServer):
            address_family = family

        try:
            self._httpd = Server((host, port), Handler)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot listen on {host} port {port} for the callback: {exc.strerror or exc}"
            ) from exc
        self.host = host
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="pleo-auth-callback", daemon=True
        )
        self._thread.start()

    @property
    def redirect_uri(self) -> str:
        """``http://127.0.0.1:PORT/callback`` (or ``[::1]``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{self.path}"

    def _serve(self, request: BaseHTTPRequestHandler) -> None:
        parts = urllib.parse.urlsplit(request.path)
        if parts.path != self.path:
            self._send(request, 404, "Not found", "This is pleo-auth's login callback.")
            return
        params = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
        with self._lock:
            first = self._params is None and self._failure is None
            if first:
                self._params = params
            late = self._failure is not None
        if not first:
            message = (
                "pleo-auth stopped waiting for this login. Run `pleo-auth login` again."
                if late
                else "This login was already handled. Look at your terminal."
            )
            self._send(request, 409, "Pleo login not accepted", message)
            return
        self._arrived.set()
        if not self._verdict_ready.wait(_VERDICT_TIMEOUT):
            self._verdict = (500, "The login did not finish. Look at your terminal.")
        status, message = self._verdict
        title = "Logged in to Pleo" if status == 200 else "Pleo login failed"
        try:
            self._send(request, status, title, message)
        finally:
            self._page_sent.set()

    @staticmethod
    def _send(request: BaseHTTPRequestHandler, status: int, title: str, message: str) -> None:
        body = (
            "<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title></head>"
            "<body style='font-family:sans-serif;margin:3em'>"
            f"<h1>{html.escape(title)}</h1><p>{html.escape(message)}</p></body></html>"
        ).encode()
        try:
            request.send_response(status)
            request.send_header("Content-Type", "text/html; charset=utf-8")
            request.send_header("Content-Length", str(len(body)))
            request.send_header("Cache-Control", "no-store")
            request.send_header("Referrer-Policy", "no-referrer")
            request.end_headers()
            request.wfile.write(body)
        except OSError:
            pass  # the browser went away; the terminal still tells the story

    def wait(self, timeout: float) -> dict[str, str]:
        """Block until the callback arrives and return its query parameters.

        Raises:
            CallbackTimeout: Nothing arrived within ``timeout`` seconds.
            AuthorizationError: :meth:`fail` was called.
        """
        if not self._arrived.wait(timeout):
            with self._lock:
                if self._params is None:
                    self._failure = "timed out"
            if self._params is None:
                raise CallbackTimeout(
                    f"no login arrived within {timeout:g} s; run `pleo-auth login` again"
                )
        if self._failure is not None and self._params is None:
            raise AuthorizationError(f"the login could not start: {self._failure}")
        assert self._params is not None
        return dict(self._params)

    def fail(self, reason: str) -> None:
        """Wake :meth:`wait` with an error, unless a callback already arrived."""
        with self._lock:
            if self._params is None and self._failure is None:
                self._failure = reason
        self._arrived.set()

    def respond(self, ok: bool, message: str) -> None:
        """Give the browser waiting on the callback its page."""
        if not self._verdict_ready.is_set():
            self._verdict = (200 if ok else 400, message)
            self._verdict_ready.set()

    def close(self) -> None:
        """Answer a waiting browser, stop listening and free the port."""
        self.respond(False, "The login did not finish. Look at your terminal.")
        if self._params is not None:
            self._page_sent.wait(10.0)
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(10.0)

    def __enter__(self) -> CallbackServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def login_through(
    flow: AuthorizationFlow,
    server: CallbackServer,
    present: Callable[[str], None],
    *,
    timeout: float,
) -> TokenSet:
    """Run one login: start the flow, show the URL, take the callback, exchange, save.

    ``present`` gets the authorize URL: it opens a browser, prints the URL, or
    (in the demo) plays the browser itself.
    """
    pending = flow.start()
    present(pending.url)
    params = server.wait(timeout)
    try:
        tokens = flow.finish(pending, params)
    except PleoAuthError as exc:
        server.respond(False, f"{exc} You can close this tab.")
        raise
    except BaseException:
        server.respond(False, "The login failed. Look at your terminal. You can close this tab.")
        raise
    server.respond(True, "pleo-auth stored your Pleo authorisation. You can close this tab.")
    return tokens


def _headless_browser(server: CallbackServer) -> Callable[[str], None]:
    """Plays the browser against an auto-approving authorize endpoint (the emulator):
    follows the authorize URL and delivers its redirect to the loopback callback."""

    def present(url: str) -> None:
        def run() -> None:
            try:
                with requests.Session() as http:
                    response = http.get(url, allow_redirects=False, timeout=10)
                    location = response.headers.get("Location")
                    if response.status_code not in (301, 302, 303, 307, 308) or not location:
                        server.fail(f"/oauth/authorize answered HTTP {response.status_code}")
                        return
                    http.get(location, timeout=_VERDICT_TIMEOUT + 10).close()
            except requests.RequestException as exc:
                server.fail(f"the headless browser failed: {type(exc).__name__}")

        threading.Thread(target=run, name="pleo-auth-headless-browser", daemon=True).start()

    return present


def _callback_address(redirect_uri: str | None, port: int | None) -> tuple[str, int, str]:
    """Where to listen for the callback: (host, port, path)."""
    if redirect_uri is None:
        return "127.0.0.1", port or 0, _CALLBACK_PATH
    try:
        parts = urllib.parse.urlsplit(redirect_uri)
        uri_port = parts.port
    except ValueError:
        raise ConfigurationError(f"--redirect-uri {redirect_uri!r} is not a valid URL") from None
    host = _LOOPBACK_HOSTS.get(parts.hostname or "")
    if parts.scheme != "http" or host is None:
        raise ConfigurationError(
            "--redirect-uri must be an http:// URL on this machine "
            "(127.0.0.1, localhost or [::1]), where pleo-auth can listen for the callback"
        )
    listen_port = port if port is not None else uri_port
    if not listen_port:
        raise ConfigurationError(
            "--redirect-uri needs a port, such as http://127.0.0.1:8765/callback"
        )
    if uri_port is not None and uri_port != listen_port:
        raise ConfigurationError("--port differs from the port in --redirect-uri")
    return host, listen_port, parts.path or "/"


# -- commands -----------------------------------------------------------------------


def _store(settings: _Settings) -> TokenStore:
    return store_from_spec(settings.store_spec, client_id=settings.client_id)


def _cmd_login(args: argparse.Namespace, settings: _Settings, out: TextIO) -> int:
    client_id = _require_client_id(settings)
    store = _store(settings)
    host, port, path = _callback_address(args.redirect_uri, args.port)
    with CallbackServer(host=host, port=port, path=path) as server:
        flow = AuthorizationFlow(
            client_id,
            settings.client_secret,
            redirect_uri=args.redirect_uri or server.redirect_uri,
            scopes=settings.scopes,
            store=store,
            environment=settings.environment,
            authorize_url=settings.authorize_url,
            token_url=settings.token_url,
            subject=args.subject,
            client_auth=args.client_auth,
        )

        def present(url: str) -> None:
            if args.no_browser:
                _say(out, "Open this URL in a browser to authorise pleo-auth with Pleo:")
                _say(out, f"  {url}")
            else:
                _say(out, "Opening your browser to authorise pleo-auth with Pleo.")
                _say(out, "If it does not open, visit this URL:")
                _say(out, f"  {url}")
                if not webbrowser.open(url):
                    _say(out, "(No browser could be opened: visit the URL yourself.)")
            _say(out, f"Waiting for the callback on {server.redirect_uri} ...")

        tokens = login_through(flow, server, present, timeout=args.timeout)
    _say(out, f"Logged in. Stored the tokens in {store.describe()}.")
    _describe_tokens(tokens, out)
    return EXIT_OK


def _describe_tokens(tokens: TokenSet, out: TextIO) -> None:
    _say(out, f"  scope: {tokens.scope or '(none reported)'}")
    _say(out, f"  access token expires: {_when(tokens.expires_at, time.time())}")


def _cmd_status(args: argparse.Namespace, settings: _Settings, out: TextIO) -> int:
    store = _store(settings)
    _say(out, f"Store: {store.describe()}")
    tokens = store.load()
    if tokens is None:
        _say(out, "Tokens: none. A person must log in:")
        _say(out, f"  {login_command(settings)}")
        return EXIT_LOGIN_NEEDED
    _say(out, f"Tokens: present (fingerprint {tokens.fingerprint})")
    _describe_tokens(tokens, out)
    if tokens.expires_in() <= 0:
        _say(out, "  (expired: the next use refreshes it with the stored refresh token)")
    return EXIT_OK


def _cmd_refresh(args: argparse.Namespace, settings: _Settings, out: TextIO) -> int:
    client_id = _require_client_id(settings)
    store = _store(settings)
    session = PleoSession(
        client_id,
        settings.client_secret,
        store=store,
        environment=settings.environment,
        token_url=settings.token_url,
        api_url=settings.api_url,
    )
    try:
        tokens = session.refresh()
    except ReauthenticationRequired as exc:
        print(f"pleo-auth: {exc.reason}", file=sys.stderr)
        print(f"A person must log in again: {login_command(settings)}", file=sys.stderr)
        return EXIT_LOGIN_NEEDED
    finally:
        session.close()
    _say(out, f"Refreshed. Stored the new tokens in {store.describe()}.")
    _describe_tokens(tokens, out)
    return EXIT_OK


def _cmd_logout(args: argparse.Namespace, settings: _Settings, out: TextIO) -> int:
    store = _store(settings)
    try:
        had_tokens = store.load() is not None
    except PleoAuthError:
        had_tokens = True  # unreadable: clear it all the same
    store.clear()
    if had_tokens:
        _say(out, f"Logged out: removed the tokens from {store.describe()}.")
    else:
        _say(out, f"No tokens in {store.describe()}; nothing to remove.")
    return EXIT_OK


#: The emulator's public, well-known demo secret: printing it reveals nothing.
_DEMO_SECRET = "demo-secret"


def _cmd_emulator(args: argparse.Namespace, out: TextIO) -> int:
    from .testing import Emulator

    emulator = Emulator(
        access_token_lifetime=args.token_lifetime,
        client_id=args.client_id,
        client_secret=args.client_secret,
        port=args.port,
    )
    # The public demo secret is shown; a secret someone chose is never echoed.
    demo = args.client_secret == _DEMO_SECRET
    shown_secret = _DEMO_SECRET if demo else "(the value given with --client-secret)"
    secret_env = _DEMO_SECRET if demo else '"$SECRET"'
    # Ctrl-C stops it, even one that lands before the wait began.
    with contextlib.suppress(KeyboardInterrupt):
        _serve_emulator(emulator, out, args, shown_secret, secret_env)
    _say(out, "Stopped.")
    return EXIT_OK


def _serve_emulator(
    emulator: Emulator, out: TextIO, args: argparse.Namespace, shown_secret: str, secret_env: str
) -> None:
    with emulator:
        _say(out, f"Pleo OAuth emulator running at {emulator.url}")
        _say(out, f"  authorize URL: {emulator.authorize_url}")
        _say(out, f"  token URL:     {emulator.token_url}")
        _say(out, f"  API URL:       {emulator.api_url}")
        _say(out, f"  client id:     {emulator.client_id}")
        _say(out, f"  client secret: {shown_secret}  (the emulator's own credentials)")
        _say(out, f"  access tokens live {args.token_lifetime:g} s")
        _say(out, "Log in to it from another terminal:")
        _say(
            out,
            f"  PLEO_CLIENT_ID={emulator.client_id} PLEO_CLIENT_SECRET={secret_env} "
            f"pleo-auth login --token-url {emulator.token_url} --api-url {emulator.api_url} "
            "--store file:/tmp/pleo-emulator-tokens.json",
        )
        _say(out, "Press Ctrl-C to stop.")
        threading.Event().wait()


class _ProgressLine:
    """Prints the demo's progress: one rewritten line on a terminal, plain lines otherwise."""

    def __init__(self, out: TextIO):
        self._out = out
        self._tty = out.isatty()
        self._last_plain = float("-inf")
        self._shown = False

    def __call__(self, progress: WorkloadProgress) -> None:
        text = (
            f"  {progress.elapsed:5.1f}/{progress.duration:g} s  "
            f"requests {progress.requests:>7}  errors {progress.errors}  "
            f"refreshes {progress.refresh_grants}"
        )
        if self._tty:
            self._out.write("\r" + text)
            self._out.flush()
            self._shown = True
        elif progress.elapsed - self._last_plain >= 2.0:
            self._last_plain = progress.elapsed
            _say(self._out, text)

    def done(self) -> None:
        if self._shown:
            self._out.write("\n")
            self._out.flush()


def _cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    from .stores.file import FileStore
    from .testing import Emulator
    from .testing._workload import WorkloadError, run_workload

    with (
        tempfile.TemporaryDirectory(prefix="pleo-auth-demo-") as workdir,
        Emulator(access_token_lifetime=args.token_lifetime) as emulator,
    ):
        path = os.path.join(workdir, "tokens.json")
        store = FileStore(path)
        _say(out, f"Started the Pleo emulator at {emulator.url}.")
        _say(out, "Logging in: /oauth/authorize, the loopback callback, the code exchange ...")
        with CallbackServer() as server:
            flow = AuthorizationFlow(
                emulator.client_id,
                emulator.client_secret,
                redirect_uri=server.redirect_uri,
                scopes="users:read",
                store=store,
                authorize_url=emulator.authorize_url,
                token_url=emulator.token_url,
            )
            tokens = login_through(flow, server, _headless_browser(server), timeout=30.0)
        _say(out, f"Logged in. Stored the tokens in {store.describe()} (scope {tokens.scope}).")
        _say(
            out,
            f"Now {args.processes} processes x {args.threads} threads call GET /v2/employees "
            f"for {args.duration:g} s; access tokens live {args.token_lifetime:g} s, so they "
            "rotate under the load ...",
        )
        progress = _ProgressLine(out)
        try:
            report = run_workload(
                emulator,
                f"file:{path}",
                processes=args.processes,
                threads=args.threads,
                duration=args.duration,
                refresh_margin=args.refresh_margin,
                on_progress=progress,
                seed=False,  # the workers use the tokens of the login above
            )
        except WorkloadError as exc:
            progress.done()
            print(f"pleo-auth: demo failed: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        progress.done()
    return _print_report(report, out)


def _print_report(report: WorkloadReport, out: TextIO) -> int:
    replayed = " (requests racing a rotation; replayed with the new tokens)"
    replayed = replayed if report.unauthorized else ""
    rows = [
        ("requests made", f"{report.requests} ({report.rps:.0f}/s)"),
        (
            "latency p50 / p99",
            f"{report.latency_p50 * 1000:.1f} / {report.latency_p99 * 1000:.1f} ms",
        ),
        (
            "refreshes at the server",
            f"{report.refresh_grants} (about {report.rotations_expected} expected)",
        ),
        ("rejected refreshes", str(report.rejected_refreshes)),
        ("reuse detections", str(report.reuse_detections)),
        ("401s at the server", f"{report.unauthorized}" + replayed),
        ("401s seen by callers", str(report.caller_401s)),
        ("errors seen by callers", str(report.caller_errors)),
    ]
    _say(out, "Report:")
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        _say(out, f"  {label:<{width}}  {value}")
    for kind, count in sorted(report.errors_by_kind.items()):
        sample = report.error_samples.get(kind, "")
        _say(out, f"    {count} x {kind}: {sample}")
    if (
        report.caller_errors == 0
        and report.rejected_refreshes == 0
        and report.reuse_detections == 0
    ):
        _say(out, "OK: every call succeeded, and no refresh token was ever spent twice.")
        return EXIT_OK
    _say(out, "FAILED: see the counts above.")
    return EXIT_LOGIN_NEEDED


# -- the parser ---------------------------------------------------------------------


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number: {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a port: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``pleo-auth`` argument parser."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("settings (flags win over the environment)")
    group.add_argument("--client-id", help="OAuth client id [PLEO_CLIENT_ID]")
    group.add_argument(
        "--client-secret",
        help="client secret; prefer the PLEO_CLIENT_SECRET environment variable",
    )
    group.add_argument(
        "--environment",
        choices=sorted(ENVIRONMENTS),
        help="Pleo environment [PLEO_ENVIRONMENT, default production]",
    )
    group.add_argument(
        "--store", help=f"where tokens live: {SPEC_HELP} [PLEO_STORE, default keyring]"
    )
    group.add_argument("--token-url", help="override the token endpoint [PLEO_TOKEN_URL]")
    group.add_argument("--api-url", help="override the API base URL [PLEO_API_URL]")
    group.add_argument(
        "--authorize-url",
        help="override /oauth/authorize [PLEO_AUTHORIZE_URL; default: beside --token-url]",
    )
    group.add_argument("-v", "--verbose", action="store_true", help="log what happens to stderr")

    parser = argparse.ArgumentParser(
        prog="pleo-auth",
        description="Log in to Pleo and keep the tokens fresh for every process that shares them.",
        epilog="Exit status: 0 ok; 1 a person must log in (or the demo saw errors); "
        "2 bad usage or settings; 3 any other failure.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    login = commands.add_parser(
        "login", parents=[common], help="log in through the browser and store the tokens"
    )
    login.add_argument(
        "--scope",
        action="append",
        help="scope(s) to ask for, space-separated or repeated [PLEO_SCOPES]",
    )
    login.add_argument("--port", type=_port, help="callback port on 127.0.0.1 (default: any free)")
    login.add_argument(
        "--redirect-uri",
        help="the redirect URI registered with Pleo (default http://127.0.0.1:PORT/callback)",
    )
    login.add_argument("--no-browser", action="store_true", help="print the URL; open no browser")
    login.add_argument(
        "--timeout", type=_positive, default=300.0, help="seconds to wait for the login (300)"
    )
    login.add_argument("--subject", help="Pleo's urn_pleo_params_oauth_subject")
    login.add_argument(
        "--client-auth", choices=("basic", "body"), default="basic", help="client authentication"
    )

    commands.add_parser(
        "status",
        parents=[common],
        help="show the stored tokens' expiry; exit 1 when a login is needed",
    )
    commands.add_parser(
        "refresh", parents=[common], help="refresh the tokens now, coordinated with other processes"
    )
    commands.add_parser("logout", parents=[common], help="delete the stored tokens")

    emulator = commands.add_parser(
        "emulator", help="run a local emulator of Pleo's OAuth server until Ctrl-C"
    )
    emulator.add_argument(
        "--port", type=_port, default=0, help="port on 127.0.0.1 (default: any free)"
    )
    emulator.add_argument(
        "--token-lifetime", type=_positive, default=3600.0, help="access token lifetime, seconds"
    )
    emulator.add_argument("--client-id", default="pleo-auth-demo", help="the client id it accepts")
    emulator.add_argument(
        "--client-secret", default=_DEMO_SECRET, help="the client secret it accepts"
    )
    emulator.add_argument("-v", "--verbose", action="store_true", help="log to stderr")

    demo = commands.add_parser(
        "demo",
        help="log in to a local emulator and hammer it from many processes and threads",
    )
    demo.add_argument("--duration", type=_positive, default=20.0, help="seconds (20)")
    demo.add_argument("--processes", type=_count, default=4, help="worker processes (4)")
    demo.add_argument("--threads", type=_count, default=8, help="threads per process (8)")
    demo.add_argument(
        "--token-lifetime", type=_positive, default=4.0, help="access token lifetime, seconds (4)"
    )
    demo.add_argument(
        "--refresh-margin", type=_positive, default=1.0, help="refresh this early, seconds (1)"
    )
    demo.add_argument("-v", "--verbose", action="store_true", help="log to stderr")
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    out: TextIO | None = None,
) -> int:
    """Run the ``pleo-auth`` command.

    Args:
        argv: The arguments, without the program name; defaults to ``sys.argv[1:]``.
        env: The environment to read settings from; defaults to ``os.environ``.
        out: Where to write; defaults to ``sys.stdout``.

    Returns:
        The exit status.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    env = os.environ if env is None else env
    out = sys.stdout if out is None else out
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "emulator":
            return _cmd_emulator(args, out)
        if args.command == "demo":
            return _cmd_demo(args, out)
        settings = _settings(args, env)
        command = {
            "login": _cmd_login,
            "status": _cmd_status,
            "refresh": _cmd_refresh,
            "logout": _cmd_logout,
        }[args.command]
        return command(args, settings, out)
    # Messages can quote outside text (a path, a URL, Pleo's error description):
    # one_line keeps each on one line, whatever that text holds.
    except ConfigurationError as exc:
        print(f"pleo-auth: error: {one_line(str(exc), _MESSAGE_LIMIT)}", file=sys.stderr)
        return EXIT_USAGE
    except ReauthenticationRequired as exc:
        print(f"pleo-auth: {one_line(str(exc), _MESSAGE_LIMIT)}", file=sys.stderr)
        return EXIT_LOGIN_NEEDED
    except PleoAuthError as exc:
        message = one_line(str(exc), _MESSAGE_LIMIT)
        print(f"pleo-auth: {args.command} failed: {message}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("pleo-auth: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
