"""The URLconf of the tests' Django project (support.django_project): an app view
calling Pleo through ``get_session()``, pleo_auth's views, and the admin."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import JsonResponse
from django.urls import include, path


def employees(request: Any) -> Any:
    from pleo_auth.contrib.django import get_session

    return JsonResponse(get_session().get("/v2/employees").json())


urlpatterns = [
    path("employees/", employees),
    path("pleo/", include("pleo_auth.contrib.django")),
    path("admin/", admin.site.urls),
]
