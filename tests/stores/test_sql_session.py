"""A PleoSession over SQLStore when the database goes away in the middle of a refresh:
the refresh Pleo answered is kept in memory, and saved once the database is back.
Real parts: the emulator, PostgreSQL or MariaDB, and a TCP relay in front of the
server that the test cuts and restores."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import sqlalchemy
from support.databases import unique_name
from support.integration_helpers import grant, wait_until
from support.session_helpers import MakeSession

from pleo_auth import Company, TokenStoreError
from pleo_auth.stores import SQLStore
from pleo_auth.testing import Emulator

A = Company("0b6e1a7c-55d2-4c1e-9a51-3f1d2c4b5a60")


class Relay:
    """A TCP relay on 127.0.0.1 to a database server. :meth:`cut` closes every
    connection and refuses new ones (the server is "down"); :meth:`restore` accepts
    again on the same port."""

    def __init__(self, host: str, port: int):
        self._target = (host, port)
        self._guard = threading.Lock()
        self._open: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self._target)
            except OSError:
                client.close()
                continue
            with self._guard:
                self._open += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        if self._listener is not None:
            # shutdown() first: close() alone leaves a thread blocked in accept()
            # accepting on the listening socket.
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._guard:
            ends, self._open = self._open, []
        for end in ends:
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()

    def close(self) -> None:
        self.cut()


@pytest.fixture(params=["postgres_url", "mariadb_url"])
def relayed(request: pytest.FixtureRequest) -> Iterator[tuple[str, Relay]]:
    """A URL of the test session's database through a relay the test can cut."""
    url = sqlalchemy.make_url(request.getfixturevalue(request.param))
    relay = Relay(url.host or "127.0.0.1", url.port or 0)
    try:
        yield url.set(port=relay.port).render_as_string(hide_password=False), relay
    finally:
        relay.close()


@pytest.mark.slow
def test_a_refresh_whose_save_meets_a_dead_database_is_kept_and_saved_when_it_returns(
    relayed: tuple[str, Relay], emulator: Emulator, make_session: MakeSession
) -> None:
    url, relay = relayed
    family = SQLStore(url, client_id=emulator.client_id, table=unique_name("grants"), lease=0.5)
    try:
        family.create_table()
        store = family.for_company(A)
        store.save(grant(emulator, A, now=time.time(), age=7200))  # expired: due now

        def database_goes_down(grant_type: str | None) -> None:
            if grant_type == "refresh_token":
                relay.cut()  # Pleo answers; the save that follows finds no database

        emulator.set_token_request_hook(database_goes_down)
        session = make_session(emulator, store)
        assert session.get("/v2/employees").status_code == 200  # the new pair, from memory
        emulator.set_token_request_hook(None)
        with pytest.raises(TokenStoreError) as down:
            store.load()
        assert down.value.retryable
        relay.restore()

        def saved() -> bool:
            with contextlib.suppress(TokenStoreError):
                stored = store.load()
                return stored is not None and emulator.is_current(
                    stored.access_token, stored.refresh_token
                )
            return False

        assert wait_until(saved, timeout=30.0), "the new pair was never written back"
        assert session.get("/v2/employees").status_code == 200
        counters = emulator.counters
        assert counters.refresh_grants == 1
        assert counters.rejected_refreshes == 0
        assert counters.reuse_detections == 0
    finally:
        family.close()
