"""The admin page of the Django model store: which companies have a grant, when
their access tokens expire, and which need a login. It never shows a token.

No field of the pair (nor its fence) is on any admin page, list or form: the
tokens are read by pleo_auth alone. Grants are made by logging a company in
(the connect view, or ``pleo-auth login``), never in the admin; deleting a row
forgets that company's grant here (it stays valid at Pleo until it expires).
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin

from .models import PleoGrant
from .store import is_null

__all__ = ["PleoGrantAdmin"]

#: What the admin shows: everything but the tokens and their fence.
_SHOWN = (
    "company",
    "client_id",
    "needs_login",
    "access_expires_at",
    "updated_at",
    "version",
    "lease_owner",
    "lease_until",
)


@admin.register(PleoGrant)
class PleoGrantAdmin(admin.ModelAdmin):  # type: ignore[misc]  # Django ships no type hints
    """Read-only: list companies, access-token expiry and needs-login; never a token."""

    list_display = ("company", "client_id", "needs_login", "access_expires_at", "updated_at")
    list_filter = ("client_id",)
    search_fields = ("company",)
    ordering = ("client_id", "company")
    fields = _SHOWN
    readonly_fields = _SHOWN
    exclude = ("tokens", "fence")

    @admin.display(boolean=True, description="needs login", ordering="cleared")  # type: ignore[untyped-decorator]
    def needs_login(self, grant: PleoGrant) -> bool:
        return bool(grant.cleared)

    def get_queryset(self, request: Any) -> Any:
        # The tokens never leave the database for an admin page: "needs login" is
        # whether the column is NULL, asked of the database.
        return super().get_queryset(request).defer("tokens").annotate(cleared=is_null("tokens"))

    def has_add_permission(self, request: Any) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False
