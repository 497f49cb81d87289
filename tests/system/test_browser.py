"""The demo, clicked through in real headless Chromium (Debian's, driven by Playwright).

The demo server runs as `make demo` runs it (DJANGO_DEMO=1: the shop, dj-khalti
and the offline Khalti sandbox on one server), in a subprocess on a free
loopback port with a database of its own. Screenshots go to artifacts/browser/
(git-ignored). `.ci/run` installs Chromium; elsewhere, without it, these tests
are skipped, never in CI.
"""

import os
from pathlib import Path

import pytest
from playwright.sync_api import expect

from .conftest import CHROMIUM, SHOTS, running_demo

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError("CI must run the browser tests: install Debian's chromium")
    pytest.skip("Debian's chromium is not installed (.ci/run installs it)", allow_module_level=True)

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo server, seeded; yields its base URL."""
    with running_demo(tmp_path_factory, "server") as (base, _env):
        yield base


@pytest.fixture
def page(browser, request):
    context = browser.new_context()
    outside = []

    def only_loopback(route):
        # The demo works offline: anything but this machine is a bug.
        if route.request.url.startswith(("http://127.0.0.1", "data:", "blob:")):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", only_loopback)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    page.screenshot(path=SHOTS / f"last-{request.node.name}.png", full_page=True)
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
    assert not outside, f"the demo reached outside this machine: {outside}"


def new_order(page, demo, button):
    page.goto(demo + "/")
    page.click(button)
    page.wait_for_url("**/orders/*/")
    return page.locator("#order").get_attribute("data-reference")


def test_widget_payment_marks_the_order_paid(page, demo):
    reference = new_order(page, demo, "#buy-momo")
    expect(page.locator("#order-status")).to_have_text("Not paid")
    page.click("#pay-widget")
    expect(page.locator("#sandbox-khalti-dialog")).to_be_visible()
    page.screenshot(path=SHOTS / "widget-dialog.png")
    page.click("#sandbox-pay")  # Khalti id and MPIN come prefilled
    expect(page.locator("#order-status")).to_have_text("Paid")
    expect(page.locator("#order-payments tr[data-status=verified]")).to_have_count(1)
    page.screenshot(path=SHOTS / "widget-paid.png", full_page=True)
    page.reload()  # the shop's record, not the page's memory
    expect(page.locator("#order-status")).to_have_text("Paid")
    assert reference


def test_epayment_payment_lands_on_the_success_page_with_the_order_paid(page, demo):
    new_order(page, demo, "#buy-tea")
    page.click("#pay-epayment")
    page.wait_for_url("**/sandbox/pay/?pidx=*")
    page.screenshot(path=SHOTS / "epayment-khalti-page.png")
    page.click("#sandbox-pay")
    page.wait_for_url("**/payment/success/?payment=*")
    expect(page.locator("#payment-result")).to_have_attribute("data-status", "verified")
    page.screenshot(path=SHOTS / "epayment-success.png")
    page.click("#back-to-order")
    expect(page.locator("#order-status")).to_have_text("Paid")


def test_epayment_cancel_lands_on_the_failure_page_with_the_payment_failed(page, demo):
    new_order(page, demo, "#buy-dhaka-topi")
    page.click("#pay-epayment")
    page.wait_for_url("**/sandbox/pay/?pidx=*")
    page.click("#sandbox-cancel")
    page.wait_for_url("**/payment/failure/?payment=*")
    expect(page.locator("#payment-result")).to_have_attribute("data-status", "failed")
    page.screenshot(path=SHOTS / "epayment-failure.png")
    page.click("#back-to-order")
    expect(page.locator("#order-status")).to_have_text("Not paid")
    expect(page.locator("#order-payments tr[data-status=failed]")).to_have_count(1)


def test_the_payment_is_visible_in_the_admin(page, demo):
    reference = new_order(page, demo, "#buy-lokta-notebook")
    page.click("#pay-widget")
    page.click("#sandbox-pay")
    expect(page.locator("#order-status")).to_have_text("Paid")
    page.goto(demo + "/admin/login/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", "admin")
    page.click("input[type=submit]")
    expect(page.locator("#user-tools")).to_be_visible()  # logged in
    page.goto(f"{demo}/admin/django_khalti/payment/?q={reference}")
    expect(page.locator("#result_list")).to_contain_text(reference)
    expect(page.locator("#result_list .khalti-status-verified")).to_have_count(1)
    page.screenshot(path=SHOTS / "admin.png", full_page=True)

    # The overview a support desk starts from: today's verified payment is counted,
    # and the day's bar is drawn server-side (no script).
    page.click("text=Overview")
    expect(page.locator("#khalti-periods .khalti-verified td").first).not_to_have_text("0")
    expect(page.locator("#khalti-volume svg rect")).to_have_count(30)
    page.screenshot(path=SHOTS / "admin-overview.png", full_page=True)


def test_an_open_epayment_link_can_be_continued(page, demo):
    """The buyer who left Khalti's page without paying finds the link on the order
    page, and finishes the payment there."""
    reference = new_order(page, demo, "#buy-momo")
    page.click("#pay-epayment")
    page.wait_for_url("**/sandbox/pay/?pidx=*")
    page.goto(f"{demo}/orders/{reference}/")  # the buyer comes back without paying
    expect(page.locator("#continue-epayment")).to_be_visible()
    page.click("#continue-epayment")
    page.wait_for_url("**/sandbox/pay/?pidx=*")
    page.click("#sandbox-pay")
    page.wait_for_url("**/payment/success/?payment=*")
    page.click("#back-to-order")
    expect(page.locator("#order-status")).to_have_text("Paid")


def test_an_open_epayment_link_does_not_block_the_widget(page, demo):
    """Paying with the widget while an unpaid link is out supersedes the link."""
    reference = new_order(page, demo, "#buy-momo")
    page.click("#pay-epayment")
    page.wait_for_url("**/sandbox/pay/?pidx=*")
    page.goto(f"{demo}/orders/{reference}/")
    expect(page.locator("#continue-epayment")).to_be_visible()
    page.click("#pay-widget")
    page.click("#sandbox-pay")
    expect(page.locator("#order-status")).to_have_text("Paid")
    page.reload()
    expect(page.locator("#order-payments tr[data-status=verified]")).to_have_count(1)
    expect(page.locator("#order-payments tr[data-status=failed]")).to_contain_text("Superseded")
