"""The loopback HTTP server that receives Pleo's redirect, and one login through it."""

from __future__ import annotations

import html
import socket
import threading
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from ..company import Company
from ..errors import AuthorizationError, ConfigurationError, PleoAuthError
from ..flow import AuthorizationFlow, Login

__all__ = ["CallbackServer", "CallbackTimeout", "callback_address", "login_through", "page"]

_LOOPBACK_HOSTS = {"127.0.0.1": "127.0.0.1", "localhost": "127.0.0.1", "::1": "::1"}
CALLBACK_PATH = "/callback"
#: How long the browser's callback request waits for the code exchange to finish.
VERDICT_TIMEOUT = 120.0


def page(title: str, message: str) -> bytes:
    """The small HTML page the browser shows."""
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head>"
        "<body style='font-family:sans-serif;margin:3em'>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(message)}</p></body></html>"
    ).encode()


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

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, path: str = CALLBACK_PATH):
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
        if not self._verdict_ready.wait(VERDICT_TIMEOUT):
            self._verdict = (500, "The login did not finish. Look at your terminal.")
        status, message = self._verdict
        title = "Logged in to Pleo" if status == 200 else "Pleo login failed"
        try:
            self._send(request, status, title, message)
        finally:
            self._page_sent.set()

    @staticmethod
    def _send(request: BaseHTTPRequestHandler, status: int, title: str, message: str) -> None:
        body = page(title, message)
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
    company: Company | None = None,
) -> Login:
    """Run one login: start the flow, show the URL, take the callback, exchange, save.

    ``present`` gets the authorize URL: it opens a browser, prints the URL, or
    (in the demo) plays the browser itself. ``company``, if given, is the company
    the login must be for.
    """
    pending = flow.start(company=company)
    present(pending.url)
    params = server.wait(timeout)
    try:
        login = flow.finish_login(pending, params)
    except PleoAuthError as exc:
        server.respond(False, f"{exc} You can close this tab.")
        raise
    except BaseException:
        server.respond(False, "The login failed. Look at your terminal. You can close this tab.")
        raise
    server.respond(True, "pleo-auth stored your Pleo authorisation. You can close this tab.")
    return login


def callback_address(redirect_uri: str | None, port: int | None) -> tuple[str, int, str]:
    """Where to listen for the callback: (host, port, path)."""
    if redirect_uri is None:
        return "127.0.0.1", port or 0, CALLBACK_PATH
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
