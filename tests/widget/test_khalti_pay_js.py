"""``khalti-pay.js`` in headless Chromium: what the page does with verify's answers.

The page is the tag's own output; Khalti's loader is a stub whose ``show()`` calls
``onSuccess`` at once, and verify's answers are played by the browser's router,
so every answer can be chosen. Skipped without Debian's chromium, never in CI.
"""

import json
import os
import shutil
from pathlib import Path

import pytest
from django.template import Context, Template
from django.test import RequestFactory, override_settings

import django_khalti

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError("CI must run the browser tests: install Debian's chromium")
    pytest.skip("Debian's chromium is not installed", allow_module_level=True)

from playwright.sync_api import expect, sync_playwright  # noqa: E402

pytestmark = pytest.mark.browser

SHOP = "http://shop.test"
SCRIPT = (Path(django_khalti.__file__).parent / "static/django_khalti/khalti-pay.js").read_text()
STUB_LOADER = """
window.KhaltiCheckout = function (config) {
  window.widgetConfig = config;
  this.show = function (options) {
    config.eventHandler.onSuccess({token: "TOKEN", amount: options.amount, idx: "IDX",
      product_identity: config.productIdentity, widget_id: "khalti-widget-1"});
  };
};
"""


def pay_page(**tag_options):
    """The HTML of a pay page with the widget, rendered by the tag (no database)."""
    options = " ".join(f'{key}="{value}"' for key, value in tag_options.items())
    settings = {
        "SECRET_KEY": "test_secret_key_x",
        "PUBLIC_KEY": "test_public_key_x",
        "AMOUNT_RESOLVER": lambda request, reference: 1500,
        "WIDGET_SCRIPT_URL": f"{SHOP}/loader.js",
    }
    with override_settings(KHALTI=settings):
        body = Template(
            "{% load khalti %}{% khalti_widget 'ORD-9' 'Tea' " + options + " %}"
        ).render(Context({"request": RequestFactory().get("/pay/")}))
    return f"<!doctype html><html><body>{body}</body></html>"


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--no-first-run"]
        )
        yield browser
        browser.close()


class Shop:
    """The shop's server, as the browser sees it: the page, the scripts, verify's answers."""

    def __init__(self, page, html, answers, loader=STUB_LOADER):
        self.html, self.answers, self.loader, self.calls = html, list(answers), loader, []
        page.route(f"{SHOP}/**", self.serve)

    def serve(self, route):
        request = route.request
        path = request.url[len(SHOP) :]
        if path == "/pay/":
            route.fulfill(body=self.html, content_type="text/html")
        elif path.startswith("/thanks/"):
            route.fulfill(body="<p id='thanks'>Thanks</p>", content_type="text/html")
        elif path == "/loader.js" and self.loader is not None:
            route.fulfill(body=self.loader, content_type="text/javascript")
        elif path == "/static/django_khalti/khalti-pay.js":
            route.fulfill(body=SCRIPT, content_type="text/javascript")
        elif path == "/khalti/verify/":
            self.calls.append((request.method, request.headers, request.post_data))
            status, body = self.answers.pop(0)
            route.fulfill(status=status, body=json.dumps(body), content_type="application/json")
        else:
            route.fulfill(status=404, body="not found")


@pytest.fixture
def page(browser):
    context = browser.new_context()
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors


VERIFIED = (200, {"status": "verified", "payment": {"id": "5f0c", "status": "verified"}})


def test_in_progress_then_verified_goes_to_the_success_url(page):
    shop = Shop(
        page,
        pay_page(success_url="/thanks/"),
        [(409, {"code": "in_progress", "detail": "Being confirmed."}), VERIFIED],
    )
    page.goto(f"{SHOP}/pay/")
    page.click("[data-khalti-pay]")
    page.wait_for_url(f"{SHOP}/thanks/?payment=5f0c")
    assert len(shop.calls) == 2
    (method, headers, body), again = shop.calls
    assert method == "POST"
    assert headers["content-type"] == "application/json"
    assert headers["x-csrftoken"]
    assert json.loads(body) == {
        "token": "TOKEN",
        "amount": 1500,  # the resolver's, through show({amount})
        "idx": "IDX",
        "product_identity": "ORD-9",
        "widget_id": "khalti-widget-1",
    }
    assert again[2] == body  # the same payload, resent


@pytest.mark.parametrize("status", [502, 503, 504])
def test_an_unknown_outcome_is_sent_again(page, status):
    shop = Shop(
        page,
        pay_page(success_url="/thanks/"),
        [(status, {"code": "khalti_unavailable", "detail": "Khalti is away."}), VERIFIED],
    )
    page.goto(f"{SHOP}/pay/")
    page.click("[data-khalti-pay]")
    page.wait_for_url(f"{SHOP}/thanks/?payment=5f0c")
    assert len(shop.calls) == 2


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (503, "not_configured"),
        (409, "token_used"),
        (409, "already_paid"),
        (404, "unknown_order"),
        (400, "amount_mismatch"),
    ],
)
def test_a_final_answer_is_shown_and_never_sent_again(page, status, code):
    shop = Shop(page, pay_page(), [(status, {"code": code, "detail": f"Refused: {code}."})])
    page.goto(f"{SHOP}/pay/")
    page.click("[data-khalti-pay]")
    expect(page.locator("[data-khalti-message]")).to_have_text(f"Refused: {code}.")
    page.wait_for_timeout(2500)  # past the first retry's delay
    assert len(shop.calls) == 1
    assert page.url == f"{SHOP}/pay/"
    if code == "already_paid":
        expect(page.locator("[data-khalti-pay]")).to_be_disabled()
    else:
        expect(page.locator("[data-khalti-pay]")).to_be_enabled()


def test_without_a_success_url_the_page_reloads(page):
    shop = Shop(page, pay_page(), [VERIFIED])
    page.goto(f"{SHOP}/pay/")
    with page.expect_navigation(url=f"{SHOP}/pay/"):
        page.click("[data-khalti-pay]")
    assert len(shop.calls) == 1


def test_the_config_reaches_khaltis_loader(page):
    Shop(page, pay_page(payment_preference="KHALTI,SCT"), [])
    page.goto(f"{SHOP}/pay/")
    expect(page.locator("[data-khalti-pay]")).to_be_enabled()
    config = page.evaluate(
        "({...window.widgetConfig, eventHandler: Object.keys(window.widgetConfig.eventHandler)})"
    )
    assert config == {
        "publicKey": "test_public_key_x",
        "productIdentity": "ORD-9",
        "productName": "Tea",
        "productUrl": "http://testserver/pay/",
        "paymentPreference": ["KHALTI", "SCT"],
        "eventHandler": ["onSuccess", "onError", "onClose"],
    }


def test_without_khaltis_script_the_button_stays_disabled(page):
    Shop(page, pay_page(), [], loader=None)
    page.goto(f"{SHOP}/pay/")
    expect(page.locator("[data-khalti-message]")).to_have_text(
        "Khalti's widget could not be loaded."
    )
    expect(page.locator("[data-khalti-pay]")).to_be_disabled()


def test_a_refusal_goes_to_the_failure_url_with_its_code(page):
    refused = (400, {"code": "verification_failed", "detail": "Khalti refused the payment."})
    shop = Shop(page, pay_page(failure_url="/sorry/"), [refused])
    page.route(f"{SHOP}/sorry/**", lambda route: route.fulfill(body="<p>Sorry</p>"))
    page.goto(f"{SHOP}/pay/")
    page.click("[data-khalti-pay]")
    page.wait_for_url(f"{SHOP}/sorry/?code=verification_failed")
    assert len(shop.calls) == 1


def test_an_unknown_outcome_never_goes_to_the_failure_url(page):
    answers = [(504, {"code": "khalti_timeout", "detail": "Khalti did not answer."}), VERIFIED]
    shop = Shop(page, pay_page(failure_url="/sorry/", success_url="/thanks/"), answers)
    page.goto(f"{SHOP}/pay/")
    page.click("[data-khalti-pay]")
    page.wait_for_url(f"{SHOP}/thanks/?payment=5f0c")
    assert len(shop.calls) == 2
