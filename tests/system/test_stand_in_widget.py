"""The sandbox's stand-in for Khalti's loader (``/sandbox/khalti-checkout.js``) keeps the
real one's API and behaviour, in headless Chromium (Debian's, driven by Playwright).

The demo server runs as in test_browser.py. Each test's page is a blank page on the
demo's origin (answered by a route, with the Cross-Origin-Opener-Policy the test asks
for) that loads either the stand-in from the demo's sandbox or Khalti's real loader
(``khalti-checkout.iffe.js`` of npm ``khalti-checkout-web`` 2.2.0, the ``widget_dist``
fixture), so the same config can be handed to both. The real loader's iframe
(Khalti's S3 host) is answered with an empty page: only the loader itself runs.
"""

import json
import os
from pathlib import Path

import pytest
from playwright.sync_api import expect

from .conftest import CHROMIUM, SHOTS, running_demo

S3 = "https://khalti.s3.ap-south-1.amazonaws.com/"
PUBLIC_KEY = "test_public_key_dj_khalti_demo_sandbox"  # the demo's, against its sandbox
MOBILE, MASKED_MOBILE = "9800000001", "98XXXXXXX1"
#: Khalti's widget's tabs, in its order (widget.js: ``paymentPreference ||
#: ["KHALTI", "EBANKING", "MOBILE_BANKING", "CONNECT_IPS", "SCT"]``), with its labels.
DEFAULT_TABS = ["KHALTI", "EBANKING", "MOBILE_BANKING", "CONNECT_IPS", "SCT"]
TAB_LABELS = ["Khalti Wallet", "e-Banking", "Mobile banking", "Connect IPS", "SCT Card"]


if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError("CI must run the browser tests: install Debian's chromium")
    pytest.skip("Debian's chromium is not installed (.ci/run installs it)", allow_module_level=True)

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo server, seeded; yields its base URL."""
    with running_demo(tmp_path_factory, "stand-in-server") as (base, _env):
        yield base


#: The page each test opens: a config factory and a log of the handlers' calls.
PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>loader</title>
<link rel="icon" href="data:,"></head><body><p id="page">a merchant's page</p>
<script>
window.events = [];
window.makeConfig = function (extra) {
  var config = {
    publicKey: "%(public_key)s",
    productIdentity: "stand-in-order-1",
    productName: "Momo",
    productUrl: "%(base)s/orders/stand-in-order-1/",
    amount: 1000,
    eventHandler: {
      onSuccess: function (payload) {
        window.events.push({name: "onSuccess", payload: payload, handlerIsThis: this === config.eventHandler,
                            dialogOpen: !!document.getElementById("sandbox-khalti-dialog")});
      },
      onError: function (error) { window.events.push({name: "onError", payload: error}); },
      onClose: function () { window.events.push({name: "onClose"}); }
    }
  };
  return Object.assign(config, extra || {});
};
</script>
%(loader)s
</body></html>"""


@pytest.fixture
def context(browser, demo, widget_dist, request):
    """A browser context whose only outside host is Khalti's S3 (answered empty);
    ``open_page(loader, coop=None)`` opens the blank page with ``"stand-in"`` or
    ``"real"`` loaded."""
    context = browser.new_context()
    outside, errors, pages = [], [], []
    real_loader = (widget_dist / "khalti-checkout.iffe.js").read_text()
    assert "</script" not in real_loader

    def only_loopback(route):
        url = route.request.url
        if url.startswith(("http://127.0.0.1", "data:", "blob:")):
            route.continue_()
        elif url.startswith(S3):  # the real loader's iframe and loader image
            route.fulfill(status=200, body="", content_type="text/html")
        else:
            outside.append(url)
            route.abort()

    context.route("**/*", only_loopback)

    def open_page(loader, coop=None):
        script = {
            "stand-in": f'<script src="{demo}/sandbox/khalti-checkout.js"></script>',
            "real": f"<script>{real_loader}</script>",
        }[loader]
        html = PAGE % {"public_key": PUBLIC_KEY, "base": demo, "loader": script}
        headers = {"Cross-Origin-Opener-Policy": coop} if coop else {}

        def blank(route):
            route.fulfill(status=200, body=html, content_type="text/html", headers=headers)

        page = context.new_page()
        page.route(f"{demo}/__loader__/", blank)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{demo}/__loader__/")
        page.wait_for_function("typeof window.KhaltiCheckout === 'function'")
        pages.append(page)
        return page

    yield open_page
    for number, page in enumerate(pages):
        if not page.is_closed():
            page.screenshot(path=SHOTS / f"last-{request.node.name}-{number}.png", full_page=True)
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
    assert not outside, f"the page reached outside this machine: {outside}"


SHOW = """([change, updates]) => {
  var config = window.makeConfig();
  new Function("config", change)(config);
  var checkout = new KhaltiCheckout(config);  // never validated here, as Khalti's
  try {
    checkout.show(updates === null ? undefined : updates);
  } catch (error) {
    return {thrown: error instanceof Error, message: error.message};
  }
  checkout.hide();
  return null;
}"""


def compact(errors):
    return json.dumps(errors, separators=(",", ":"))  # as JSON.stringify writes it


#: (what is wrong with the config, updates for show(), the Error's message: the JSON
#: of the real loader's errors, in its schema's key order).
BAD_CONFIGS = [
    *[
        (f"delete config.{key};", None, compact({key: "This field is required."}))
        for key in ("publicKey", "productUrl", "productIdentity", "productName", "eventHandler")
    ],
    ("delete config.amount;", None, '{"amount":"This field is required."}'),
    ("delete config.amount;", {"amount": None}, '{"amount":"This field is required."}'),
    ('config.productName = "";', None, '{"productName":"This field is required."}'),
    ("config.publicKey = null;", None, '{"publicKey":"This field is required."}'),
    (
        'Object.keys(config).forEach(function (k) { delete config[k]; }); config.merchantData = "x";',
        None,
        compact(
            {
                "publicKey": "This field is required.",
                "productUrl": "This field is required.",
                "productIdentity": "This field is required.",
                "productName": "This field is required.",
                "eventHandler": "This field is required.",
                "amount": "This field is required.",
                "merchantData": "Expected an object.",
            }
        ),
    ),
    ('config.paymentPreference = "EBANKING";', None, '{"paymentPreference":"Expected an array."}'),
    (
        'config.paymentPreference = {0: "EBANKING"};',
        None,
        '{"paymentPreference":"Expected an array."}',
    ),
    ('config.merchantData = "order 1";', None, '{"merchantData":"Expected an object."}'),
    ("config.merchantData = 5;", None, '{"merchantData":"Expected an object."}'),
    (
        "config.merchantData = true; config.paymentPreference = 1; delete config.productUrl;",
        None,
        '{"productUrl":"This field is required.","merchantData":"Expected an object.",'
        '"paymentPreference":"Expected an array."}',
    ),
    (
        "delete config.eventHandler.onSuccess;",
        None,
        '{"eventHandler":{"onSuccess":"This field is required."}}',
    ),
    (
        'config.eventHandler.onSuccess = "go";',
        None,
        '{"eventHandler":{"onSuccess":"Expected a function."}}',
    ),
    (
        "config.eventHandler = {onError: 1, onClose: {}};",
        None,
        '{"eventHandler":{"onSuccess":"This field is required.","onError":"Expected a function.",'
        '"onClose":"Expected a function."}}',
    ),
    (  # the handlers are only looked at once the config itself is whole
        "config.eventHandler = {}; delete config.publicKey;",
        None,
        '{"publicKey":"This field is required."}',
    ),
    (
        'config.eventHandler = "handlers";',
        None,
        '{"eventHandler":{"onSuccess":"This field is required."}}',
    ),
]


@pytest.mark.parametrize(("change", "updates", "message"), BAD_CONFIGS)
def test_show_throws_the_real_loaders_error_for_a_bad_config(context, change, updates, message):
    real, stand_in = context("real"), context("stand-in")
    expected = {"thrown": True, "message": message}
    assert real.evaluate(SHOW, [change, updates]) == expected  # the real loader says so
    assert stand_in.evaluate(SHOW, [change, updates]) == expected
    expect(stand_in.locator("#sandbox-khalti-dialog")).to_have_count(0)


@pytest.mark.parametrize(
    ("change", "updates"),
    [
        ("", None),
        ("delete config.amount;", {"amount": 1000}),  # show(updates) merges before checking
        ('config.amount = "1000";', None),  # no type check on the amount: Khalti's API's job
        ("config.amount = 10.5;", None),
        ('config.merchantData = {note: "x"}; config.paymentPreference = ["SCT"];', None),
        ('config.merchantData = ""; config.paymentPreference = null;', None),
        ('config.merchantData = ["x"];', None),  # an array is an object, to the loader
        ("config.eventHandler = {onSuccess: function () {}, onError: null};", None),
    ],
)
def test_show_accepts_what_the_real_loader_accepts(context, change, updates):
    real, stand_in = context("real"), context("stand-in")
    assert real.evaluate(SHOW, [change, updates]) is None
    assert stand_in.evaluate(SHOW, [change, updates]) is None


def show(page, extra="{}"):
    page.evaluate(
        f"window.checkout = new KhaltiCheckout(window.makeConfig({extra})); checkout.show();"
    )
    expect(page.locator("#sandbox-khalti-dialog")).to_be_visible()


def first_event(page):
    page.wait_for_function("window.events.length > 0")
    return page.evaluate("[window.events, checkout._widgetId]")


def test_the_real_loader_names_its_widget_widget_id_and_hides_after_on_success(context):
    """How the real loader hears its iframe: a ``walletPaymentVerification`` whose
    ``payload.widget_id`` is the checkout's ``_widgetId`` (its iframe's id) reaches
    ``onSuccess`` and then ``hide()``; another widget's id is ignored."""
    page = context("real")
    page.evaluate("window.checkout = new KhaltiCheckout(window.makeConfig()); checkout.show();")
    widget_id = page.evaluate("checkout._widgetId")
    assert page.evaluate(f"document.getElementById('{widget_id}').tagName") == "IFRAME"
    iframe = page.locator(f"iframe#{widget_id}")
    expect(iframe).to_be_visible()
    post = "([id]) => window.postMessage({realm: 'walletPaymentVerification', payload: {widget_id: id, idx: 'x'}}, '*')"
    page.evaluate(post, ["khalti-widget-1"])
    page.wait_for_timeout(300)
    assert page.evaluate("window.events") == []
    page.evaluate(post, [widget_id])
    page.wait_for_function("window.events.length > 0")
    events = page.evaluate("window.events")
    assert [event["name"] for event in events] == ["onSuccess"]
    assert events[0]["payload"] == {"widget_id": widget_id, "idx": "x"}
    assert events[0]["handlerIsThis"] is True
    expect(iframe).to_be_hidden()


def test_wallet_payment_calls_on_success_with_the_widget_id_then_hides(context):
    page = context("stand-in")
    show(page)
    page.click("#sandbox-pay")  # Khalti id and MPIN come prefilled
    events, widget_id = first_event(page)
    assert [event["name"] for event in events] == ["onSuccess"]
    payload = events[0]["payload"]
    assert widget_id.startswith("khalti-widget-")
    assert set(payload) == {
        "widget_id",
        "idx",
        "token",
        "amount",
        "mobile",
        "product_identity",
        "product_name",
        "product_url",
    }
    assert payload["widget_id"] == widget_id
    assert payload["amount"] == 1000
    assert isinstance(payload["amount"], int)
    assert payload["idx"]
    assert payload["token"]
    assert payload["mobile"] == MASKED_MOBILE
    assert payload["product_identity"] == "stand-in-order-1"
    assert payload["product_name"] == "Momo"
    assert payload["product_url"].endswith("/orders/stand-in-order-1/")
    assert events[0]["handlerIsThis"] is True  # called as eventHandler.onSuccess(...)
    assert events[0]["dialogOpen"] is True  # onSuccess first, then hide()
    expect(page.locator("#sandbox-khalti-dialog")).to_have_count(0)


def test_two_checkouts_have_their_own_widget_ids(context):
    page = context("stand-in")
    page.evaluate("window.other = new KhaltiCheckout(window.makeConfig());")
    page.wait_for_timeout(5)  # the id is Date.now(), as Khalti's
    show(page)
    page.click("#sandbox-pay")
    events, widget_id = first_event(page)
    assert events[0]["payload"]["widget_id"] == widget_id != page.evaluate("other._widgetId")


def test_cancel_hides_and_calls_on_close(context):
    page = context("stand-in")
    show(page)
    page.click("#sandbox-cancel")
    events, _ = first_event(page)
    assert [event["name"] for event in events] == ["onClose"]
    expect(page.locator("#sandbox-khalti-dialog")).to_have_count(0)


def tabs(page):
    return page.locator("#sandbox-khalti-dialog [role=tab]")


def test_the_default_tabs_are_the_wallet_and_the_banks_in_khaltis_order(context):
    page = context("stand-in")
    show(page)
    expect(tabs(page)).to_have_text(TAB_LABELS)
    assert [tab.get_attribute("data-tab") for tab in tabs(page).all()] == DEFAULT_TABS
    expect(tabs(page).first).to_have_attribute("aria-selected", "true")
    expect(page.locator("#sandbox-panel-KHALTI")).to_be_visible()  # the first one open
    for name in DEFAULT_TABS[1:]:
        expect(page.locator(f"#sandbox-panel-{name}")).to_be_hidden()
    page.click("#sandbox-tab-CONNECT_IPS")
    expect(page.locator("#sandbox-panel-CONNECT_IPS")).to_be_visible()
    expect(page.locator("#sandbox-panel-KHALTI")).to_be_hidden()


def test_payment_preference_ebanking_shows_only_that_tab(context):
    page = context("stand-in")
    show(page, '{paymentPreference: ["EBANKING"]}')
    expect(tabs(page)).to_have_text(["e-Banking"])  # Khalti's shows a one-item tab bar
    expect(page.locator("#sandbox-panel-EBANKING")).to_be_visible()
    expect(page.locator("#sandbox-panel-KHALTI")).to_have_count(0)
    expect(page.locator("#sandbox-pay")).to_have_count(0)


def test_payment_preference_keeps_the_merchants_order(context):
    page = context("stand-in")
    show(page, '{paymentPreference: ["SCT", "KHALTI"]}')
    expect(tabs(page)).to_have_text(["SCT Card", "Khalti Wallet"])
    expect(page.locator("#sandbox-panel-SCT")).to_be_visible()
    expect(page.locator("#sandbox-panel-KHALTI")).to_be_hidden()


def pay_by_bank(page):
    """The e-banking tab's Pay of Rs 100 (a bank's smallest payment); yields the bank's popup."""
    show(page, '{paymentPreference: ["EBANKING"], amount: 10000}')
    with page.expect_popup() as opened:
        page.click("#sandbox-bank-pay-EBANKING")
    popup = opened.value
    popup.wait_for_load_state()
    expect(popup.locator("#bank-amount")).to_have_attribute("data-paisa", "10000")
    return popup


def test_a_bank_tab_pays_through_the_popup_and_calls_on_success_in_the_opener(context):
    page = context("stand-in", coop="same-origin-allow-popups")  # allow_khalti_popups'
    popup = pay_by_bank(page)
    assert popup.url.split("?")[0].endswith("/sandbox/ebanking/initiate/")
    with popup.expect_event("close"):  # it reports to the widget, and closes
        popup.click("#bank-pay")
    events, widget_id = first_event(page)
    assert [event["name"] for event in events] == ["onSuccess"]
    payload = events[0]["payload"]
    assert payload["widget_id"] == widget_id
    assert payload["amount"] == 10000
    assert payload["product_identity"] == "stand-in-order-1"
    assert payload["idx"]
    assert payload["token"]
    assert payload["mobile"] == MASKED_MOBILE
    assert events[0]["dialogOpen"] is True
    expect(page.locator("#sandbox-khalti-dialog")).to_have_count(0)


def test_a_bank_tab_never_reports_under_djangos_default_coop(context):
    """As with Khalti's: under ``same-origin`` the popup loses its opener, the buyer
    pays, and onSuccess never runs."""
    page = context("stand-in", coop="same-origin")
    popup = pay_by_bank(page)
    popup.click("#bank-pay")
    expect(popup.locator("#bank-result")).to_have_attribute("data-reported", "false")
    expect(popup.locator("#bank-result")).to_contain_text("lost its opener")
    page.wait_for_timeout(1000)
    assert page.evaluate("window.events") == []
    expect(page.locator("#sandbox-khalti-dialog")).to_be_visible()


def test_a_forged_bank_report_from_another_window_is_ignored(context):
    page = context("stand-in", coop="same-origin-allow-popups")
    show(page, '{paymentPreference: ["EBANKING"]}')
    page.evaluate(
        "window.postMessage({realm: 'ebankingResponse', payload: {idx: 'forged', amount: 1}}, '*')"
    )
    page.wait_for_timeout(300)
    assert page.evaluate("window.events") == []
