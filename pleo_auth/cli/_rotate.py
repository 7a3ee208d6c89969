"""``pleo-auth rotate-key``: re-encrypt every grant of a store under the first key."""

from __future__ import annotations

import argparse
from typing import TextIO

from ..settings import Settings
from ..stores.encrypted import (
    EncryptedStoreFamily,
    EncryptedTokenStore,
    encrypt_store,
    rotate_keys,
)
from ._grants import Grants, build_store
from ._output import error

__all__ = ["rotate_key"]

EXIT_OK = 0
EXIT_FAILURE = 3


def rotate_key(args: argparse.Namespace, settings: Settings, out: TextIO, grants: Grants) -> int:
    """Re-encrypt the store's grant, or every grant of the family, under the first key
    of ``PLEO_AUTH_KEYS`` (or the key file, or the keyring), each under its refresh lock.

    Tokens stored unencrypted are encrypted. Exits 3 when a grant could not be
    rotated (no key opens it, its lock stayed taken): the others are rotated.
    """
    target: EncryptedTokenStore | EncryptedStoreFamily
    if grants.family is not None:
        family = grants.family  # read_grants encrypted it, with the command's keys
        assert isinstance(family, EncryptedStoreFamily)
        target = family.for_company(grants.company) if grants.company is not None else family
    else:
        store = encrypt_store(build_store(settings), client_id=settings.client_id or None)
        assert isinstance(store, EncryptedTokenStore)
        target = store
    result = rotate_keys(target)
    counts = {
        outcome: sum(1 for done in result.done.values() if done == outcome)
        for outcome in ("rotated", "encrypted", "empty")
    }
    print(
        f"{target.describe()}: {counts['rotated']} grant(s) re-encrypted under the first key, "
        f"{counts['encrypted']} encrypted that were not, {counts['empty']} empty, "
        f"{len(result.failed)} failed",
        file=out,
    )
    for company, exc in sorted(result.failed.items(), key=lambda item: str(item[0])):
        error(f"rotate-key failed for {company or 'the grant'}: {exc}")
    return EXIT_FAILURE if result.failed else EXIT_OK
