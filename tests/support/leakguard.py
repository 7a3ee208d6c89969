"""The leak guard: every test runs at DEBUG and fails if a secret shows where people read.

tests/conftest.py imports the two fixtures below, so the whole suite runs under it.

What counts as a secret: every access token, refresh token, authorization code,
PKCE verifier, client secret and Redis URL password that comes into being in this
process. The guard learns them where they are born, by wrapping (test-side only,
with ``pytest.MonkeyPatch``):

* ``TokenSet.__init__``, ``TokenSet.from_response`` and ``TokenSet.from_dict``
  (also the tokens of a reply or a stored dict that is then refused);
* the emulator's ``_rotate`` (every token pair it issues), ``_authorize`` (every
  code, read from its redirect) and ``__init__`` (its client secret);
* ``TokenEndpoint.__init__``, ``.refresh`` and ``.exchange_code``, ``PleoSession``
  and ``AuthorizationFlow`` (client secrets, refresh tokens, codes and verifiers
  from any source, ``responses`` mocks included), ``PendingAuthorization``
  (verifiers) and ``RedisStore`` (a password in its URL).

A value counts only when it has at least :data:`MIN_LENGTH` characters and
:data:`MIN_DISTINCT` distinct ones: hypothesis feeds tokens such as ``"0"`` or
``"aaaaaaaa"``, which occur by chance in any text. Every token the emulator or
Pleo issues is far longer (the emulator's are 46 random characters).

Where the guard looks, at the end of every test (setup, call and teardown):

* every log record of every logger (the root logger is set to DEBUG for the whole
  run): its message after formatting, its ``args``, its formatted ``exc_info``
  and ``stack_info``, and any ``extra`` attributes;
* every ``PleoAuthError`` created (``PleoAuthError.__init__`` is wrapped; every
  subclass routes through it): ``str``, ``repr`` and every attribute (``reason``,
  ``description``, ``login_hint``, ...), and the ``str`` and ``repr`` of each
  exception in its ``__cause__``/``__context__`` chain;
* the ``repr`` of every ``TokenSet``, ``PendingAuthorization``, ``PleoSession``
  and ``AuthorizationFlow`` made, when made and (while alive) at the end;
* everything ``pleo_auth.cli`` prints (its module-level ``print`` is wrapped, so
  output a test reads with ``capsys`` is seen too), and the stdout and stderr
  pytest captured for the test and did not hand to it, which includes child
  processes that write to the inherited file descriptors.

A leak fails the test at teardown with a message that names the kind of secret,
its fingerprint (the first 12 hex digits of its SHA-256) and length, and where it
showed, with every known secret in the excerpt replaced by ``[SECRET]``. The
secret itself is never printed: the captured output and logs pytest then shows
for the test are masked the same way (except under ``-rP``/``-rA``, which print
a passing call phase from its report, made before the guard's teardown).

Not reached: log records and exceptions inside child processes (multiprocess,
fork and CLI-subprocess tests), and output a test takes from a child through a
pipe. Secrets born in a child are known only when the in-process emulator issued
them. tests/project/test_secrets.py runs every CLI command in-process, under the guard,
to cover the CLI.

One exemption, by design of OAuth: the authorization response carries the code
in the redirect URL (RFC 6749, section 4.1.2), so the request to the callback
names it, and HTTP request logs on either side write it down: urllib3 logs the
browser's request line at DEBUG, and Django logs a 4xx callback with its request.
Every web server's access log does the same; a logged code is useless without the
PKCE verifier, which never leaves the server, and it is single-use. So a code
that appears only as the ``code=`` query parameter of a URL in a record of an
HTTP request logger (:data:`REQUEST_LOGGERS`) is not a leak. Tokens and secrets
are never exempt there, and a code is never exempt anywhere else.

A value also used as a public one in the same run (a ``TokenSet``'s scope or
token type) is not tracked: hypothesis sometimes draws the same string for a
token and for the scope, and the repr then rightly shows the scope.

Not ours: records of the OAuth libraries the benchmarks compare against
(:data:`OTHER_OAUTH_LIBRARIES`) are not checked. requests-oauthlib logs the whole
token at DEBUG ("Adding token ... to request"), the mistake STYLE.md names; the
guard proved it on the benchmark smoke test.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import hashlib
import importlib
import inspect
import logging
import re
import sys
import threading
import traceback
import urllib.parse
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

#: Shorter values are not tracked as secrets (see the module docstring).
MIN_LENGTH = 8
#: Values with fewer distinct characters (``"00000000"``) are not tracked either.
MIN_DISTINCT = 4

ACCESS_TOKEN = "access token"
REFRESH_TOKEN = "refresh token"
CODE = "authorization code"
VERIFIER = "PKCE verifier"
CLIENT_SECRET = "client secret"
REDIS_PASSWORD = "Redis password"

#: Loggers of the libraries the benchmarks run beside pleo_auth: not ours to fix.
OTHER_OAUTH_LIBRARIES = ("requests_oauthlib", "oauthlib", "authlib")

#: Loggers that write request URLs, where a code in the callback's query is expected.
REQUEST_LOGGERS = ("urllib3.connectionpool", "django.request", "django.server", "werkzeug")
_STANDARD_RECORD_FIELDS = frozenset(
    logging.LogRecord("n", logging.INFO, "p", 1, "m", None, None).__dict__
) | {"message", "asctime", "taskName"}


def counts_as_secret(value: object) -> bool:
    """Whether the guard tracks ``value``: a string long and varied enough, and not
    part of the fixed text of a TokenSet's repr (hypothesis once drew the access
    token ``"expires_at"``, a word every such repr contains whatever its tokens)."""
    return (
        isinstance(value, str)
        and len(value) >= MIN_LENGTH
        and len(set(value)) >= MIN_DISTINCT
        and value not in _fixed_text()
    )


@functools.cache
def _fixed_text() -> str:
    """The words of a TokenSet's repr and str, with tokens that cannot occur in them."""
    from pleo_auth import TokenSet

    tokens = TokenSet(
        access_token="\x00", refresh_token="\x01", expires_at=0.0, scope="", issued_at=0.0
    )
    return f"{tokens!r}\n{tokens!s}"


def fingerprint(secret: str) -> str:
    """A short tag of a secret, safe to print (as ``TokenSet.fingerprint``)."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()[:12]


@dataclass(frozen=True)
class Leak:
    """One secret found in one place. ``excerpt`` has every secret masked."""

    kind: str
    fingerprint: str
    length: int
    where: str
    excerpt: str

    def __str__(self) -> str:
        return (
            f"{self.kind} (sha256 {self.fingerprint}, {self.length} chars) in {self.where}: "
            f"{self.excerpt}"
        )


def _mask(text: str, secrets: Iterable[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "[SECRET]")
    return text


def _excerpt(text: str, secret: str, secrets: Iterable[str], width: int = 160) -> str:
    at = text.find(secret)
    start = max(0, at - width // 2)
    piece = text[start : at + len(secret) + width // 2]
    return repr(_mask(piece, secrets))


def _exempt(kind: str, where: str, text: str, secret: str) -> bool:
    """A request log naming the callback URL names the code: OAuth puts it there."""
    if kind != CODE or not any(where.startswith(f"log record {name} ") for name in REQUEST_LOGGERS):
        return False
    outside = re.sub(r"(?<=[?&])code=" + re.escape(secret) + r"(?=[&\s'\"]|$)", "", text)
    return secret not in outside


def find_leaks(secrets: Mapping[str, str], texts: Mapping[str, str]) -> list[Leak]:
    """Every (secret, place) pair where a secret occurs in a text.

    Args:
        secrets: Secret value -> its kind.
        texts: Text -> where it was seen.
    """
    if not secrets or not texts:
        return []
    # One substring search per secret over all texts at once, then a closer look
    # only at the secrets that hit: a rotation-heavy test has thousands of records.
    everything = "\x00".join(texts)
    leaks: list[Leak] = []
    for secret, kind in secrets.items():
        if secret not in everything:
            continue
        for text, where in texts.items():
            if secret in text and not _exempt(kind, where, text, secret):
                leaks.append(
                    Leak(
                        kind,
                        fingerprint(secret),
                        len(secret),
                        where,
                        _excerpt(text, secret, secrets),
                    )
                )
    return leaks


def _safe(describe: Callable[[], str]) -> str:
    try:
        return describe()
    except Exception as exc:  # a broken __str__ must not hide other leaks
        return f"<{type(exc).__name__} while describing>"


def error_texts(error: BaseException) -> Iterator[tuple[str, str]]:
    """(where, text) for an error, its attributes and its cause/context chain."""
    from pleo_auth.errors import PleoAuthError

    seen: set[int] = set()
    pending: list[tuple[str, BaseException]] = [(type(error).__name__, error)]
    while pending:
        path, exc = pending.pop()
        if id(exc) in seen:
            continue
        seen.add(id(exc))
        yield f"{path} str()", _safe(functools.partial(str, exc))
        yield f"{path} repr()", _safe(functools.partial(repr, exc))
        if isinstance(exc, PleoAuthError):
            for name, value in vars(exc).items():
                text = value if isinstance(value, str) else _safe(functools.partial(repr, value))
                yield f"{path}.{name}", text
        for link in ("__context__", "__cause__"):  # a stack: the cause is named first
            linked = getattr(exc, link)
            if linked is not None:
                pending.append((f"{path} -> {link} {type(linked).__name__}", linked))


class LeakGuard:
    """Collects secrets and the texts they must not appear in.

    Thread safety: every method may be called from any thread; one lock guards
    the state. Secrets born outside a test (in a module- or session-scoped
    fixture, or in a thread between tests) are checked in every later test.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lasting: dict[str, str] = {}
        self._current: dict[str, str] | None = None
        self._texts: dict[str, str] = {}
        self._errors: list[BaseException] = []
        self._objects: list[tuple[str, weakref.ref[Any]]] = []
        self._public: set[str] = set()

    def secret(self, kind: str, value: object) -> None:
        if counts_as_secret(value):
            assert isinstance(value, str)
            with self._lock:
                target = self._lasting if self._current is None else self._current
                target.setdefault(value, kind)

    def public(self, value: object) -> None:
        """A value shown on purpose (a scope): not a secret, even if also used as one."""
        if counts_as_secret(value):
            assert isinstance(value, str)
            with self._lock:
                self._public.add(value)

    def text(self, where: str, text: str) -> None:
        if text:
            with self._lock:
                self._texts.setdefault(text, where)

    def error(self, error: BaseException) -> None:
        with self._lock:
            self._errors.append(error)

    def made(self, obj: object) -> None:
        """Check ``repr(obj)`` now, and again at the end of the test if it lives."""
        where = f"repr() of a {type(obj).__name__}"
        self.text(where, _safe(lambda: repr(obj)))
        try:
            ref = weakref.ref(obj)
        except TypeError:
            return
        with self._lock:
            self._objects.append((where, ref))

    def known(self, *kinds: str) -> list[str]:
        """The secrets of these kinds born during the current test."""
        with self._lock:
            return [value for value, kind in (self._current or {}).items() if kind in kinds]

    def mask(self, text: str) -> str:
        """``text`` with every known secret replaced by ``[SECRET]``."""
        with self._lock:
            secrets = [*self._lasting, *(self._current or {})]
        return _mask(text, (secret for secret in secrets if secret in text))

    def begin(self) -> None:
        with self._lock:
            self._current = {}

    def check(self) -> list[Leak]:
        """Scan everything seen since the last check; start afresh (secrets stay known)."""
        with self._lock:
            texts, self._texts = self._texts, {}
            errors, self._errors = self._errors, []
            objects, self._objects = self._objects, []
            secrets = {**self._lasting, **(self._current or {})}
            for value in self._public.intersection(secrets):
                del secrets[value]
        for where, ref in objects:
            obj = ref()
            if obj is not None:
                text = _safe(functools.partial(repr, obj))
                texts.setdefault(text, f"{where}, at the end of the test")
        seen: set[int] = set()
        for error in errors:
            if id(error) not in seen:
                seen.add(id(error))
                for where, text in error_texts(error):
                    texts.setdefault(text, where)
        return find_leaks(secrets, texts)

    def finish(self) -> list[Leak]:
        leaks = self.check()
        with self._lock:
            self._current = None
        return leaks


class _Recorder(logging.Handler):
    """Keeps the text of every log record for the guard."""

    def __init__(self, guard: LeakGuard):
        super().__init__(logging.DEBUG)
        self._guard = guard

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.split(".", 1)[0] in OTHER_OAUTH_LIBRARIES:
            return
        where = f"log record {record.name} {record.levelname} ({record.filename}:{record.lineno})"
        guard = self._guard
        guard.text(f"{where} message", _safe(record.getMessage))
        if record.args:
            guard.text(f"{where} args", _safe(lambda: repr(record.args)))
        if record.exc_info and record.exc_info[1] is not None:
            exc_info = record.exc_info
            guard.text(
                f"{where} exc_info",
                _safe(lambda: "".join(traceback.format_exception(*exc_info))),
            )
        elif record.exc_text:
            guard.text(f"{where} exc_text", record.exc_text)
        if record.stack_info:
            guard.text(f"{where} stack_info", record.stack_info)
        extra = {k: v for k, v in record.__dict__.items() if k not in _STANDARD_RECORD_FIELDS}
        if extra:
            guard.text(f"{where} extra", _safe(lambda: repr(extra)))

    def handleError(self, record: logging.LogRecord) -> None:
        pass  # _safe already turned any failure into text


def _argument(signature: inspect.Signature, name: str, args: Any, kwargs: Any) -> Any:
    try:
        bound = signature.bind_partial(*args, **kwargs)
    except TypeError:
        return None
    bound.apply_defaults()
    return bound.arguments.get(name)


def _code_of(response: Any) -> str | None:
    for name, value in getattr(response, "headers", ()):
        if name.lower() == "location":
            values = urllib.parse.parse_qs(urllib.parse.urlsplit(value).query).get("code")
            return values[0] if values else None
    return None


def _install(guard: LeakGuard, patch: pytest.MonkeyPatch) -> None:
    import pleo_auth.cli as cli
    from pleo_auth import AuthorizationFlow, PleoSession, TokenSet
    from pleo_auth._endpoint import TokenEndpoint
    from pleo_auth.errors import PleoAuthError
    from pleo_auth.flow import PendingAuthorization
    from pleo_auth.testing import Emulator

    def after_init(cls: type, learn: Callable[[Any, inspect.Signature, Any, Any], None]) -> None:
        original = cls.__init__
        signature = inspect.signature(original)

        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            try:
                original(self, *args, **kwargs)
            finally:
                with contextlib.suppress(Exception):  # learning must never change what runs
                    learn(self, signature, (self, *args), kwargs)

        patch.setattr(cls, "__init__", __init__)

    def before(cls: type, name: str, learn: Callable[[Any, Any], None]) -> None:
        original = getattr(cls, name)
        signature = inspect.signature(original)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with contextlib.suppress(Exception):  # learning must never change what runs
                learn(signature, (args, kwargs))
            return original(*args, **kwargs)

        patch.setattr(cls, name, wrapper)

    def learn_client_secret(obj: Any, sig: inspect.Signature, args: Any, kwargs: Any) -> None:
        guard.secret(CLIENT_SECRET, _argument(sig, "client_secret", args, kwargs))

    # Tokens.
    def learn_tokens(tokens: Any, sig: inspect.Signature, args: Any, kwargs: Any) -> None:
        guard.secret(ACCESS_TOKEN, getattr(tokens, "access_token", None))
        guard.secret(REFRESH_TOKEN, getattr(tokens, "refresh_token", None))
        guard.public(getattr(tokens, "scope", None))
        guard.public(getattr(tokens, "token_type", None))
        for name, kind in (("access_token", ACCESS_TOKEN), ("refresh_token", REFRESH_TOKEN)):
            guard.secret(kind, _argument(sig, name, args, kwargs))
        guard.made(tokens)

    after_init(TokenSet, learn_tokens)

    def learn_mapping(data: object) -> None:
        if isinstance(data, Mapping):
            guard.secret(ACCESS_TOKEN, data.get("access_token"))
            guard.secret(REFRESH_TOKEN, data.get("refresh_token"))

    for name in ("from_response", "from_dict"):
        original = getattr(TokenSet, name).__func__

        def classmethod_wrapper(
            cls: type, data: Any, *args: Any, _original: Any = original, **kwargs: Any
        ) -> Any:
            learn_mapping(data)
            return _original(cls, data, *args, **kwargs)

        patch.setattr(TokenSet, name, classmethod(classmethod_wrapper))

    # The emulator: what it issues, and its own secret.
    rotate = Emulator._rotate

    def _rotate(self: Emulator, grant: Any) -> dict[str, Any]:
        reply = rotate(self, grant)
        learn_mapping(reply)
        return reply

    patch.setattr(Emulator, "_rotate", _rotate)
    authorize = Emulator._authorize

    def _authorize(self: Emulator, request: Any) -> Any:
        response = authorize(self, request)
        guard.secret(CODE, _code_of(response))
        return response

    patch.setattr(Emulator, "_authorize", _authorize)
    after_init(Emulator, learn_client_secret)

    # The token endpoint client: secrets and grants from any server, mocks included.
    after_init(TokenEndpoint, learn_client_secret)
    before(
        TokenEndpoint,
        "refresh",
        lambda sig, call: guard.secret(REFRESH_TOKEN, _argument(sig, "refresh_token", *call)),
    )

    def learn_exchange(sig: inspect.Signature, call: Any) -> None:
        guard.secret(CODE, _argument(sig, "code", *call))
        guard.secret(VERIFIER, _argument(sig, "code_verifier", *call))

    before(TokenEndpoint, "exchange_code", learn_exchange)

    def learn_session(obj: Any, sig: inspect.Signature, args: Any, kwargs: Any) -> None:
        learn_client_secret(obj, sig, args, kwargs)
        # Built from a Settings, the token endpoint's __init__ never sees the secret.
        guard.secret(CLIENT_SECRET, getattr(getattr(obj, "settings", None), "client_secret", None))
        guard.made(obj)

    after_init(PleoSession, learn_session)

    def learn_flow(obj: Any, sig: inspect.Signature, args: Any, kwargs: Any) -> None:
        learn_client_secret(obj, sig, args, kwargs)
        guard.secret(CLIENT_SECRET, getattr(getattr(obj, "settings", None), "client_secret", None))
        guard.made(obj)

    after_init(AuthorizationFlow, learn_flow)

    def learn_pending(obj: Any, sig: inspect.Signature, args: Any, kwargs: Any) -> None:
        guard.secret(VERIFIER, getattr(obj, "code_verifier", None))
        guard.made(obj)

    after_init(PendingAuthorization, learn_pending)

    try:
        from pleo_auth.stores.redis import RedisStore
    except ImportError:  # the redis extra is not installed: no Redis URLs either
        pass
    else:

        def learn_redis(obj: Any, sig: inspect.Signature, args: Any, kwargs: Any) -> None:
            url = _argument(sig, "url_or_client", args, kwargs)
            if isinstance(url, str):
                with contextlib.suppress(ValueError):
                    guard.secret(REDIS_PASSWORD, urllib.parse.urlsplit(url).password)

        after_init(RedisStore, learn_redis)

    # Every error, whichever subclass: they all pass through PleoAuthError.__init__.
    def __init__(self: BaseException, *args: Any, **kwargs: Any) -> None:
        guard.error(self)
        super(PleoAuthError, self).__init__(*args, **kwargs)

    patch.setattr(PleoAuthError, "__init__", __init__)

    # What the command line prints, even when a test then reads it from capsys.
    def print_(
        *args: Any,
        sep: str | None = " ",
        end: str | None = "\n",
        file: Any = None,
        flush: bool = False,
    ) -> None:
        stream = (
            "stderr" if file is sys.stderr else "stdout" if file in (None, sys.stdout) else "out"
        )
        guard.text(
            f"pleo-auth output ({stream})", (" " if sep is None else sep).join(map(str, args))
        )
        builtins.print(*args, sep=sep, end=end, file=file, flush=flush)

    patch.setattr(cli, "print", print_, raising=False)
    # Everything the command prints goes through its one output module.
    patch.setattr(importlib.import_module("pleo_auth.cli._output"), "print", print_, raising=False)


_GUARD = LeakGuard()


@pytest.fixture(scope="session", autouse=True)
def _leak_guard_installed() -> Iterator[LeakGuard]:
    """Wraps where secrets are born and logs everything at DEBUG, for the whole run."""
    root = logging.getLogger()
    recorder = _Recorder(_GUARD)
    level = root.level
    with pytest.MonkeyPatch.context() as patch:
        _install(_GUARD, patch)
        root.setLevel(logging.DEBUG)
        root.addHandler(recorder)
        try:
            yield _GUARD
        finally:
            root.removeHandler(recorder)
            root.setLevel(level)


@pytest.fixture(autouse=True)
def leak_guard(
    request: pytest.FixtureRequest, _leak_guard_installed: LeakGuard
) -> Iterator[LeakGuard]:
    """Fails the test if a secret showed in a log record, an error, a repr or the output."""
    guard = _leak_guard_installed
    guard.begin()
    yield guard
    sections = getattr(request.node, "_report_sections", [])
    for when, key, content in sections:
        if key in ("stdout", "stderr"):
            guard.text(f"captured {key} of the {when} phase", content)
    leaks = guard.check()
    if leaks:
        # pytest shows a failed test's captured output and logs: mask them too.
        sections[:] = [(when, key, guard.mask(content)) for when, key, content in sections]
    guard.finish()
    if leaks:
        lines = "\n".join(f"  - {leak}" for leak in leaks[:20])
        more = f"\n  ... and {len(leaks) - 20} more" if len(leaks) > 20 else ""
        pytest.fail(f"leak guard: {len(leaks)} secret(s) leaked:\n{lines}{more}", pytrace=False)
