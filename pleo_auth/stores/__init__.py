"""Token stores: where tokens live, and the lock that serialises refreshes.

Each backend is imported on first use; :class:`RedisStore` needs the
``pleo-auth[redis]`` extra.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pleo_auth.stores' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
