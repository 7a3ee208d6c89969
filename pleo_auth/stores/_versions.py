"""Moved to :mod:`pleo_auth.stores.versions` (public); this alias goes once no
module imports it."""

from __future__ import annotations

from .versions import IN_USE_FOR, Reading, Version, VersionCache

__all__ = ["IN_USE_FOR", "Reading", "Version", "VersionCache"]
