"""The widget's tags, allow_khalti_popups, E006 and W003 against hostile input and odd
projects: success URLs off the site, loader URLs that leave it, middleware that queries
or refuses the host, async class-based views, several widgets on a page. Each test
failed before its fix (the hostile review of issue 16)."""

import asyncio
import json
import logging
import re

import pytest
from django.core.signals import got_request_exception
from django.http import HttpResponse
from django.template import Context, Template
from django.test import RequestFactory, override_settings
from django.views import View

from django_khalti.checks import check_settings
from django_khalti.decorators import allow_khalti_popups

HEADER = "Cross-Origin-Opener-Policy"
BASE = {
    "SECRET_KEY": "test_secret_key_x",
    "PUBLIC_KEY": "test_public_key_x",
    "AMOUNT_RESOLVER": lambda request, reference: 1500,
}


def widget(options="", **khalti):
    with override_settings(KHALTI={**BASE, **khalti}):
        return Template(
            "{% load khalti %}{% khalti_widget 'ORD-9' 'Tea' " + options + " %}"
        ).render(Context({"request": RequestFactory().get("/pay/")}))


def config_of(html):
    found = re.search(r'<script id="[^"]+" type="application/json">(.*?)</script>', html, re.S)
    return json.loads(found.group(1))


def ids(messages):
    return sorted(message.id for message in messages)


# --- success_url: the tag hands the JS any URL, which it then navigates to ---------------


@pytest.mark.parametrize(
    "target",
    [
        "javascript:alert(document.domain)//",  # location.assign runs it, on the shop's origin
        "https://evil.example/phish/",  # open redirect, with ?payment=<id>
        "//evil.example/phish/",  # protocol-relative: off-site too
    ],
)
def test_the_tag_refuses_a_success_url_off_this_site(target):
    # A shop writing success_url=request.GET.next (Django's own "next" idiom) must not
    # give a hostile link the power to run script or leave the site after payment.
    config = config_of(widget("success_url=target_url".replace("target_url", json.dumps(target))))
    assert config["successUrl"] in (None, "/")


@pytest.mark.parametrize(
    "target", ["javascript:alert(1)//", "data:text/html,<script>alert(1)</script>"]
)
def test_check_or_tag_refuses_a_dangerous_success_url_setting(target):
    # KHALTI["SUCCESS_URL"] reaches window.location.assign unchecked: neither a system
    # check nor the tag says anything about a javascript: URL.
    with override_settings(KHALTI={**BASE, "SUCCESS_URL": target}):
        said = [m for m in check_settings(None) if "SUCCESS_URL" in m.msg]
    assert said or config_of(widget(SUCCESS_URL=target))["successUrl"] != target


# --- E006 ----------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["/\\evil.example/x.js", "/\\/evil.example/x.js"])
def test_e006_refuses_a_backslash_protocol_relative_loader(url):
    # Browsers read "/\evil.example/x.js" as "//evil.example/x.js": a script from
    # another host, while E006 takes it for "a path on this site".
    with override_settings(KHALTI={**BASE, "WIDGET_SCRIPT_URL": url}):
        assert "django_khalti.E006" in ids(check_settings(None))


# --- allow_khalti_popups on class-based views ---------------------------------------


class AsyncPayPage(View):
    async def get(self, request):
        return HttpResponse("pay here")


def test_method_decorator_on_the_dispatch_of_an_async_view():
    # The decorator's docstring offers method_decorator(allow_khalti_popups,
    # name="dispatch") for class-based views; an async one's dispatch is sync and
    # returns a coroutine, which _allow_popups reads as a response.
    from django.utils.decorators import method_decorator

    decorated = method_decorator(allow_khalti_popups, name="dispatch")(AsyncPayPage)
    view = decorated.as_view()
    response = asyncio.run(view(RequestFactory().get("/")))  # type: ignore[arg-type]
    assert response[HEADER] == "same-origin-allow-popups"


def test_a_coop_with_a_report_endpoint_is_kept():
    # "same-origin-allow-popups; report-to=\"coop\"" keeps popups working; the
    # decorator overwrites it (the view's reporting is lost) and W003 reads it as hostile.
    def reporting_view(request):
        response = HttpResponse()
        response[HEADER] = 'same-origin-allow-popups; report-to="coop"'
        return response

    sent = allow_khalti_popups(reporting_view)(RequestFactory().get("/"))[HEADER]
    assert sent == 'same-origin-allow-popups; report-to="coop"'


# --- W003's made-up request: side effects of `manage.py check` -------------------------


class QueryingMiddleware:
    """A middleware that reads the database on every request (sites, tenants, flags...)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        from django.contrib.auth import get_user_model

        get_user_model().objects.exists()
        return self.get_response(request)


@override_settings(
    DEBUG=False,
    KHALTI=BASE,
    MIDDLEWARE=[
        "django.middleware.security.SecurityMiddleware",
        "tests.widget.test_tag_safety.QueryingMiddleware",
    ],
)
def test_w003_does_not_report_a_fake_server_error(caplog):
    # The check's handler turns the middleware's (blocked) query into a 500, as a real
    # request would: "Internal Server Error: /" is logged at ERROR on django.request
    # (mail_admins in Django's default LOGGING) and got_request_exception is sent
    # (Sentry and friends) on every `manage.py check`, `migrate`, runserver start.
    signals = []

    def receiver(**kwargs):
        signals.append(kwargs)

    got_request_exception.connect(receiver)
    try:
        with caplog.at_level(logging.DEBUG, logger="django.request"):
            check_settings(None)
    finally:
        got_request_exception.disconnect(receiver)
    assert not [r for r in caplog.records if r.name.startswith("django.request")]
    assert not signals


@override_settings(
    DEBUG=False,
    ALLOWED_HOSTS=[".example.com"],
    KHALTI=BASE,
    MIDDLEWARE=[
        "django.middleware.security.SecurityMiddleware",
        "django.middleware.common.CommonMiddleware",
    ],
)
def test_w003_does_not_log_a_disallowed_host(caplog):
    # ALLOWED_HOSTS = [".example.com"] (a common production value): the check's request
    # goes to "localhost", CommonMiddleware raises DisallowedHost, and the check logs a
    # security error ("Invalid HTTP_HOST header: 'localhost'") on each run.
    with caplog.at_level(logging.DEBUG, logger="django.security"):
        check_settings(None)
    assert not [r for r in caplog.records if r.name.startswith("django.security")]


class OverridingMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        response[HEADER] = "same-origin"
        return response


@override_settings(
    DEBUG=False,
    ALLOWED_HOSTS=[".example.com"],
    KHALTI=BASE,
    MIDDLEWARE=[
        "django.middleware.common.CommonMiddleware",
        "tests.widget.test_tag_safety.OverridingMiddleware",
    ],
)
def test_w003_sees_an_override_behind_a_leading_dot_allowed_hosts():
    # The same project: the check's host is refused, so W003 never sees the override.
    assert "django_khalti.W003" in ids(check_settings(None))


# --- a missing public key -----------------------------------------------------------


def test_a_missing_public_key_is_reported_by_a_check():
    # The widget cannot work without KHALTI["PUBLIC_KEY"]; the tag renders an enabled
    # Pay button with publicKey "" and no check says so.
    khalti = {key: value for key, value in BASE.items() if key != "PUBLIC_KEY"}
    with override_settings(KHALTI=khalti):
        said = [m for m in check_settings(None) if "PUBLIC_KEY" in m.msg]
    html = widget(PUBLIC_KEY=None)
    assert said or "data-khalti-pay" not in html


# --- several widgets on one page ------------------------------------------------------


@pytest.mark.django_db
def test_the_scripts_load_when_the_first_widget_cannot_be_offered():
    # Two widgets on a page (a cart of orders); the first order is unknown (or its
    # resolver failed). The scripts are rendered only by widget number 1, and only in
    # its {% if config %} branch: the second widget's Pay button never comes alive.
    def resolver(request, reference):
        return None if reference == "GONE" else 1500

    with override_settings(KHALTI={**BASE, "AMOUNT_RESOLVER": resolver}):
        html = Template(
            "{% load khalti %}{% khalti_widget 'GONE' %}{% khalti_widget 'ORD-9' %}"
        ).render(Context({"request": RequestFactory().get("/cart/")}))
    assert 'data-khalti-widget="khalti-widget-2-config"' in html
    assert "django_khalti/khalti-pay.js" in html
