"""The Django project the tests run in: one per process, as Django allows.

Django's settings are global to a process and configured once, so every test file
that needs Django (tests/contrib/test_django.py, tests/contrib/test_django_store*.py)
calls :func:`configure`, and the first call wins. The project has:

* the ``pleo_auth.contrib.django`` app, the admin and what it needs;
* database ``default``: a SQLite file of this process's own (WAL, so readers never
  wait for a writer), or the one a parent process passes to its children;
* database ``postgres``: the test session's private PostgreSQL database
  (tests/support/databases.py), named by :func:`use_postgres` before first use;
* database ``bare``: a SQLite file never migrated;
* the URLs of :mod:`support.django_urls`.

A test keeps its grants apart from the others' with a client id of its own
(:func:`unique_client`): the model store's rows belong to one client id.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
import threading
from collections.abc import Mapping
from typing import Any

from pleo_auth.contrib.django import DjangoStoreFamily

__all__ = ["configure", "family", "migrate", "postgres_settings", "unique_client", "use_postgres"]

_guard = threading.Lock()
_migrated: set[str] = set()

#: The MIDDLEWARE of the tests' web app; the admin's tests add auth and messages.
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "pleo_auth.contrib.django.PleoAuthMiddleware",
]
ADMIN_MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "pleo_auth.contrib.django.PleoAuthMiddleware",
]


def sqlite_settings(path: str) -> dict[str, Any]:
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": path,
        "OPTIONS": {"init_command": "PRAGMA journal_mode=WAL;", "timeout": 30},
    }


def postgres_settings(name: str) -> dict[str, Any]:
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": name,
        "USER": "postgres",
        "HOST": "127.0.0.1",
        "PORT": "5432",
    }


def configure(databases: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """Configure Django for this process, once; later calls change nothing.

    Args:
        databases: DATABASES to use (a child process gets its parent's); by default
            a private SQLite file as ``default`` and a ``postgres`` alias whose name
            :func:`use_postgres` sets.
    """
    import django
    from django.conf import settings

    with _guard:
        if settings.configured:
            return
        if databases is None:
            directory = tempfile.mkdtemp(prefix="pleo-auth-django-")
            atexit.register(shutil.rmtree, directory, True)
            databases = {
                "default": sqlite_settings(f"{directory}/default.sqlite3"),
                "postgres": postgres_settings("not_yet_named"),
                # Never migrated: for the store's "run migrate" error.
                "bare": sqlite_settings(f"{directory}/bare.sqlite3"),
            }
        settings.configure(
            DEBUG=False,
            SECRET_KEY="test-only",
            ALLOWED_HOSTS=["testserver"],
            ROOT_URLCONF="support.django_urls",
            INSTALLED_APPS=[
                "django.contrib.contenttypes",
                "django.contrib.auth",
                "django.contrib.sessions",
                "django.contrib.messages",
                "django.contrib.admin",
                "pleo_auth.contrib.django",
            ],
            DATABASES={alias: dict(values) for alias, values in databases.items()},
            MIDDLEWARE=MIDDLEWARE,
            SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies",
            TEMPLATES=[
                {
                    "BACKEND": "django.template.backends.django.DjangoTemplates",
                    "APP_DIRS": True,
                    "OPTIONS": {
                        "context_processors": [
                            "django.template.context_processors.request",
                            "django.contrib.auth.context_processors.auth",
                            "django.contrib.messages.context_processors.messages",
                        ]
                    },
                }
            ],
            USE_TZ=True,
            TIME_ZONE="UTC",
        )
        django.setup()


def use_postgres(name: str) -> None:
    """Point the ``postgres`` alias at database ``name`` (before its first use), as
    Django's own test runner points an alias at its test database."""
    from django.db import connections

    connections.settings["postgres"]["NAME"] = name


def migrate(alias: str) -> None:
    """Create the tables on ``alias`` (``manage.py migrate``), once per process."""
    from django.core.management import call_command

    with _guard:
        if alias in _migrated:
            return
        call_command("migrate", database=alias, verbosity=0, interactive=False)
        _migrated.add(alias)


def databases() -> dict[str, dict[str, Any]]:
    """This process's DATABASES, to hand to a child process."""
    from django.db import connections

    return {alias: dict(connections.settings[alias]) for alias in connections.settings}


def unique_client() -> str:
    """A client id of the test's own: its grants are rows no other test reads."""
    import secrets

    return f"client-{secrets.token_hex(6)}"


def family(
    databases: Mapping[str, Mapping[str, Any]], alias: str, client_id: str, **kwargs: Any
) -> DjangoStoreFamily:
    """The model store over ``client_id``'s grants on ``alias``: in this process, or
    in a spawned child, which configures Django from ``databases`` first."""
    configure(databases)
    return DjangoStoreFamily(client_id, using=alias, **kwargs)


def make_family(alias: str, client_id: str, **kwargs: Any) -> functools.partial[DjangoStoreFamily]:
    """A picklable ``make_family`` (the family contract's fixture) for ``alias``."""
    return functools.partial(family, databases(), alias, client_id, **kwargs)
