"""PleoSession end to end, over real HTTP against the emulator (and small local servers)."""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qs

import pytest
import requests
from support.session_helpers import MakeSession, TimerlessClock, bearer, issued, timer_threads

from pleo_auth import (
    ConfigurationError,
    FileStore,
    MemoryStore,
    PleoAuthError,
    PleoSession,
    ReauthenticationRequired,
    RefreshError,
    TokenSet,
)
from pleo_auth._clock import FakeClock
from pleo_auth.testing import Emulator, Fault

# -- helpers ---------------------------------------------------------------------


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


@pytest.fixture
def fake_emulator(clock: FakeClock) -> Iterator[Emulator]:
    """An emulator on the test's FakeClock, issuing 100-second access tokens."""
    with Emulator(access_token_lifetime=100, clock=clock) as emu:
        yield emu


# -- construction -----------------------------------------------------------------------


def test_pleo_session_is_a_requests_session(emulator: Emulator, make_session: MakeSession) -> None:
    assert isinstance(make_session(emulator), requests.Session)


@pytest.mark.parametrize(
    ("environment", "token_url", "api_url"),
    [
        ("production", "https://auth.pleo.io/oauth/token", "https://external.pleo.io"),
        ("staging", "https://auth.staging.pleo.io/oauth/token", "https://external.staging.pleo.io"),
    ],
)
def test_environment_picks_the_token_and_api_urls(
    environment: Any, token_url: str, api_url: str
) -> None:
    with PleoSession("client", "secret", store=MemoryStore(), environment=environment) as session:
        assert session.token_url == token_url
        assert session.api_url == api_url
        assert session._coordinator.endpoint.token_url == token_url


def test_default_environment_is_production() -> None:
    with PleoSession("client", "secret", store=MemoryStore()) as session:
        assert session.environment == "production"
        assert session.token_url == "https://auth.pleo.io/oauth/token"
        assert session.api_url == "https://external.pleo.io"


def test_token_url_and_api_url_override_the_environment() -> None:
    with PleoSession(
        "client",
        "secret",
        store=MemoryStore(),
        environment="staging",
        token_url="http://127.0.0.1:9/oauth/token",
        api_url="http://127.0.0.1:9/api/",
    ) as session:
        assert session.token_url == "http://127.0.0.1:9/oauth/token"
        assert session.api_url == "http://127.0.0.1:9/api"


BAD_ARGUMENTS: list[dict[str, Any]] = [
    {"client_id": ""},
    {"client_id": 42},
    {"environment": "sandbox"},
    {"refresh_margin": -1.0},
    {"refresh_margin": math.nan},
    {"tokens": {"access_token": "at", "refresh_token": "rt", "expires_in": 60}},
    {"api_url": "ftp://external.pleo.io"},
    {"api_url": "external.pleo.io"},
    {"token_url": "auth.pleo.io/oauth/token"},
    {"client_auth": "digest"},
    {"max_refresh_attempts": 0},
    {"max_refresh_time": 0.0},
    {"refresh_timeout": 0.0},
    {"drain_timeout": -1.0},
    {"drain_timeout": math.nan},
]


@pytest.mark.parametrize("bad", BAD_ARGUMENTS, ids=lambda bad: "-".join(map(str, bad.items())))
def test_bad_arguments_raise_configuration_error(bad: dict[str, Any]) -> None:
    kwargs: dict[str, Any] = {"client_id": "client", "client_secret": "secret"}
    kwargs.update(bad)
    client_id = kwargs.pop("client_id")
    with pytest.raises(ConfigurationError):
        PleoSession(client_id, store=MemoryStore(), **kwargs).close()


def test_configuration_error_can_be_caught_as_value_error() -> None:
    with pytest.raises(ValueError, match="environment"):
        PleoSession("client", store=MemoryStore(), environment="sandbox")  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [{"client_auth": "digest"}, {"max_refresh_attempts": 0}])
def test_bad_arguments_are_refused_even_when_another_session_shares_the_coordinator(
    emulator: Emulator, make_session: MakeSession, bad: dict[str, Any]
) -> None:
    store = MemoryStore()
    make_session(emulator, store)
    with pytest.raises(ConfigurationError):
        make_session(emulator, store, **bad)


def test_url_with_another_scheme_raises_configuration_error(
    emulator: Emulator, make_session: MakeSession
) -> None:
    session = make_session(emulator, tokens=issued(emulator))
    with pytest.raises(ConfigurationError):
        session.get("mailto:someone@example.com")


# -- URLs and the bearer token ----------------------------------------------------------


@pytest.mark.parametrize("path", ["/v2/employees", "v2/employees"])
def test_relative_urls_resolve_against_api_url(
    emulator: Emulator, make_session: MakeSession, path: str
) -> None:
    session = make_session(emulator, tokens=issued(emulator))
    response = session.get(path)
    assert response.status_code == 200
    assert response.url == emulator.api_url + "/v2/employees"
    assert [e["firstName"] for e in response.json()["data"]] == ["Ada", "Grace", "Alan"]


def test_bearer_token_is_attached_to_requests_under_api_url(
    emulator: Emulator, make_session: MakeSession
) -> None:
    tokens = issued(emulator)
    session = make_session(emulator, tokens=tokens)
    absolute = session.get(emulator.api_url + "/v2/employees")
    relative = session.get("/v2/employees")
    assert bearer(absolute) == f"Bearer {tokens.access_token}"
    assert bearer(relative) == f"Bearer {tokens.access_token}"


def test_bearer_token_is_never_sent_to_another_host(
    emulator: Emulator, make_session: MakeSession
) -> None:
    session = make_session(emulator, tokens=issued(emulator))
    with CaptureServer(status_sequence(401)) as other:
        response = session.get(other.url + "/v2/employees")
    assert response.status_code == 401
    assert len(other.seen) == 1
    assert "authorization" not in other.seen[0].headers
    assert emulator.counters.token_requests == 0  # a foreign 401 starts no refresh


def test_bearer_token_is_not_sent_outside_the_api_url_path(
    emulator: Emulator, make_session: MakeSession
) -> None:
    tokens = issued(emulator)
    with CaptureServer() as api:
        session = make_session(emulator, api_url=api.url + "/api", tokens=tokens)
        session.get(api.url + "/api-other/x")
        session.get(api.url + "/x")
        session.get("/x")
    assert [seen.path for seen in api.seen] == ["/api-other/x", "/x", "/api/x"]
    assert "authorization" not in api.seen[0].headers
    assert "authorization" not in api.seen[1].headers
    assert api.seen[2].headers["authorization"] == f"Bearer {tokens.access_token}"


def test_bearer_token_is_dropped_when_a_redirect_leads_to_another_host(
    emulator: Emulator, make_session: MakeSession
) -> None:
    tokens = issued(emulator)
    with CaptureServer() as elsewhere:

        def redirect(seen: Seen) -> tuple[int, dict[str, str], bytes]:
            return 302, {"Location": elsewhere.url + "/landing"}, b""

        with CaptureServer(redirect) as api:
            session = make_session(emulator, api_url=api.url, tokens=tokens)
            response = session.get("/v2/redirect")
    assert response.status_code == 200
    assert api.seen[0].headers["authorization"] == f"Bearer {tokens.access_token}"
    assert [seen.path for seen in elsewhere.seen] == ["/landing"]
    assert "authorization" not in elsewhere.seen[0].headers


def test_explicit_auth_argument_is_sent_instead_of_the_bearer_token(
    emulator: Emulator, make_session: MakeSession
) -> None:
    with CaptureServer() as api:
        session = make_session(emulator, api_url=api.url, tokens=issued(emulator))
        session.get("/v2/employees", auth=("user", "pass"))
    expected = "Basic " + base64.b64encode(b"user:pass").decode()
    assert api.seen[0].headers["authorization"] == expected


# -- tokens and the store ------------------------------------------------------------------


def test_tokens_argument_seeds_the_store(emulator: Emulator, make_session: MakeSession) -> None:
    store = MemoryStore()
    tokens = issued(emulator)
    make_session(emulator, store, tokens=tokens)
    assert store.load() == tokens


def test_tokens_argument_does_not_replace_newer_tokens_in_the_store(
    emulator: Emulator, make_session: MakeSession
) -> None:
    older = issued(emulator)
    newer = TokenSet.from_response(emulator.issue_tokens(), now=older.issued_at + 10)
    store = MemoryStore(newer)
    make_session(emulator, store, tokens=older)
    assert store.load() == newer


def test_tokens_argument_never_replaces_an_unrelated_pair_in_the_store(
    emulator: Emulator, make_session: MakeSession, caplog: pytest.LogCaptureFixture
) -> None:
    # An unrelated stored pair may be a later login, or a rotated descendant of the
    # tokens written by 0.1, which kept no lineage: "newer" cannot be decided by the
    # clock (a reply rebuilt with from_response is stamped now), so the store wins.
    newer = issued(emulator)
    older = TokenSet.from_response(emulator.issue_tokens(), now=newer.issued_at - 10)
    store = MemoryStore(older)
    make_session(emulator, store, tokens=newer)
    assert store.load() == older
    assert any("already holds other tokens" in r.getMessage() for r in caplog.records)


def test_tokens_argument_replaces_its_own_ancestor_in_the_store(
    emulator: Emulator, make_session: MakeSession
) -> None:
    first = issued(emulator)
    store = MemoryStore(first)
    descendant = issued(emulator).succeeding(first)
    make_session(emulator, store, tokens=descendant)
    assert store.load() == descendant


def test_tokens_property_returns_the_current_tokens(
    emulator: Emulator, make_session: MakeSession
) -> None:
    tokens = issued(emulator)
    session = make_session(emulator, tokens=tokens)
    assert session.tokens == tokens


def test_tokens_property_is_none_when_the_store_is_empty(
    emulator: Emulator, make_session: MakeSession
) -> None:
    assert make_session(emulator).tokens is None


def test_request_with_an_empty_store_raises_reauthentication_required_saying_how_to_log_in(
    emulator: Emulator, make_session: MakeSession
) -> None:
    session = make_session(emulator)
    with pytest.raises(ReauthenticationRequired, match="pleo-auth login"):
        session.get("/v2/employees")
    assert emulator.counters.token_requests == 0
    assert emulator.counters.api_requests == 0


# -- refresh() ----------------------------------------------------------------------------


def test_refresh_forces_exactly_one_refresh_and_returns_the_new_tokens(
    emulator: Emulator, make_session: MakeSession
) -> None:
    old = issued(emulator)
    store = MemoryStore()
    session = make_session(emulator, store, tokens=old)
    new = session.refresh()
    assert emulator.counters.refresh_grants == 1
    assert new.access_token != old.access_token
    assert new.refresh_token != old.refresh_token
    assert store.load() == new
    assert session.tokens == new


def test_refresh_persists_both_new_tokens_and_drops_the_old_ones(
    emulator: Emulator, make_session: MakeSession, tmp_path: Path
) -> None:
    old = issued(emulator)
    path = tmp_path / "tokens.json"
    session = make_session(emulator, FileStore(path), tokens=old)
    new = session.refresh()
    text = path.read_text()
    assert new.access_token in text
    assert new.refresh_token in text
    assert old.access_token not in text
    assert old.refresh_token not in text
    assert FileStore(path).load() == new


def test_requests_after_a_refresh_carry_the_new_access_token(
    emulator: Emulator, make_session: MakeSession
) -> None:
    session = make_session(emulator, tokens=issued(emulator))
    new = session.refresh()
    response = session.get("/v2/employees")
    assert response.status_code == 200
    assert bearer(response) == f"Bearer {new.access_token}"


# -- close ----------------------------------------------------------------------------------


def test_close_stops_the_refresh_timer(emulator: Emulator, make_session: MakeSession) -> None:
    before = timer_threads()
    session = make_session(emulator, tokens=issued(emulator))
    started = timer_threads() - before
    assert len(started) == 1
    session.close()
    (timer,) = started
    timer.join(10)
    assert not timer.is_alive()


def test_context_manager_closes_the_session_and_stops_the_timer(emulator: Emulator) -> None:
    before = timer_threads()
    with PleoSession(
        emulator.client_id,
        emulator.client_secret,
        store=MemoryStore(),
        token_url=emulator.token_url,
        api_url=emulator.api_url,
        tokens=issued(emulator),
    ) as session:
        assert session.get("/v2/employees").status_code == 200
        started = timer_threads() - before
    assert len(started) == 1
    (timer,) = started
    timer.join(10)
    assert not timer.is_alive()


# -- proactive refresh ------------------------------------------------------------------------


def test_timer_refreshes_before_expiry_when_no_request_was_ever_made(
    clock: FakeClock, fake_emulator: Emulator, make_session: MakeSession
) -> None:
    store = RecordingStore()
    tokens = issued(fake_emulator, clock)
    make_session(fake_emulator, store, tokens=tokens, refresh_margin=10, clock=clock)
    clock.advance(90)  # the refresh is due: refresh_margin before expiry
    assert store.wait_for_saves(2, timeout=5), "no proactive refresh of an idle session"
    assert fake_emulator.counters.refresh_grants == 1
    assert fake_emulator.counters.api_requests == 0


def test_timer_refreshes_refresh_margin_before_expiry_while_idle(
    clock: FakeClock, fake_emulator: Emulator, make_session: MakeSession
) -> None:
    store = RecordingStore()
    tokens = issued(fake_emulator, clock)
    start = clock.time()
    session = make_session(fake_emulator, store, tokens=tokens, refresh_margin=10, clock=clock)
    assert session.get("/v2/employees").status_code == 200
    # The timer may run up to refresh_margin/4 (2.5 s) early, never earlier.
    clock.advance(100 - 10 - 2.5 - 0.5)
    clock.advance(3.0)
    assert store.wait_for_saves(2), "the timer did not refresh"
    refreshed = store.saves[1]
    assert refreshed.issued_at == start + 90  # not at the first step, which was too early
    assert refreshed.issued_at < tokens.expires_at
    assert store.saver_threads[1] == "pleo-auth-refresh"
    assert fake_emulator.counters.refresh_grants == 1
    assert fake_emulator.counters.api_requests == 1


def test_timer_refreshes_again_before_each_new_token_expires(
    clock: FakeClock, fake_emulator: Emulator, make_session: MakeSession
) -> None:
    store = RecordingStore()
    session = make_session(
        fake_emulator, store, tokens=issued(fake_emulator, clock), refresh_margin=10, clock=clock
    )
    session.get("/v2/employees")
    for rotation in range(1, 4):
        current = store.saves[-1]
        clock.advance(current.expires_at - 10 - clock.time())
        assert store.wait_for_saves(rotation + 1), f"rotation {rotation} did not happen"
    counters = fake_emulator.counters
    assert counters.refresh_grants == 3
    assert counters.rejected_refreshes == 0
    assert counters.reuse_detections == 0
    assert store.saver_threads[1:] == ["pleo-auth-refresh"] * 3


def test_request_inside_the_margin_refreshes_before_it_is_sent(
    timerless: TimerlessClock, timerless_emulator: Emulator, make_session: MakeSession
) -> None:
    store = RecordingStore()
    old = issued(timerless_emulator, timerless)
    session = make_session(
        timerless_emulator, store, tokens=old, refresh_margin=10, clock=timerless
    )
    assert timerless.wait_for_sleepers(1), "the timer never went to sleep"
    timerless.advance(95)  # inside the margin, not yet expired
    response = session.get("/v2/employees")
    assert response.status_code == 200
    assert timerless_emulator.counters.refresh_grants == 1
    assert bearer(response) == f"Bearer {store.saves[-1].access_token}"
    assert bearer(response) != f"Bearer {old.access_token}"
    assert store.saver_threads[-1] == threading.current_thread().name


def test_request_before_the_margin_does_not_refresh(
    timerless: TimerlessClock, timerless_emulator: Emulator, make_session: MakeSession
) -> None:
    old = issued(timerless_emulator, timerless)
    session = make_session(timerless_emulator, tokens=old, refresh_margin=10, clock=timerless)
    timerless.advance(87)  # before the margin and before the timer's earliest jitter
    response = session.get("/v2/employees")
    assert response.status_code == 200
    assert bearer(response) == f"Bearer {old.access_token}"
    assert timerless_emulator.counters.refresh_grants == 0


def test_request_after_expiry_refreshes_before_it_is_sent(
    timerless: TimerlessClock, timerless_emulator: Emulator, make_session: MakeSession
) -> None:
    store = RecordingStore()
    session = make_session(
        timerless_emulator,
        store,
        tokens=issued(timerless_emulator, timerless),
        refresh_margin=10,
        clock=timerless,
    )
    timerless.advance(150)
    response = session.get("/v2/employees")
    assert response.status_code == 200
    assert bearer(response) == f"Bearer {store.saves[-1].access_token}"
    counters = timerless_emulator.counters
    assert counters.refresh_grants == 1
    assert counters.unauthorized == 0


def test_refresh_margin_is_at_most_half_the_token_lifetime(
    timerless: TimerlessClock, timerless_emulator: Emulator, make_session: MakeSession
) -> None:
    old = issued(timerless_emulator, timerless)
    session = make_session(timerless_emulator, tokens=old, refresh_margin=80, clock=timerless)
    timerless.advance(34)  # past a literal 80 s margin; before half-life (and its jitter)
    assert bearer(session.get("/v2/employees")) == f"Bearer {old.access_token}"
    assert timerless_emulator.counters.refresh_grants == 0
    timerless.advance(16)  # half-life: due
    assert bearer(session.get("/v2/employees")) != f"Bearer {old.access_token}"
    assert timerless_emulator.counters.refresh_grants == 1


# -- 401 handling ---------------------------------------------------------------------------


def test_401_for_the_current_token_refreshes_once_and_replays_once(
    emulator: Emulator, make_session: MakeSession
) -> None:
    old = issued(emulator)
    store = MemoryStore()
    with CaptureServer(status_sequence(401, 200)) as api:
        session = make_session(emulator, store, api_url=api.url, tokens=old)
        response = session.get("/v2/employees")
    assert response.status_code == 200
    assert emulator.counters.refresh_grants == 1
    new = store.load()
    assert new is not None
    assert [seen.headers["authorization"] for seen in api.seen] == [
        f"Bearer {old.access_token}",
        f"Bearer {new.access_token}",
    ]


def test_401_after_the_replay_is_returned_without_another_replay(
    emulator: Emulator, make_session: MakeSession
) -> None:
    with CaptureServer(status_sequence(401)) as api:
        session = make_session(emulator, api_url=api.url, tokens=issued(emulator))
        response = session.get("/v2/employees")
    assert response.status_code == 401
    assert len(api.seen) == 2
    assert emulator.counters.refresh_grants == 1


def test_401_for_a_replaced_token_is_replayed_with_the_current_token_without_refreshing(
    emulator: Emulator, make_session: MakeSession
) -> None:
    store = MemoryStore()
    old = issued(emulator)
    # Another coordinator over the same store stands in for another process.
    elsewhere = make_session(emulator, store, token_url=emulator.token_url + "#elsewhere")

    def rotate_then_refuse(seen: Seen) -> tuple[int, dict[str, str], bytes]:
        if len(api.seen) == 1:
            elsewhere.refresh()  # the token this request carries dies now
            return 401, {}, b"{}"
        return 200, {}, b"{}"

    with CaptureServer(rotate_then_refuse) as api:
        session = make_session(emulator, store, api_url=api.url, tokens=old)
        assert session._coordinator is not elsewhere._coordinator
        response = session.get("/v2/employees")
    assert response.status_code == 200
    current = store.load()
    assert current is not None
    assert [seen.headers["authorization"] for seen in api.seen] == [
        f"Bearer {old.access_token}",
        f"Bearer {current.access_token}",
    ]
    assert emulator.counters.refresh_grants == 1  # the other one's; this session spent none


def test_401_is_returned_without_replay_when_the_body_is_a_generator(
    emulator: Emulator, make_session: MakeSession
) -> None:
    with CaptureServer(status_sequence(401)) as api:
        session = make_session(emulator, api_url=api.url, tokens=issued(emulator))
        response = session.post("/v1/upload", data=(chunk for chunk in [b"a", b"b", b"c"]))
    assert response.status_code == 401
    assert len(api.seen) == 1
    assert api.seen[0].body == b"abc"
    assert emulator.counters.refresh_grants == 1  # not replayed, but refreshed for the next


def test_401_is_returned_without_replay_when_the_body_is_a_file(
    emulator: Emulator, make_session: MakeSession, tmp_path: Path
) -> None:
    upload = tmp_path / "upload.csv"
    upload.write_bytes(b"id,amount\n1,100\n")
    with CaptureServer(status_sequence(401)) as api, upload.open("rb") as body:
        session = make_session(emulator, api_url=api.url, tokens=issued(emulator))
        response = session.post("/v1/upload", data=body)
    assert response.status_code == 401
    assert len(api.seen) == 1
    assert emulator.counters.refresh_grants == 1  # not replayed, but refreshed for the next


def test_401_with_a_json_body_is_replayed_with_the_same_body(
    emulator: Emulator, make_session: MakeSession
) -> None:
    with CaptureServer(status_sequence(401, 200)) as api:
        session = make_session(emulator, api_url=api.url, tokens=issued(emulator))
        response = session.post("/v1/things", json={"amount": 100})
    assert response.status_code == 200
    assert len(api.seen) == 2
    assert api.seen[0].body == api.seen[1].body == b'{"amount": 100}'


# -- a dead grant ------------------------------------------------------------------------------


def test_invalid_grant_clears_the_store_without_retrying(
    emulator: Emulator, make_session: MakeSession
) -> None:
    store = MemoryStore()
    session = make_session(emulator, store, tokens=issued(emulator))
    emulator.revoke_all()
    with pytest.raises(ReauthenticationRequired) as caught:
        session.refresh()
    assert caught.value.error == "invalid_grant"
    assert store.load() is None
    assert emulator.counters.token_requests == 1
    assert emulator.counters.rejected_refreshes == 1


def test_invalid_grant_calls_on_reauthentication_required_exactly_once(
    emulator: Emulator, make_session: MakeSession
) -> None:
    calls: list[str] = []
    session = make_session(
        emulator,
        tokens=issued(emulator),
        on_reauthentication_required=lambda: calls.append(threading.current_thread().name),
    )
    emulator.revoke_all()
    for attempt in (session.refresh, lambda: session.get("/v2/employees"), session.refresh):
        with pytest.raises(ReauthenticationRequired):
            attempt()
    assert session.tokens is None
    assert len(calls) == 1


def test_every_later_call_raises_reauthentication_required_saying_how_to_log_in(
    emulator: Emulator, make_session: MakeSession
) -> None:
    session = make_session(emulator, tokens=issued(emulator))
    emulator.revoke_all()
    calls: list[Callable[[], object]] = [
        session.refresh,
        lambda: session.get("/v2/employees"),
        lambda: session.post("/v1/things", json={}),
        session.refresh,
    ]
    for call in calls:
        with pytest.raises(ReauthenticationRequired) as caught:
            call()
        assert "pleo-auth login" in str(caught.value)
    assert emulator.counters.token_requests == 1
    assert emulator.counters.api_requests == 0


def test_reauthentication_message_names_the_file_store_to_log_in_to(
    emulator: Emulator, make_session: MakeSession, tmp_path: Path
) -> None:
    path = tmp_path / "tokens.json"
    session = make_session(emulator, FileStore(path), tokens=issued(emulator))
    emulator.revoke_all()
    with pytest.raises(ReauthenticationRequired) as caught:
        session.refresh()
    message = str(caught.value)
    assert f"pleo-auth login --client-id {emulator.client_id}" in message
    assert f"--store file:{path}" in message
    assert not path.exists()


@pytest.mark.parametrize("error", ["invalid_grant", "invalid_token", "expired_token"])
def test_dead_grant_answers_are_not_retried_and_clear_the_store(
    emulator: Emulator, make_session: MakeSession, error: str
) -> None:
    store = MemoryStore()
    session = make_session(emulator, store, tokens=issued(emulator))
    emulator.inject_fault(Fault(status=400, error=error), count=3)
    with pytest.raises(ReauthenticationRequired):
        session.refresh()
    assert emulator.counters.token_requests == 1
    assert store.load() is None


def test_logging_in_again_after_a_dead_grant_makes_the_session_work_again(
    emulator: Emulator, make_session: MakeSession
) -> None:
    store = MemoryStore()
    session = make_session(emulator, store, tokens=issued(emulator))
    emulator.revoke_all()
    with pytest.raises(ReauthenticationRequired):
        session.refresh()
    fresh = issued(emulator)
    make_session(emulator, store, tokens=fresh)  # what `pleo-auth login` hands over
    response = session.get("/v2/employees")
    assert response.status_code == 200
    assert bearer(response) == f"Bearer {fresh.access_token}"


# -- other refusals ------------------------------------------------------------------------


def test_invalid_client_raises_refresh_error_with_error_and_description_without_retry(
    emulator: Emulator, make_session: MakeSession
) -> None:
    calls: list[int] = []
    tokens = issued(emulator)
    store = MemoryStore()
    session = make_session(
        emulator,
        store,
        client_secret="wrong-secret",
        tokens=tokens,
        on_reauthentication_required=lambda: calls.append(1),
    )
    with pytest.raises(RefreshError) as caught:
        session.refresh()
    error = caught.value
    assert not isinstance(error, ReauthenticationRequired)
    assert error.error == "invalid_client"
    assert error.description == "unknown client or wrong secret"
    assert error.status_code == 401
    assert emulator.counters.token_requests == 1
    assert store.load() == tokens
    assert calls == []


def test_request_with_an_expired_token_raises_the_refresh_error_when_the_refresh_is_refused(
    timerless: TimerlessClock, timerless_emulator: Emulator, make_session: MakeSession
) -> None:
    session = make_session(
        timerless_emulator, tokens=issued(timerless_emulator, timerless), clock=timerless
    )
    timerless.advance(150)
    timerless_emulator.inject_fault(Fault(error="invalid_client"))
    with pytest.raises(RefreshError) as caught:
        session.get("/v2/employees")
    assert caught.value.error == "invalid_client"
    assert timerless_emulator.counters.api_requests == 0


def test_request_inside_the_margin_still_goes_out_when_the_refresh_is_refused(
    timerless: TimerlessClock, timerless_emulator: Emulator, make_session: MakeSession
) -> None:
    old = issued(timerless_emulator, timerless)
    session = make_session(timerless_emulator, tokens=old, refresh_margin=10, clock=timerless)
    timerless.advance(95)
    timerless_emulator.inject_fault(Fault(error="invalid_client"))
    response = session.get("/v2/employees")
    assert response.status_code == 200
    assert bearer(response) == f"Bearer {old.access_token}"
    assert timerless_emulator.counters.token_requests == 1


# -- transient failures ---------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_transient_token_endpoint_statuses_are_retried_until_the_refresh_succeeds(
    emulator: Emulator, make_session: MakeSession, status: int
) -> None:
    session = make_session(emulator, tokens=issued(emulator))
    fast_backoff(session)
    emulator.inject_fault(Fault(status=status), count=2)
    session.refresh()
    counters = emulator.counters
    assert counters.token_requests == 3
    assert counters.faults_served == 2
    assert counters.refresh_grants == 1


def test_dropped_connections_to_the_token_endpoint_are_retried(
    emulator: Emulator, make_session: MakeSession
) -> None:
    session = make_session(emulator, tokens=issued(emulator))
    fast_backoff(session)
    emulator.inject_fault(Fault(drop=True), count=2)
    session.refresh()
    assert emulator.counters.token_requests == 3
    assert emulator.counters.refresh_grants == 1


def test_retry_after_answer_is_retried_until_the_refresh_succeeds(
    emulator: Emulator, make_session: MakeSession
) -> None:
    session = make_session(emulator, tokens=issued(emulator))
    fast_backoff(session)
    emulator.inject_fault(Fault(status=429, retry_after=0.05))
    session.refresh()
    assert emulator.counters.token_requests == 2
    assert emulator.counters.refresh_grants == 1


def test_retry_after_is_honoured_across_refresh_attempts(
    timerless: TimerlessClock, timerless_emulator: Emulator, make_session: MakeSession
) -> None:
    emu = timerless_emulator
    old = issued(emu, timerless)
    session = make_session(emu, tokens=old, refresh_margin=10, clock=timerless)
    fast_backoff(session)
    timerless.advance(91)  # inside the margin: a refresh is due, the token still works
    emu.inject_fault(Fault(status=503, retry_after=3600), count=50)
    assert session.get("/v2/employees").status_code == 200
    timerless.advance(8)  # far less than the hour the server asked for
    assert session.get("/v2/employees").status_code == 200
    assert emu.counters.token_requests == 1  # nothing sent before Retry-After


def test_transient_failures_stop_after_max_refresh_attempts_and_keep_the_tokens(
    emulator: Emulator, make_session: MakeSession
) -> None:
    tokens = issued(emulator)
    store = MemoryStore()
    session = make_session(emulator, store, tokens=tokens, max_refresh_attempts=3)
    fast_backoff(session)
    emulator.inject_fault(Fault(status=503), count=3)
    with pytest.raises(RefreshError) as caught:
        session.refresh()
    assert caught.value.retryable is True
    assert emulator.counters.token_requests == 3
    assert store.load() == tokens
    session.refresh()  # the refresh token was never spent: it still works
    counters = emulator.counters
    assert counters.refresh_grants == 1
    assert counters.rejected_refreshes == 0
    assert counters.reuse_detections == 0


def test_transient_failures_stop_after_max_refresh_time(
    emulator: Emulator, make_session: MakeSession
) -> None:
    session = make_session(
        emulator, tokens=issued(emulator), max_refresh_attempts=1000, max_refresh_time=0.3
    )
    fast_backoff(session, backoff_max=0.05)
    emulator.inject_fault(Fault(status=503, retry_after=0.1), count=1000)
    with pytest.raises(RefreshError) as caught:
        session.refresh()
    assert caught.value.retryable is True
    # Every wait but the last lasts at least Retry-After (0.1 s): at most 5 attempts fit.
    assert 2 <= emulator.counters.token_requests <= 5


# -- client authentication -------------------------------------------------------------------


def token_endpoint_reply(seen: Seen) -> tuple[int, dict[str, str], bytes]:
    body = {
        "access_token": "at_from_capture",
        "refresh_token": "rt_from_capture",
        "expires_in": 900,
        "token_type": "Bearer",
    }
    return 200, {}, json.dumps(body).encode()


def seeded_tokens() -> TokenSet:
    return TokenSet("at_seed", "rt_seed", expires_at=time.time() + 3600, issued_at=time.time())


@pytest.mark.parametrize("client_auth", [None, "basic"])
def test_client_auth_defaults_to_http_basic(client_auth: str | None) -> None:
    kwargs: dict[str, Any] = {} if client_auth is None else {"client_auth": client_auth}
    with (
        CaptureServer(token_endpoint_reply) as server,
        PleoSession(
            "client-1",
            "secret-1",
            store=MemoryStore(),
            token_url=server.url + "/oauth/token",
            api_url=server.url,
            tokens=seeded_tokens(),
            **kwargs,
        ) as session,
    ):
        session.refresh()
    (seen,) = server.seen
    assert (
        seen.headers["authorization"] == "Basic " + base64.b64encode(b"client-1:secret-1").decode()
    )
    form = parse_qs(seen.body.decode())
    assert form["grant_type"] == ["refresh_token"]
    assert form["refresh_token"] == ["rt_seed"]
    assert "client_secret" not in form


def test_client_auth_body_sends_client_id_and_secret_in_the_form() -> None:
    with (
        CaptureServer(token_endpoint_reply) as server,
        PleoSession(
            "client-1",
            "secret-1",
            store=MemoryStore(),
            token_url=server.url + "/oauth/token",
            api_url=server.url,
            tokens=seeded_tokens(),
            client_auth="body",
        ) as session,
    ):
        session.refresh()
    (seen,) = server.seen
    assert "authorization" not in seen.headers
    form = parse_qs(seen.body.decode())
    assert form["client_id"] == ["client-1"]
    assert form["client_secret"] == ["secret-1"]


def test_client_auth_body_refreshes_against_the_emulator(
    emulator: Emulator, make_session: MakeSession
) -> None:
    session = make_session(emulator, tokens=issued(emulator), client_auth="body")
    session.refresh()
    assert emulator.counters.refresh_grants == 1
    assert emulator.counters.rejected_refreshes == 0


# -- secrets ------------------------------------------------------------------------------------


def test_logs_never_contain_a_token_or_the_client_secret(
    clock: FakeClock,
    fake_emulator: Emulator,
    make_session: MakeSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="pleo_auth")
    emu = fake_emulator
    store = RecordingStore()
    first = issued(emu, clock)
    texts: list[str] = []
    session = make_session(emu, store, tokens=first, refresh_margin=10, clock=clock)
    fast_backoff(session)
    session.get("/v2/employees")  # load
    session.refresh()  # forced refresh
    clock.advance(store.saves[-1].expires_at - 10 - clock.time())
    assert store.wait_for_saves(3)  # the timer's refresh
    assert session.tokens == store.saves[-1]  # ...published, so the next refresh is our own
    emu.inject_fault(Fault(status=503))
    emu.inject_fault(Fault(drop=True))
    session.refresh()  # retried
    emu.inject_fault(Fault(error="invalid_client"))
    with pytest.raises(RefreshError) as refused:
        session.refresh()
    emu.revoke_all()
    with pytest.raises(ReauthenticationRequired) as dead:
        session.refresh()
    with pytest.raises(ReauthenticationRequired) as later:
        session.get("/v2/employees")
    for error in (refused.value, dead.value, later.value):
        texts += [str(error), repr(error)]
    texts += [repr(session), repr(store), repr(first), repr(session._coordinator)]
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    records = [r for r in caplog.records if r.name.startswith("pleo_auth")]
    texts += [formatter.format(record) for record in records]
    messages = " | ".join(record.getMessage() for record in records)
    assert "refreshed tokens" in messages
    assert "retry" in messages
    assert "grant is dead" in messages
    secrets = [emu.client_secret or ""]
    for tokens in [first, *store.saves]:
        secrets += [tokens.access_token, tokens.refresh_token]
    assert len(store.saves) == 4
    for secret in secrets:
        for text in texts:
            assert secret not in text


def test_failure_messages_never_contain_a_token_or_the_client_secret(
    emulator: Emulator, make_session: MakeSession
) -> None:
    tokens = issued(emulator)
    session = make_session(emulator, tokens=tokens, max_refresh_attempts=2)
    fast_backoff(session)
    failures: list[PleoAuthError] = []
    emulator.inject_fault(Fault(status=503), count=2)
    emulator.inject_fault(Fault(status=400, error="invalid_request"))
    emulator.inject_fault(Fault(error="invalid_grant"))
    for _ in range(3):
        with pytest.raises(PleoAuthError) as caught:
            session.refresh()
        failures.append(caught.value)
    for failure in failures:
        for text in (str(failure), repr(failure)):
            for secret in (tokens.access_token, tokens.refresh_token, emulator.client_secret):
                assert secret is not None
                assert secret not in text


# -- a 401 on a body that cannot be sent twice (issue 10, bug 8) ---------------------------------

UPLOAD = b"id,amount\n1,100\n2,250\n"


class StreamingEncoder:
    """Shaped like requests_toolbelt's MultipartEncoder: read() and a length, no iteration."""

    def __init__(self, payload: bytes):
        self._buffer = io.BytesIO(payload)
        self.len = len(payload)

    def __len__(self) -> int:
        return self.len

    def read(self, size: int = -1) -> bytes:
        return self._buffer.read(size)


def upload_body(kind: str, upload: Path, opened: list[IO[bytes]]) -> dict[str, Any]:
    """The keyword arguments of one upload whose body the first send spends."""
    if kind == "file":
        opened.append(upload.open("rb"))
        return {"data": opened[-1]}
    if kind == "bytes_io":
        return {"data": io.BytesIO(UPLOAD)}
    if kind == "encoder":
        return {"data": StreamingEncoder(UPLOAD)}
    if kind == "form_with_a_file_value":
        return {"data": {"report": io.BytesIO(UPLOAD)}}
    if kind == "multipart_file":
        opened.append(upload.open("rb"))
        return {"files": {"report": opened[-1]}}
    raise AssertionError(kind)


@pytest.fixture
def api_clock() -> FakeClock:
    """The emulator's own clock: moving it expires access tokens the session thinks live."""
    return FakeClock()


@pytest.fixture
def skewed_emulator(api_clock: FakeClock) -> Iterator[Emulator]:
    with Emulator(access_token_lifetime=100, clock=api_clock) as emu:
        yield emu


@pytest.mark.parametrize(
    "kind", ["file", "bytes_io", "encoder", "form_with_a_file_value", "multipart_file"]
)
def test_a_401_on_a_streamed_upload_refreshes_once_without_replay_and_the_next_request_succeeds(
    kind: str,
    api_clock: FakeClock,
    skewed_emulator: Emulator,
    timerless: TimerlessClock,
    make_session: MakeSession,
    tmp_path: Path,
) -> None:
    upload = tmp_path / "upload.csv"
    upload.write_bytes(UPLOAD)
    store = MemoryStore()
    old = issued(skewed_emulator, timerless)
    session = make_session(skewed_emulator, store, tokens=old, clock=timerless)
    api_clock.advance(150)  # the API refuses a token the session still thinks live

    opened: list[IO[bytes]] = []
    try:
        refused = session.post("/v1/uploads", **upload_body(kind, upload, opened))
    finally:
        for file in opened:
            file.close()

    assert refused.status_code == 401
    assert bearer(refused) == f"Bearer {old.access_token}"
    counters = skewed_emulator.counters
    assert counters.api_requests == 1  # the upload went once: no replay
    assert counters.unauthorized == 1
    assert counters.refresh_grants == 1
    new = store.load()
    assert new is not None
    assert new.access_token != old.access_token

    following = session.get("/v2/employees")
    assert following.status_code == 200
    assert bearer(following) == f"Bearer {new.access_token}"
    counters = skewed_emulator.counters
    assert counters.api_requests == 2
    assert counters.refresh_grants == 1
    assert counters.rejected_refreshes == 0
    assert counters.reuse_detections == 0


def test_a_401_on_a_generator_upload_refreshes_once_and_the_next_request_carries_the_new_token(
    emulator: Emulator, make_session: MakeSession
) -> None:
    # A generator is sent chunked, which the emulator's API refuses with 411: a
    # plain capture server plays the API here, the emulator the token endpoint.
    store = MemoryStore()
    old = issued(emulator)
    with CaptureServer(status_sequence(401, 200)) as api:
        session = make_session(emulator, store, api_url=api.url, tokens=old)
        refused = session.post("/v1/uploads", data=(chunk for chunk in [b"a", b"b", b"c"]))
        assert refused.status_code == 401
        assert emulator.counters.refresh_grants == 1
        following = session.get("/v2/employees")
    new = store.load()
    assert new is not None
    assert following.status_code == 200
    assert [seen.path for seen in api.seen] == ["/v1/uploads", "/v2/employees"]
    assert [seen.headers["authorization"] for seen in api.seen] == [
        f"Bearer {old.access_token}",
        f"Bearer {new.access_token}",
    ]
    assert emulator.counters.refresh_grants == 1


def test_a_401_on_a_multipart_upload_from_bytes_is_replayed_once_with_the_same_content(
    emulator: Emulator, make_session: MakeSession
) -> None:
    store = MemoryStore()
    old = issued(emulator)
    with CaptureServer(status_sequence(401, 200)) as api:
        session = make_session(emulator, store, api_url=api.url, tokens=old)
        response = session.post("/v1/uploads", files={"report": ("report.csv", UPLOAD, "text/csv")})
    new = store.load()
    assert new is not None
    assert response.status_code == 200
    assert emulator.counters.refresh_grants == 1
    assert [seen.headers["authorization"] for seen in api.seen] == [
        f"Bearer {old.access_token}",
        f"Bearer {new.access_token}",
    ]
    assert all(UPLOAD in seen.body for seen in api.seen)


def _generator() -> Iterator[bytes]:
    yield b"x"


@pytest.mark.parametrize(
    ("data", "files", "replayable"),
    [
        (None, None, True),
        ("text", None, True),
        (b"bytes", None, True),
        (bytearray(b"bytes"), None, True),
        ({"a": "b", "n": 1, "many": ["c", "d"], "none": None}, None, True),
        ([("a", "b"), ("a", b"c")], None, True),
        ((("a", "b"),), None, True),
        ({"a": "b"}, {"f": ("f.csv", b"1,2\n", "text/csv")}, True),
        (None, [("f", ("f.csv", "1,2\n"))], True),
        (None, {"f": b"raw bytes"}, True),
        (_generator(), None, False),
        (iter([b"a"]), None, False),
        (io.BytesIO(b"a"), None, False),
        (StreamingEncoder(b"a"), None, False),
        ({"f": io.BytesIO(b"a")}, None, False),
        ({"f": _generator()}, None, False),
        ({"f": [b"a", io.BytesIO(b"b")]}, None, False),
        ([("f", io.BytesIO(b"a"))], None, False),
        ([b"not", b"pairs"], None, False),
        (None, {"f": io.BytesIO(b"a")}, False),
        (None, {"f": ("f.csv", io.BytesIO(b"a"))}, False),
        ({"f": io.BytesIO(b"a")}, {"g": b"x"}, False),
        (object(), None, False),
    ],
    ids=[
        "none", "text", "bytes", "bytearray", "form_dict", "form_pairs_list", "form_pairs_tuple",
        "form_and_bytes_upload", "bytes_upload_tuple_in_a_list", "raw_bytes_upload",
        "generator", "iterator", "bytes_io", "read_only_encoder", "form_with_a_file",
        "form_with_a_generator", "form_with_a_file_in_a_list", "pairs_with_a_file", "not_pairs",
        "file_upload", "file_upload_tuple", "form_with_a_file_and_bytes_upload", "unknown_object",
    ],
)  # fmt: skip
def test_replayable_is_true_only_for_bodies_that_send_the_same_bytes_twice(
    data: Any, files: Any, replayable: bool
) -> None:
    from pleo_auth.session import _replayable

    assert _replayable(data, files) is replayable


def test_a_401_from_a_redirect_target_outside_api_url_triggers_no_refresh(
    emulator: Emulator, make_session: MakeSession
) -> None:
    def respond(seen: Seen) -> tuple[int, dict[str, str], bytes]:
        if seen.path == "/v2/moved":
            return 307, {"Location": f"{api.url}/elsewhere"}, b"{}"
        return 401, {}, b"{}"

    old = issued(emulator)
    with CaptureServer(respond) as api:
        session = make_session(emulator, api_url=api.url + "/v2", tokens=old)
        response = session.get("/moved")
    assert response.status_code == 401
    assert [(seen.path, seen.headers.get("authorization")) for seen in api.seen] == [
        ("/v2/moved", f"Bearer {old.access_token}"),
        ("/elsewhere", None),
    ]
    assert emulator.counters.token_requests == 0


def test_a_401_for_a_request_that_dot_segments_kept_from_the_token_triggers_no_refresh(
    emulator: Emulator, make_session: MakeSession
) -> None:
    with CaptureServer(status_sequence(401)) as api:
        session = make_session(emulator, api_url=api.url + "/v2", tokens=issued(emulator))
        response = session.get("%2e%2e/v3/secret")
    assert response.status_code == 401
    assert [(seen.path, seen.headers.get("authorization")) for seen in api.seen] == [
        ("/v2/../v3/secret", None)
    ]
    assert emulator.counters.token_requests == 0


def test_upload_only_threads_refused_with_401_cost_exactly_one_refresh_and_then_succeed(
    api_clock: FakeClock,
    skewed_emulator: Emulator,
    timerless: TimerlessClock,
    make_session: MakeSession,
) -> None:
    threads = 8
    store = MemoryStore()
    old = issued(skewed_emulator, timerless)
    session = make_session(skewed_emulator, store, tokens=old, clock=timerless)
    api_clock.advance(150)  # the API refuses a token the session still thinks live
    start = threading.Barrier(threads)
    uploads: list[requests.Response] = []
    following: list[requests.Response] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker() -> None:
        try:
            start.wait(10)
            upload = session.post("/v1/uploads", data=io.BytesIO(UPLOAD))
            again = session.post("/v1/uploads", data=io.BytesIO(UPLOAD))
            with lock:
                uploads.append(upload)
                following.append(again)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    workers = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(60)
    assert not any(thread.is_alive() for thread in workers), "a worker hung"
    assert errors == []
    new = store.load()
    assert new is not None
    counters = skewed_emulator.counters
    assert counters.refresh_grants == 1
    assert counters.rejected_refreshes == 0
    assert counters.reuse_detections == 0
    assert counters.api_requests == 2 * threads  # no upload was sent twice
    # Each first upload either went out with the old token and got its 401, or
    # waited for the refresh and went out with the new one.
    for response in uploads:
        assert (response.status_code, bearer(response)) in {
            (401, f"Bearer {old.access_token}"),
            (200, f"Bearer {new.access_token}"),
        }
    assert counters.unauthorized == sum(r.status_code == 401 for r in uploads) >= 1
    assert [(r.status_code, bearer(r)) for r in following] == [
        (200, f"Bearer {new.access_token}")
    ] * threads
