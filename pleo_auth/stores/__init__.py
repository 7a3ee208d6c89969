"""Token stores: where tokens live, and the lock that serialises refreshes.

Each backend is imported on first use; :class:`RedisStore` needs the
``pleo-auth[redis]`` extra, and :class:`SQLStore` (grants in the application's
own database) the ``pleo-auth[sql]`` extra; :func:`EncryptedStore` (tokens
encrypted at rest, over any store or family) the ``pleo-auth[crypto]`` extra.
Families of stores keyed by Pleo company (:class:`TokenStoreFamily`, one per
backend) live in :mod:`pleo_auth.stores.family`, :mod:`pleo_auth.stores.redis_family`
and :mod:`pleo_auth.stores.keyring_family`.
The refresh locks the stores compose
(:class:`RefreshLock`, :class:`FileRefreshLock`, :class:`RedisRefreshLock`,
:class:`ThreadRefreshLock`) live in :mod:`pleo_auth.stores.locks`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes
from .base import Lease, TokenStore

if TYPE_CHECKING:
    from .encrypted import EncryptedStore, EncryptedStoreFamily, EncryptedTokenStore
    from .family import FileStoreFamily, MemoryStoreFamily, TokenStoreFamily
    from .file import FileStore
    from .keyring import KeyringStore
    from .keyring_family import KeyringStoreFamily
    from .locks import FileRefreshLock, RedisRefreshLock, RefreshLock, ThreadRefreshLock
    from .memory import MemoryStore
    from .redis import RedisStore
    from .redis_family import RedisStoreFamily
    from .sql import SQLGrantStore, SQLStore

_LAZY = {
    "FileStore": ".file",
    "KeyringStore": ".keyring",
    "MemoryStore": ".memory",
    "RedisStore": ".redis",
    "RefreshLock": ".locks",
    "FileRefreshLock": ".locks",
    "RedisRefreshLock": ".locks",
    "ThreadRefreshLock": ".locks",
    "TokenStoreFamily": ".family",
    "MemoryStoreFamily": ".family",
    "FileStoreFamily": ".family",
    "KeyringStoreFamily": ".keyring_family",
    "RedisStoreFamily": ".redis_family",
    "SQLStore": ".sql",
    "SQLGrantStore": ".sql",
    "EncryptedStore": ".encrypted",
    "EncryptedStoreFamily": ".encrypted",
    "EncryptedTokenStore": ".encrypted",
}

__all__ = [
    "EncryptedStore",
    "EncryptedStoreFamily",
    "EncryptedTokenStore",
    "FileRefreshLock",
    "FileStore",
    "FileStoreFamily",
    "KeyringStore",
    "KeyringStoreFamily",
    "Lease",
    "MemoryStore",
    "MemoryStoreFamily",
    "RedisRefreshLock",
    "RedisStore",
    "RedisStoreFamily",
    "RefreshLock",
    "SQLGrantStore",
    "SQLStore",
    "ThreadRefreshLock",
    "TokenStore",
    "TokenStoreFamily",
]


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, __all__)
