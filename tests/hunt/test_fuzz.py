"""Bad input, fuzzed with hypothesis: nothing crashes with anything but a PleoAuthError.

Four kinds of input come from outside the program: what a store holds, the
callback URL a browser brings back, the settings in flags and the environment,
and the arguments of the public constructors. For each, every example must end
in a valid result or in a ``PleoAuthError`` subclass whose message is one
printable line, short, and free of tokens, codes, verifiers and secrets. Where
the right answer is known (a valid document, a matching callback) the test
computes it independently and pins it.

Token-endpoint replies are fuzzed beside the endpoint's own tests.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import re
import tempfile
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import responses
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pleo_auth import (
    AuthorizationError,
    ConfigurationError,
    FileStore,
    KeyringStore,
    MemoryStore,
    PleoAuthError,
    PleoSession,
    TokenSet,
    TokenStoreError,
)
from pleo_auth._endpoint import TokenEndpoint
from pleo_auth.cli import main
from pleo_auth.flow import AuthorizationFlow, PendingAuthorization
from pleo_auth.stores.base import decode_tokens, encode_tokens
from pleo_auth.stores.spec import store_from_spec

# Deterministic in CI, quick by default: the whole file runs in a few seconds.
FUZZ = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FEW = settings(FUZZ, max_examples=40)


def sentinel(kind: str, length: int = 0) -> str:
    """A distinctive secret. Built at run time, never written out whole in a source
    file, so hypothesis (which draws text from the constants it finds in source
    code) cannot hand it back as an arbitrary value in the wrong place."""
    return "-".join([kind, "SENTINEL", hashlib.sha256(kind.encode()).hexdigest()[:8]]).ljust(
        length, "v"
    )


# If one of these shows up in an error, a secret leaked.
ACCESS = sentinel("at")
REFRESH = sentinel("rt")
CLIENT_SECRET = sentinel("cs")
CODE = sentinel("code")
STATE = sentinel("state")
VERIFIER = sentinel("verifier", 60)
PASSWORD = sentinel("pw")
SECRETS = (ACCESS, REFRESH, CLIENT_SECRET, CODE, VERIFIER, PASSWORD)

REDIRECT_URI = "http://127.0.0.1:8765/callback"
TOKEN_URL = "https://auth.example.test/oauth/token"


def error_texts(exc: BaseException) -> Iterator[str]:
    """Everything a traceback or a log line could show of ``exc`` and its causes."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield str(current)
        yield repr(current)
        if current.__cause__ is not None:
            current = current.__cause__
        elif not current.__suppress_context__:
            current = current.__context__
        else:
            current = None


def attempt(call: Callable[[], Any], *errors: type[BaseException]) -> Any:
    """``call()``'s result, or the exception of one of ``errors`` that it raised."""
    try:
        return call()
    except errors as exc:
        return exc


def assert_clear(exc: BaseException, *secrets: str) -> None:
    """A message a person can act on: one printable line, not huge, no secret anywhere."""
    message = str(exc)
    assert isinstance(exc, PleoAuthError), f"{type(exc).__name__} is not a PleoAuthError"
    assert message.strip(), f"{type(exc).__name__} has an empty message"
    assert message.isprintable(), f"not one printable line: {message!r}"
    assert len(message) <= 600, f"{len(message)} characters: {message[:120]!r}..."
    for text in error_texts(exc):
        for secret in secrets:
            assert secret not in text, f"{type(exc).__name__} shows a secret: {text[:200]!r}"


# -- stored JSON ------------------------------------------------------------------------

FIELDS = ("access_token", "refresh_token", "expires_at", "token_type", "scope", "issued_at")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
odd_values = json_values | st.sampled_from(
    [10**400, -(10**400), math.nan, math.inf, -math.inf, "1e9", "", " ", True, 0, -1.5, [], {}]
)


@st.composite
def saved_documents(draw: st.DrawFn) -> Any:
    """A saved TokenSet with some fields dropped or replaced, sometimes not an object."""
    doc: dict[str, Any] = {
        "access_token": ACCESS,
        "refresh_token": REFRESH,
        "expires_at": 1.7e9,
        "token_type": "Bearer",
        "scope": "users:read",
        "issued_at": 1.7e9 - 900,
    }
    for name in draw(st.lists(st.sampled_from(FIELDS), unique=True, max_size=3)):
        if draw(st.booleans()):
            del doc[name]
        else:
            doc[name] = draw(odd_values)
    extras = draw(st.dictionaries(st.text(max_size=8), json_values, max_size=2))
    doc.update({key: value for key, value in extras.items() if key not in FIELDS})
    return draw(st.just(doc) | st.just([doc]) | st.just({"tokens": doc}))


def _number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def expected_tokens(doc: Any) -> TokenSet | None:
    """What a saved document means, by the rules decode_tokens pins; None: not tokens."""
    if not isinstance(doc, dict):
        return None
    access, refresh = doc.get("access_token"), doc.get("refresh_token")
    token_type, scope = doc.get("token_type"), doc.get("scope")
    issued_at = doc.get("issued_at")
    if not (isinstance(access, str) and access and isinstance(refresh, str) and refresh):
        return None
    if not _number(doc.get("expires_at")):
        return None
    if token_type is not None and not (isinstance(token_type, str) and token_type):
        return None
    if scope is not None and not isinstance(scope, str):
        return None
    if issued_at is not None and not _number(issued_at):
        return None
    return TokenSet(
        access_token=access,
        refresh_token=refresh,
        expires_at=float(doc["expires_at"]),
        token_type=token_type or "Bearer",
        scope=scope,
        issued_at=None if issued_at is None else float(issued_at),
    )


def dumped(doc: Any) -> str:
    return json.dumps(doc)


@st.composite
def torn(draw: st.DrawFn, text: str) -> str:
    """``text`` cut short, as a crash mid-write would leave it."""
    return text[: draw(st.integers(0, max(len(text) - 1, 0)))]


stored_text = st.one_of(
    saved_documents().map(dumped),
    saved_documents().map(dumped).flatmap(lambda text: torn(text)),
    json_values.map(dumped),
    st.text(max_size=80),
)
stored_bytes = st.one_of(
    stored_text.map(lambda text: text.encode("utf-8", "surrogatepass")),
    st.binary(max_size=120),
)

DEEP = ["[" * 100_000, '{"a":' * 50_000, "[" * 100_000 + "]" * 100_000]


def check_decoded(raw: str | bytes, where: str, load: Any) -> None:
    """``load()`` gives the document's tokens, or a TokenStoreError that names ``where``."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        expected = None
    else:
        expected = expected_tokens(doc)
    outcome = attempt(load, TokenStoreError)
    if isinstance(outcome, TokenStoreError):
        assert expected is None, f"refused a valid document: {outcome}"
        assert where in str(outcome)
        assert_clear(outcome, ACCESS, REFRESH)
    else:
        assert outcome == expected


@FUZZ
@given(doc=saved_documents())
def test_decode_tokens_pins_which_documents_are_tokens(doc: Any) -> None:
    raw = dumped(doc)
    check_decoded(raw, "the test store", lambda: decode_tokens(raw, "the test store"))


@FUZZ
@given(raw=stored_text | stored_bytes)
@example(DEEP[0])
@example(DEEP[1])
@example(DEEP[2].encode())
@example('{"access_token": "a", "refresh_token": "r", "expires_at": 1' + "0" * 400 + "}")
@example(b"\xff\xfe\x00\xd8")
@example("")
def test_decode_tokens_of_garbage_is_a_token_store_error_naming_the_source(
    raw: str | bytes,
) -> None:
    check_decoded(raw, "the test store", lambda: decode_tokens(raw, "the test store"))


@FUZZ
@given(
    access=st.text(min_size=1),
    refresh=st.text(min_size=1),
    expires_at=st.floats(allow_nan=False, allow_infinity=False),
    token_type=st.text(min_size=1),
    scope=st.none() | st.text(),
    issued_at=st.none() | st.floats(allow_nan=False, allow_infinity=False),
)
def test_every_token_set_survives_encode_and_decode(
    access: str,
    refresh: str,
    expires_at: float,
    token_type: str,
    scope: str | None,
    issued_at: float | None,
) -> None:
    # The sentinels keep a token from turning up by chance in the type or scope.
    tokens = TokenSet(ACCESS + access, REFRESH + refresh, expires_at, token_type, scope, issued_at)
    assert decode_tokens(encode_tokens(tokens), "x") == tokens
    assert decode_tokens(encode_tokens(tokens).encode(), "x") == tokens


@FEW
@given(content=stored_bytes)
@example(b"")
@example(DEEP[0].encode())
def test_a_file_store_holding_garbage_raises_token_store_error_naming_the_file(
    content: bytes,
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "tokens.json"
        path.write_bytes(content)
        path.chmod(0o600)
        check_decoded(content, str(path), FileStore(path).load)


def test_a_directory_at_the_token_path_is_a_token_store_error() -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "tokens.json"
        path.mkdir(mode=0o700)
        with pytest.raises(TokenStoreError, match=re.escape(str(path))) as caught:
            FileStore(path).load()
        assert_clear(caught.value)


def test_a_fifo_at_the_token_path_is_refused_without_blocking() -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "tokens.json"
        os.mkfifo(path, 0o600)
        outcome: list[BaseException | TokenSet | None] = []

        def load() -> None:
            try:
                outcome.append(FileStore(path).load())
            except BaseException as exc:
                outcome.append(exc)

        reader = threading.Thread(target=load, daemon=True)
        reader.start()
        reader.join(30)  # bounds a failure only: a correct load returns at once
        if reader.is_alive():
            with open(path, "wb"):  # unblock the stuck open() so the thread can end
                pass
            reader.join(30)
            pytest.fail("FileStore.load() blocked on a FIFO")
        assert len(outcome) == 1
        assert isinstance(outcome[0], TokenStoreError), outcome
        assert str(path) in str(outcome[0])
        assert_clear(outcome[0])


@contextlib.contextmanager
def plaintext_keyring() -> Iterator[tuple[Any, Path]]:
    """A real keyrings.alt file backend in a private directory, and that directory."""
    from keyrings.alt.file import PlaintextKeyring

    with tempfile.TemporaryDirectory() as directory:
        backend = PlaintextKeyring()
        backend.file_path = str(Path(directory) / "keyring.cfg")  # type: ignore[misc]
        yield backend, Path(directory)


# The keyring API takes text; lone surrogates cannot even be saved.
keyring_text = stored_text.filter(lambda text: not re.search("[\ud800-\udfff]", text))


@FEW
@given(entry=keyring_text)
@example("")
def test_a_keyring_entry_holding_garbage_raises_token_store_error_naming_the_entry(
    entry: str,
) -> None:
    with plaintext_keyring() as (backend, directory):
        backend.set_password("pleo-auth", "acct", entry)
        store = KeyringStore(account="acct", backend=backend, state_dir=directory / "state")
        check_decoded(entry, "keyring entry pleo-auth/acct", store.load)


@FUZZ
@given(
    content=st.binary(max_size=200)
    | st.sampled_from([b"no section\n", b"[pleo-2dauth\nacct = x\n", b"acct = c2VjcmV0\n"])
)
def test_a_keyring_file_holding_garbage_is_a_clear_token_store_error(content: bytes) -> None:
    with plaintext_keyring() as (backend, directory):
        Path(backend.file_path).write_bytes(content)
        store = KeyringStore(account="acct", backend=backend, state_dir=directory / "state")
        outcome = attempt(store.load, TokenStoreError)
    if isinstance(outcome, TokenStoreError):
        assert_clear(outcome, "c2VjcmV0")
    else:
        assert outcome is None


@FEW
@given(raw=stored_bytes, as_string=st.booleans())
@example(raw=b"", as_string=False)
def test_redis_holding_garbage_raises_token_store_error_naming_the_key(
    redis_url: str, raw: bytes, as_string: bool
) -> None:
    from pleo_auth.stores.redis import RedisStore

    store = RedisStore(redis_url, key="fuzz:tokens")
    client = store._client
    client.delete("fuzz:tokens")
    try:
        if as_string:
            # Something else wrote a plain string under our key: Redis says WRONGTYPE.
            client.set("fuzz:tokens", raw)
            with pytest.raises(TokenStoreError, match="fuzz:tokens") as caught:
                store.load()
            assert_clear(caught.value, ACCESS, REFRESH)
        else:
            client.hset("fuzz:tokens", "tokens", raw)
            check_decoded(raw, "key 'fuzz:tokens'", store.load)
    finally:
        client.delete("fuzz:tokens")
        client.close()


# -- callback URLs ------------------------------------------------------------------------

PENDING = PendingAuthorization(
    url="https://auth.pleo.io/oauth/authorize?state=" + STATE,
    state=STATE,
    code_verifier=VERIFIER,
    redirect_uri=REDIRECT_URI,
    scope="users:read",
)
TOKEN_REPLY = {
    "access_token": ACCESS,
    "refresh_token": REFRESH,
    "expires_in": 900,
    "token_type": "Bearer",
}
_VSCHAR = re.compile(r"[\x20-\x7e]+")
_CALLBACK_NAMES = ("state", "code", "error", "error_description")


def make_flow() -> AuthorizationFlow:
    return AuthorizationFlow(
        "client-1",
        CLIENT_SECRET,
        redirect_uri=REDIRECT_URI,
        store=MemoryStore(),
        token_url=TOKEN_URL,
    )


huge = st.builds(
    lambda unit, count: unit * count,
    st.sampled_from(["x", "%", "%zz", "é", "&"]),
    st.integers(1000, 60_000),
)
# Values by parameter. Only codes carrying the CODE sentinel can be exchanged, so a
# code the leak guard learns never turns up by chance in another example's error.
_state_values = st.one_of(
    st.sampled_from([STATE, STATE + "x", STATE.upper(), ""]), st.text(max_size=20), huge
)
_code_values = st.one_of(
    st.sampled_from([CODE, "", "%ff%00", "%0a"]),
    st.text(max_size=12).map(lambda tail: CODE + tail),
    st.text(max_size=12).filter(lambda text: not _VSCHAR.fullmatch(text)),
    huge.map(lambda tail: CODE + tail),
)
_other_values = st.one_of(
    st.sampled_from(["access_denied", "", "server_error"]), st.text(max_size=20), huge
)


def values_for(name: str) -> st.SearchStrategy[str]:
    return {"state": _state_values, "code": _code_values}.get(name, _other_values)


param_names = st.sampled_from(["state", "code", "error", "error_description", "iss"]) | st.text(
    max_size=6
).filter(lambda name: name not in ("state", "code"))
callback_params = param_names.flatmap(lambda name: st.tuples(st.just(name), values_for(name)))
bases = st.sampled_from(
    [REDIRECT_URI, "", "https://evil.example/cb", "/callback", "http://[::1", "http://[x/cb"]
)


@st.composite
def callback_urls(draw: st.DrawFn) -> str:
    pairs = draw(st.lists(callback_params, max_size=6))
    encoding = draw(st.sampled_from(["form", "raw", "mangled"]))
    if encoding == "form":
        query = urllib.parse.urlencode(pairs, errors="surrogatepass")
    else:
        query = "&".join(f"{name}={value}" for name, value in pairs)
        if encoding == "mangled" and query:
            at = draw(st.integers(0, len(query)))
            garbage = draw(st.sampled_from(["%", "%z", "%ff", "%c3%28", "#", "?"]))
            query = query[:at] + garbage + query[at:]
    separator = draw(st.sampled_from(["?", "?", "#", "?x=1&", ""]))
    return draw(bases) + separator + query


def expected_code(params: list[tuple[str, Any]] | None) -> str | None:
    """The code a careful flow exchanges for these callback parameters, or None: refuse."""
    if params is None:
        return None

    def values(name: str) -> list[Any]:
        return [value for key, value in params if key == name]

    if any(not isinstance(value, str) for name in _CALLBACK_NAMES for value in values(name)):
        return None
    codes = values("code")
    if values("state") != [STATE] or values("error") or len(codes) != 1:
        return None
    if len(values("error_description")) > 1 or not _VSCHAR.fullmatch(codes[0]):
        return None
    code: str = codes[0]
    return code


def url_params(callback: str) -> list[tuple[str, Any]] | None:
    try:
        query = urllib.parse.urlsplit(callback).query
    except ValueError:
        return None
    return urllib.parse.parse_qsl(query, keep_blank_values=True)


def check_finish(callback: Any, expected: str | None, **kwargs: Any) -> None:
    """Finish a login with ``callback``: exchange ``expected``, or refuse and send nothing."""
    flow = make_flow()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.post(TOKEN_URL, json=TOKEN_REPLY)
        outcome = attempt(
            lambda: flow.finish(PENDING, callback, **kwargs),
            AuthorizationError,
            ConfigurationError,
        )
        calls = list(mock.calls)  # the mock forgets them on exit
    if isinstance(outcome, PleoAuthError):
        assert expected is None, f"refused a good callback: {outcome}"
        assert_clear(outcome, CLIENT_SECRET, VERIFIER, CODE)
        assert len(calls) == 0, "a refused callback reached the token endpoint"
    else:
        assert expected is not None, "a bad callback was exchanged"
        assert len(calls) == 1
        body = urllib.parse.parse_qs(str(calls[0].request.body))
        assert body["code"] == [expected]
        assert body["code_verifier"] == [VERIFIER]
        assert outcome.access_token == ACCESS


@FUZZ
@given(callback=callback_urls() | st.text(max_size=60))
@example(f"{REDIRECT_URI}?state={STATE}&code={CODE}")
@example(f"{REDIRECT_URI}?state={STATE}&code={CODE}&state=other")
@example(f"{REDIRECT_URI}?state=other&state={STATE}&code={CODE}")
@example(f"{REDIRECT_URI}?state={STATE}&code=a&code={CODE}")
@example(f"{REDIRECT_URI}?state={STATE}&code={CODE}&error=")
@example(f"{REDIRECT_URI}?state={STATE}&error=access_denied&error_description=a%0Ab%00c")
@example(f"{REDIRECT_URI}?state=%ED%A0%80&code={CODE}")
@example(f"{REDIRECT_URI}?state={STATE}&code=%ff%00")
@example(f"http://[::1?state={STATE}&code={CODE}")
def test_a_callback_url_is_exchanged_only_when_its_state_matches(callback: str) -> None:
    check_finish(callback, expected_code(url_params(callback)))


class MultiDict(Mapping[str, str]):
    """Query parameters as web frameworks give them: first value by key, all by getlist."""

    def __init__(self, pairs: list[tuple[str, str]]):
        self._pairs = pairs

    def __getitem__(self, key: str) -> str:
        for name, value in self._pairs:
            if name == key:
                return value
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(name for name, _ in self._pairs))

    def __len__(self) -> int:
        return len(dict.fromkeys(name for name, _ in self._pairs))

    def getlist(self, key: str) -> list[str]:
        return [value for name, value in self._pairs if name == key]


def odd_values_for(name: str) -> st.SearchStrategy[Any]:
    good = values_for(name)
    return good | st.integers() | st.none() | st.lists(good, max_size=2)


callback_mappings = st.fixed_dictionaries(
    {}, optional={name: odd_values_for(name) for name in [*_CALLBACK_NAMES, "iss"]}
)


@FUZZ
@given(params=callback_mappings)
@example({"state": STATE, "code": CODE})
@example({"state": [STATE], "code": [CODE]})
@example({"state": STATE, "code": 12345})
@example({"state": 7, "code": CODE})
def test_callback_parameters_as_a_mapping_are_checked_like_a_url(params: dict[str, Any]) -> None:
    check_finish(params, expected_code(list(params.items())))


@FUZZ
@given(pairs=st.lists(callback_params, max_size=6))
@example([("state", STATE), ("code", CODE)])
@example([("state", STATE), ("code", CODE), ("state", "forged")])
@example([("state", "forged"), ("state", STATE), ("code", CODE)])
@example([("state", STATE), ("code", CODE), ("code", "other")])
def test_repeated_callback_parameters_in_a_multidict_are_refused(
    pairs: list[tuple[str, str]],
) -> None:
    check_finish(MultiDict(pairs), expected_code(pairs))


@FUZZ
@given(
    callback=st.one_of(
        st.binary(max_size=20), st.integers(), st.lists(st.text(max_size=5), max_size=3)
    )
)
def test_a_callback_of_the_wrong_type_is_a_configuration_error(callback: Any) -> None:
    check_finish(callback, None)


@FUZZ
@given(code=st.none() | st.integers() | _code_values | st.binary(max_size=8))
@example(CODE)
@example("")
def test_a_pasted_code_is_exchanged_only_when_it_is_well_formed(code: Any) -> None:
    good = isinstance(code, str) and _VSCHAR.fullmatch(code) is not None
    flow = make_flow()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.post(TOKEN_URL, json=TOKEN_REPLY)
        outcome = attempt(
            lambda: flow.finish(PENDING, code=code), AuthorizationError, ConfigurationError
        )
        calls = list(mock.calls)  # the mock forgets them on exit
    if isinstance(outcome, PleoAuthError):
        assert not good, f"refused a good code: {outcome}"
        assert_clear(outcome, CLIENT_SECRET, VERIFIER, CODE)
        assert len(calls) == 0
    else:
        assert good
        assert len(calls) == 1


PENDING_FIELDS = ("url", "state", "code_verifier", "redirect_uri", "scope")


@st.composite
def saved_pendings(draw: st.DrawFn) -> Any:
    data: dict[str, Any] = dict(PENDING.to_dict())
    for name in draw(st.lists(st.sampled_from(PENDING_FIELDS), unique=True, max_size=2)):
        if draw(st.booleans()):
            del data[name]
        else:
            data[name] = draw(
                odd_values
                | st.sampled_from(
                    ["http://[::1", "ftp://x/cb", "http://h:99999/cb", "x" * 42, "~" * 129]
                )
            )
    return draw(st.just(data) | st.just([data]) | json_values)


def expected_pending(data: Any) -> PendingAuthorization | None:
    if not isinstance(data, dict) or not all(
        isinstance(data.get(name), str) for name in PENDING_FIELDS[:4]
    ):
        return None
    if data.get("scope") is not None and not isinstance(data["scope"], str):
        return None
    if not re.fullmatch(r"[A-Za-z0-9\-._~]{43,128}", data["code_verifier"]):
        return None
    if not re.fullmatch(r"[A-Za-z0-9\-._~]{16,256}", data["state"]):
        return None
    parts = urllib.parse.urlsplit(data["redirect_uri"]) if "[" not in data["redirect_uri"] else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    try:
        parts.port  # noqa: B018 - a port out of range raises
    except ValueError:
        return None
    return PendingAuthorization(**{name: data.get(name) for name in PENDING_FIELDS})


@FUZZ
@given(data=saved_pendings())
@example(PENDING.to_dict())
@example({**PENDING.to_dict(), "redirect_uri": "http://[::1"})
@example({**PENDING.to_dict(), "code_verifier": ["x"]})
def test_a_saved_pending_authorization_is_rebuilt_or_refused(data: Any) -> None:
    expected = expected_pending(data)
    pending = attempt(lambda: PendingAuthorization.from_dict(data), AuthorizationError)
    if isinstance(pending, AuthorizationError):
        assert expected is None, f"refused a good pending login: {pending}"
        assert_clear(pending, VERIFIER)
    else:
        assert pending == expected
    # finish() takes the dict too, and refuses a bad one before sending anything.
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.post(TOKEN_URL, json=TOKEN_REPLY)
        outcome = attempt(lambda: make_flow().finish(data, code=CODE), AuthorizationError)
        calls = list(mock.calls)  # the mock forgets them on exit
    if isinstance(outcome, AuthorizationError):
        assert expected is None
        assert_clear(outcome, VERIFIER, CODE, CLIENT_SECRET)
        assert len(calls) == 0
    else:
        assert expected is not None
        assert len(calls) == 1


# -- settings ---------------------------------------------------------------------------

hosts = st.sampled_from(
    ["127.0.0.1", "localhost", "[::1]", "auth.example.test", "", "[", "exa mple", "h\x00", "é.test"]
)
ports = st.sampled_from(["", ":443", ":0", ":99999", ":abc", ":-1", ":"])


@st.composite
def url_like(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["https://", "http://", "HTTPS://", "ftp://", "", "https:"]))
    path = draw(st.sampled_from(["/oauth/token", "", "/", "/x#frag", "/x?q=1"]))
    return scheme + draw(hosts) + draw(ports) + path


odd_settings = st.one_of(
    st.floats(),
    st.integers(-(10**6), 10**6),
    st.booleans(),
    st.none(),
    st.text(max_size=10),
    st.sampled_from(["", "10", "nan", "inf", b"5", [], {}, [1], 10**400]),
)
NUMERIC = {
    # name: (lowest valid, whether the lowest is allowed, integers only)
    "refresh_margin": (0.0, True, False),
    "drain_timeout": (0.0, True, False),
    "max_refresh_time": (0.0, False, False),
    "refresh_timeout": (0.0, False, False),
    "max_refresh_attempts": (1, True, True),
}


def valid_number(name: str, value: Any) -> bool:
    """Of the right type and in range: never refused when at most :data:`SANE`
    seconds; above it, refused or accepted, but never a crash, even at close()."""
    low, inclusive, integral = NUMERIC[name]
    if integral:
        return type(value) is int and value >= low
    if not _number(value):
        return False
    return bool(value >= low if inclusive else value > low)


SANE = 1e6


def check_number_setting(name: str, value: Any, outcome: object, built_type: type) -> None:
    if not valid_number(name, value):
        assert isinstance(outcome, ConfigurationError), f"{name}={value!r} was accepted"
        assert name in str(outcome)
    elif NUMERIC[name][2] or value <= SANE:
        assert isinstance(outcome, built_type), outcome


def well_formed_https(url: Any) -> bool:
    """An https URL on a plain host: every constructor must take it."""
    return isinstance(url, str) and bool(
        re.fullmatch(r"https://(127\.0\.0\.1|localhost|auth\.example\.test)(:443)?/[a-z/]*", url)
    )


def unusable_url(url: Any) -> bool:
    """A URL no constructor may accept: not text, not http(s), no host, or a bad port."""
    if not isinstance(url, str):
        return True
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018
    except ValueError:
        return True
    return parts.scheme not in ("http", "https") or not parts.hostname


@contextlib.contextmanager
def built(factory: Any) -> Iterator[Any]:
    """Build with ``factory``; yield the object or the ConfigurationError; close what was built."""
    made = attempt(factory, ConfigurationError)
    if isinstance(made, ConfigurationError):
        assert_clear(made, CLIENT_SECRET)
        yield made
        return
    try:
        yield made
    finally:
        made.close()


def session(**kwargs: Any) -> PleoSession:
    kwargs.setdefault("token_url", TOKEN_URL)
    kwargs.setdefault("api_url", "https://external.example.test")
    client_id = kwargs.pop("client_id", "client-1")
    return PleoSession(client_id, CLIENT_SECRET, store=MemoryStore(), **kwargs)


@FUZZ
@given(name=st.sampled_from(sorted(NUMERIC)), value=odd_settings)
def test_odd_numeric_session_settings_are_configuration_errors(name: str, value: Any) -> None:
    with built(lambda: session(**{name: value})) as outcome:
        check_number_setting(name, value, outcome, PleoSession)


@FUZZ
@given(
    name=st.sampled_from(["token_url", "api_url", "client_id", "environment"]),
    value=url_like() | odd_settings | st.sampled_from(["\udcff", "staging", "production", [""]]),
)
def test_odd_session_urls_ids_and_environments_are_configuration_errors(
    name: str, value: Any
) -> None:
    with built(lambda: session(**{name: value})) as outcome:
        if name in ("token_url", "api_url"):
            if well_formed_https(value) or value in (None, ""):  # None, "": the default
                assert isinstance(outcome, PleoSession), outcome
            elif unusable_url(value):
                assert isinstance(outcome, ConfigurationError), f"{name}={value!r} was accepted"
        elif name == "client_id":
            good = isinstance(value, str) and value.isprintable() and value
            assert isinstance(outcome, PleoSession if good else ConfigurationError), value
        else:
            good = value in ("production", "staging")
            assert isinstance(outcome, PleoSession if good else ConfigurationError), value


@FUZZ
@given(
    name=st.sampled_from(["token_url", "timeout", "max_attempts", "max_time"]),
    value=url_like() | odd_settings,
)
def test_odd_token_endpoint_settings_are_configuration_errors(name: str, value: Any) -> None:
    kwargs: dict[str, Any] = {"token_url": TOKEN_URL, name: value}
    token_url = kwargs.pop("token_url")
    with built(lambda: TokenEndpoint(token_url, "client-1", CLIENT_SECRET, **kwargs)) as outcome:
        if name == "token_url":
            if well_formed_https(value):
                assert isinstance(outcome, TokenEndpoint)
            elif unusable_url(value):
                assert isinstance(outcome, ConfigurationError)
        else:
            session_name = {"timeout": "refresh_timeout", "max_attempts": "max_refresh_attempts"}
            check_number_setting(
                session_name.get(name, "max_refresh_time"), value, outcome, TokenEndpoint
            )


@pytest.mark.parametrize("url", ["http://h\x00/oauth/token", "http://h\x1b/oauth/token"])
def test_a_plain_http_url_with_a_control_character_is_refused_on_one_line(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        TokenEndpoint(url, "client-1", CLIENT_SECRET)
    assert_clear(caught.value)


FLOW_TEXT_SETTINGS = ("client_id", "redirect_uri", "token_url", "authorize_url", "environment")


# Secrets get values of their own: the leak guard remembers every client secret a
# test passes, and one must not turn up as another example's (echoed) environment.
secret_settings = st.one_of(
    st.none(),
    st.integers(),
    st.sampled_from(["", b"bytes"]),
    st.text(max_size=6).map(lambda tail: CLIENT_SECRET + tail),
)
flow_settings = st.sampled_from(
    [*FLOW_TEXT_SETTINGS, "subject", "scopes", "client_auth", "client_secret"]
).flatmap(
    lambda name: st.tuples(
        st.just(name),
        secret_settings
        if name == "client_secret"
        else url_like() | odd_settings | st.sampled_from(["\udcff", "staging", [""], ["a b", 3]]),
    )
)


@FUZZ
@given(setting=flow_settings)
def test_odd_flow_settings_are_configuration_errors(setting: tuple[str, Any]) -> None:
    name, value = setting
    kwargs: dict[str, Any] = {
        "client_id": "client-1",
        "client_secret": CLIENT_SECRET,
        "redirect_uri": REDIRECT_URI,
        "store": MemoryStore(),
        "token_url": TOKEN_URL,
        name: value,
    }
    flow = attempt(lambda: AuthorizationFlow(**kwargs), ConfigurationError)
    if isinstance(flow, ConfigurationError):
        assert_clear(flow, CLIENT_SECRET)
        if name in ("redirect_uri", "authorize_url", "token_url"):
            assert not well_formed_https(value), f"refused {name}={value!r}"
        return
    if name in ("redirect_uri", "token_url", "authorize_url") and value not in (None, ""):
        assert not unusable_url(value), f"accepted {name}={value!r}"
    if name in ("client_id", "client_secret", "subject") and value is not None:
        assert isinstance(value, str)
        assert value
        assert not re.search("[\ud800-\udfff]", value)
    if name == "client_id":
        assert value  # None is no client id either
    if name == "environment":
        assert value in ("production", "staging")
    # A flow that was built can start a login: nothing is left to fail later.
    pending = flow.start()
    assert pending.url.startswith(("http://", "https://"))


# -- store specs and the command line -----------------------------------------------------


@st.composite
def redis_specs(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["redis://", "rediss://", "unix://", "REDIS://", "redis:"]))
    userinfo = draw(st.sampled_from(["", f":{PASSWORD}@", f"alice:{PASSWORD}@", "alice@", "@"]))
    host = draw(st.sampled_from(["127.0.0.1", "cache", "[::1]", "", "[", "/run/redis.sock"]))
    port = draw(st.sampled_from(["", ":6379", ":0", ":99999", ":x"]))
    path = draw(st.sampled_from(["", "/", "/0", "/15", "/x", "/²", "/0/1"]))
    query = draw(
        st.lists(
            st.sampled_from(
                ["key=app", "key=", "key=b", f"password={PASSWORD}", "db=2", "db=x",
                 "socket_timeout=x", "ssl_cert_reqs=none", "%zz=1"]
            ),
            max_size=3,
        )
    )  # fmt: skip
    fragment = draw(st.sampled_from(["", "#k", "#"]))
    return (
        scheme + userinfo + host + port + path + ("?" + "&".join(query) if query else "") + fragment
    )


store_specs = st.one_of(
    st.text(max_size=40),
    st.tuples(
        st.sampled_from(
            ["file:", "file://", "file:///", "file://localhost/", "keyring", " keyring ", "redis:"]
        ),
        st.text(max_size=30),
    ).map("".join),
    redis_specs(),
    huge,
)


def check_store_built(spec: str, client_id: str) -> Any:
    """Build the store ``spec`` names; return it, or None after checking the error."""
    store = attempt(lambda: store_from_spec(spec, client_id=client_id), ConfigurationError)
    if isinstance(store, ConfigurationError):
        assert_clear(store, PASSWORD)
        return None
    for text in (repr(store), store.describe(), store.spec or ""):
        assert PASSWORD not in text
    if store.spec is not None:
        # What a store says its spec is names the same tokens again.
        again = store_from_spec(store.spec, client_id=client_id)
        assert again.key == store.key, store.spec
    return store


@FUZZ
@given(spec=store_specs, client_id=st.sampled_from(["client-1", "", "\udcff", "a\nb"]))
@example(spec="redis://[::1", client_id="c")
@example(spec="unix://", client_id="c")
@example(spec="file:////srv/tokens.json", client_id="c")
@example(spec="keyring", client_id="\udcff")
def test_a_store_spec_builds_a_store_or_is_a_configuration_error(spec: str, client_id: str) -> None:
    check_store_built(spec, client_id)


ENV_NAMES = (
    "PLEO_CLIENT_ID",
    "PLEO_CLIENT_SECRET",
    "PLEO_ENVIRONMENT",
    "PLEO_TOKEN_URL",
    "PLEO_API_URL",
    "PLEO_AUTHORIZE_URL",
    "PLEO_SCOPES",
)
env_values = st.one_of(
    st.text(max_size=20),
    url_like(),
    st.sampled_from(
        ["", " ", "staging", " staging ", "Production", "users:read", "a\"b", "\udcff", "a\x00b",
         TOKEN_URL, "http://127.0.0.1:1/oauth/token"]
    ),
    huge,
)  # fmt: skip


@contextlib.contextmanager
def private_keyring() -> Iterator[None]:
    """The process's default keyring, swapped for a private file backend while in use."""
    import keyring
    from keyrings.alt.file import PlaintextKeyring

    class PrivateFileKeyring(PlaintextKeyring):
        """A private file keyring in a temporary directory. KeyringStore refuses it
        as a default backend like any plain-text one: the CLI then exits 3."""

    previous = keyring.get_keyring()
    with tempfile.TemporaryDirectory() as directory:
        backend = PrivateFileKeyring()
        backend.file_path = str(Path(directory) / "keyring.cfg")  # type: ignore[misc]
        keyring.set_keyring(backend)
        try:
            yield
        finally:
            keyring.set_keyring(previous)


def run_cli(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """``main(args, env=env)`` with no real HTTP allowed; returns (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), responses.RequestsMock() as mock:
        status = main(args, env=env, out=out)
        assert len(mock.calls) == 0
    return status, out.getvalue(), err.getvalue()


def check_cli_outcome(status: int, out: str, err: str, allowed: set[int]) -> None:
    assert status in allowed, (status, err)
    assert "Traceback" not in out + err
    assert CLIENT_SECRET not in out + err
    if status == 2:
        # One error line; at most one more, indented: the fix (a store this
        # machine cannot use says what to use instead on a line of its own).
        lines = err.splitlines()
        assert 1 <= len(lines) <= 2, err
        assert lines[0].startswith("pleo-auth: error: "), err
        assert all(line.startswith("  ") for line in lines[1:]), err
        assert all(len(line) <= 700 for line in lines)


cli_environments = st.fixed_dictionaries(
    {},
    optional={
        name: secret_settings.filter(lambda value: isinstance(value, str))
        if name == "PLEO_CLIENT_SECRET"
        else env_values
        for name in ENV_NAMES
    },
)


@FEW
@given(
    env=cli_environments,
    command=st.sampled_from(["status", "refresh", "logout"]),
)
@example(env={"PLEO_CLIENT_ID": "c", "PLEO_API_URL": "http://[::1"}, command="refresh")
@example(env={"PLEO_CLIENT_ID": "c", "PLEO_TOKEN_URL": "https://h:99999/t"}, command="refresh")
@example(env={"PLEO_CLIENT_ID": "\udcff", "PLEO_CLIENT_SECRET": "x"}, command="refresh")
@example(env={"PLEO_CLIENT_ID": "c", "PLEO_CLIENT_SECRET": "s\udcff"}, command="refresh")
@example(env={"PLEO_ENVIRONMENT": "nowhere"}, command="status")
def test_bad_settings_in_the_environment_exit_2_with_one_line(
    env: dict[str, str], command: str
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        env = {**env, "PLEO_STORE": f"file:{directory}/tokens.json"}
        status, out, err = run_cli([command], env)
    # Nothing is stored, so a command with good settings ends in "log in" (or nothing to
    # log out); anything else must be a usage error.
    check_cli_outcome(status, out, err, {0, 2} if command == "logout" else {1, 2})
    environment = env.get("PLEO_ENVIRONMENT", "").strip()
    if environment not in ("", "production", "staging"):
        assert status == 2
        assert "environment" in err


@FEW
@given(spec=store_specs, via_flag=st.booleans())
@example(spec="file:/", via_flag=False)
@example(spec="redis://[::1", via_flag=True)
def test_a_bad_store_spec_exits_2_with_one_line_and_no_password(spec: str, via_flag: bool) -> None:
    store = check_store_built(spec, "client-1")
    if store is not None and not isinstance(store, FileStore | KeyringStore):
        return  # a Redis store would connect to whatever host the spec names
    args = ["status", f"--store={spec}"] if via_flag else ["status"]
    env = (
        {"PLEO_CLIENT_ID": "client-1"}
        if via_flag
        else {"PLEO_CLIENT_ID": "client-1", "PLEO_STORE": spec}
    )
    with tempfile.TemporaryDirectory() as directory, contextlib.chdir(directory), private_keyring():
        status, out, err = run_cli(args, env)
    # 1: no tokens there; 3: the store named exists but cannot be read (a directory ...).
    check_cli_outcome(status, out, err, {1, 2, 3})
    assert PASSWORD not in out + err
    if spec.strip():  # blank is no setting: the default store
        assert (status == 2) == (store is None), err
