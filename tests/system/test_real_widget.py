"""Khalti's real widget (npm ``khalti-checkout-web`` 2.2.0) on the demo's order page, in
headless Chromium (Debian's, driven by Playwright).

The demo server runs as in test_browser.py, with Django's security middleware as it
is (COOP ``same-origin`` by default) and the order page loading Khalti's real loader
from Khalti's URL (tests/system/real_widget_settings.py). The browser's requests to
Khalti's hosts are answered here: ``https://khalti.s3.ap-south-1.amazonaws.com/KPG/dist/
<build>/<file>`` from the package's ``dist/``, ``https://khalti.com/<path>`` by the
demo's sandbox (``/sandbox/<path>``), which speaks the widget's API
(django_khalti/sandbox/views/widget.py). Anything else outside this machine is refused.

The package: the ``widget_dist`` fixture (conftest.py). Without npm or chromium these
tests are skipped, never in CI.
"""

import json
import mimetypes
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect

from .conftest import CHROMIUM, ROOT, SHOTS, running_demo

S3 = "https://khalti.s3.ap-south-1.amazonaws.com/"
KHALTI = "https://khalti.com/"
#: Asked for by the widget's stylesheet (a web font); answered empty.
STUBBED = ("https://fonts.googleapis.com/", "https://fonts.gstatic.com/")
MOBILE, MPIN, OTP = "9800000001", "1111", "987654"


if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError("CI must run the browser tests: install Debian's chromium")
    pytest.skip("Debian's chromium is not installed (.ci/run installs it)", allow_module_level=True)

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo server with Khalti's real loader on the order page; yields (base URL, env)."""
    with running_demo(
        tmp_path_factory, "real-widget-server", "tests.system.real_widget_settings"
    ) as demo:
        yield demo


def shop_state(demo, reference):
    """The order and its payments as the demo's database has them (through the ORM)."""
    _, env = demo
    code = (
        "import json; from shop.models import Order; "
        "from django_khalti.models import Payment; "
        "from django_khalti.sandbox.models import SandboxTransaction; "
        f"r = {reference!r}; "
        "print(json.dumps({'paid': Order.objects.get(reference=r).paid, "
        "'payments': sorted(Payment.objects.filter(order_reference=r)"
        ".values_list('status', flat=True)), "
        "'khalti': sorted(SandboxTransaction.objects.filter(product_identity=r)"
        ".values_list('state', flat=True))}))"
    )
    done = subprocess.run(
        [sys.executable, str(ROOT / "testproject" / "manage.py"), "shell", "-c", code],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def page(browser, demo, widget_dist, request):
    """A page whose Khalti is the npm package's files and the demo's sandbox."""
    base, _ = demo
    context = browser.new_context()
    outside = []

    def khalti_hosts(route):
        url = route.request.url
        if url.startswith(("http://127.0.0.1", "data:", "blob:")):
            route.continue_()
        elif url.startswith(S3):
            # KPG/dist/<build>/<file>: the package's dist/ (the loader and its iframe app)
            name = urlsplit(url).path.split("/", 4)[-1]
            path = (widget_dist / name).resolve()
            if path.is_relative_to(widget_dist.resolve()) and path.is_file():
                kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
                route.fulfill(path=path, content_type=kind)
            else:
                route.fulfill(status=404, body="not in the package")
        elif url.startswith(KHALTI):
            # Khalti's API and bank page: the demo's sandbox, headers and all.
            answer = route.fetch(url=f"{base}/sandbox/{url[len(KHALTI) :]}")
            route.fulfill(response=answer)
        elif url.startswith(STUBBED):
            route.fulfill(status=200, body="", content_type="text/css")
        else:
            outside.append(url)
            route.abort()

    context.route("**/*", khalti_hosts)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    page.screenshot(path=SHOTS / f"last-{request.node.name}.png", full_page=True)
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
    assert not outside, f"the page reached outside this machine: {outside}"


def open_widget(page, demo, product):
    """A new order of ``product``, its order page, and Khalti's widget shown on it."""
    base, _ = demo
    page.goto(base + "/")
    page.click(product)
    page.wait_for_url("**/orders/*/")
    reference = page.locator("#order").get_attribute("data-reference")
    page.click("#pay-widget")
    iframe = page.locator(f"iframe[src^='{S3}']")
    expect(iframe).to_be_visible()  # Khalti's loader, not the sandbox's stand-in
    return reference, page.frame_locator(f"iframe[src^='{S3}']")


def pay_by_bank(page, widget):
    """The e-banking tab: a bank, a mobile number, Pay; yields the bank's popup."""
    widget.locator("a[data-tab=EBANKING]").click()
    tab = widget.locator(".ui.tab.active")
    tab.get_by_text("SBL", exact=True).click()
    tab.locator("input[name=mobile]").fill(MOBILE)
    with page.expect_popup() as opened:
        tab.locator(".ui.button.primary", has_text="Pay Rs.").click()
    popup = opened.value
    popup.wait_for_load_state()
    expect(popup.locator("#bank-amount")).to_be_visible()
    popup.screenshot(path=SHOTS / "real-widget-bank-page.png")
    return popup


def test_wallet_tab_pays_the_order(page, demo):
    reference, widget = open_widget(page, demo, "#buy-momo")
    tab = widget.locator(".ui.tab.active")
    tab.locator("input[name=mobile]").fill(MOBILE)
    tab.locator("input[name=transaction_pin]").fill(MPIN)
    tab.locator("button.primary", has_text="Pay Rs.").click()
    code = tab.locator("input[name=confirmation_code]")
    expect(code).to_be_visible()  # Khalti's OTP step
    page.screenshot(path=SHOTS / "real-widget-otp.png")
    code.fill(OTP)
    tab.locator("button.primary", has_text="Pay Rs.").click()
    expect(page.locator("#order-status")).to_have_text("Paid")
    expect(page.locator(f"iframe[src^='{S3}']")).to_be_hidden()  # hide() after onSuccess
    page.screenshot(path=SHOTS / "real-widget-wallet-paid.png", full_page=True)
    state = shop_state(demo, reference)
    assert state == {"paid": True, "payments": ["verified"], "khalti": ["Completed"]}


def test_wallet_tab_refuses_a_wrong_otp(page, demo):
    reference, widget = open_widget(page, demo, "#buy-tea")
    tab = widget.locator(".ui.tab.active")
    tab.locator("input[name=mobile]").fill(MOBILE)
    tab.locator("input[name=transaction_pin]").fill(MPIN)
    tab.locator("button.primary", has_text="Pay Rs.").click()
    tab.locator("input[name=confirmation_code]").fill("123456")
    tab.locator("button.primary", has_text="Pay Rs.").click()
    expect(tab).to_contain_text("Invalid confirmation code")
    expect(page.locator("#order-status")).to_have_text("Not paid")
    assert shop_state(demo, reference) == {"paid": False, "payments": [], "khalti": ["Initiated"]}


def test_bank_tab_pays_the_order_through_the_popup(page, demo):
    reference, widget = open_widget(page, demo, "#buy-dhaka-topi")
    popup = pay_by_bank(page, widget)
    with popup.expect_event("close"):  # it reports to the widget, and closes
        popup.click("#bank-pay")
    expect(page.locator("#order-status")).to_have_text("Paid")
    page.screenshot(path=SHOTS / "real-widget-bank-paid.png", full_page=True)
    state = shop_state(demo, reference)
    assert state == {"paid": True, "payments": ["verified"], "khalti": ["Completed"]}


def test_bank_tab_never_reports_under_djangos_default_coop(page, demo):
    """The order page as Django's SecurityMiddleware sends it without the COOP handling
    (``same-origin``): the bank's popup loses its opener, the buyer pays, and the
    shop never hears of it."""
    base, _ = demo

    def default_coop(route):
        answer = route.fetch()
        headers = {**answer.headers, "cross-origin-opener-policy": "same-origin"}
        route.fulfill(response=answer, headers=headers)

    page.route(f"{base}/orders/*/", default_coop)
    # Rs 650: a bank takes no payment below Rs 100 (the Rs 15 notebook's is refused).
    reference, widget = open_widget(page, demo, "#buy-tea")
    popup = pay_by_bank(page, widget)
    popup.click("#bank-pay")
    expect(popup.locator("#bank-result")).to_have_attribute("data-reported", "false")
    expect(popup.locator("#bank-result")).to_contain_text("lost its opener")
    popup.screenshot(path=SHOTS / "real-widget-bank-no-opener.png")
    page.wait_for_timeout(1500)
    expect(page.locator("#order-status")).to_have_text("Not paid")
    assert shop_state(demo, reference) == {"paid": False, "payments": [], "khalti": ["Confirmed"]}


def test_a_page_made_of_the_tag_alone_pays_through_a_bank_tab(page, demo):
    """The README's pay page: ``{% load khalti %}{% khalti_widget ... %}`` and the
    view decorated with ``allow_khalti_popups``; Khalti's real script, a bank tab, and
    the buyer lands on the shop's success page with the order paid."""
    base, _ = demo
    page.goto(base + "/")
    page.click("#buy-momo")
    page.wait_for_url("**/orders/*/")
    reference = page.locator("#order").get_attribute("data-reference")
    page.goto(f"{base}/orders/{reference}/pay/")
    page.click("[data-khalti-pay]")
    expect(page.locator(f"iframe[src^='{S3}']")).to_be_visible()
    popup = pay_by_bank(page, page.frame_locator(f"iframe[src^='{S3}']"))
    with popup.expect_event("close"):
        popup.click("#bank-pay")
    page.wait_for_url("**/payment/success/?payment=*")
    expect(page.locator("#payment-result")).to_have_attribute("data-status", "verified")
    state = shop_state(demo, reference)
    assert state == {"paid": True, "payments": ["verified"], "khalti": ["Completed"]}
