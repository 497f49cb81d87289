"""The tutorial's step "Click through it offline", followed in a blank project and
clicked through in headless Chromium (Debian's, driven by Playwright).

The project is built from the tutorial's own files (tests/project/test_tutorial.py:
``follow_the_tutorial``), the offline step's settings and URLs appended, and served by
its own ``manage.py runserver`` with nothing but its ``DEBUG = True`` and
``KHALTI_WEBSITE_URL`` (a free port): the sandbox the shop installed plays Khalti. The
browser may reach nothing but that server. Both checkouts are paid (and ePayment
cancelled) as a buyer does; a payment whose buyer never came back is settled by
``khalti_reconcile`` and by the admin's re-check; a paid one is refunded in the admin.
Each story ends where the shop tells it: its order page, its thanks and failure pages,
its admin.
"""

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import expect

from ..project.test_tutorial import TUTORIAL, click_through_it_offline, follow_the_tutorial
from .conftest import CHROMIUM, SHOTS, free_port

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError("CI must run the browser tests: install Debian's chromium")
    pytest.skip("Debian's chromium is not installed (.ci/run installs it)", allow_module_level=True)

pytestmark = pytest.mark.browser

#: The orders the shop has, as the tutorial creates them (reference, name, paisa).
ORDERS = [
    ("ORD-1", "Dragon figurine", 150000),
    ("ORD-2", "Tea set", 50000),
    ("ORD-3", "Momo", 120000),
    ("ORD-4", "Dhaka topi", 80000),
    ("ORD-5", "Lokta notebook", 30000),
    ("ORD-6", "Singing bowl", 250000),
    ("ORD-7", "Prayer flags", 40000),
]


def manage(shop, *args):
    project, env = shop["project"], shop["env"]
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def serve(project, env, port, log):
    """``manage.py runserver`` on ``port``, once it answers."""
    server = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"],
        cwd=project,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    for _ in range(150):
        if server.poll() is not None:
            break
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/orders/ORD-1/", timeout=1)
            return server
        except OSError:
            time.sleep(0.1)
    server.terminate()
    raise RuntimeError(f"runserver did not start: see {log.name}")


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """The tutorial's project with the offline step, migrated, its orders and an admin
    made, served by its runserver; yields its base URL, directory and environment."""
    project, env = follow_the_tutorial(tmp_path_factory.mktemp("offline"))
    click_through_it_offline(project)
    port = free_port()
    env = {**env, "KHALTI_WEBSITE_URL": f"http://127.0.0.1:{port}"}
    shop = {"project": project, "env": env, "base": f"http://127.0.0.1:{port}"}
    made = manage(shop, "migrate")
    assert made.returncode == 0, made.stdout + made.stderr
    assert "Applying khalti_sandbox.0001" in made.stdout  # the sandbox's tables
    script = "from shop.models import Order\n" + "".join(
        f"Order.objects.create(reference={ref!r}, name={name!r}, total={total})\n"
        for ref, name, total in ORDERS
    )
    script += (
        "from django.contrib.auth.models import User\n"
        "User.objects.create_superuser('admin', 'admin@example.com', 'admin')\n"
    )
    made = manage(shop, "shell", "-c", script)
    assert made.returncode == 0, made.stdout + made.stderr
    checked = manage(shop, "check")
    assert "no issues" in checked.stdout, checked.stdout + checked.stderr
    SHOTS.mkdir(parents=True, exist_ok=True)
    with (SHOTS / "offline-tutorial.log").open("w") as log:
        server = serve(project, env, port, log)
    try:
        yield shop
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture
def page(browser, shop, request):
    context = browser.new_context()
    outside, errors = [], []

    def only_the_shop(route):
        # Offline: anything but the shop's own server is a bug.
        if route.request.url.startswith((shop["base"], "data:", "blob:")):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", only_the_shop)
    page = context.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    page.screenshot(path=SHOTS / f"offline-{request.node.name}.png", full_page=True)
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
    assert not outside, f"the shop reached outside this machine: {outside}"


def open_order(page, shop, reference):
    page.goto(f"{shop['base']}/orders/{reference}/")
    expect(page.locator("h1")).to_have_text({r: n for r, n, _ in ORDERS}[reference])


def expect_order_paid(page, shop, reference, paid=True):
    """The shop's order page, fetched anew: its record, not the browser's memory."""
    open_order(page, shop, reference)
    paid_note = page.get_by_text("Paid. Thank you!")
    if paid:
        expect(paid_note).to_be_visible()
    else:
        expect(paid_note).to_have_count(0)
        expect(page.locator("form.khalti-epayment button")).to_be_visible()


def pay_on_khaltis_page(page, shop, reference):
    open_order(page, shop, reference)
    page.click("form.khalti-epayment button")
    page.wait_for_url(f"{shop['base']}/sandbox/pay/?pidx=*")


def open_the_widget(page, shop, reference):
    open_order(page, shop, reference)
    page.click(".khalti-widget [data-khalti-pay]:not([disabled])")
    expect(page.locator("#sandbox-khalti-dialog")).to_be_visible()


# --- the buyer --------------------------------------------------------------------


def test_epayment_paid_on_the_sandboxs_page_comes_back_paid(page, shop):
    pay_on_khaltis_page(page, shop, "ORD-1")
    page.click("#sandbox-pay")  # a test Khalti id and the MPIN come prefilled
    page.wait_for_url(f"{shop['base']}/thanks/?payment=*")
    expect(page.locator("body")).to_contain_text(
        "Khalti confirmed your payment of Rs 1,500.00 for order ORD-1."
    )
    expect_order_paid(page, shop, "ORD-1")


def test_epayment_cancelled_on_the_sandboxs_page_comes_back_failed(page, shop):
    pay_on_khaltis_page(page, shop, "ORD-2")
    page.click("#sandbox-cancel")
    page.wait_for_url(f"{shop['base']}/payment-failed/?payment=*")
    expect(page.locator("h1")).to_have_text("Your payment was not completed")
    page.click("text=Back to order")
    expect_order_paid(page, shop, "ORD-2", paid=False)


def test_the_widget_pays_from_the_wallet(page, shop):
    open_the_widget(page, shop, "ORD-3")
    page.click("#sandbox-pay")
    page.wait_for_url(f"{shop['base']}/thanks/?payment=*")
    expect(page.locator("body")).to_contain_text("payment of Rs 1,200.00 for order ORD-3")
    expect_order_paid(page, shop, "ORD-3")


def test_the_widget_pays_by_bank_in_its_popup(page, shop):
    open_the_widget(page, shop, "ORD-4")
    page.click("#sandbox-tab-EBANKING")
    with page.expect_popup() as opened:
        page.click("#sandbox-bank-pay-EBANKING")
    popup = opened.value
    expect(popup.locator("#bank-amount")).to_have_attribute("data-paisa", "80000")
    popup.click("#bank-pay")  # reports to the widget through window.opener
    page.wait_for_url(f"{shop['base']}/thanks/?payment=*")
    expect(page.locator("body")).to_contain_text("payment of Rs 800.00 for order ORD-4")
    expect_order_paid(page, shop, "ORD-4")


# --- the shop: a buyer who never came back, refunds -----------------------------------


def paid_but_never_came_back(page, shop, reference):
    """The buyer pays on the sandbox's page and closes the tab before it sends them back."""
    pay_on_khaltis_page(page, shop, reference)

    def tab_closed(route):
        answer = route.fetch(max_redirects=0)  # the sandbox takes the payment
        assert answer.status == 302, answer.text()
        assert "/khalti/epayment/return/" in answer.headers["location"]
        route.fulfill(status=200, body="tab closed", content_type="text/plain")

    page.route("**/sandbox/pay/**", tab_closed)
    page.click("#sandbox-pay")
    expect(page.locator("body")).to_have_text("tab closed")
    page.unroute("**/sandbox/pay/**")
    expect_order_paid(page, shop, reference, paid=False)


def log_in_to_the_admin(page, shop):
    page.goto(f"{shop['base']}/admin/login/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", "admin")
    page.click("input[type=submit]")
    expect(page.locator("#user-tools")).to_be_visible()


def choose_action(page, shop, reference, action):
    page.goto(f"{shop['base']}/admin/django_khalti/payment/?q={reference}")
    page.check("#result_list input.action-select")
    page.select_option("select[name=action]", action)
    page.click("button[name=index]")


def test_khalti_reconcile_settles_a_payment_whose_buyer_never_came_back(page, shop):
    paid_but_never_came_back(page, shop, "ORD-5")
    reconciled = manage(shop, "khalti_reconcile", "--older-than", "0", "--failed-within", "0")
    assert reconciled.returncode == 0, reconciled.stdout + reconciled.stderr
    assert "1 verified" in reconciled.stdout, reconciled.stdout
    expect_order_paid(page, shop, "ORD-5")


def test_the_admins_recheck_settles_a_payment_whose_buyer_never_came_back(page, shop):
    paid_but_never_came_back(page, shop, "ORD-6")
    log_in_to_the_admin(page, shop)
    choose_action(page, shop, "ORD-6", "recheck")
    expect(page.locator("ul.messagelist")).to_contain_text("Re-checked 1 with Khalti: 1 verified.")
    expect_order_paid(page, shop, "ORD-6")


def test_a_paid_order_is_refunded_in_the_admin(page, shop):
    open_the_widget(page, shop, "ORD-7")
    page.click("#sandbox-pay")
    page.wait_for_url(f"{shop['base']}/thanks/?payment=*")
    log_in_to_the_admin(page, shop)
    choose_action(page, shop, "ORD-7", "refund")
    expect(page.locator("tr.refund-candidate")).to_contain_text("400.00")
    page.click("input[name=confirm]")
    expect(page.locator("ul.messagelist")).to_contain_text("Refunded Rs 400.00 of ORD-7.")
    page.goto(f"{shop['base']}/admin/django_khalti/payment/?q=ORD-7")
    expect(page.locator("#result_list .khalti-status-refunded")).to_have_count(1)
    # "Khalti" holds it refunded too: the sandbox's own record, in its admin.
    page.goto(f"{shop['base']}/admin/khalti_sandbox/sandboxtransaction/?q=ORD-7")
    expect(page.locator("#result_list td.field-refunded_amount")).to_have_text("40000")


def test_the_tutorials_own_tests_still_pass_beside_the_sandbox(shop):
    """Step 5's tests run with the sandbox installed (DEBUG is on when settings load):
    the testing kit answers in-process, whatever BASE_URL says."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "shop/test_payments.py"],
        cwd=shop["project"],
        env=shop["env"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    tests = (TUTORIAL / "shop" / "test_payments.py").read_text().count("\ndef test_")
    assert f"{tests} passed" in result.stdout
