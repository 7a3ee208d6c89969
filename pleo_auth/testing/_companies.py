"""The emulator's view of Pleo companies: what names one, and the default one.

What names a company is :class:`pleo_auth.Company`'s rule, so the emulator and
the library always agree: Pleo's company id, a UUID in any case, or the URN
``urn:pleo:company:<uuid>`` (the ``subject_urn`` of introspection and the
``resource`` of an installation), its prefix in any case too, or a Company. All
forms of one company name the same company.
"""

from __future__ import annotations

from ..company import URN_PREFIX, Company

#: The URN prefix of a Pleo company.
COMPANY_URN_PREFIX = URN_PREFIX

#: The company a grant belongs to when none is named, unless the emulator was given
#: another: ``Emulator(company=...)``.
DEFAULT_COMPANY = COMPANY_URN_PREFIX + "c0ffee00-0000-4000-8000-000000000001"


def company_urn(company: object) -> str:
    """The company's URN, ``urn:pleo:company:<uuid>`` with the UUID in lower case.

    Args:
        company: A :class:`~pleo_auth.Company`, a company id (a UUID) or its
            ``urn:pleo:company:<uuid>``.

    Returns:
        The URN; every form of one company gives the same one.

    Raises:
        ConfigurationError: (a ValueError) ``company`` names no company, as
            :class:`~pleo_auth.Company` decides. The message never repeats the
            value, which may be a secret passed by mistake.
    """
    return Company(company).urn
