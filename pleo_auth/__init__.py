"""pleo_auth keeps a Pleo OAuth 2.0 integration authenticated, from any number of
threads, processes and hosts, for as long as the grant lives.

>>> import pleo_auth
>>> sorted(pleo_auth.__all__)[:3]
['AuthorizationError', 'ConfigurationError', 'FileStore']
"""

from __future__ import annotations

import logging

from .errors import (
    AuthorizationError,
    ConfigurationError,
    PleoAuthError,
    ReauthenticationRequired,
    RefreshError,
    TokenStoreError,
)
from .session import PleoSession
from .stores import FileStore, KeyringStore, Lease, MemoryStore, TokenStore
from .tokens import TokenSet

__version__ = "0.1.0"

__all__ = [
    "AuthorizationError",
    "ConfigurationError",
    "FileStore",
    "KeyringStore",
    "Lease",
    "MemoryStore",
    "PleoAuthError",
    "PleoSession",
    "ReauthenticationRequired",
    "RefreshError",
    "TokenSet",
    "TokenStore",
    "TokenStoreError",
    "__version__",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
