"""Which Pleo company a grant belongs to: :class:`Company`.

Pleo's OAuth grants are per company. An installation is keyed by the company's
URN, ``urn:pleo:company:<uuid>``, and the API's introspection names the same
company as ``subjectURN``. A :class:`Company` is that name, checked once: every
grant store family (:class:`~pleo_auth.stores.family.TokenStoreFamily`) builds its
keys, paths and file names from a Company, never from an unchecked string.
"""

from __future__ import annotations

import re

import attrs

from .errors import ConfigurationError

__all__ = ["URN_PREFIX", "Company"]

#: What a company's URN starts with.
URN_PREFIX = "urn:pleo:company:"

# ASCII hex only: \d and str.isdigit() would take other scripts' digits.
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)

_SHOWN = 60


def _problem(value: str) -> str | None:
    """What is wrong with ``value`` as a company, in words that never echo a control character."""
    if not value:
        return "it is empty"
    if any(not char.isprintable() for char in value):
        return "it contains a control or other unprintable character"
    if any(char.isspace() for char in value):
        return f"it contains whitespace: {_quoted(value)}"
    if value[:4].lower() == "urn:":
        if value[: len(URN_PREFIX)].lower() != URN_PREFIX:
            return f"{_quoted(value)} is a URN of another kind than {URN_PREFIX}<uuid>"
        if not _UUID.fullmatch(value[len(URN_PREFIX) :]):
            return f"{_quoted(value)} does not end in a UUID"
        return None
    if len(value) > _SHOWN:
        return f"it is {len(value)} characters long, not a company id's 36"
    if not _UUID.fullmatch(value):
        return f"{_quoted(value)} is neither a UUID nor {URN_PREFIX}<uuid>"
    return None


def _quoted(value: str) -> str:
    # Printable by now (checked first); cut, so a pasted document stays one short line.
    return repr(value if len(value) <= _SHOWN else value[: _SHOWN - 3] + "...")


def _canonical(value: object) -> str:
    """The lower-case UUID ``value`` names (a Company, a UUID or a company URN)."""
    if isinstance(value, Company):
        return value.id
    if not isinstance(value, str):
        raise ConfigurationError(
            f"a Pleo company is its id (a UUID) or {URN_PREFIX}<uuid> as a string, "
            f"not {type(value).__name__}"
        )
    problem = _problem(value)
    if problem is not None:
        raise ConfigurationError(
            f"not a Pleo company id: {problem}. Use the company's UUID or {URN_PREFIX}<uuid>"
        )
    return value[-36:].lower()


@attrs.frozen(order=True, repr=False)
class Company:
    """A Pleo company, as the key of its grant.

    Built from Pleo's company id, a UUID in any case, or from its URN,
    ``urn:pleo:company:<uuid>`` (whose ``urn:pleo:company:`` part is read in any
    case too, as RFC 8141 reads a URN's scheme and namespace). Both give the same
    value, which holds the UUID in lower case, so they compare equal, hash alike,
    and name the same grant. Anything else is refused: a path, ``..``, a key
    pattern such as ``*``, whitespace (even around a valid id), a control
    character, an empty string, a non-string, or a URN of another kind.

    >>> a = Company("3F2504E0-4F89-11D3-9A0C-0305E82C3301")
    >>> a.id
    '3f2504e0-4f89-11d3-9a0c-0305e82c3301'
    >>> a.urn
    'urn:pleo:company:3f2504e0-4f89-11d3-9a0c-0305e82c3301'
    >>> a == Company(a.urn) == Company(a)
    True
    >>> Company("../etc/passwd")
    Traceback (most recent call last):
    ...
    pleo_auth.errors.ConfigurationError: not a Pleo company id: '../etc/passwd' is neither \
a UUID nor urn:pleo:company:<uuid>. Use the company's UUID or urn:pleo:company:<uuid>

    Args:
        value: The company's UUID, its URN, or a Company.

    Attributes:
        id: The company's UUID, lower case: 36 characters from ``0-9a-f-``, safe
            in a file name, a Redis key or a keyring account.

    Raises:
        ConfigurationError: ``value`` names no company. The message says what is
            wrong and never repeats a control character.

    Thread safety:
        Immutable: share it freely.
    """

    id: str = attrs.field(converter=_canonical)

    @property
    def urn(self) -> str:
        """``urn:pleo:company:<uuid>``, as Pleo keys installations."""
        return URN_PREFIX + self.id

    def __str__(self) -> str:
        return self.urn

    def __repr__(self) -> str:
        return f"Company({self.urn!r})"
