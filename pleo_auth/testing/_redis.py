"""A private, throw-away redis-server for tests of code that uses RedisStore."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def redis_server(binary: str = "redis-server", *, startup_timeout: float = 10.0) -> Iterator[str]:
    """Run a private ``redis-server`` on a free loopback port; yields its URL.

    No persistence, a temporary working directory, stopped when the block ends.

    Raises:
        FileNotFoundError: ``binary`` is not installed.
        RuntimeError: The server did not answer PING within ``startup_timeout``.
    """
    path = shutil.which(binary)
    if path is None:
        raise FileNotFoundError(f"{binary} is not installed")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="pleo-auth-redis-") as workdir:
        proc = subprocess.Popen(
            [path, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", workdir],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + startup_timeout
            while not _answers_ping(port):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.02)  # polling a starting server, not waiting out a race
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False
