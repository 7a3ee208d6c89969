"""PleoSession after a 401: one refresh and at most one replay, and the bodies that
cannot be sent twice (issue 10, bug 8)."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import requests
from support.session_doubles import CaptureServer, Seen, status_sequence
from support.session_helpers import MakeSession, TimerlessClock, bearer, issued

from pleo_auth import MemoryStore
from pleo_auth._clock import FakeClock
from pleo_auth.testing import Emulator

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
