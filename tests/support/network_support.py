"""Real network parts for the network-settings tests: a private CA made with the
``openssl`` command, a TLS-terminating forwarder that puts HTTPS in front of the
emulator, and a forwarding proxy (CONNECT tunnels and absolute-form requests) on
loopback that counts what goes through it.

Each server runs on threads of its own, on 127.0.0.1 and a free port, until
``close()``; every connection it accepted is closed with it.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

_HEAD_LIMIT = 64 * 1024


@dataclass(frozen=True)
class PrivateCA:
    """A CA and the certificates it signed, as PEM files.

    Attributes:
        ca: The CA's certificate: what a client passes as ``verify``.
        server_cert, server_key: For 127.0.0.1 and localhost.
        client_cert, client_key: A client certificate: what a client passes as ``cert``.
    """

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(
        ["openssl", *(str(arg) for arg in args)], cwd=cwd, check=True, capture_output=True
    )


def _signed(directory: Path, name: str, subject: str, extensions: str) -> tuple[Path, Path]:
    key, csr, cert, ext = (directory / f"{name}.{kind}" for kind in ("key", "csr", "pem", "ext"))
    ext.write_text(extensions)
    _openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key, "-out", csr, "-subj", subject, cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", csr, "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-sha256", "-out", cert, "-extfile", ext, cwd=directory,
    )  # fmt: skip
    return cert, key


def make_private_ca(directory: Path) -> PrivateCA:
    """A new CA in ``directory``, with a server certificate for 127.0.0.1 and localhost
    and a client certificate, all made by the ``openssl`` command."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-sha256",
        "-subj", "/CN=pleo-auth test private CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", "subjectKeyIdentifier=hash",
        cwd=directory,
    )  # fmt: skip
    leaf = (
        "basicConstraints=critical,CA:FALSE\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid:always\n"
    )
    server_cert, server_key = _signed(
        directory,
        "server",
        "/CN=localhost",
        leaf + "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    client_cert, client_key = _signed(
        directory,
        "client",
        "/CN=pleo-auth test client",
        leaf + "keyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n",
    )
    return PrivateCA(directory / "ca.pem", server_cert, server_key, client_cert, client_key)


def _end(sock: socket.socket) -> None:
    """Shut ``sock`` down, then close it: closing alone would not wake a thread
    blocked reading it (Linux), and that thread would wait for the peer."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


class _Server:
    """A listening socket on loopback whose connections each run ``handle`` on a thread."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._acceptor = threading.Thread(target=self._accept, name=type(self).__name__)
        self._acceptor.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            self._spawn(self.handle, conn)

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            if self._closed:
                for arg in args:
                    if isinstance(arg, socket.socket):
                        arg.close()
                return
            self._threads.append(thread)
        thread.start()

    def track(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            self._open.add(sock)
            if self._closed:
                sock.close()
        return sock

    def handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def pipe(self, one: socket.socket, other: socket.socket) -> None:
        """Copy bytes both ways until either side ends; then close both."""

        def copy(source: socket.socket, sink: socket.socket) -> None:
            try:
                while data := source.recv(65536):
                    sink.sendall(data)
            except OSError:
                pass
            finally:
                for sock in (source, sink):
                    _end(sock)

        self._spawn(copy, other, one)
        copy(one, other)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sockets = list(self._open)
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() (Linux)
        self._listener.close()
        for sock in sockets:
            _end(sock)
        self._acceptor.join(10)
        for thread in list(self._threads):
            thread.join(10)

    def __enter__(self) -> _Server:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class TlsForwarder(_Server):
    """HTTPS on loopback in front of a plain-HTTP server (the emulator).

    Args:
        target_port: The plain server's port on 127.0.0.1.
        ca: Certificates to serve, from :func:`make_private_ca`.
        require_client_cert: Refuse any client without a certificate ``ca`` signed.

    Attributes:
        handshakes: TLS handshakes completed.
        refused: Handshakes that failed (an untrusted server or client certificate).
    """

    def __init__(self, target_port: int, ca: PrivateCA, *, require_client_cert: bool = False):
        self._target_port = target_port
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(ca.server_cert, ca.server_key)
        if require_client_cert:
            self._context.verify_mode = ssl.CERT_REQUIRED
            self._context.load_verify_locations(ca.ca)
        self.handshakes = 0
        self.refused = 0
        super().__init__()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def handle(self, conn: socket.socket) -> None:
        self.track(conn)
        try:
            tls = self.track(self._context.wrap_socket(conn, server_side=True))
        except (ssl.SSLError, OSError):
            with self._lock:
                self.refused += 1
            conn.close()
            return
        with self._lock:
            self.handshakes += 1
        try:
            upstream = self.track(socket.create_connection(("127.0.0.1", self._target_port)))
        except OSError:
            tls.close()
            return
        self.pipe(tls, upstream)


def _closing(first_line: bytes, rest: bytes) -> bytes:
    """A message head (``rest`` is its headers, blank line and any body bytes read
    with it) whose Connection headers say close."""
    headers, _, body = rest.partition(b"\r\n\r\n")
    kept = [
        line
        for line in headers.split(b"\r\n")
        if line and not line.lower().startswith((b"connection:", b"proxy-connection:"))
    ]
    return b"\r\n".join([first_line, *kept, b"Connection: close", b"", b""]) + body


def _read_head(conn: socket.socket) -> bytes | None:
    head = b""
    while b"\r\n\r\n" not in head:
        data = conn.recv(4096)
        if not data or len(head) > _HEAD_LIMIT:
            return None
        head += data
    return head


class CountingProxy(_Server):
    """A forwarding proxy on loopback: CONNECT tunnels (for https://) and
    absolute-form requests (for http://), one request per connection.

    Attributes:
        requests: ``(method, target)`` of every request it forwarded, in order:
            ``("CONNECT", "127.0.0.1:PORT")`` or ``("POST", "http://127.0.0.1:PORT/path")``.
    """

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        super().__init__()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def handle(self, conn: socket.socket) -> None:
        self.track(conn)
        try:
            head = _read_head(conn)
        except OSError:
            head = None
        if head is None:
            conn.close()
            return
        first, _, rest = head.partition(b"\r\n")
        method, target, version = first.decode("latin-1").split(" ", 2)
        with self._lock:
            self.requests.append((method, target))
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            upstream = self.track(socket.create_connection((host, int(port))))
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            if rest.partition(b"\r\n\r\n")[2]:
                upstream.sendall(rest.partition(b"\r\n\r\n")[2])
            self.pipe(conn, upstream)
            return
        url = urllib.parse.urlsplit(target)
        path = url.path + (f"?{url.query}" if url.query else "")
        upstream = self.track(socket.create_connection((url.hostname, url.port or 80)))
        # One request per connection, and both ends told so: a client that reused
        # the connection would race its closing.
        upstream.sendall(_closing(f"{method} {path} {version}".encode("latin-1"), rest))
        self._spawn(self._copy_rest, conn, upstream)
        try:
            reply = _read_head(upstream)
            if reply is not None:
                status, _, reply_rest = reply.partition(b"\r\n")
                conn.sendall(_closing(status, reply_rest))
                while data := upstream.recv(65536):
                    conn.sendall(data)
        except OSError:
            pass
        finally:
            _end(conn)
            _end(upstream)

    @staticmethod
    def _copy_rest(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass

    def targets(self) -> list[str]:
        with self._lock:
            return [target for _, target in self.requests]
