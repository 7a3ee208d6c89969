"""The token goes only where it belongs: HTTPS URLs, the API's origin, no redirect out.

Real HTTP servers on loopback record the headers they receive; ``responses``
stands in only where a test needs https (a scheme downgrade on redirect).
"""

from __future__ import annotations

import http.server
import re
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import responses
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pleo_auth import AuthorizationFlow, ConfigurationError, MemoryStore, PleoSession, TokenSet
from pleo_auth._endpoint import TokenEndpoint
from pleo_auth._urls import check_secure_url, is_loopback_host, origin
from pleo_auth.cli import main

ACCESS = "at_confinement_test_access_token_0123456789"
REFRESH = "rt_confinement_test_refresh_token_0123456789"


def long_lived() -> TokenSet:
    return TokenSet.from_response(
        {"access_token": ACCESS, "refresh_token": REFRESH, "expires_in": 3600}
    )


def session_for_api(
    api_url: str, *, token_url: str = "https://auth.example.com/oauth/token"
) -> PleoSession:
    """A session holding fresh tokens: no test here ever reaches the token endpoint."""
    return PleoSession(
        "client", "secret", store=MemoryStore(), token_url=token_url, api_url=api_url,
        tokens=long_lived(),
    )  # fmt: skip


# -- HTTPS only, except loopback ------------------------------------------------

PLAIN_HTTP_ELSEWHERE = [
    "http://external.pleo.io",
    "http://auth.pleo.io/oauth/token",
    "http://10.0.0.5:8080/oauth/token",
    "http://192.168.1.1",
    "http://localhost.example.com/oauth/token",
    "http://127.0.0.1.nip.io/oauth/token",
    "http://api.localhost:8080",  # a resolver may send *.localhost to DNS
    "http://localhost./oauth/token",
]
LOOPBACK_HTTP = [
    "http://127.0.0.1:8080/oauth/token",
    "http://127.1.2.3/oauth/token",
    "http://localhost:9000",
    "http://LOCALHOST/oauth/token",
    "http://[::1]:8080/oauth/token",
]
NOT_URLS = ["", "auth.pleo.io/oauth/token", "ftp://auth.pleo.io/token", "https://", "file:///etc"]


@pytest.mark.parametrize("url", PLAIN_HTTP_ELSEWHERE)
def test_plain_http_to_a_host_other_than_loopback_is_refused_with_the_reason(url: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        check_secure_url("token_url", url)
    message = str(refused.value)
    assert "token_url must use https://" in message
    assert "clear text" in message
    assert "loopback" in message


@pytest.mark.parametrize("url", LOOPBACK_HTTP)
def test_plain_http_to_loopback_is_allowed_for_the_emulator(url: str) -> None:
    assert check_secure_url("token_url", url).scheme == "http"


@pytest.mark.parametrize("url", NOT_URLS)
def test_a_value_that_is_no_http_url_is_refused(url: str) -> None:
    with pytest.raises(
        ConfigurationError, match="token_url must be an absolute http\\(s\\) URL with a host"
    ):
        check_secure_url("token_url", url)


def test_a_url_with_credentials_is_refused_without_echoing_them() -> None:
    with pytest.raises(ConfigurationError) as refused:
        check_secure_url("api_url", "https://user:hunter2-password@external.pleo.io")
    assert "must not contain a user name or password" in str(refused.value)
    assert "hunter2" not in str(refused.value)


@pytest.mark.parametrize("value", [None, 443, b"https://external.pleo.io"])
def test_a_url_that_is_not_a_string_is_refused(value: object) -> None:
    with pytest.raises(ConfigurationError, match="must be a URL string"):
        check_secure_url("api_url", value)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.255.255.254", True),
        ("::1", True),
        ("localhost", True),
        ("localhost.", False),
        ("a.b.localhost", False),
        ("128.0.0.1", False),
        ("0.0.0.0", False),
        ("::", False),
        ("localhostx", False),
        ("external.pleo.io", False),
    ],
)
def test_loopback_hosts_are_exactly_localhost_127_8_and_ipv6_one(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


@pytest.mark.parametrize("setting", ["token_url", "api_url"])
def test_a_session_refuses_plain_http_urls_at_construction(setting: str) -> None:
    with pytest.raises(ConfigurationError, match=f"{setting} must use https://"):
        PleoSession("client", "secret", store=MemoryStore(), **{setting: "http://pleo.example.com"})


def test_the_token_endpoint_client_refuses_plain_http() -> None:
    with pytest.raises(ConfigurationError, match="token_url must use https://"):
        TokenEndpoint("http://auth.pleo.example/oauth/token", "client", "secret")


def test_the_login_flow_refuses_a_plain_http_token_url() -> None:
    with pytest.raises(ConfigurationError, match="token_url must use https://"):
        AuthorizationFlow(
            "client",
            "secret",
            redirect_uri="http://127.0.0.1:8765/callback",
            token_url="http://auth.pleo.example/oauth/token",
        )


@pytest.mark.parametrize("command", ["login", "refresh", "status"])
def test_the_cli_refuses_a_plain_http_token_url_with_a_one_line_error(
    command: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    env = {
        "PLEO_CLIENT_ID": "client",
        "PLEO_CLIENT_SECRET": "secret",
        "PLEO_TOKEN_URL": "http://auth.pleo.example/oauth/token",
        "PLEO_STORE": f"file:{tmp_path / 'tokens.json'}",
    }
    code = main([command, "--no-browser"] if command == "login" else [command], env=env)
    err = capsys.readouterr().err
    assert code == 2
    assert "token_url must use https://" in err
    assert "Traceback" not in err


def test_https_urls_anywhere_are_accepted() -> None:
    with session_for_api("https://api.example.com:8443/base") as session:
        assert session.api_url == "https://api.example.com:8443/base"


# -- the header goes only to the API's origin ---------------------------------


class _Recorder(http.server.ThreadingHTTPServer):
    """A loopback server that records the Authorization header of each request.

    ``/redirect?to=URL&code=N`` answers with that redirect; anything else 200.
    """

    daemon_threads = True

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__((host, port), _RecordingHandler)
        self.seen: list[tuple[str, str, str | None]] = []  # method, path, Authorization
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def authorizations(self, path_prefix: str) -> list[str | None]:
        with self.lock:
            return [auth for _, path, auth in self.seen if path.startswith(path_prefix)]


class _RecordingHandler(http.server.BaseHTTPRequestHandler):
    server: _Recorder

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        with self.server.lock:
            self.server.seen.append((self.command, self.path, self.headers.get("Authorization")))
        parsed = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(parsed.query)
        if parsed.path.endswith("/redirect"):
            self.send_response(int(query.get("code", ["302"])[0]))
            self.send_header("Location", query["to"][0])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    do_GET = do_POST = do_PUT = _handle

    def log_message(self, format: str, *args: Any) -> None:
        pass  # nothing on stderr; and never a header


@pytest.fixture
def recorders() -> Iterator[tuple[_Recorder, _Recorder]]:
    """Two servers: the API, and another origin that must never see the token.

    The other one differs in host only (127.0.0.2, same port), so that the header
    is not dropped merely because the port changed.
    """
    api = _Recorder()
    servers = (api, _Recorder("127.0.0.2", api.server_address[1]))
    # A short poll interval: shutdown() waits for one, and every test shuts two down.
    threads = [threading.Thread(target=s.serve_forever, args=(0.02,), daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    yield servers
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def api_session(recorders: tuple[_Recorder, _Recorder]) -> Iterator[PleoSession]:
    api, _ = recorders
    with session_for_api(
        api.url + "/v2", token_url="http://127.0.0.1:9/oauth/token"
    ) as session:  # never called: the tokens are fresh
        yield session


def test_requests_under_api_url_carry_the_bearer_token(
    recorders: tuple[_Recorder, _Recorder], api_session: PleoSession
) -> None:
    api, _ = recorders
    assert api_session.get("/employees").status_code == 200
    assert api_session.get(api.url + "/v2/companies").status_code == 200
    assert api.authorizations("/v2/") == [f"Bearer {ACCESS}", f"Bearer {ACCESS}"]


def test_an_absolute_url_to_another_origin_gets_no_token(
    recorders: tuple[_Recorder, _Recorder], api_session: PleoSession
) -> None:
    api, other = recorders
    api_session.get(other.url + "/v2/employees")
    api_session.post(other.url + "/upload", data=b"x")
    # Same host and scheme, a path outside api_url.
    api_session.get(api.url + "/internal/admin")
    # What a naive string prefix check would let through.
    api_session.get(api.url + "/v2-shadow/employees")
    assert other.authorizations("/") == [None, None]
    assert api.authorizations("/internal") == [None]
    assert api.authorizations("/v2-shadow") == [None]


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_a_redirect_to_another_origin_does_not_carry_the_token(
    recorders: tuple[_Recorder, _Recorder], api_session: PleoSession, code: int
) -> None:
    api, other = recorders
    target = other.url + "/v2/landing"
    response = api_session.get(f"/redirect?code={code}&to={urllib.parse.quote(target)}")
    assert response.status_code == 200
    assert api.authorizations("/v2/redirect") == [f"Bearer {ACCESS}"]
    assert other.authorizations("/v2/landing") == [None]


def test_a_redirect_out_of_api_url_on_the_same_origin_does_not_carry_the_token(
    recorders: tuple[_Recorder, _Recorder], api_session: PleoSession
) -> None:
    api, _ = recorders
    target = api.url + "/elsewhere"
    api_session.get(f"/redirect?code=307&to={urllib.parse.quote(target)}")
    assert api.authorizations("/elsewhere") == [None]


def test_a_redirect_within_api_url_keeps_the_token(
    recorders: tuple[_Recorder, _Recorder], api_session: PleoSession
) -> None:
    api, _ = recorders
    api_session.get("/redirect?to=/v2/employees")
    assert api.authorizations("/v2/employees") == [f"Bearer {ACCESS}"]


@responses.activate
def test_a_redirect_from_https_to_http_on_the_same_host_does_not_carry_the_token() -> None:
    responses.get(
        "https://api.example.com/v2/employees",
        status=302,
        headers={"Location": "http://api.example.com/v2/employees"},
    )
    responses.get("http://api.example.com/v2/employees", json={})
    with session_for_api("https://api.example.com") as session:
        session.get("/v2/employees")
    first, second = (call.request for call in responses.calls)
    assert first.headers["Authorization"] == f"Bearer {ACCESS}"
    assert "Authorization" not in second.headers


@responses.activate
def test_the_token_endpoint_never_follows_a_redirect_that_would_carry_the_refresh_token() -> None:
    responses.post(
        "https://auth.example.com/oauth/token",
        status=307,
        headers={"Location": "https://evil.example.net/collect"},
    )
    collector = responses.post("https://evil.example.net/collect", json={})
    endpoint = TokenEndpoint("https://auth.example.com/oauth/token", "client", "secret")
    with pytest.raises(Exception, match="redirect") as refused:
        endpoint.refresh(REFRESH)
    assert type(refused.value).__name__ == "RefreshError"
    assert collector.call_count == 0
    assert len(responses.calls) == 1


class _Capture(requests.adapters.BaseAdapter):
    """A stub adapter that answers 200 and keeps the prepared requests."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[requests.PreparedRequest] = []

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        self.sent.append(request)
        response = requests.Response()
        response.status_code = 200
        response.request = request
        response.url = request.url or ""
        response._content = b"{}"
        return response

    def close(self) -> None:
        pass


_hosts = st.sampled_from(
    ["api.example.com", "API.example.com", "api.example.com.evil.net", "evil.net", "127.0.0.1"]
)
_schemes = st.sampled_from(["https", "http", "HTTPS"])
_ports = st.sampled_from(["", ":443", ":8443", ":80"])
_userinfo = st.sampled_from(["", "user@", "api.example.com@", "a:b@"])
# Segments an attacker would try: dot-segments plain, percent-encoded (once, twice,
# IIS-style), behind a backslash or an encoded slash, with ;parameters, NUL or space.
_segments = st.sampled_from(
    [
        "v2", "v3", "secret", "a", "", ".", "..", "...", "%2e", "%2E", "%2e%2e", "%2E%2E",
        ".%2e", "%2e.", "%252e%252e", "%u002e%u002e", "..;", "..;x=1", "%2e%2e;", "..%00",
        "..%20", "..%2f", "..%2F", "..%5c", "..\\", "\\..", "%ef%bc%8e%ef%bc%8e", "a%2fb",
        "x.y", "..x", "?", "#", "%3f",
    ]
)  # fmt: skip
_paths = st.one_of(
    st.text(alphabet="/abcv2.%@?#:\\-", max_size=20),
    st.lists(_segments, max_size=7).map("/".join),
)


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4, written out step by step as the RFC states it."""
    output: list[str] = []
    while path:
        if path.startswith("../"):
            path = path[3:]
        elif path.startswith("./"):
            path = path[2:]
        elif path.startswith("/./"):
            path = "/" + path[3:]
        elif path == "/.":
            path = "/"
        elif path.startswith("/../") or path == "/..":
            path = "/" + path[4:]
            if output:
                output.pop()
        elif path in (".", ".."):
            path = ""
        else:
            end = path.find("/", 1)
            end = len(path) if end == -1 else end
            output.append(path[:end])
            path = path[end:]
    return "".join(output)


def _server_readings(path: str) -> set[str]:
    """The paths a server, a proxy or a framework behind it might route ``path`` to.

    Each reading is one normalisation some server applies: decoding encoded dots
    only, decoding everything once or repeatedly, IIS's %u escapes, backslashes
    as slashes, merged slashes, Tomcat's ``..;`` parameters, trailing blanks and
    NULs dropped from a segment; then RFC 3986's remove_dot_segments.
    """
    readings = {path, re.sub("%2e", ".", path, flags=re.IGNORECASE)}
    decoded = path
    for _ in range(3):
        decoded = urllib.parse.unquote(decoded)
        readings.add(decoded)
    readings |= {re.sub("%u([0-9a-fA-F]{4})", lambda m: chr(int(m[1], 16)), r) for r in readings}
    readings |= {r.replace("\\", "/") for r in readings}
    readings |= {re.sub("/{2,}", "/", r) for r in readings}
    readings |= {re.sub(";[^/]*", "", r) for r in readings}
    readings |= {re.sub("[ \x00]+(?=/|$)", "", r) for r in readings}
    readings |= {r.replace("\uff0e", ".") for r in readings}
    return {_remove_dot_segments(r) for r in readings}


def _stays_under(path: str, prefix: str = "/v2/") -> bool:
    """Whether every server reading of ``path`` (a path, no query) is under ``prefix``."""
    return all(reading.startswith(prefix) for reading in _server_readings(path))


def _path_of(url: str) -> str:
    return urllib.parse.urlsplit(url).path


def _on_api_origin_under_its_path(url: str) -> bool:
    """Where the token may go, decided by parsing rather than by the session's code."""
    parts = urllib.parse.urlsplit(url)
    return (
        origin(url) == ("https", "api.example.com", 443)
        and parts.username is None
        and _stays_under(parts.path)
    )


@settings(max_examples=500, deadline=None, derandomize=True)
@given(scheme=_schemes, userinfo=_userinfo, host=_hosts, port=_ports, path=_paths)
@example(scheme="https", userinfo="", host="api.example.com", port="", path="v2/employees")
@example(scheme="https", userinfo="", host="api.example.com", port="", path="v2/")
@example(scheme="https", userinfo="", host="api.example.com", port="", path="v2x/employees")
@example(scheme="https", userinfo="", host="api.example.com.evil.net", port="", path="v2/")
@example(scheme="https", userinfo="", host="api.example.com", port="", path="v2/../v3/secret")
@example(scheme="https", userinfo="", host="api.example.com", port="", path="v2/%2e%2e/v3")
@example(scheme="https", userinfo="", host="api.example.com", port="", path="v2/.%2E/v3")
@example(scheme="https", userinfo="", host="api.example.com", port="", path="v2/..%2fv3")
@example(scheme="https", userinfo="", host="api.example.com", port="", path="v2/..\\v3")
@example(scheme="https", userinfo="", host="api.example.com", port="", path="v2/..;/v3")
@example(scheme="https", userinfo="", host="api.example.com", port="", path="v2/%252e%252e/v3")
@example(scheme="https", userinfo="", host="api.example.com", port="", path="v2/x/../y")
@example(scheme="https", userinfo="", host="api.example.com", port="", path="v2/report.v3.csv")
def test_the_token_goes_to_every_url_under_api_url_and_nowhere_else(
    scheme: str, userinfo: str, host: str, port: str, path: str
) -> None:
    url = f"{scheme}://{userinfo}{host}{port}/{path}"
    capture = _Capture()
    with session_for_api("https://api.example.com/v2") as session:
        session.mount("https://", capture)
        session.mount("http://", capture)
        try:
            session.get(url, allow_redirects=False)
        except (requests.RequestException, ValueError, UnicodeError):
            # requests refused to build the request: then nothing at all was sent.
            assert capture.sent == []
            return
    [sent] = capture.sent
    # A user name in the URL becomes the user's own Basic auth: not our token.
    carries_token = sent.headers.get("Authorization") == f"Bearer {ACCESS}"
    if carries_token:  # never anywhere a server could read as outside api_url
        assert _on_api_origin_under_its_path(sent.url or ""), sent.url
    decoded_path = _path_of(url)
    while decoded_path != urllib.parse.unquote(decoded_path):
        decoded_path = urllib.parse.unquote(decoded_path)
    if url.startswith("https://api.example.com/v2/") and not set(".\\%") & set(decoded_path):
        assert carries_token, url  # always where it belongs


# -- dot-segments: the URL as sent, not as written (issue 10, bug 9) ---------------

# Each leads out of /v2/ for some server: RFC 3986 normalisation after requests has
# decoded %2e, an encoded or back slash read as a slash, a double decode, IIS's %u,
# Tomcat's "..;", a NUL or blank trimmed off a segment, NFKC's full-width dot.
ESCAPES = [
    "../v3/secret",
    "%2e%2e/v3/secret",
    "%2E%2E/v3/secret",
    ".%2e/v3/secret",
    "%2e./v3/secret",
    "a/%2e%2e/%2e%2e/v3/secret",
    "%2e%2e",
    "%2e%2e?page=1",
    "..%2fv3/secret",
    "..%2Fv3/secret",
    "..\\v3\\secret",
    "..%5cv3/secret",
    "%252e%252e/v3/secret",
    "..;/v3/secret",
    "%2e%2e;x=1/v3/secret",
    "%u002e%u002e/v3/secret",
    "x/a%2fb/%2e%2e/%2e%2e/%2e%2e/v3/secret",
    "/%2e%2e/v3/secret",
    "..%00/v3/secret",
    "..%20/v3/secret",
    "%ef%bc%8e%ef%bc%8e/v3/secret",
]
# Dots that stay inside: requests removes the plain ones before sending, or they are
# no dot-segment at all, or they sit in the query or fragment.
INSIDE = [
    "employees",
    "a/../employees",
    "./employees",
    "files/report.v3.csv",
    "files/..hidden",
    "files/a%2Fb",
    "search?next=../../v3/secret",
    "employees#../../v3/secret",
]


@pytest.mark.parametrize("form", ["relative", "absolute"])
@pytest.mark.parametrize("path", ESCAPES)
def test_a_path_that_dot_segments_lead_out_of_api_url_gets_no_token(
    recorders: tuple[_Recorder, _Recorder], api_session: PleoSession, path: str, form: str
) -> None:
    api, _ = recorders
    url = path if form == "relative" else f"{api.url}/v2/{path}"
    api_session.get(url)
    with api.lock:
        [(_, received, authorization)] = api.seen
    assert not _stays_under(_path_of(received))  # the escape is real: it did leave /v2/
    assert authorization is None


@pytest.mark.parametrize("path", INSIDE)
def test_a_path_with_dots_that_stays_under_api_url_keeps_the_token(
    recorders: tuple[_Recorder, _Recorder], api_session: PleoSession, path: str
) -> None:
    api, _ = recorders
    api_session.get(path)
    with api.lock:
        [(_, received, authorization)] = api.seen
    assert _stays_under(_path_of(received))
    assert authorization == f"Bearer {ACCESS}"


@pytest.mark.parametrize(
    "target", ["/v2/../v3/secret", "/v2/%2e%2e/v3/secret", "/v2/..%2fv3/secret", "/v2/..;/v3"]
)
def test_a_redirect_whose_dot_segments_lead_out_of_api_url_does_not_carry_the_token(
    recorders: tuple[_Recorder, _Recorder], api_session: PleoSession, target: str
) -> None:
    api, _ = recorders
    location = urllib.parse.quote(api.url + target, safe="")
    api_session.get(f"/redirect?code=307&to={location}")
    with api.lock:
        [first, (_, received, authorization)] = api.seen
    assert first[2] == f"Bearer {ACCESS}"
    assert not _stays_under(_path_of(received))
    assert authorization is None


@pytest.mark.parametrize(
    "api_url",
    [
        "https://api.example.com/v2/../v3",
        "https://api.example.com/v2/.",
        "https://api.example.com/%2e%2e/v2",
        "https://api.example.com/v2?x=1",
        "https://api.example.com/v2#x",
    ],
)
def test_an_api_url_with_dot_segments_a_query_or_a_fragment_is_refused(api_url: str) -> None:
    with pytest.raises(ConfigurationError, match="api_url must be a plain base URL"):
        session_for_api(api_url)


def test_an_api_url_written_in_capitals_still_gets_the_token() -> None:
    capture = _Capture()
    with session_for_api("HTTPS://API.Example.com/v2") as session:
        session.mount("https://", capture)
        session.get("/employees")
        session.get("https://api.example.com/v2/companies")
    assert [sent.url for sent in capture.sent] == [
        "https://api.example.com/v2/employees",
        "https://api.example.com/v2/companies",
    ]
    assert [sent.headers.get("Authorization") for sent in capture.sent] == [
        f"Bearer {ACCESS}",
    ] * 2
