"""The Django app config of :mod:`pleo_auth.contrib.django`.

``INSTALLED_APPS += ["pleo_auth.contrib.django"]`` installs the app: its
:class:`~pleo_auth.contrib.django.models.PleoGrant` model (``manage.py migrate``
creates its table), its admin page, and the ``manage.py check`` of ``PLEO_AUTH``.
"""

from __future__ import annotations

from django.apps import AppConfig

__all__ = ["PleoAuthConfig"]


class PleoAuthConfig(AppConfig):  # type: ignore[misc]  # Django ships no type hints
    """The app: ``"pleo_auth.contrib.django"`` (or this class's dotted path) in
    ``INSTALLED_APPS``. Its label is ``pleo_auth``; ``manage.py check`` then checks
    ``PLEO_AUTH`` (:func:`~pleo_auth.contrib.django.check_settings`)."""

    name = "pleo_auth.contrib.django"
    label = "pleo_auth"
    verbose_name = "pleo-auth"
    default_auto_field = "django.db.models.BigAutoField"
