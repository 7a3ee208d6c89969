"""Test helpers for Pleo integrations: an emulator of Pleo's OAuth 2.0 server, a
fake clock, and a multi-process workload runner.

Start an emulator, point a client at :attr:`Emulator.token_url` and
:attr:`Emulator.api_url`, and it enforces Pleo's token rules over real HTTP, one
grant per company if you like (``issue_tokens(company=...)``,
:meth:`Emulator.counters_for`), with a token endpoint of limited capacity
(:class:`TokenCapacity`) if you need one::

    from pleo_auth.testing import Emulator

    with Emulator(access_token_lifetime=60) as emu:
        tokens = emu.issue_tokens()
        ...

:class:`FakeClock` drives a session's proactive timer without sleeping.
:class:`TokenStoreContract` is the test class every token store's tests subclass,
this project's and a third party's alike. It needs pytest, so it (with
``MakeStore`` and ``new_tokens``) is imported by name and left out of ``__all__``:
``from pleo_auth.testing import *`` works without pytest.

The emulator uses the standard library only, so importing it is cheap; the
workload runner (:func:`run_workload`), :class:`SizeLimitedKeyring` (a keyring
backend with Windows' entry size limit), :class:`FaultyStore` (a wrapper that
makes a real store's next load, save, clear, version or lock fail on demand) and
the store contract are loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._clock import Clock, FakeClock
from .._lazy import lazy_attributes
from .._scheduler import scheduler_for
from ._emulator import (
    DEFAULT_COMPANY,
    Emulator,
    EmulatorCounters,
    GrantCounters,
    TokenCapacity,
)
from ._fault import Fault
from ._redis import free_port, redis_server

if TYPE_CHECKING:
    from ._contract import MakeStore as MakeStore
    from ._contract import TokenStoreContract as TokenStoreContract
    from ._contract import new_tokens as new_tokens
    from ._family_contract import MakeFamily as MakeFamily
    from ._family_contract import TokenStoreFamilyContract as TokenStoreFamilyContract
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
    "DEFAULT_COMPANY",
    "ClientSpec",
    "Emulator",
    "EmulatorCounters",
    "FakeClock",
    "Fault",
    "FaultyStore",
    "GrantCounters",
    "ResourceSample",
    "SizeLimitedKeyring",
    "StoreOperation",
    "TokenCapacity",
    "WorkloadError",
    "WorkloadProgress",
    "WorkloadReport",
    "build_store",
    "free_port",
    "redis_server",
    "run_workload",
    "settle",
]


def settle(clock: Clock, timeout: float = 10.0) -> bool:
    """Wait until pleo_auth's refresh scheduler has done everything ``clock`` made due.

    For tests that drive sessions or an :class:`~pleo_auth.Integration` on a
    :class:`FakeClock`: advance the clock, ``settle``, then assert on what the
    proactive refreshes did. Returns False if the scheduler was still busy after
    ``timeout`` real seconds.
    """
    return scheduler_for(clock).settled(timeout)


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


#: The store contract's names need pytest, an optional dependency: importable by
#: name (``from pleo_auth.testing import TokenStoreContract``), but kept out of
#: ``__all__``, as keyring keeps its contract in keyring.testing.backend and
#: hypothesis its optional parts in hypothesis.extra, out of the package's star
#: import; see pleo_auth._lazy.
_FAMILY_CONTRACT_NAMES = ("MakeFamily", "TokenStoreFamilyContract")
_CONTRACT_NAMES = ("MakeStore", "TokenStoreContract", "new_tokens", *_FAMILY_CONTRACT_NAMES)

#: Names loaded on first use, and the module each lives in.
_LAZY_MODULES = {
    **dict.fromkeys(_WORKLOAD_NAMES, "._workload"),
    "SizeLimitedKeyring": "._keyrings",
    "FaultyStore": "._faulty",
    "StoreOperation": "._faulty",
    **dict.fromkeys(_CONTRACT_NAMES, "._contract"),
    **dict.fromkeys(_FAMILY_CONTRACT_NAMES, "._family_contract"),
}

__getattr__, __dir__ = lazy_attributes(
    __name__, _LAZY_MODULES, __all__, needs=dict.fromkeys(_CONTRACT_NAMES, "pytest")
)
