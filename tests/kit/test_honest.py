"""The kit cannot pass by accident: a shop's tests, written as a shop writes them,
run in a bare project with only dj-khalti's pytest plugin (in a subprocess), and
the kit's own helpers against the real app.

- dj-khalti's signals reach the shop's receivers when a request through the test
  client ends, as after production's commit; one never sent fails the test and
  names the fix;
- ``KHALTI["WEBSITE_URL"]`` is supplied when the settings have none;
- an ePayment the app never started cannot be paid; one it started can be paid
  for another amount (``pay_wrong_amount``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from django.db import transaction
from django.urls import reverse

from django_khalti.models import Payment
from django_khalti.signals import payment_verified
from django_khalti.testing import OUTCOMES, KhaltiFake
from django_khalti.testing.fake import ENDPOINTS
from shop.models import OrderEvent

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]

#: The head of a shop's test module: its Order model and dj-khalti's URLs.
SHOP_TESTS = """\
import pytest
from django.core.management import call_command
from django.urls import reverse

from django_khalti.models import Payment
from shop.models import Order, OrderEvent

VERIFY = reverse("django_khalti:verify")


@pytest.fixture
def order(db):
    return Order.objects.create(reference="ORD-1", total=1000)


def paid_events():
    return list(OrderEvent.objects.filter(kind="paid").values_list("order_reference", flat=True))

"""


def shop_project(directory: Path, tests: str, *, settings: str = "") -> Path:
    """A bare shop project at ``directory``: the test project's apps, a pytest.ini of
    the how-to's two lines (plus where the apps are), no conftest, and ``tests``.
    ``settings``: lines appended to a settings module over the test project's.
    """
    (directory / "shop_settings.py").write_text(
        "from testproject.settings import *  # noqa: F403\n" + textwrap.dedent(settings)
    )
    (directory / "pytest.ini").write_text(
        "[pytest]\nDJANGO_SETTINGS_MODULE = shop_settings\n"
        f"pythonpath = {ROOT / 'testproject'} {directory}\n"
    )
    (directory / "test_shop.py").write_text(SHOP_TESTS + textwrap.dedent(tests))
    return directory


def run_pytest(directory: Path) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ}
    for name in list(environ):
        if name.startswith("KHALTI_") or name == "DJANGO_SETTINGS_MODULE":
            del environ[name]
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", str(directory)],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=300,
        env=environ,
    )


# --- 1. signals: sent when the test client's request ends, or the test fails saying how ------


def test_a_shops_test_without_capturing_on_commit_sees_its_receiver_run(tmp_path):
    shop_project(
        tmp_path,
        """
        def test_paid_in_the_widget(client, khalti, order):
            payment = khalti.add_payment(amount=1000)

            response = client.post(VERIFY, payment.payload("ORD-1"),
                                   content_type="application/json")

            assert response.status_code == 200
            order.refresh_from_db()
            assert order.paid_at is not None
            assert paid_events() == ["ORD-1"]


        def test_paid_on_khaltis_page(client, khalti, order):
            client.post(reverse("django_khalti:epayment-start", args=["ORD-1"]))

            client.get(khalti.pay(khalti.last_epayment))

            order.refresh_from_db()
            assert order.paid_at is not None


        def test_capturing_on_commit_too_sends_each_signal_once(
            client, khalti, order, django_capture_on_commit_callbacks
        ):
            payment = khalti.add_payment(amount=1000)

            with django_capture_on_commit_callbacks(execute=True) as callbacks:
                client.post(VERIFY, payment.payload("ORD-1"), content_type="application/json")

            assert paid_events() == ["ORD-1"]
            assert callbacks == []  # sent as the request ended: nothing left for the commit
        """,
    )

    result = run_pytest(tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout


def test_a_signal_never_sent_fails_the_test_and_names_the_fix(tmp_path):
    shop_project(
        tmp_path,
        """
        def _left_pending(client, khalti, order):
            # The verification timed out: the payment waits, and the buyer's page gave up.
            payment = khalti.add_payment(amount=1000, outcome="timeout")
            client.post(VERIFY, payment.payload("ORD-1"), content_type="application/json")
            Payment.objects.update(last_asked_at=None)


        def test_reconcile_without_capturing(client, khalti, order):
            _left_pending(client, khalti, order)

            call_command("khalti_reconcile", "--older-than", "0")

            assert Payment.objects.get().status == "verified"  # passes: the signal is not sent


        def test_reconcile_without_capturing_and_a_failing_assert(client, khalti, order):
            _left_pending(client, khalti, order)

            call_command("khalti_reconcile", "--older-than", "0")

            order.refresh_from_db()
            assert order.paid_at is not None, "ORDER UNPAID"


        def test_reconcile_captured(client, khalti, order, django_capture_on_commit_callbacks):
            _left_pending(client, khalti, order)

            with django_capture_on_commit_callbacks(execute=True):
                call_command("khalti_reconcile", "--older-than", "0")

            assert paid_events() == ["ORD-1"]


        def test_a_worker_that_died_after_the_commit(client, khalti, order):
            khalti.signals.enabled = False  # nothing sent, and nothing asked after
            payment = khalti.add_payment(amount=1000)

            client.post(VERIFY, payment.payload("ORD-1"), content_type="application/json")

            assert paid_events() == []
        """,
    )

    result = run_pytest(tmp_path)

    out = result.stdout
    assert "2 failed, 2 passed" in out, out + result.stderr
    assert "FAILED test_shop.py::test_reconcile_without_capturing -" in out
    assert "FAILED test_shop.py::test_reconcile_without_capturing_and_a_failing_assert" in out
    failures = out.split("= FAILURES =")[1].split("short test summary")[0]
    for test in ("test_reconcile_without_capturing ", "and_a_failing_assert "):
        report = failures.split(test, 1)[1].split("\n____")[0]
        assert "dj-khalti's signal was never sent to your receivers: payment_verified" in report
        assert "(order ORD-1)" in report
        assert "with django_capture_on_commit_callbacks(execute=True):" in report
    assert "ORDER UNPAID" in failures  # the test's own failure is kept


def test_the_shops_own_on_commit_callbacks_are_left_as_django_leaves_them(
    client, khalti, order, django_capture_on_commit_callbacks
):
    mailed = []

    def mail_on_commit(sender, payment, **kwargs):
        transaction.on_commit(lambda: mailed.append(payment.order_reference))

    payment_verified.connect(mail_on_commit, dispatch_uid="test-mail-on-commit")
    try:
        with django_capture_on_commit_callbacks(execute=True):
            payment = khalti.add_payment(amount=1000)
            client.post(
                reverse("django_khalti:verify"),
                payment.payload(order.reference),
                content_type="application/json",
            )
            assert mailed == []  # the kit sent dj-khalti's signal, not the shop's callback
    finally:
        payment_verified.disconnect(dispatch_uid="test-mail-on-commit")
    assert mailed == [order.reference]
    assert list(OrderEvent.objects.values_list("kind", flat=True)) == ["paid"]


# --- 2. WEBSITE_URL: supplied when the settings have none; the shop's own wins ---------------

EPAYMENT_TEST = """
def test_an_epayment(client, khalti, order, settings):
    response = client.post(reverse("django_khalti:epayment-start", args=["ORD-1"]))
    assert response.status_code == 302

    client.get(khalti.pay(khalti.last_epayment))

    order.refresh_from_db()
    assert order.paid_at is not None
    print("WEBSITE_URL", settings.KHALTI["WEBSITE_URL"], khalti.initiate_calls[0]["return_url"])
"""


@pytest.mark.parametrize(
    ("settings", "website_url"),
    [
        ('KHALTI = {k: v for k, v in KHALTI.items() if k != "WEBSITE_URL"}', "http://testserver"),
        ('KHALTI = {**KHALTI, "WEBSITE_URL": None}', "http://testserver"),
        (
            'KHALTI = {**KHALTI, "WEBSITE_URL": "https://shop.example.com"}',
            "https://shop.example.com",
        ),
    ],
    ids=["missing", "none", "the-shops-own"],
)
def test_an_epayment_test_runs_with_debug_off_whatever_the_website_url(
    tmp_path, settings, website_url
):
    shop_project(tmp_path, EPAYMENT_TEST, settings=f"DEBUG = False\n{settings}\n")

    result = run_pytest(tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    return_url = f"{website_url}/khalti/epayment/return/"
    assert f"WEBSITE_URL {website_url} {return_url}" in result.stdout


# --- 3. ePayment: one the app never started cannot be paid; a wrong amount has its helper ----


def start_epayment(client, khalti, reference="ORD-1"):
    response = client.post(reverse("django_khalti:epayment-start", args=[reference]))
    assert response.status_code == 302, response.content
    return khalti.last_epayment


@pytest.mark.parametrize("step", ["pay", "cancel", "pay_wrong_amount"])
def test_an_epayment_the_app_never_started_cannot_be_paid_or_canceled(khalti, order, step):
    epayment = khalti.add_epayment(amount=1000, purchase_order_id=order.reference)
    kwargs = {"amount": 2000} if step == "pay_wrong_amount" else {}

    with pytest.raises(ValueError, match="never started by the app") as refused:
        getattr(khalti, step)(epayment, **kwargs)

    assert "khalti.pay_wrong_amount(epayment, amount=...)" in str(refused.value)
    assert "django_khalti:epayment-start" in str(refused.value)
    assert khalti.epayment(epayment.pidx).status == "Initiated"  # nothing happened at Khalti


def test_an_epayment_the_app_holds_may_be_paid_though_registered_by_the_test(client, khalti, order):
    # A test that writes the app's row itself (to reconcile it, say) and Khalti's.
    epayment = khalti.add_epayment(amount=1000, purchase_order_id=order.reference)
    Payment.objects.create(
        flow=Payment.Flow.EPAYMENT,
        pidx=epayment.pidx,
        order_reference=order.reference,
        amount=1000,
    )

    client.get(khalti.pay(epayment))

    order.refresh_from_db()
    assert order.paid_at is not None


def test_an_epayment_paid_for_another_amount_leaves_the_order_unpaid(client, khalti, order):
    epayment = start_epayment(client, khalti)

    response = client.get(khalti.pay_wrong_amount(epayment, amount=2000))

    payment = Payment.objects.get()
    assert payment.status == Payment.Status.NEEDS_REVIEW
    assert payment.received_amount == 2000
    order.refresh_from_db()
    assert order.paid_at is None
    assert "needs a check by the shop" in response.content.decode()  # the buyer is told
    assert khalti.lookup_calls == [epayment.pidx]


def test_a_wrong_amount_must_differ_from_the_started_one_and_be_payable(client, khalti, order):
    epayment = start_epayment(client, khalti)

    with pytest.raises(ValueError, match=r"use khalti\.pay\(epayment\)"):
        khalti.pay_wrong_amount(epayment, amount=1000)
    with pytest.raises(ValueError, match="below Rs 10"):
        khalti.pay_wrong_amount(epayment, amount=999)
    assert khalti.epayment(epayment.pidx).status == "Initiated"


def test_a_refused_wrong_amount_leaves_the_epayment_as_the_app_started_it(client, khalti, order):
    epayment = start_epayment(client, khalti)

    with pytest.raises(ValueError, match="payment status"):
        khalti.pay_wrong_amount(epayment, amount=2000, status="Paid")

    # Khalti's records still say what the app asked for: paying it now verifies the order.
    assert khalti.epayment(epayment.pidx).amount == 1000
    client.get(khalti.pay(epayment))
    assert Payment.objects.get().status == Payment.Status.VERIFIED


# --- 4. the how-to's tables of endpoints and outcomes are the kit's -------------------------

TESTING_HOWTO = ROOT / "docs" / "howto" / "testing.rst"


def howto_table(caption: str) -> dict[str, list[str]]:
    """The how-to's ``list-table`` whose caption starts with ``caption``: each row's
    cells (joined lines), by its first cell's name in double backquotes.
    """
    text = TESTING_HOWTO.read_text()
    table = text.split(f".. list-table:: {caption}", 1)[1]
    body = table.split("\n\n", 2)[1]  # after the options
    rows = {}
    for row in body.split("   * - ")[1:]:
        cells = [" ".join(cell.split()) for cell in row.split("\n     - ")]
        rows[cells[0]] = cells[1:]
    rows.pop(next(iter(rows)))  # the header row
    return {name.strip("`"): cells for name, cells in rows.items()}


def takes(endpoint: str, outcome: str) -> bool:
    try:
        KhaltiFake().fail_next(endpoint, outcome)
    except ValueError:
        return False
    return True


def test_the_howtos_endpoints_are_the_kits_with_their_urls_and_outcomes():
    table = howto_table("The endpoints")

    assert list(table) == [*ENDPOINTS, "any"]
    for name, (method, path) in ENDPOINTS.items():
        url = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", path.pattern)
        assert table[name][0] == f"``{method} {url}``"
    for name, (_, _, outcomes) in table.items():
        listed = set(OUTCOMES)
        if outcomes.startswith("all but "):
            listed -= set(re.findall(r"``(\w+)``", outcomes))
        else:
            assert outcomes.startswith("all"), outcomes
        assert listed == {outcome for outcome in OUTCOMES if takes(name, outcome)}, name


def test_the_howtos_outcomes_are_the_kits():
    assert set(howto_table("The outcomes")) == set(OUTCOMES)
    assert len(howto_table("The outcomes")) == len(OUTCOMES)


def howto_block_after(heading: str) -> str:
    """The first Python code block of the how-to after ``heading``."""
    text = TESTING_HOWTO.read_text().split(f"\n{heading}\n", 1)[1]
    block = text.split(".. code-block:: python\n\n", 1)[1]
    lines = []
    for line in block.split("\n"):
        if line and not line.startswith("    "):
            break
        lines.append(line[4:])
    return "\n".join(lines).strip() + "\n"


def test_the_howtos_wrong_amount_test_passes_in_a_shop_project(tmp_path):
    shop_project(tmp_path, "")
    (tmp_path / "test_shop.py").write_text(howto_block_after("A payment of another amount"))

    result = run_pytest(tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
