"""``allow_khalti_popups`` and the checks of the widget: the Cross-Origin-Opener-Policy
that keeps the widget's bank tabs working, E006 and W003.

The check tests carry no ``django_db`` mark on purpose: a check that ran a query
would fail here (as in tests/project/test_checks.py).
"""

import asyncio

import pytest
from django.http import HttpResponse
from django.test import RequestFactory, override_settings

from django_khalti.checks import check_settings
from django_khalti.decorators import allow_khalti_popups, popups_allowed

HEADER = "Cross-Origin-Opener-Policy"
SECURITY = "django.middleware.security.SecurityMiddleware"


def view(request):
    return HttpResponse("pay here")


# --- the decorator ------------------------------------------------------------------


def test_the_decorated_view_allows_popups_and_marks_the_request():
    request = RequestFactory().get("/")
    response = allow_khalti_popups(view)(request)
    assert response[HEADER] == "same-origin-allow-popups"
    assert popups_allowed(request)
    assert not popups_allowed(RequestFactory().get("/"))


@pytest.mark.parametrize(
    ("set_by_view", "sent"),
    [
        ("same-origin", "same-origin-allow-popups"),
        ("unsafe-none", "unsafe-none"),  # keeps popups working too: the view's choice
    ],
)
def test_a_header_the_view_set(set_by_view, sent):
    def strict_view(request):
        response = HttpResponse()
        response[HEADER] = set_by_view
        return response

    assert allow_khalti_popups(strict_view)(RequestFactory().get("/"))[HEADER] == sent


def test_an_async_view_is_decorated_too():
    async def async_view(request):
        return HttpResponse()

    decorated = allow_khalti_popups(async_view)
    assert asyncio.iscoroutinefunction(decorated)
    response = asyncio.run(decorated(RequestFactory().get("/")))
    assert response[HEADER] == "same-origin-allow-popups"


@pytest.mark.django_db
@override_settings(SECURE_CROSS_ORIGIN_OPENER_POLICY="same-origin")
def test_through_djangos_security_middleware_the_pay_page_keeps_popups(client, order):
    assert SECURITY in __import__("django.conf").conf.settings.MIDDLEWARE
    assert client.get("/orders/ORD-1/")[HEADER] == "same-origin-allow-popups"  # decorated
    assert client.get("/")[HEADER] == "same-origin"  # any other page: Django's default


# --- W003: a middleware that overrides the header -------------------------------------


class ForceSameOrigin:
    """A project's middleware that overwrites the header on every response."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        response[HEADER] = "same-origin"
        return response


class AnswersItself:
    """A middleware that never lets the view run (e.g. a login wall)."""

    def __init__(self, get_response):
        pass

    def __call__(self, request):
        return HttpResponse(status=302)


class BrokenAtStart:
    def __init__(self, get_response):
        raise RuntimeError("needs something the check does not have")


class Queries:
    """A middleware that reads the database: the check cannot tell, and queries nothing."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        from shop.models import Order

        Order.objects.count()
        response = self.get_response(request)
        response[HEADER] = "same-origin"
        return response


def ids(middleware):
    with override_settings(MIDDLEWARE=middleware):
        return [message.id for message in check_settings()]


def test_w003_quiet_with_the_projects_middleware(settings):
    assert SECURITY in settings.MIDDLEWARE
    assert "django_khalti.W003" not in ids(settings.MIDDLEWARE)


def test_w003_when_a_middleware_overrides_the_header(settings):
    middleware = [*settings.MIDDLEWARE, f"{__name__}.ForceSameOrigin"]
    with override_settings(MIDDLEWARE=middleware):
        (warning,) = [m for m in check_settings() if m.id == "django_khalti.W003"]
    assert "same-origin" in warning.msg
    assert "bank tabs" in warning.hint


@pytest.mark.parametrize("name", ["AnswersItself", "BrokenAtStart", "Queries"])
def test_w003_quiet_when_it_cannot_tell(settings, name):
    middleware = [f"{__name__}.{name}", *settings.MIDDLEWARE, f"{__name__}.ForceSameOrigin"]
    assert "django_khalti.W003" not in ids(middleware)


# --- E006: the widget's script URL ----------------------------------------------------


def e006(value):
    from django.conf import settings

    with override_settings(KHALTI={**settings.KHALTI, "WIDGET_SCRIPT_URL": value}):
        return "django_khalti.E006" in [m.id for m in check_settings()]


@pytest.mark.parametrize(
    "value",
    [
        "https://khalti.s3.ap-south-1.amazonaws.com/KPG/dist/2020.12.17.0.0.0/khalti-checkout.iffe.js",
        "/sandbox/khalti-checkout.js",
        "/static/khalti-checkout.iffe.js",
        "http://127.0.0.1:8000/khalti-checkout.js",
    ],
)
def test_e006_quiet_for_https_a_path_or_loopback(value):
    assert not e006(value)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "http://cdn.example.com/khalti.js",
        "//cdn.example.com/khalti.js",
        "khalti-checkout.js",
        "javascript:alert(1)",
        "https://cdn.example.com/khalti.js\n",
        "https:///nohost.js",
        ["https://khalti.com/x.js"],
    ],
    ids=repr,
)
def test_e006_for_anything_else(value):
    assert e006(value)
