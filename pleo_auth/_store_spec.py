"""Deprecated: the store spec moved to :mod:`pleo_auth.stores.spec`."""

from __future__ import annotations

import warnings

from .stores.spec import DEFAULT_SPEC, SPEC_HELP, redact_spec, store_from_spec

__all__ = ["DEFAULT_SPEC", "SPEC_HELP", "redact_spec", "store_from_spec"]

warnings.warn(
    "pleo_auth._store_spec is deprecated: import from pleo_auth.stores.spec",
    DeprecationWarning,
    stacklevel=2,
)
