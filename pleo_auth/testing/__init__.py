"""Test helpers for Pleo integrations: an emulator of Pleo's OAuth 2.0 server, a
fake clock, and a multi-process workload runner.

Start an emulator, point a client at :attr:`Emulator.token_url` and
:attr:`Emulator.api_url`, and it enforces Pleo's token rules over real HTTP::

    from pleo_auth.testing import Emulator

    with Emulator(access_token_lifetime=60) as emu:
        tokens = emu.issue_tokens()
        ...

The emulator uses the standard library only, so importing it is cheap; the
workload runner (:func:`run_workload`), :class:`SizeLimitedKeyring` (a keyring
backend with Windows' entry size limit) and :class:`FaultyStore` (a wrapper that
makes a real store's next load, save, clear, version or lock fail on demand) are
loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .._clock import FakeClock
from ._emulator import Emulator, EmulatorCounters
from ._redis import free_port, redis_server

if TYPE_CHECKING:
    from ._faulty import FaultyStore, StoreOperation
    from ._keyrings import SizeLimitedKeyring
    from ._workload import (
        ClientSpec,
        ResourceSample,
        WorkloadError,
        WorkloadProgress,
        WorkloadReport,
        build_store,
        run_workload,
    )

__all__ = [
    "ClientSpec",
    "Emulator",
    "EmulatorCounters",
    "FakeClock",
    "FaultyStore",
    "ResourceSample",
    "SizeLimitedKeyring",
    "StoreOperation",
    "WorkloadError",
    "WorkloadProgress",
    "WorkloadReport",
    "build_store",
    "free_port",
    "redis_server",
    "run_workload",
]

_WORKLOAD_NAMES = frozenset(
    {
        "ClientSpec",
        "ResourceSample",
        "WorkloadError",
        "WorkloadProgress",
        "WorkloadReport",
        "build_store",
        "run_workload",
    }
)


#: Names loaded on first use, and the module each lives in.
_LAZY_MODULES = {
    **dict.fromkeys(_WORKLOAD_NAMES, "._workload"),
    "SizeLimitedKeyring": "._keyrings",
    "FaultyStore": "._faulty",
    "StoreOperation": "._faulty",
}


def __getattr__(name: str) -> Any:
    module = _LAZY_MODULES.get(name)
    if module is None:
        raise AttributeError(f"module 'pleo_auth.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
