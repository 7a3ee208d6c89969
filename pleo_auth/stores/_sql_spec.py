"""Database store specs: the ``--store`` text that names a :class:`~pleo_auth.stores.SQLStore`.

* one company's grant: ``postgresql+psycopg://USER@HOST[:PORT]/DB?company=ID``,
  ``mysql+pymysql://USER@HOST[:PORT]/DB?company=ID`` or ``sqlite:///PATH?company=ID``
  (SQLAlchemy's URLs: ``sqlite:///PATH`` is relative, ``sqlite:////PATH`` absolute);
* a grant per company: ``family:`` and the same URL without ``company``.

Both take ``&table=NAME`` and ``&schema=NAME`` (``SQLStore``'s ``table`` and
``schema``); any other query parameter is the database driver's. The rows are
keyed by the OAuth client id, which comes from the settings, not the spec.

A password belongs in the ``PLEO_STORE`` environment variable only, never on a
command line (every user of ``ps`` reads it there): :func:`has_password` finds
one, and the spec a store renders (:func:`sql_spec`) never holds it.

Parsing needs no SQLAlchemy: it is imported when a store is built.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from .._text import shown
from ..company import Company
from ..errors import ConfigurationError

if TYPE_CHECKING:
    import sqlalchemy

    from .sql import SQLGrantStore, SQLStore

__all__ = [
    "SQL_BACKENDS",
    "SQLSpec",
    "has_password",
    "is_sql_spec",
    "parse_sql_spec",
    "sql_spec",
]

#: The databases a spec may name (the part of the scheme before any ``+driver``).
SQL_BACKENDS = ("postgresql", "mysql", "mariadb", "sqlite")

#: Query parameters that are pleo_auth's, not the driver's.
_OWN = ("company", "table", "schema")


def _backend(spec: str) -> str | None:
    scheme, colon, _ = spec.strip().partition(":")
    backend = scheme.lower().partition("+")[0]
    return backend if colon and backend in SQL_BACKENDS else None


def is_sql_spec(spec: object) -> bool:
    """Whether ``spec`` names a database (its scheme is one of :data:`SQL_BACKENDS`).

    >>> is_sql_spec("postgresql+psycopg://app@db/app?company=x"), is_sql_spec("redis://c")
    (True, False)
    """
    return isinstance(spec, str) and _backend(spec) is not None


def has_password(spec: str) -> bool:
    """Whether a database spec carries a password: in its user information
    (``user:PASSWORD@host``) or as a ``password=`` query parameter.

    Read as raw text, as the Redis URL redaction reads it: everything between
    ``://`` and the last ``@`` is the user information.

    >>> has_password("postgresql+psycopg://app:pw@db/app"), has_password("mysql://app@db/x")
    (True, False)
    """
    _, _sep, rest = spec.strip().partition("://")
    userinfo, at, after = rest.rpartition("@")
    if at and ":" in userinfo:
        return True
    _, _, query = (after if at else rest).partition("?")
    return any("password" in name.lower() for name, _ in urllib.parse.parse_qsl(query))


@attrs.frozen
class SQLSpec:
    """A database spec, checked.

    Attributes:
        url: The database URL for SQLAlchemy, without pleo_auth's parameters.
        company: The company of a one-grant spec; None for a family.
        table: ``?table=``, if given.
        schema: ``?schema=``, if given.
    """

    url: str
    company: Company | None
    table: str | None
    schema: str | None


def parse_sql_spec(spec: str, *, family: bool) -> SQLSpec:
    """Check a database spec (``family``: as a family, without ``company``).

    Nothing is imported or connected. The messages never show a password.

    Raises:
        ConfigurationError: The spec is malformed.
    """
    from .spec import redact_spec  # spec imports this module

    spec = spec.strip()
    # Without the query: a mistyped company (or anything pasted there) is not echoed.
    redacted = redact_spec(spec.partition("?")[0].partition("#")[0])
    kind = "family " if family else ""

    def refuse(problem: str) -> ConfigurationError:
        return ConfigurationError(f"invalid database {kind}URL {shown(redacted)}: {problem}")

    scheme, _, rest = spec.partition(":")
    backend = _backend(spec)
    if backend is None:
        raise refuse(f"the scheme must be one of {', '.join(SQL_BACKENDS)}")
    if not rest.startswith("//"):
        # Not echoed: without the // nothing tells a password from a host.
        form = (
            "sqlite:///PATH (relative) or sqlite:////PATH (absolute)"
            if backend == "sqlite"
            else f"{scheme.lower()}://USER@HOST[:PORT]/DATABASE"
        )
        raise ConfigurationError(f"invalid database URL: write {form}")
    if "#" in spec:
        raise refuse("a database URL has no #fragment (percent-encode a '#' in a password)")
    base, _, query = spec.partition("?")
    try:
        parts = urllib.parse.urlsplit(base)
        host = parts.hostname
        parts.port  # noqa: B018 - a bad port raises here
    except ValueError:
        raise refuse("bad host or port") from None
    if backend == "sqlite":
        path = parts.path[1:]
        if parts.netloc:
            raise refuse("a SQLite URL names a file: sqlite:///PATH, or sqlite:////ABSOLUTE/PATH")
        if not path or path == ":memory:":
            raise refuse("SQLStore needs a SQLite file, not an in-memory database")
    else:
        if not host:
            raise refuse("no host")
        if not parts.path.strip("/"):
            raise refuse("no database name")
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    own: dict[str, str] = {}
    for name, value in pairs:
        if name in _OWN:
            if name in own:
                raise refuse(f"?{name}= is given twice")
            if not value.strip():
                raise refuse(f"?{name}= is empty")
            own[name] = value.strip()
    company = _company(own.get("company"), family=family, refuse=refuse)
    kept = [(name, value) for name, value in pairs if name not in _OWN]
    url = f"{base}?{urllib.parse.urlencode(kept)}" if kept else base
    return SQLSpec(url, company, own.get("table"), own.get("schema"))


def _company(
    value: str | None, *, family: bool, refuse: Callable[[str], ConfigurationError]
) -> Company | None:
    if family:
        if value is not None:
            raise refuse("a family names no company: drop ?company= (--company picks one)")
        return None
    if value is None:
        raise refuse(
            "a database store holds one company's grant: add ?company=<company id>, "
            "or write family:<URL> for a grant per company"
        )
    try:
        return Company(value)
    except ConfigurationError as exc:
        raise refuse(f"?company=: {exc}") from None


def build_sql_family(parsed: SQLSpec, client_id: str | None) -> SQLStore:
    """The :class:`~pleo_auth.stores.SQLStore` a checked spec names, for ``client_id``.

    Raises:
        ConfigurationError: No client id, or SQLAlchemy or the driver is missing.
    """
    if not client_id:
        raise ConfigurationError(
            "a database store keeps grants by OAuth client id: it needs the client id"
        )
    from .sql import DEFAULT_TABLE, SQLStore  # ConfigurationError without the sql extra

    table = parsed.table if parsed.table is not None else DEFAULT_TABLE
    return SQLStore(parsed.url, client_id=client_id, table=table, schema=parsed.schema)


def build_sql_store(parsed: SQLSpec, client_id: str) -> SQLGrantStore:
    """The one grant a checked one-grant spec names."""
    assert parsed.company is not None
    return build_sql_family(parsed, client_id).for_company(parsed.company)


def url_has_password(url: sqlalchemy.URL) -> bool:
    """Whether ``url`` holds a password, which :func:`sql_spec` leaves out."""
    return url.password is not None or any("password" in name for name in url.query)


def sql_spec(family: SQLStore, company: str | None = None) -> str:
    """The spec (without ``family:``) of ``family``, or of its ``company``'s grant:
    its engine's URL without the password, and the table, schema and company."""
    import sqlalchemy

    from ._sql import DEFAULT_TABLE

    given = family.engine.url
    url = sqlalchemy.URL.create(
        given.drivername,
        username=given.username,
        host=given.host,
        port=given.port,
        database=given.database,
        query={name: value for name, value in given.query.items() if "password" not in name},
    )
    text = url.render_as_string(hide_password=True)
    ours: list[tuple[str, str]] = []
    if company is not None:
        ours.append(("company", company))
    if family.table.name != DEFAULT_TABLE:
        ours.append(("table", family.table.name))
    if family.table.schema:
        ours.append(("schema", family.table.schema))
    if not ours:
        return text
    joiner = "&" if "?" in text else "?"
    return f"{text}{joiner}{urllib.parse.urlencode(ours, safe=':')}"
