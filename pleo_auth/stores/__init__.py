"""Token stores: where tokens live, and the lock that serialises refreshes.

Each backend is imported on first use; :class:`RedisStore` needs the
``pleo-auth[redis]`` extra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes
from .base import Lease, TokenStore

if TYPE_CHECKING:
    from .file import FileStore
    from .keyring import KeyringStore
    from .memory import MemoryStore
    from .redis import RedisStore

_LAZY = {
    "FileStore": ".file",
    "KeyringStore": ".keyring",
    "MemoryStore": ".memory",
    "RedisStore": ".redis",
}

__all__ = ["FileStore", "KeyringStore", "Lease", "MemoryStore", "RedisStore", "TokenStore"]


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, __all__)
