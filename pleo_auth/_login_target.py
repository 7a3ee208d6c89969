"""Where an :class:`~pleo_auth.flow.AuthorizationFlow` saves a login: one store, or
a grant per company (a :class:`~pleo_auth.TokenStoreFamily`, or an
:class:`~pleo_auth.Integration`'s)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._urls import same_endpoint
from .company import Company
from .errors import ConfigurationError
from .stores.base import TokenStore, require_refresh_lock, save_login
from .stores.family import TokenStoreFamily
from .tokens import TokenSet

if TYPE_CHECKING:
    from .integration import Integration
    from .settings import Settings

__all__ = ["LoginTarget"]


class LoginTarget:
    """The ``store`` a flow was given, checked once.

    Attributes:
        store: The store of the one grant, or the family of a grant per company.
        integration: The Integration whose ``add`` saves each login, if one was given.
        per_company: Whether each login is saved as the grant of its company.

    Raises:
        ConfigurationError: ``store`` is none of these, cannot lock, or is an
            Integration of another client or token endpoint than ``settings``'.

    Thread safety:
        Immutable once built; :meth:`save` may run from any thread.
    """

    def __init__(self, store: object, settings: Settings):
        self.integration = _integration(store, settings)
        self.store: TokenStore | TokenStoreFamily
        if self.integration is not None:
            self.store = self.integration.store
        elif isinstance(store, TokenStore | TokenStoreFamily):
            self.store = store
        elif store is None:
            self.store = settings.build_store()
        else:
            raise ConfigurationError(
                "store must be a TokenStore, a TokenStoreFamily or an Integration, "
                f"not {type(store).__name__}"
            )
        if isinstance(self.store, TokenStore):
            require_refresh_lock(self.store)
        self.per_company = not isinstance(self.store, TokenStore)

    def save(self, tokens: TokenSet, company: Company | None) -> str:
        """Save a login just made, as ``company``'s grant over a family; returns where
        it went. Fresh from the code exchange: no stored pair can descend from it."""
        if isinstance(self.store, TokenStore):
            save_login(self.store, tokens, fresh=True)
            return self.store.describe()
        assert company is not None
        if self.integration is not None:
            self.integration._add(company, tokens, fresh=True)
        else:
            save_login(self.store.store(company), tokens, fresh=True)
        return f"{self.store.describe()}, as {company}'s grant"


def _integration(store: object, settings: Settings) -> Integration | None:
    """``store`` if it is an Integration of the flow's client and token endpoint."""
    if store is None or isinstance(store, TokenStore | TokenStoreFamily):
        return None
    from .integration import Integration  # deferred: a one-grant flow never needs it

    if not isinstance(store, Integration):
        return None
    if store.client_id != settings.client_id or not same_endpoint(
        store.token_url, settings.endpoints.token_url
    ):
        raise ConfigurationError(
            "the Integration given as store has another client id or token endpoint than "
            "the flow: build the flow with AuthorizationFlow.for_integration(integration, ...)"
        )
    return store
