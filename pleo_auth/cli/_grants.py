"""What ``--store`` and ``--company`` name: one grant, or a grant per company.

A store spec (``keyring``, ``file:PATH``, ``redis://...``) names one grant; a
family spec (``family:file:DIR``, ``family:redis://...``, ``family:keyring``;
see :mod:`pleo_auth.stores.family_spec`) names a grant per Pleo company, and
``--company`` picks one of them. This module reads both, and holds what only a
family has: the ``status`` table of every company, and the login command for one.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Mapping
from typing import TextIO

import attrs

from .._clock import SYSTEM_CLOCK
from ..company import Company
from ..errors import ConfigurationError, PleoAuthError, StoreUnusable, TokensUnreadable
from ..settings import Settings
from ..stores.base import TokenStore
from ..stores.family import TokenStoreFamily
from ..stores.family_spec import (
    family_spec_of,
    is_family_spec,
    parse_family_spec,
    redact_family_spec,
)
from ..stores.spec import has_password, is_sql_spec
from ..tokens import TokenSet
from ._output import say, span, when
from ._render import login_command

__all__ = ["Grants", "build_store", "family_status", "read_grants", "require_client_id"]

EXIT_OK = 0
EXIT_LOGIN_NEEDED = 1
EXIT_FAILURE = 3

#: What the command adds where the core says only that a client id is missing.
_CLIENT_ID_HELP = "give --client-id or set PLEO_CLIENT_ID"


#: What PLEO_ENCRYPT turns encryption on with (Settings reads it for one grant).
_ON = ("1", "true", "yes")


def require_client_id(settings: Settings) -> str:
    """The client id, or a usage error naming this command's flag and variable."""
    if not settings.client_id:
        raise ConfigurationError(f"no client id: {_CLIENT_ID_HELP}")
    return settings.client_id


def build_store(settings: Settings) -> TokenStore:
    """The store the settings name; a keyring without a client id names the flag."""
    try:
        return settings.build_store()
    except ConfigurationError as exc:
        if settings.client_id or isinstance(exc, StoreUnusable):
            raise
        raise ConfigurationError(f"{exc}: {_CLIENT_ID_HELP}") from None


@attrs.frozen
class Grants:
    """The grants a command works on.

    Attributes:
        family: The family ``--store`` names, or None for one grant.
        family_spec: The spec of the family, for login commands (no password).
        company: The company ``--company`` names, if given.
    """

    family: TokenStoreFamily | None = None
    family_spec: str | None = None
    company: Company | None = None

    def store(self, settings: Settings, command: str) -> TokenStore:
        """The one store ``command`` works on: ``--store``'s, or the family's
        member for ``--company``.

        Raises:
            ConfigurationError: A family without ``--company``, or ``--company``
                with one grant's store (except for ``login``, which checks it).
        """
        if self.family is None:
            if self.company is not None and command != "login":
                raise ConfigurationError(
                    f"--company picks a grant of a store family (--store family:...); "
                    f"the store named holds one grant: drop --company to {command} it"
                )
            return build_store(settings)
        if self.company is None:
            raise ConfigurationError(
                f"{command} works on one company's grant: name it with --company "
                "(`pleo-auth status` lists them)"
            )
        return self.family.store(self.company)

    def login_command(self, settings: Settings, store: TokenStore) -> str:
        """The ``pleo-auth login`` command that fills ``store`` again."""
        hint = settings.login_hint(store)
        if self.family is None:
            return login_command(hint)
        command = login_command(attrs.evolve(hint, store=self.family_spec))
        company = self.company.id if self.company is not None else None
        return f"{command} --company {shlex.quote(company)}" if company else command


def read_grants(
    args: argparse.Namespace, env: Mapping[str, str]
) -> tuple[Grants, argparse.Namespace, Mapping[str, str]]:
    """What ``--store`` (or ``PLEO_STORE``) and ``--company`` name, checked before
    anything is touched; and the arguments and environment to read the settings
    from, without a family spec (settings name one grant's store only).

    Raises:
        ConfigurationError: ``--company`` names no company (the message never
            repeats it), or the family spec is malformed (the message names its
            flag or variable).
    """
    company = None
    if getattr(args, "company", None) is not None:
        try:
            company = Company(args.company)
        except ConfigurationError as exc:
            raise ConfigurationError(f"--company: {exc}") from None
    flag = getattr(args, "store", None)
    flag = flag.strip() or None if isinstance(flag, str) else None
    variable = env.get("PLEO_STORE", "").strip() or None
    spec, source = (flag, "--store") if flag is not None else (variable, "PLEO_STORE")
    if flag is not None:
        _refuse_password(flag)
    if not is_family_spec(spec):
        return Grants(company=company), args, env
    assert spec is not None
    client_id = getattr(args, "client_id", None) or env.get("PLEO_CLIENT_ID", "")
    try:
        family = parse_family_spec(spec)(client_id.strip() or None)
    except ConfigurationError as exc:
        fix = f"; {_CLIENT_ID_HELP}" if "client id" in str(exc) and not client_id else ""
        raise ConfigurationError(f"{exc} ({source}){fix}") from None
    on = env.get("PLEO_ENCRYPT", "").strip().lower() in _ON
    if getattr(args, "encrypt", None) or on or args.command == "rotate-key":
        from ..stores.encrypted import encrypt_family, find_keys

        family = encrypt_family(family, client_id=client_id.strip() or None, keys=find_keys(env))
    shown = family_spec_of(family) or redact_family_spec(spec)
    args = argparse.Namespace(**{**vars(args), "store": None})
    env = {name: value for name, value in env.items() if name != "PLEO_STORE"}
    return Grants(family=family, family_spec=shown, company=company), args, env


def _refuse_password(flag: str) -> None:
    """Refuse a database password in ``--store``: every user of ``ps`` reads it."""
    bare = flag[len("family:") :] if is_family_spec(flag) else flag
    if is_sql_spec(bare) and has_password(bare):
        raise ConfigurationError(
            "--store holds a database password, which every user of this machine can "
            "read in the process list: put the whole URL in the PLEO_STORE environment "
            "variable instead, and drop --store"
        )


# -- status of a family --------------------------------------------------------------


def _ago(at: float | None, now: float) -> str:
    return "-" if at is None else f"{span(max(0.0, now - at))} ago"


@attrs.frozen
class _Row:
    company: Company
    expires: str = "-"
    refreshed: str = "-"
    needs_login: str = "no"
    failed: bool = False


def _row(family: TokenStoreFamily, company: Company, now: float) -> _Row:
    try:
        tokens: TokenSet | None = family.store(company).load()
    except TokensUnreadable:
        return _Row(company, needs_login="yes: its tokens are unreadable")
    except PleoAuthError as exc:
        return _Row(company, needs_login=f"unknown: {exc}", failed=True)
    if tokens is None:
        return _Row(company, needs_login="yes: no grant")
    return _Row(
        company,
        expires=when(tokens.expires_at, now, seconds=False),
        refreshed=_ago(tokens.issued_at, now),
    )


def family_status(settings: Settings, grants: Grants, out: TextIO) -> int:
    """``pleo-auth status`` of a family: a table of every company (or of
    ``--company``), exit 1 when any needs a login (or there is none)."""
    family = grants.family
    assert family is not None
    say(out, f"Store: {family.describe()}")
    companies = [grants.company] if grants.company is not None else family.companies()
    if not companies:
        say(out, "Companies: none. A person must log in for each company:")
        say(out, f"  {grants.login_command(settings, family.store(_ANY))}")
        return EXIT_LOGIN_NEEDED
    now = SYSTEM_CLOCK.time()
    rows = [_row(family, company, now) for company in companies]
    header = ("COMPANY", "ACCESS TOKEN EXPIRES", "REFRESHED", "NEEDS LOGIN")
    cells = [header] + [
        (row.company.id, row.expires, row.refreshed, row.needs_login) for row in rows
    ]
    widths = [max(len(line[column]) for line in cells) for column in range(3)]
    for line in cells:
        columns = zip(line[:3], widths, strict=True)
        say(out, "".join(cell.ljust(width + 2) for cell, width in columns) + line[3])
    waiting = [row for row in rows if row.needs_login.startswith("yes")]
    failed = [row for row in rows if row.failed]
    count = f"{len(rows)} compan{'y' if len(rows) == 1 else 'ies'}"
    if failed:  # not "none needs a login": whether they do is unknown
        count += f"; {len(failed)} could not be read (see NEEDS LOGIN)"
    if not waiting:
        say(out, f"{count}; {'no other' if failed else 'none'} needs a login.")
        return EXIT_FAILURE if failed else EXIT_OK
    say(out, f"{count}; {len(waiting)} need{'s' if len(waiting) == 1 else ''} a login:")
    for row in waiting:
        chosen = attrs.evolve(grants, company=row.company)
        say(out, f"  {chosen.login_command(settings, family.store(row.company))}")
    return EXIT_FAILURE if failed else EXIT_LOGIN_NEEDED


#: A company whose store only lends its settings to a login command for any company.
_ANY = Company("00000000-0000-0000-0000-000000000000")
