"""``khalti-pay.js`` against a hostile page and server, in headless Chromium (the
harness of test_khalti_pay_js.py: a stubbed loader, verify's answers played by
page.route): success URLs off the site, a second onSuccess, a 500. Each test failed
before its fix (the hostile review of issue 16)."""

import json

import pytest
from playwright.sync_api import expect

from .test_khalti_pay_js import SHOP, VERIFIED, Shop, pay_page

pytestmark = pytest.mark.browser

TWICE_LOADER = """
window.KhaltiCheckout = function (config) {
  this.show = function (options) {
    var payload = {token: "TOKEN", amount: options.amount, idx: "IDX",
      product_identity: config.productIdentity};
    config.eventHandler.onSuccess(payload);
    config.eventHandler.onSuccess(payload);  // a widget (or a replayed message) reports twice
  };
};
"""


def test_two_onsuccess_calls_post_the_payment_once(page):
    shop = Shop(page, pay_page(success_url="/thanks/"), [VERIFIED, VERIFIED], loader=TWICE_LOADER)
    page.goto(f"{SHOP}/pay/")
    page.click("[data-khalti-pay]")
    page.wait_for_url(f"{SHOP}/thanks/?payment=5f0c")
    # submit() ignores `busy`: each onSuccess starts its own verify/retry loop. With
    # a real server the second one races the first (409 in_progress, retried; or a
    # refusal shown over "verified").
    assert len(shop.calls) == 1


def test_a_second_onsuccess_while_retrying_does_not_start_a_second_loop(page):
    answers = [(409, {"code": "in_progress", "detail": "Being confirmed."})] * 4 + [VERIFIED] * 4
    shop = Shop(page, pay_page(success_url="/thanks/"), answers, loader=TWICE_LOADER)
    page.goto(f"{SHOP}/pay/")
    page.click("[data-khalti-pay]")
    page.wait_for_url(f"{SHOP}/thanks/?payment=5f0c", timeout=20000)
    # One loop: 4 in_progress then verified = 5 calls; two interleaved loops send more.
    assert len(shop.calls) == 5


def test_a_javascript_success_url_is_never_run(page):
    # Were the script to follow any success URL, a javascript: one would run on the
    # shop's origin once the payment is verified: it follows only pages of this site.
    Shop(page, pay_page(success_url="javascript:void(document.title='pwned')//"), [VERIFIED])
    page.goto(f"{SHOP}/pay/")
    with page.expect_navigation():  # not to the javascript: URL: the page reloads
        page.click("[data-khalti-pay]")
    assert page.url == f"{SHOP}/pay/"
    page.wait_for_timeout(500)
    assert page.title() != "pwned"


def test_an_off_site_success_url_is_not_followed(page):
    Shop(page, pay_page(success_url="https://evil.example/"), [VERIFIED])
    page.route("https://evil.example/**", lambda route: route.fulfill(body="phish"))
    page.goto(f"{SHOP}/pay/")
    page.click("[data-khalti-pay]")
    page.wait_for_timeout(1000)
    assert not page.url.startswith("https://evil.example/")


def test_a_success_url_with_a_fragment_keeps_the_payment_in_the_query(page):
    # The payment id goes in the query, not after the "#fragment" (which the server
    # never sees).
    Shop(page, pay_page(success_url="/thanks/#receipt"), [VERIFIED])
    page.goto(f"{SHOP}/pay/")
    page.click("[data-khalti-pay]")
    page.wait_for_url(f"{SHOP}/thanks/**")
    assert page.url == f"{SHOP}/thanks/?payment=5f0c#receipt"


def test_a_payment_id_from_the_server_cannot_add_parameters(page):
    # Held: the id is encodeURIComponent'ed.
    hostile = (200, {"status": "verified", "payment": {"id": "x&next=//evil#y"}})
    Shop(page, pay_page(success_url="/thanks/"), [hostile])
    page.goto(f"{SHOP}/pay/")
    page.click("[data-khalti-pay]")
    page.wait_for_url(f"{SHOP}/thanks/**")
    assert page.url == f"{SHOP}/thanks/?payment=x%26next%3D%2F%2Fevil%23y"


def test_a_500_is_not_resent(page):
    # The script's own table: 502, 503, 504, 409 in_progress, 429 are resent; a 500
    # (the shop's bug) is final. answerIsUnknown() resends any status >= 500.
    shop = Shop(page, pay_page(), [(500, {"code": "error", "detail": "Server error."})] * 7)
    page.goto(f"{SHOP}/pay/")
    page.click("[data-khalti-pay]")
    page.wait_for_timeout(2500)
    assert len(shop.calls) == 1


def test_the_page_tells_apart_a_retry_budget_that_ends(page):
    # Held: retries stop after 6 attempts with the same payload, "check again" resends it.
    shop = Shop(
        page,
        pay_page(),
        [(504, {"code": "khalti_unavailable", "detail": "Away."})] * 6 + [VERIFIED],
    )
    page.goto(f"{SHOP}/pay/")
    page.click("[data-khalti-pay]")
    expect(page.locator("[data-khalti-pay]")).to_have_text("Check again", timeout=30000)
    assert len(shop.calls) == 6
    assert len({body for _, _, body in shop.calls}) == 1
    with page.expect_navigation(url=f"{SHOP}/pay/"):
        page.click("[data-khalti-pay]")
    assert len(shop.calls) == 7
    assert json.loads(shop.calls[-1][2])["token"] == "TOKEN"
