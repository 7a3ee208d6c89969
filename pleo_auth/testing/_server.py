"""HTTP plumbing for the emulator: a keep-alive loopback server.

This module knows nothing about OAuth. It turns each HTTP request into a
:class:`_Request`, hands it to an application callable, and writes the
:class:`_Response` it gets back. The rules live in ``_emulator.py``.
"""

from __future__ import annotations

import contextlib
import logging
import select
import selectors
import socket
import socketserver
import struct
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)

# Big enough for any form or JSON body a test sends; a guard against a client
# that streams garbage at us, not a real limit.
_MAX_BODY = 1 << 20


@dataclass(frozen=True)
class _Request:
    """One parsed HTTP request.

    ``headers`` has lower-cased names; when a header repeats, the last wins.
    """

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class _Response:
    """What the application wants written back.

    ``drop=True`` closes the connection without writing anything. ``reset=True``
    writes the first ``reset_after`` bytes of the response (status line and
    headers included; by default the status line and half of the rest, and
    never all of it), then closes the connection with a TCP RST.
    """

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    drop: bool = False
    reset: bool = False
    reset_after: int | None = None


_App = Callable[[_Request], _Response]


class _Handler(BaseHTTPRequestHandler):
    """Reads one request at a time from a keep-alive connection."""

    protocol_version = "HTTP/1.1"
    server_version = "pleo-auth-emulator"
    sys_version = ""
    # Buffer the whole response and send it in one write (handle_one_request
    # flushes after each request), and disable Nagle, so that a small response
    # written as headers + body never waits for a delayed ACK.
    wbufsize = -1
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def log_message(self, format: str, *args: Any) -> None:
        # The default writes every request line to stderr, and request lines
        # can carry secrets (a code in a query string). Stay silent.
        return

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if logger.isEnabledFor(logging.DEBUG):
            # The path without its query string: never a token, code or secret.
            logger.debug("%s %s -> %s", self.command, urlsplit(self.path).path, code)

    def _dispatch(self) -> None:
        body = self._read_body()
        if body is None:
            return
        parts = urlsplit(self.path)
        request = _Request(
            method=self.command,
            path=parts.path,
            query=parts.query,
            headers={name.lower(): value for name, value in self.headers.items()},
            body=body,
        )
        server = cast("_Server", self.server)
        try:
            response = server.app(request)
        except Exception:
            logger.exception("emulator failed on %s %s", request.method, request.path)
            response = _Response(500, b'{"error":"server_error"}')
        self._write(response)

    def _read_body(self) -> bytes | None:
        """Read the body so the next request on this connection parses cleanly.

        Returns:
            The body, or None when an error reply has already been sent.
        """
        if self.headers.get("Transfer-Encoding"):
            self._refuse(411, "send a Content-Length, not chunked encoding")
            return None
        raw_length = self.headers.get("Content-Length")
        if raw_length is None:
            return b""
        try:
            length = int(raw_length)
        except ValueError:
            length = -1
        if length < 0:
            self._refuse(400, "bad Content-Length")
            return None
        if length > _MAX_BODY:
            self._refuse(413, "body too large")
            return None
        return self.rfile.read(length) if length else b""

    def _refuse(self, status: int, description: str) -> None:
        # The unread body makes the connection unusable: answer and close it.
        self.close_connection = True
        body = b'{"error":"invalid_request","error_description":"' + description.encode() + b'"}'
        self._write(_Response(status, body, headers=(("Connection", "close"),)))

    def _write(self, response: _Response) -> None:
        if response.drop:
            self.close_connection = True
            return
        if response.reset:
            self._write_and_reset(response)
            return
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        if response.body or response.status not in (204, 302):
            self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        self.wfile.write(response.body)

    def _write_and_reset(self, response: _Response) -> None:
        """Send part of ``response``, then abort the connection with an RST."""
        self.close_connection = True
        reason = self.responses.get(response.status, ("",))[0]
        lines = [
            f"{self.protocol_version} {response.status} {reason}",
            f"Server: {self.version_string()}",
            f"Date: {self.date_time_string()}",
            *(f"{name}: {value}" for name, value in response.headers),
            f"Content-Type: {response.content_type}",
            f"Content-Length: {len(response.body)}",
        ]
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + response.body
        cut = response.reset_after
        if cut is None:
            status_line = len(lines[0]) + 2
            cut = status_line + (len(raw) - status_line) // 2
        cut = min(cut, len(raw) - 1)  # never all of it: the client must see it cut
        connection: socket.socket = self.connection
        with contextlib.suppress(OSError):
            self.wfile.flush()
            if cut > 0:
                connection.sendall(raw[:cut])
            # Linger on, with a timeout of zero: close() sends an RST, not a FIN.
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # The descriptor closes (and the RST goes out) once the handler's reader
        # and writer let go of it, right after this request.
        connection.close()
        logger.debug("reset the connection after %d of %d bytes", cut, len(raw))


class _Server(ThreadingHTTPServer):
    """A threading HTTP server that can be stopped at once.

    ``serve_forever`` only notices ``shutdown()`` between polls, which would
    make every ``stop()`` take up to half a second; :meth:`serve` wakes up
    through a socket pair instead. Open keep-alive connections are tracked so
    that :meth:`close` can end them too, instead of leaving their threads
    serving a stopped emulator.
    """

    daemon_threads = True
    allow_reuse_address = True
    # The default backlog of 5 drops SYNs when 32 threads connect at once,
    # and a dropped SYN costs the client a one-second retransmit.
    request_queue_size = 128

    def __init__(self, host: str, port: int, app: _App) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.app = app
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = False
        try:
            super().__init__((host, port), _Handler)
        except BaseException:
            self._wake_r.close()
            self._wake_w.close()
            raise

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup
        # that can take seconds on a badly configured host. We need none of it.
        socketserver.TCPServer.server_bind(self)
        address = self.socket.getsockname()
        self.server_name = str(address[0])
        self.server_port = int(address[1])

    @property
    def port(self) -> int:
        """The bound port."""
        return self.server_port

    def serve(self) -> None:
        """Accept connections until :meth:`close` is called."""
        with selectors.DefaultSelector() as selector:
            selector.register(self.socket, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping:
                for key, _ in selector.select():
                    if key.fileobj is self._wake_r or self._stopping:
                        return
                    self._accept()

    def _accept(self) -> None:
        try:
            request, client_address = self.get_request()
        except OSError:
            return
        try:
            self.process_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
            self.shutdown_request(request)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(cast("socket.socket", request))
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(cast("socket.socket", request))
        super().shutdown_request(request)

    def busy(self) -> bool:
        """Whether a connection is open, or one is waiting to be accepted."""
        with self._connections_lock:
            if self._connections:
                return True
        return bool(select.select([self.socket], [], [], 0)[0])

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-request is normal under stress tests.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)

    def wake(self) -> None:
        """Make :meth:`serve` return (safe to call from any thread)."""
        self._stopping = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def close(self) -> None:
        """Close the listening socket and every open connection.

        Call after :meth:`serve` has returned.
        """
        self.server_close()
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        self._wake_r.close()
        self._wake_w.close()


class _Running:
    """A started server and the daemon thread that runs it."""

    def __init__(self, host: str, port: int, app: _App) -> None:
        self.server = _Server(host, port, app)
        self.thread = threading.Thread(
            target=self.server.serve, name=f"pleo-auth-emulator:{self.server.port}", daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        """Stop accepting, wait for the thread, and close every socket."""
        self.server.wake()
        self.thread.join()
        self.server.close()
