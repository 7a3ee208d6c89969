"""Token stores: where tokens live, and the lock that serialises refreshes.

Each backend is imported on first use; :class:`RedisStore` needs the
``pleo-auth[redis]`` extra. The refresh locks the stores compose
(:class:`RefreshLock`, :class:`FileRefreshLock`, :class:`RedisRefreshLock`,
:class:`ThreadRefreshLock`) live in :mod:`pleo_auth.stores.locks`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes
from .base import Lease, TokenStore

if TYPE_CHECKING:
    from .file import FileStore
    from .keyring import KeyringStore
    from .locks import FileRefreshLock, RedisRefreshLock, RefreshLock, ThreadRefreshLock
    from .memory import MemoryStore
    from .redis import RedisStore

_LAZY = {
    "FileStore": ".file",
    "KeyringStore": ".keyring",
    "MemoryStore": ".memory",
    "RedisStore": ".redis",
    "RefreshLock": ".locks",
    "FileRefreshLock": ".locks",
    "RedisRefreshLock": ".locks",
    "ThreadRefreshLock": ".locks",
}

__all__ = [
    "FileRefreshLock",
    "FileStore",
    "KeyringStore",
    "Lease",
    "MemoryStore",
    "RedisRefreshLock",
    "RedisStore",
    "RefreshLock",
    "ThreadRefreshLock",
    "TokenStore",
]


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, __all__)
