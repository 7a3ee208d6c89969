"""The example's URLs: its pages, pleo_auth's connect and callback views, the admin."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from . import views

urlpatterns = [
    path("", views.index),
    path("companies/<str:company>/employees/", views.employees),
    # pleo_auth:connect and pleo_auth:callback. Whoever completes a login decides
    # which company's grant the app keeps: in a real project, include them under
    # a path your authentication guards, as the admin is guarded.
    path("pleo/", include("pleo_auth.contrib.django")),
    path("admin/", admin.site.urls),
]
