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

# What every Company.id is, checked last whatever path led to it.
_CANONICAL_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

_SHAPE = f"neither a UUID nor {URN_PREFIX}<uuid>"


def _problem(value: str) -> str | None:
    """What is wrong with ``value`` as a company, in words that never repeat it.

    The value may be a secret passed by mistake (a refresh token in place of a
    company), so a message names the rule that failed and the length, never the text.
    """
    if _UUID.fullmatch(value) or (
        value[: len(URN_PREFIX)].lower() == URN_PREFIX and _UUID.fullmatch(value[len(URN_PREFIX) :])
    ):
        return None  # the common case, at once: hex digits and hyphens only
    if not value:
        return "it is empty"
    size = f"a string of {len(value)} character{'s' if len(value) != 1 else ''}"
    if any(not char.isprintable() for char in value):
        return f"{size} with a control or other unprintable character"
    if any(char.isspace() for char in value):
        return f"{size} with whitespace in it"
    if value[:4].lower() == "urn:":
        if value[: len(URN_PREFIX)].lower() != URN_PREFIX:
            return f"{size}, a URN of another kind than {URN_PREFIX}<uuid>"
        if not _UUID.fullmatch(value[len(URN_PREFIX) :]):
            return f"{size} that starts {URN_PREFIX} but does not end in a UUID"
        return None
    if not _UUID.fullmatch(value):
        return f"{size}, {_SHAPE}"
    return None


def _refused(problem: str) -> ConfigurationError:
    return ConfigurationError(
        f"not a Pleo company id: {problem}. Use the company's UUID or {URN_PREFIX}<uuid>"
    )


def _plain_text(value: object) -> str:
    """``value`` as an exact ``str``, whatever it claims to be.

    Types are read with ``type()``, never ``isinstance()`` (which an object can
    satisfy with a ``__class__`` property), and a subclass's own methods are never
    called: a str subclass is copied with ``str.__str__``, and a Company subclass's
    id is read from the slot Company's own converter filled, not through its
    ``id`` (which the subclass may answer differently).
    """
    kind = type(value)
    if issubclass(kind, Company):
        try:
            value = _ID_SLOT.__get__(value, Company)
        except AttributeError:  # a subclass that never let Company's converter run
            raise ConfigurationError(f"{kind.__name__} holds no company id") from None
        kind = type(value)
    if kind is str:
        return value  # type: ignore[return-value]
    if issubclass(kind, str):
        return str.__str__(value)
    raise ConfigurationError(
        f"a Pleo company is its id (a UUID) or {URN_PREFIX}<uuid> as a string, not {kind.__name__}"
    )


def _canonical(value: object) -> str:
    """The lower-case UUID ``value`` names (a Company, a UUID or a company URN).

    The one choke point every key, path and file name of a family passes through.
    """
    text = _plain_text(value)
    problem = _problem(text)
    if problem is not None:
        raise _refused(problem)
    result = text[-36:].lower()
    if type(result) is not str or not _CANONICAL_ID.fullmatch(result):
        raise _refused(f"a string of {len(text)} characters, {_SHAPE}")
    return result


@attrs.frozen(order=True, repr=False)
class Company:
    """A Pleo company, as the key of its grant.

    Built from Pleo's company id, a UUID in any case, or from its URN,
    ``urn:pleo:company:<uuid>`` (whose ``urn:pleo:company:`` part is read in any
    case too, as RFC 8141 reads a URN's scheme and namespace). Both give the same
    value, which holds the UUID in lower case, so they compare equal, hash alike,
    and name the same grant. Anything else is refused: a path, ``..``, a key
    pattern such as ``*``, whitespace (even around a valid id), a control
    character, an empty string, a non-string, or a URN of another kind. A str
    subclass is read as the plain string it holds, and a Company subclass by the
    id Company checked: neither's own methods decide the id.

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
    pleo_auth.errors.ConfigurationError: not a Pleo company id: a string of 13 characters, \
neither a UUID nor urn:pleo:company:<uuid>. Use the company's UUID or urn:pleo:company:<uuid>

    Args:
        value: The company's UUID, its URN, or a Company.

    Attributes:
        id: The company's UUID, lower case: 36 characters from ``0-9a-f-``, safe
            in a file name, a Redis key or a keyring account.

    Raises:
        ConfigurationError: ``value`` names no company. The message says which
            rule failed and how long the value is, and never repeats the value
            (it may be a token passed by mistake).

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


# The slot attrs made for Company.id: reads what the converter stored, past any
# ``id`` a subclass defines.
_ID_SLOT = Company.__dict__["id"]
