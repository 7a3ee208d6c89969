"""Moved: the store contract is public as :class:`pleo_auth.testing.TokenStoreContract`.

Kept only so that a test module not yet switched over still imports; import from
:mod:`pleo_auth.testing` instead.
"""

from pleo_auth.testing import MakeStore, TokenStoreContract, new_tokens

__all__ = ["MakeStore", "TokenStoreContract", "new_tokens"]
