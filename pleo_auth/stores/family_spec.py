"""Family specs: the text that names a :class:`~pleo_auth.TokenStoreFamily`, a grant per company.

A family spec is ``family:`` and then a store spec (:mod:`pleo_auth.stores.spec`)
read as a family:

* ``family:file:DIR``: :meth:`FileStore.family(DIR) <pleo_auth.FileStore.family>`,
  one file per company in ``DIR`` (``~`` is expanded);
* ``family:redis://HOST[:PORT][/DB][?prefix=PREFIX]`` (or ``rediss://``,
  ``unix://``): :meth:`RedisStore.family(url, prefix) <pleo_auth.RedisStore.family>`,
  one hash per company under ``PREFIX`` (``pleo-auth:`` by default);
* ``family:keyring`` or ``family:keyring:SERVICE``: :meth:`KeyringStore.family(SERVICE)
  <pleo_auth.KeyringStore.family>`, one keyring entry per company (service
  ``pleo-auth`` by default);
* ``family:postgresql+psycopg://USER@HOST[:PORT]/DB``, ``family:mysql+pymysql://...``
  or ``family:sqlite:///PATH`` (with ``?table=NAME``, ``&schema=NAME``): a
  :class:`~pleo_auth.stores.SQLStore`, one row per company, keyed by the client id
  the builder is given. A password comes only from ``PLEO_STORE``; the spec of a
  family built in code never holds one.

The same text is the ``--store`` argument of the ``pleo-auth`` command, the
``PLEO_STORE`` environment variable and the ``STORE`` setting of the web
integrations: wherever a store spec names one grant, a family spec names a grant
per company. :func:`family_spec_of` gives the spec of a family built in code.
"""

from __future__ import annotations

import functools
import urllib.parse
from typing import TYPE_CHECKING, Protocol, cast

from .._text import shown
from ..errors import ConfigurationError
from ._sql_spec import SQLSpec, build_sql_family, is_sql_spec, parse_sql_spec, sql_spec
from .family import FileStoreFamily, TokenStoreFamily
from .spec import StoreBuilder, check_spec, parse_spec, redact_spec

__all__ = [
    "FAMILY_PREFIX",
    "FAMILY_SPEC_HELP",
    "FamilyBuilder",
    "family_from_spec",
    "family_spec_of",
    "is_family_spec",
    "parse_family_spec",
    "redact_family_spec",
]

#: What every family spec starts with.
FAMILY_PREFIX = "family:"

FAMILY_SPEC_HELP = (
    "family:file:DIR, family:redis://HOST[:PORT][/DB][?prefix=PREFIX], family:keyring[:SERVICE] "
    "or family:<database URL> (postgresql+psycopg://..., mysql+pymysql://..., sqlite:///PATH)"
)


class FamilyBuilder(Protocol):
    """What builds the family a spec names (see :func:`parse_family_spec`): a
    database family needs the OAuth client id, the others ignore it."""

    def __call__(self, client_id: str | None = None) -> TokenStoreFamily: ...


if TYPE_CHECKING:
    from .sql import SQLStore

_REDIS_SCHEMES = ("redis", "rediss", "unix")
_DEFAULT_PREFIX = "pleo-auth:"
_DEFAULT_SERVICE = "pleo-auth"


def is_family_spec(spec: object) -> bool:
    """Whether ``spec`` is meant as a family spec (it starts ``family:``).

    >>> is_family_spec("family:file:/srv/pleo"), is_family_spec("file:/srv/tokens.json")
    (True, False)
    """
    return isinstance(spec, str) and spec.strip().startswith(FAMILY_PREFIX)


def redact_family_spec(spec: str) -> str:
    """``spec`` without any password in it, fit for messages.

    >>> redact_family_spec("family:redis://:hunter2@cache:6379/0")
    'family:redis://:***@cache:6379/0'
    """
    spec = spec.strip()
    if not spec.startswith(FAMILY_PREFIX):
        return redact_spec(spec)
    return FAMILY_PREFIX + redact_spec(spec[len(FAMILY_PREFIX) :])


def parse_family_spec(spec: object) -> FamilyBuilder:
    """Validate a family spec once, and return what builds its family.

    Nothing is opened or connected until the builder is called.

    Raises:
        ConfigurationError: ``spec`` is not a family spec, or is malformed.
    """
    if not is_family_spec(spec):
        raise ConfigurationError(f"a family spec starts with {FAMILY_PREFIX} ({FAMILY_SPEC_HELP})")
    assert isinstance(spec, str)
    rest = spec.strip()[len(FAMILY_PREFIX) :]
    if is_sql_spec(rest):
        return functools.partial(_sql_family, parse_sql_spec(rest, family=True))
    if rest.startswith("file:"):
        return functools.partial(_file_family, parse_spec(rest))
    if rest == "keyring" or rest.startswith("keyring:"):
        service = rest[len("keyring:") :] if rest != "keyring" else _DEFAULT_SERVICE
        if not service or not service.isprintable():
            raise ConfigurationError(
                "family:keyring:SERVICE needs a service name of printable characters"
            )
        return functools.partial(_keyring_family, service)
    scheme, colon, _ = rest.partition(":")
    if colon and scheme.lower() in _REDIS_SCHEMES:
        url, prefix = _redis_url_and_prefix(rest)
        return functools.partial(_redis_family, url, prefix)
    raise ConfigurationError(
        f"unknown store family {shown(redact_family_spec(spec))}: use {FAMILY_SPEC_HELP}"
    )


def family_from_spec(spec: object, *, client_id: str | None = None) -> TokenStoreFamily:
    """Build the family a spec names.

    Args:
        spec: The family spec.
        client_id: The OAuth client id, which a database family's rows are keyed
            by (the other families ignore it).

    Raises:
        ConfigurationError: As :func:`parse_family_spec`, or the family needs an
            extra that is not installed (``pleo-auth[redis]``, ``pleo-auth[sql]``),
            or a database family has no client id.
    """
    return parse_family_spec(spec)(client_id)


def family_spec_of(family: TokenStoreFamily) -> str | None:
    """The spec that names ``family``, or None when no spec can (a memory family,
    a keyring family with its own backend or state directory, a Redis family
    built from a client object). A Redis or database spec never holds the password.

    >>> family_spec_of(FileStoreFamily("/srv/pleo"))
    'family:file:/srv/pleo'
    """
    from .encrypted import EncryptedStoreFamily
    from .keyring_family import KeyringStoreFamily

    if isinstance(family, EncryptedStoreFamily):
        return family_spec_of(family.inner)  # its stores' login hints add --encrypt
    if isinstance(family, FileStoreFamily):
        return f"{FAMILY_PREFIX}file:{family.directory}"
    if isinstance(family, KeyringStoreFamily):
        plain = family.backend is None and family.state_dir is None
        return f"{FAMILY_PREFIX}keyring:{family.service}" if plain else None
    prefix = getattr(family, "prefix", None)
    if type(family).__name__ == "RedisStoreFamily" and isinstance(prefix, str):
        return _redis_family_spec(family, prefix)
    if type(family).__name__ == "SQLStore":
        return f"{FAMILY_PREFIX}{sql_spec(cast('SQLStore', family))}"
    return None


def _redis_family_spec(family: TokenStoreFamily, prefix: str) -> str | None:
    """A member's ``--store`` URL, its key turned back into the family's prefix."""
    from ..company import Company

    member = family.store(Company("00000000-0000-0000-0000-000000000000")).spec
    if member is None:
        return None
    base, _, query = member.partition("?")
    kept = [(name, value) for name, value in urllib.parse.parse_qsl(query) if name != "key"]
    kept.append(("prefix", prefix))
    return f"{FAMILY_PREFIX}{base}?{urllib.parse.urlencode(kept, safe=':/-_.@')}"


def _redis_url_and_prefix(url: str) -> tuple[str, str]:
    base, _, query = url.partition("?")
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    prefixes = [value for name, value in pairs if name == "prefix"]
    if len(prefixes) > 1:
        raise ConfigurationError("a family's Redis URL names its prefix once, as ?prefix=NAME")
    if any(name == "key" for name, _value in pairs) or "#" in url:
        raise ConfigurationError(
            "a family's Redis URL names no key: ?prefix=NAME names the keys of its companies"
        )
    rest = urllib.parse.urlencode([(name, value) for name, value in pairs if name != "prefix"])
    bare = f"{base}?{rest}" if rest else base
    check_spec(bare)
    return bare, (prefixes[0] if prefixes else _DEFAULT_PREFIX)


def _sql_family(parsed: SQLSpec, client_id: str | None = None) -> TokenStoreFamily:
    return build_sql_family(parsed, client_id)


def _file_family(build: StoreBuilder, client_id: str | None = None) -> TokenStoreFamily:
    # The path rules of file:PATH, read once by the store spec's own parser.
    return FileStoreFamily(getattr(build(""), "path"))  # noqa: B009


def _redis_family(url: str, prefix: str, client_id: str | None = None) -> TokenStoreFamily:
    from .redis import RedisStore

    return RedisStore.family(url, prefix)


def _keyring_family(service: str, client_id: str | None = None) -> TokenStoreFamily:
    from .keyring import KeyringStore

    return KeyringStore.family(service)
