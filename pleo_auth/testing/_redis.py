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
    with tempfile.TemporaryDirectory(prefix="pleo-auth-redis-") as workdir:
        # The port was free when picked, but another process (a test running beside
        # this one) may take it before our server binds it: then the server that
        # answers is not ours. Try another port rather than share a stranger's.
        for _attempt in range(5):
            port = free_port()
            proc = subprocess.Popen(
                [path, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", workdir],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            if _serves(proc, port, time.monotonic() + startup_timeout):
                break
            proc.terminate()
            proc.wait(timeout=10)
        else:
            raise RuntimeError("redis-server did not start on a port of its own")
        try:
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def _serves(proc: subprocess.Popen[bytes], port: int, deadline: float) -> bool:
    """Whether ``proc`` itself answers on ``port`` (not another server there)."""
    while True:
        pid = _server_pid(port)
        if pid is not None:
            return pid == proc.pid
        if proc.poll() is not None:
            return False
        if time.monotonic() > deadline:
            raise RuntimeError("redis-server did not start")
        time.sleep(0.02)  # polling a starting server, not waiting out a race


def _server_pid(port: int) -> int | None:
    """The process id of the redis-server answering on ``port``, if one answers."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(b"INFO server\r\n")
            reply = b""
            while b"process_id:" not in reply or not reply.endswith(b"\r\n"):
                chunk = conn.recv(4096)
                if not chunk:
                    break
                reply += chunk
    except OSError:
        return None
    for line in reply.decode(errors="replace").splitlines():
        if line.startswith("process_id:"):
            return int(line.partition(":")[2])
    return None
