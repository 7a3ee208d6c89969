"""What logs a person in again, as a value: :class:`LoginHint`.

A session, its coordinator and the errors they raise carry a :class:`LoginHint`
given to them; none of them builds a command line. The ``pleo-auth`` command
renders one (:func:`pleo_auth.cli.login_command`), and a web app names its
connect view instead.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from .settings import Settings
    from .stores.base import TokenStore

__all__ = ["LoginHint"]


@attrs.frozen
class LoginHint:
    """Which login fills a store again: its settings and store, or a web view.

    ``str()`` gives the sentence for a person: the web view when there is one,
    else the ``pleo-auth login`` command with exactly the flags these settings
    need, else (a store no command can reach, such as memory) what to do in code.

    Attributes:
        client_id: The OAuth client id.
        environment: ``"production"`` or ``"staging"``.
        token_url: The token endpoint override, if any.
        api_url: The API base URL override, if any.
        authorize_url: The authorize endpoint override, if any.
        store: The store's spec (:attr:`~pleo_auth.TokenStore.spec`), or None
            when the command cannot reach it.
        where: The store's description, for the sentence.
        view: The URL of a web view that logs in, if a web app has one.
        company: The company the login is for, when ``store`` names a family
            (a grant per company): Pleo's company id.
        store_in_env: ``store`` leaves out the password the store was given
            (:attr:`~pleo_auth.TokenStore.spec_omits_password`), so the command
            names no ``--store``: it reads the whole spec from ``PLEO_STORE``,
            where the password belongs.
        encrypt: The store keeps its tokens encrypted (:func:`~pleo_auth.EncryptedStore`):
            the command needs ``--encrypt``, with the keys in ``PLEO_AUTH_KEYS``.

    Thread safety:
        Immutable; share it freely.

    >>> str(LoginHint(client_id="c-1", store="file:/srv/t.json", where="file /srv/t.json"))
    'Log in with `pleo-auth login --client-id c-1 --store file:/srv/t.json`.'
    >>> str(LoginHint(view="https://app.example/pleo/connect"))
    'Log in at https://app.example/pleo/connect.'
    """

    client_id: str = ""
    environment: str = "production"
    token_url: str | None = None
    api_url: str | None = None
    authorize_url: str | None = None
    store: str | None = "keyring"
    where: str = ""
    view: str | None = None
    company: str | None = None
    store_in_env: bool = False
    encrypt: bool = False

    @classmethod
    def for_settings(
        cls, settings: Settings, store: TokenStore, *, view: str | None = None
    ) -> LoginHint:
        """The login that fills ``store`` with tokens for ``settings``."""
        from .stores.keyring import KeyringStore

        spec = store.spec
        where = store.describe()
        # Never imported here: a session is built on any thread, and an import on one
        # a fork catches leaves its module lock held in the child (issue 10, bug 3).
        # An EncryptedTokenStore exists only once its module was loaded.
        encrypted = sys.modules.get("pleo_auth.stores.encrypted")
        encrypt = encrypted is not None and isinstance(store, encrypted.EncryptedTokenStore)
        if encrypt:
            store = store.inner  # type: ignore[attr-defined]  # what --store names
        if isinstance(store, KeyringStore) and store.account != settings.client_id:
            spec = None  # the command files keyring tokens under the client id
        return cls(
            client_id=settings.client_id,
            environment=settings.environment,
            token_url=settings.token_url,
            api_url=settings.api_url,
            authorize_url=settings.authorize_url,
            store=spec,
            where=where,
            view=view,
            store_in_env=spec is not None and store.spec_omits_password,
            encrypt=encrypt,
        )

    def __str__(self) -> str:
        if self.view is not None:
            return f"Log in at {self.view}."
        if self.store is None:
            return (
                "Log in (pleo_auth.AuthorizationFlow, or `pleo-auth login`) and save the "
                f"new tokens to {self.where}."
            )
        from .cli import login_command  # the one place that knows the flags

        if self.store_in_env:
            return (
                f"Log in with `{login_command(self)}`, with PLEO_STORE set to the spec of "
                f"{self.where} and its password."
            )
        return f"Log in with `{login_command(self)}`."
