"""Doubles the PleoSession tests share: a store that records its saves, a file store
whose next read fails for now, and a plain HTTP server on loopback that records every
request it gets."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pleo_auth import FileStore, MemoryStore, PleoSession, TokenSet, TokenStoreError


class RecordingStore(MemoryStore):
    """A MemoryStore that remembers every save and which thread made it."""

    def __init__(self, tokens: TokenSet | None = None):
        super().__init__(tokens)
        self.saves: list[TokenSet] = []
        self.saver_threads: list[str] = []
        self._saved = threading.Condition()

    def save(self, tokens: TokenSet, *, replaces: TokenSet | None = None) -> None:
        super().save(tokens, replaces=replaces)
        with self._saved:
            self.saves.append(tokens)
            self.saver_threads.append(threading.current_thread().name)
            self._saved.notify_all()

    def wait_for_saves(self, count: int, timeout: float = 10.0) -> bool:
        with self._saved:
            return self._saved.wait_for(lambda: len(self.saves) >= count, timeout)


class ReadFailsOnce(FileStore):
    """A FileStore whose next ``load`` fails as a network store's read can, while a
    write would still go through: a timeout (retryable), or, with ``retryable`` False,
    an error no retry is said to help (a Redis replica answering MASTERDOWN)."""

    fail_next_load = False
    retryable = True

    def load(self) -> TokenSet | None:
        if self.fail_next_load:
            self.fail_next_load = False
            raise TokenStoreError("the read timed out", retryable=self.retryable)
        return super().load()


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Responder = Callable[[Seen], tuple[int, dict[str, str], bytes]]


class CaptureServer:
    """A plain HTTP server on loopback that records every request it gets."""

    def __init__(self, respond: Responder | None = None):
        self.seen: list[Seen] = []
        self.respond: Responder = respond or (lambda seen: (200, {}, b'{"ok": true}'))
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def handle_any(self) -> None:
                body = self._body()
                seen = Seen(
                    self.command,
                    self.path,
                    {name.lower(): value for name, value in self.headers.items()},
                    body,
                )
                outer.seen.append(seen)
                status, headers, payload = outer.respond(seen)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = handle_any

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    body = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return body
                        body += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> CaptureServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def status_sequence(*statuses: int) -> Responder:
    """Answer with these statuses in turn, then repeat the last."""
    remaining = list(statuses)

    def respond(seen: Seen) -> tuple[int, dict[str, str], bytes]:
        status = remaining.pop(0) if len(remaining) > 1 else remaining[0]
        return status, {}, json.dumps({"status": status}).encode()

    return respond


def fast_backoff(session: PleoSession, backoff_max: float = 0.01) -> None:
    session._coordinator.endpoint.backoff_factor = 0.001
    session._coordinator.endpoint.backoff_max = backoff_max
