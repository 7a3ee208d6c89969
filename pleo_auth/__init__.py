"""pleo_auth keeps a Pleo OAuth 2.0 integration authenticated, from any number of
threads, processes and hosts, for as long as the grant lives.

The public names are loaded on first use, so ``import pleo_auth`` in a cron job
costs almost nothing until a session is built.

>>> import pleo_auth
>>> pleo_auth.PleoSession.__mro__[1].__name__
'Session'
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ._lazy import lazy_attributes
from .errors import (
    AuthorizationError,
    ConfigurationError,
    PleoAuthError,
    RateLimited,
    ReauthenticationRequired,
    RefreshError,
    RevocationError,
    StoreUnusable,
    TokenStoreError,
    TokensUnreadable,
)

if TYPE_CHECKING:
    from .company import Company
    from .flow import AuthorizationFlow, PendingAuthorization
    from .integration import GrantStatus, Integration
    from .login_hint import LoginHint
    from .ratelimit import RateLimit
    from .session import PleoSession
    from .settings import Settings
    from .stores import FileStore, KeyringStore, Lease, MemoryStore, TokenStore
    from .stores.encrypted import EncryptedStore
    from .stores.family import TokenStoreFamily
    from .stores.redis import RedisStore
    from .tokens import TokenSet

__version__ = "0.1.0"

_LAZY = {
    "AuthorizationFlow": ".flow",
    "Company": ".company",
    "GrantStatus": ".integration",
    "Integration": ".integration",
    "PendingAuthorization": ".flow",
    "PleoSession": ".session",
    "Settings": ".settings",
    "LoginHint": ".login_hint",
    "RateLimit": ".ratelimit",
    "TokenSet": ".tokens",
    "TokenStore": ".stores.base",
    "TokenStoreFamily": ".stores.family",
    "Lease": ".stores.base",
    "MemoryStore": ".stores.memory",
    "FileStore": ".stores.file",
    "KeyringStore": ".stores.keyring",
    "RedisStore": ".stores.redis",
    "EncryptedStore": ".stores.encrypted",
}

__all__ = [
    "AuthorizationError",
    "AuthorizationFlow",
    "Company",
    "ConfigurationError",
    "EncryptedStore",
    "FileStore",
    "GrantStatus",
    "Integration",
    "KeyringStore",
    "Lease",
    "LoginHint",
    "MemoryStore",
    "PendingAuthorization",
    "PleoAuthError",
    "PleoSession",
    "RateLimit",
    "RateLimited",
    "ReauthenticationRequired",
    "RedisStore",
    "RefreshError",
    "RevocationError",
    "Settings",
    "StoreUnusable",
    "TokenSet",
    "TokenStore",
    "TokenStoreError",
    "TokenStoreFamily",
    "TokensUnreadable",
    "__version__",
]


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, __all__)


logging.getLogger(__name__).addHandler(logging.NullHandler())
