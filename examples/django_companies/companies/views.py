"""The example's views: the companies with a grant, and each company's employees."""

from __future__ import annotations

import html

from django.http import HttpRequest, HttpResponse, JsonResponse

from pleo_auth.contrib.django import get_integration, get_session


def index(request: HttpRequest) -> HttpResponse:
    rows = "".join(
        f"<li>{html.escape(company.id)}: "
        f"<a href='/companies/{company.id}/employees/'>employees</a> · "
        f"<a href='/pleo/connect/?company={company.id}'>log in again</a></li>"
        for company in get_integration().companies()
    )
    return HttpResponse(
        "<h1>Pleo companies</h1>"
        f"<ul>{rows or '<li>none yet</li>'}</ul>"
        "<p><a href='/pleo/connect/'>Connect a company</a></p>"
    )


def employees(request: HttpRequest, company: str) -> HttpResponse:
    # A company without a live grant raises ReauthenticationRequired, which the
    # middleware turns into a redirect to the connect view. A string that is not
    # a company id is refused (ConfigurationError) before any query.
    response = get_session(company).get("/v2/employees")
    response.raise_for_status()
    return JsonResponse(response.json())
