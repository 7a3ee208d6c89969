"""Settings of the example: a grant per Pleo company, in the project's PostgreSQL.

``"STORE": "django"`` keeps each company's grant in a ``PleoGrant`` row of the
project's own database (the ``pleo_auth.contrib.django`` app, which ``migrate``
sets up), so the project needs no Redis and no token files: every process and
host that shares the database shares the grants, and refreshes each one once.

Try it against the local emulator and a local PostgreSQL::

    pleo-auth emulator                       # prints its URLs; leave it running
    createdb companies_example
    export PLEO_CLIENT_ID=pleo-auth-demo PLEO_CLIENT_SECRET=demo-secret
    export PLEO_TOKEN_URL=http://127.0.0.1:PORT/oauth/token PLEO_API_URL=http://127.0.0.1:PORT
    export PLEO_AUTHORIZE_URL=http://127.0.0.1:PORT/oauth/authorize
    export PGDATABASE=companies_example PGHOST=127.0.0.1 PGUSER=postgres
    cd examples/django_companies
    python manage.py migrate
    python manage.py runserver 8000

Then open http://127.0.0.1:8000/, connect a company or two, and open their
employees. ``python manage.py createsuperuser`` and /admin/ show the grants:
companies, access-token expiry and who needs a login, never a token.
"""

from __future__ import annotations

import os
import secrets

DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or secrets.token_hex(32)
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "companies.urls"
USE_TZ = True
TIME_ZONE = "UTC"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "pleo_auth.contrib.django",  # the PleoGrant model, its admin, and the settings check
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",  # keeps the pending login
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    # Turns ReauthenticationRequired from a view into a redirect to the connect view.
    "pleo_auth.contrib.django.PleoAuthMiddleware",
]

TEMPLATES = [
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
]

# The connection comes from libpq's usual variables.
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("PGDATABASE", "companies_example"),
        "HOST": os.environ.get("PGHOST", "127.0.0.1"),
        "PORT": os.environ.get("PGPORT", "5432"),
        "USER": os.environ.get("PGUSER", "postgres"),
        "PASSWORD": os.environ.get("PGPASSWORD", ""),
    }
}

PLEO_AUTH = {
    "CLIENT_ID": os.environ.get("PLEO_CLIENT_ID", ""),
    "CLIENT_SECRET": os.environ.get("PLEO_CLIENT_SECRET"),
    "STORE": "django",  # a grant per company, in DATABASES["default"]
    "ENVIRONMENT": os.environ.get("PLEO_ENVIRONMENT", "production"),
    "SCOPES": os.environ.get("PLEO_SCOPES", "users:read"),
    "TOKEN_URL": os.environ.get("PLEO_TOKEN_URL"),
    "API_URL": os.environ.get("PLEO_API_URL"),
    "AUTHORIZE_URL": os.environ.get("PLEO_AUTHORIZE_URL"),
}
