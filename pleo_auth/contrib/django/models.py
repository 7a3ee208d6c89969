"""The model of the Django model store: one :class:`PleoGrant` row per company.

Imported by Django once the app registry is ready (``INSTALLED_APPS`` holds
``"pleo_auth.contrib.django"``); nothing else in the package imports it at
import time, so ``include("pleo_auth.contrib.django")`` in a URLconf never
loads a model early.
"""

from __future__ import annotations

from django.db import models

__all__ = ["PleoGrant"]


class PleoGrant(models.Model):  # type: ignore[misc]  # Django ships no type hints
    """One Pleo company's grant behind one OAuth client, and its refresh lease.

    Written only through :class:`~pleo_auth.contrib.django.store.DjangoGrantStore`:

    * ``tokens`` holds both tokens in one JSON document (as every pleo-auth store
      keeps them), or NULL once the grant was cleared: the row stays as a
      tombstone, so its version keeps counting and a watcher sees the change;
    * ``fence`` is the SHA-256 of the stored refresh token, which a fenced save
      compares without reading the tokens;
    * ``epoch`` (random, set when the row is made) and ``version`` (bumped by every
      write) are the version a process checks, cheaply, to see a rotation made
      elsewhere;
    * ``lease_owner`` and ``lease_until`` are the refresh lock: a lease in the row,
      dated by the database's clock.

    ``access_expires_at`` and ``updated_at`` repeat what the admin shows, so it
    never needs to read the tokens.
    """

    client_id = models.CharField(max_length=255)
    company = models.CharField(max_length=36, help_text="The Pleo company's id (a UUID).")
    tokens = models.TextField(null=True, editable=False)
    fence = models.CharField(max_length=64, blank=True, default="", editable=False)
    access_expires_at = models.DateTimeField(null=True, editable=False)
    epoch = models.CharField(max_length=32, editable=False)
    version = models.BigIntegerField(default=0, editable=False)
    lease_owner = models.CharField(max_length=64, null=True, editable=False)
    lease_until = models.DateTimeField(null=True, editable=False)
    updated_at = models.DateTimeField(null=True, editable=False)

    class Meta:
        app_label = "pleo_auth"
        verbose_name = "Pleo grant"
        constraints = [  # noqa: RUF012  # Django reads it as a list
            models.UniqueConstraint(
                fields=["client_id", "company"], name="pleo_auth_grant_client_company"
            )
        ]

    @property
    def needs_login(self) -> bool:
        """Whether the company has no live grant here: log it in again."""
        return self.tokens is None

    def __str__(self) -> str:
        return f"Pleo grant of company {self.company} (client {self.client_id})"
