"""The one place that turns a :class:`~pleo_auth.login_hint.LoginHint` into a command."""

from __future__ import annotations

import shlex

from ..login_hint import LoginHint

__all__ = ["login_command"]


def login_command(hint: LoginHint) -> str:
    """The ``pleo-auth login`` command line that fills the hint's store.

    Only what differs from the defaults is written: the keyring store and the
    production environment need no flag.

    >>> login_command(LoginHint(client_id="c-1", environment="staging"))
    'pleo-auth login --client-id c-1 --environment staging'
    """
    parts = ["pleo-auth", "login"]
    if hint.client_id:
        parts += ["--client-id", hint.client_id]
    if hint.store and hint.store != "keyring" and not hint.store_in_env:
        parts += ["--store", hint.store]
    if hint.encrypt:
        parts.append("--encrypt")
    if hint.environment != "production":
        parts += ["--environment", hint.environment]
    for flag, value in (
        ("--token-url", hint.token_url),
        ("--api-url", hint.api_url),
        ("--authorize-url", hint.authorize_url),
    ):
        if value:
            parts += [flag, value]
    if hint.company:
        parts += ["--company", hint.company]
    return shlex.join(parts)
