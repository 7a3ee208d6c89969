"""Keyring backends for tests: real backends with the limits of others."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from keyring.backend import KeyringBackend
from keyring.compat import properties
from keyring.errors import PasswordSetError

from ..stores.keyring import WINDOWS_CREDENTIAL_LIMIT

__all__ = ["SizeLimitedKeyring"]


class SizeLimitedKeyring(KeyringBackend):
    """Another backend with Windows Credential Manager's entry size limit.

    Windows keeps at most 2,560 bytes in one credential, and keyring's
    ``WinVaultKeyring`` writes the password as UTF-16-LE, so a longer password
    fails (there with ``OSError: [WinError 1783] The stub received bad data``).
    This wrapper refuses such a password the same way on any platform, with
    :class:`keyring.errors.PasswordSetError`, and passes everything else to
    ``inner``: a real backend (the Secret Service, keyrings.alt's file) that then
    stores it. Pass it to :class:`~pleo_auth.KeyringStore` as ``backend=``::

        from keyrings.alt.file import PlaintextKeyring
        from pleo_auth.testing import SizeLimitedKeyring

        store = KeyringStore(backend=SizeLimitedKeyring(PlaintextKeyring()),
                             max_entry_bytes=2560)

    It is never chosen as a default backend.

    Args:
        inner: The backend that stores what fits.
        max_bytes: The largest password accepted, in UTF-16-LE bytes.

    Attributes:
        refused: Passwords refused for their size so far (their sizes, not their text).

    Thread safety:
        As safe as ``inner``; ``refused`` is appended to from any thread.
    """

    def __init__(self, inner: Any, max_bytes: int = WINDOWS_CREDENTIAL_LIMIT):
        super().__init__()  # type: ignore[no-untyped-call]
        self.inner = inner
        self.max_bytes = max_bytes
        self.refused: list[int] = []

    @property
    def pleo_auth_place(self) -> Hashable:
        """Where the items are: ``inner``'s place (see KeyringStore's ``key``)."""
        from ..stores.keyring import backend_place

        return backend_place(self.inner)

    @properties.classproperty
    def priority(cls) -> float:
        # Not viable on its own: keyring's default detection must never pick it.
        raise RuntimeError("SizeLimitedKeyring wraps another backend; pass it as backend=")

    def get_password(self, service: str, username: str) -> str | None:
        value: str | None = self.inner.get_password(service, username)
        return value

    def set_password(self, service: str, username: str, password: str) -> None:
        size = len(password.encode("utf-16-le", "surrogatepass"))
        if size > self.max_bytes:
            self.refused.append(size)
            raise PasswordSetError(
                f"a password of {size} bytes (UTF-16-LE) exceeds the {self.max_bytes}-byte "
                "limit of one entry"
            )
        self.inner.set_password(service, username, password)

    def delete_password(self, service: str, username: str) -> None:
        self.inner.delete_password(service, username)
