"""Store specs: the text (``keyring``, ``file:PATH``, ``redis://...``) that names a TokenStore.

The same spec is the ``--store`` argument of the ``pleo-auth`` command, the
``PLEO_STORE`` environment variable, the ``STORE`` setting of the web
integrations, and :attr:`TokenStore.spec`. This module parses and renders it:
:func:`check_spec` validates one, :func:`store_from_spec` builds the store it
names, and :func:`redact_spec` makes one fit for a message.
"""

from __future__ import annotations

import functools
import re
import urllib.parse
from collections.abc import Callable

from .._text import shown
from ..errors import ConfigurationError
from ._sql_spec import SQLSpec, build_sql_store, has_password, is_sql_spec, parse_sql_spec
from .base import TokenStore

__all__ = [
    "DEFAULT_SPEC",
    "SPEC_HELP",
    "StoreBuilder",
    "check_spec",
    "has_password",
    "is_sql_spec",
    "parse_spec",
    "redact_spec",
    "store_from_spec",
]

#: What builds the store a spec names, given the client id (see :func:`parse_spec`).
StoreBuilder = Callable[[str], TokenStore]

DEFAULT_SPEC = "keyring"

SPEC_HELP = (
    "keyring, file:PATH, redis://HOST[:PORT][/DB][?key=NAME] or a database URL "
    "(postgresql+psycopg://USER@HOST/DB, mysql+pymysql://USER@HOST/DB, sqlite:///PATH) "
    "with ?company=ID"
)

_REDIS_SCHEMES = ("redis", "rediss", "unix")


def redact_spec(spec: str) -> str:
    """``spec`` with any password in it replaced by ``***``, fit for messages.

    >>> redact_spec("redis://:hunter2@cache:6379/0")
    'redis://:***@cache:6379/0'
    >>> redact_spec("unix:///run/redis.sock?password=hunter2&db=1")
    'unix:///run/redis.sock?password=***&db=1'
    >>> redact_spec("file:/srv/tokens.json")
    'file:/srv/tokens.json'

    Text that is not a URL but may hold one mistyped (``redis//:pw@host``) loses
    everything before its ``@`` back to the last ``/``, and any ``password=``:

    >>> redact_spec("redis//:hunter2@cache:6379/0")
    'redis//***@cache:6379/0'
    """
    if spec.startswith("file:") or spec.strip() == "keyring":
        return spec
    if "://" not in spec:
        return _redact_text(spec)
    try:
        urllib.parse.urlsplit(spec)
    except ValueError:
        return "<unparseable store spec>"
    from .redis import redact_url  # a module of plain functions until a store is built

    return redact_url(spec)


def _redact_text(text: str) -> str:
    """``text``, not a URL, without what could be a password in it."""
    head, at, tail = text.rpartition("@")
    if at:
        kept, slash, _userinfo = head.rpartition("/")
        text = f"{kept}{slash}***@{tail}"
    return re.sub(r"(password=)[^&#]*", r"\1***", text, flags=re.IGNORECASE)


def store_from_spec(spec: str, *, client_id: str) -> TokenStore:
    """Build the store a spec names.

    * ``keyring``: the system keyring, account ``client_id``
      (``KeyringStore(account=client_id)``, as :class:`~pleo_auth.PleoSession` defaults to).
    * ``file:PATH``: a :class:`~pleo_auth.FileStore` (``~`` is expanded;
      ``file:///abs/path`` works too).
    * ``redis://...``, ``rediss://...``, ``unix://...``: a
      :class:`~pleo_auth.stores.redis.RedisStore` (needs ``pleo-auth[redis]``), under
      the key the URL names (``?key=NAME``), else RedisStore's default key.
    * ``postgresql+psycopg://USER@HOST[:PORT]/DB?company=ID``,
      ``mysql+pymysql://...?company=ID``, ``sqlite:///PATH?company=ID``: the
      company's grant in a :class:`~pleo_auth.stores.SQLStore` for ``client_id``
      (needs ``pleo-auth[sql]``; ``&table=NAME``, ``&schema=NAME`` as SQLStore's).
      Give a password only through the ``PLEO_STORE`` environment variable.

    Args:
        spec: The spec.
        client_id: The OAuth client id; ``keyring`` (the keyring account) and a
            database (the rows' key) need it, the others ignore it and it may be empty.

    Raises:
        ConfigurationError: The spec is malformed or names an unknown kind of
            store, or the store it names needs an extra that is not installed.
    """
    build = parse_spec(spec)
    if build is _keyring_store and client_id:
        from ..settings import check_client_id  # the one client id rule

        check_client_id(client_id)
    return build(client_id)


def parse_spec(spec: object) -> StoreBuilder:
    """Validate a spec once, and return what builds its store from a client id.

    For a caller that checked the client id already (a
    :class:`~pleo_auth.Settings` does, when it is made): the builder only
    requires one where the store needs it (``keyring``). Nothing is opened or
    connected until the builder is called.

    Raises:
        ConfigurationError: As :func:`store_from_spec` would, except for the
            client id, which is not known here.
    """
    return _builder(spec)


def check_spec(spec: object) -> str:
    """Validate a spec without building its store (nothing is opened or connected).

    Returns:
        The spec, stripped.

    Raises:
        ConfigurationError: As :func:`store_from_spec` would, except for the
            client id, which is not known here.
    """
    _builder(spec)
    return spec.strip() if isinstance(spec, str) else ""


def _builder(spec: object) -> StoreBuilder:
    """Validate ``spec`` and return what builds its store, given the client id."""
    if not isinstance(spec, str):
        raise ConfigurationError(f"a store spec must be a string ({SPEC_HELP})")
    spec = spec.strip()
    if spec == "keyring":
        return _keyring_store
    if spec.startswith("file:"):
        return functools.partial(_file_store, _file_path(spec))
    scheme, colon, _ = spec.partition(":")
    if colon and scheme.lower() in _REDIS_SCHEMES:
        _check_redis_url(spec)
        return functools.partial(_redis_store, spec)
    if colon and is_sql_spec(spec):
        return functools.partial(_sql_store, parse_sql_spec(spec, family=False))
    if not spec:
        raise ConfigurationError(f"the token store spec is empty: use {SPEC_HELP}")
    raise ConfigurationError(f"unknown token store {shown(redact_spec(spec))}: use {SPEC_HELP}")


def _keyring_store(client_id: str) -> TokenStore:
    if not isinstance(client_id, str) or not client_id:
        raise ConfigurationError("the keyring store is per client: it needs the client_id")
    from .keyring import KeyringStore

    return KeyringStore(account=client_id)


def _file_path(spec: str) -> str:
    path = spec[len("file:") :]
    if path.startswith("//"):
        # file:///abs/path, or file://localhost/abs/path
        host, slash, rest = path[2:].partition("/")
        if host not in ("", "localhost") or not slash:
            raise ConfigurationError(
                f"store {shown(spec)}: a file URL must name a local absolute path (file:///PATH)"
            )
        path = "/" + urllib.parse.unquote(rest)
    if not path.strip():
        raise ConfigurationError("store 'file:' needs a path, as in file:~/.pleo/tokens.json")
    if "\0" in path:
        raise ConfigurationError("a file store path must not contain NUL")
    return path


def _file_store(path: str, client_id: str) -> TokenStore:
    from .file import FileStore

    return FileStore(path)


def _redis_store(spec: str, client_id: str) -> TokenStore:
    try:
        from .redis import RedisStore
    except ImportError as exc:  # pragma: no cover - the module ships with pleo_auth
        raise ConfigurationError(
            "a redis:// store needs the redis extra: pip install 'pleo-auth[redis]'"
        ) from exc
    # RedisStore reads the key from the URL (?key=NAME or #NAME), as its spec writes it.
    store: TokenStore = RedisStore(spec)
    return store


def _sql_store(parsed: SQLSpec, client_id: str) -> TokenStore:
    return build_sql_store(parsed, client_id)


def _check_redis_url(spec: str) -> None:
    """Refuse what redis-py would misread or fail on later: no ``//``, no host or
    socket path, a bad port, a database that is not a number."""

    def refuse(problem: str) -> ConfigurationError:
        return ConfigurationError(f"invalid Redis URL {shown(redact_spec(spec))}: {problem}")

    scheme, _, rest = spec.partition(":")
    if not rest.startswith("//"):
        # Not echoed: without the // nothing tells a password from a host.
        raise ConfigurationError(
            f"invalid Redis URL: write {scheme.lower()}://HOST[:PORT][/DB] or unix:///PATH"
        )
    try:
        parts = urllib.parse.urlsplit(spec)
        host = parts.hostname
        port = parts.port
    except ValueError:
        raise refuse("bad host or port") from None
    if parts.scheme == "unix":
        if not parts.path.strip("/"):
            raise refuse("a unix:// URL needs the socket's path, as in unix:///run/redis.sock")
        return
    if not host:
        raise refuse("no host")
    if port == 0:
        raise refuse("port 0")
    database = parts.path[1:]
    if database and not (database.isascii() and database.isdigit()):
        raise refuse("the path must be a database number")
