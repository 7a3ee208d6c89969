"""A minimal, single-file Django project that connects to Pleo and lists its employees.

Settings come from the environment. Try it against the local emulator:

    pleo-auth emulator                       # prints its URLs; leave it running
    export PLEO_CLIENT_ID=pleo-auth-demo PLEO_CLIENT_SECRET=demo-secret
    export PLEO_TOKEN_URL=http://127.0.0.1:PORT/oauth/token PLEO_API_URL=http://127.0.0.1:PORT
    export PLEO_STORE=file:/tmp/django-example-tokens.json
    python examples/django_app/app.py runserver 8000

Then open http://127.0.0.1:8000/ and follow "Connect to Pleo". In a real project the
settings below go to settings.py and the URL patterns to urls.py.
"""

from __future__ import annotations

import os
import secrets
import sys

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import include, path

settings.configure(
    DEBUG=True,
    SECRET_KEY=os.environ.get("DJANGO_SECRET_KEY") or secrets.token_hex(32),
    ALLOWED_HOSTS=["127.0.0.1", "localhost"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=[],
    DATABASES={},
    MIDDLEWARE=[
        # The session keeps the pending login between connect and callback.
        "django.contrib.sessions.middleware.SessionMiddleware",
        # Turns ReauthenticationRequired from a view into a redirect to connect.
        "pleo_auth.contrib.django.PleoAuthMiddleware",
    ],
    SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies",
    PLEO_AUTH={
        "CLIENT_ID": os.environ.get("PLEO_CLIENT_ID", ""),
        "CLIENT_SECRET": os.environ.get("PLEO_CLIENT_SECRET"),
        "STORE": os.environ.get("PLEO_STORE", "keyring"),
        "ENVIRONMENT": os.environ.get("PLEO_ENVIRONMENT", "production"),
        "SCOPES": os.environ.get("PLEO_SCOPES", "users:read"),
        "TOKEN_URL": os.environ.get("PLEO_TOKEN_URL"),
        "API_URL": os.environ.get("PLEO_API_URL"),
        "AUTHORIZE_URL": os.environ.get("PLEO_AUTHORIZE_URL"),
    },
)


def index(request: HttpRequest) -> HttpResponse:
    return HttpResponse(
        "<h1>Pleo example</h1>"
        "<p><a href='/pleo/connect/'>Connect to Pleo</a> · <a href='/employees/'>Employees</a></p>"
    )


def employees(request: HttpRequest) -> HttpResponse:
    from pleo_auth.contrib.django import get_session

    # No tokens, or a dead grant? This raises ReauthenticationRequired and the
    # middleware redirects the person to /pleo/connect/?next=/employees/.
    response = get_session().get("/v2/employees")
    response.raise_for_status()
    return JsonResponse(response.json())


urlpatterns = [
    path("", index),
    path("employees/", employees),
    path("pleo/", include("pleo_auth.contrib.django")),
]

if __name__ == "__main__":
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
