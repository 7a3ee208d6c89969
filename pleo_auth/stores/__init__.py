"""Token stores: where tokens live, and the lock that serialises refreshes.

:class:`RedisStore` lives in :mod:`pleo_auth.stores.redis` and needs the
``pleo-auth[redis]`` extra; it is imported only when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import Lease, TokenStore
from .file import FileStore
from .keyring import KeyringStore
from .memory import MemoryStore

if TYPE_CHECKING:
    from .redis import RedisStore

__all__ = ["FileStore", "KeyringStore", "Lease", "MemoryStore", "RedisStore", "TokenStore"]


def __getattr__(name: str) -> Any:
    if name == "RedisStore":
        from .redis import RedisStore

        return RedisStore
    raise AttributeError(name)
