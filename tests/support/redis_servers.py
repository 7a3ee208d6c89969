"""A private redis-server a test controls: killed and started again on its port, or
stopped with SIGSTOP (its connections then hang, unanswered). Without persistence,
so a restart comes back empty, as a cache server's does."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator

from pleo_auth.testing._redis import _serves, free_port
from support.binaries import require


class RedisServer:
    """A redis-server on a free port of its own, started at once."""

    def __init__(self, workdir: str):
        binary = shutil.which("redis-server")
        assert binary is not None
        self.binary, self.workdir = binary, workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.workdir],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        assert _serves(self.proc, self.port, time.monotonic() + 30), "port taken meanwhile"

    def stop(self) -> None:
        """SIGSTOP: the server keeps its connections and answers none."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def kill(self) -> None:
        """SIGKILL (a stopped server dies too; its sockets are reset)."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        self.proc = None


@contextlib.contextmanager
def private_redis(prefix: str) -> Iterator[RedisServer]:
    """A :class:`RedisServer` in a directory of its own, killed at the end."""
    require("redis-server")
    with tempfile.TemporaryDirectory(prefix=prefix) as workdir:
        server = RedisServer(workdir)
        try:
            yield server
        finally:
            if server.proc is not None:
                server.kill()
