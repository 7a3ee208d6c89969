"""The emulator's view of Pleo companies: what names one, and the default one.

The emulator checks company names itself, so that it depends on no unreleased
core API; the rule is Pleo's: a company is named by its id, a UUID, or by the URN
``urn:pleo:company:<uuid>`` (the ``subject_urn`` of introspection and the
``resource`` of an installation). Both forms name the same company.
"""

from __future__ import annotations

import re

from ..errors import ConfigurationError

#: The URN prefix of a Pleo company.
COMPANY_URN_PREFIX = "urn:pleo:company:"

#: The company a grant belongs to when none is named, unless the emulator was given
#: another: ``Emulator(company=...)``.
DEFAULT_COMPANY = COMPANY_URN_PREFIX + "c0ffee00-0000-4000-8000-000000000001"

# The canonical 8-4-4-4-12 hex form only: no braces, no "urn:uuid:", no missing
# hyphens. fullmatch, so a trailing newline is refused too.
_UUID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")

_SHAPE = (
    "a company is Pleo's company id, a UUID such as "
    "123e4567-e89b-12d3-a456-426614174000, or urn:pleo:company:<uuid>"
)


def company_urn(company: object) -> str:
    """The company's URN, ``urn:pleo:company:<uuid>`` with the UUID in lower case.

    Args:
        company: A company id (a UUID) or its ``urn:pleo:company:<uuid>``.

    Returns:
        The URN; both forms of one company give the same one.

    Raises:
        ConfigurationError: (a ValueError) ``company`` is neither. The message
            never repeats the value, which may be a secret passed by mistake.
    """
    if not isinstance(company, str):
        raise ConfigurationError(f"{_SHAPE}; got {type(company).__name__}")
    uuid = company.removeprefix(COMPANY_URN_PREFIX)
    if not _UUID.fullmatch(uuid):
        raise ConfigurationError(f"{_SHAPE}; got a string of {len(company)} characters")
    return COMPANY_URN_PREFIX + uuid.lower()
