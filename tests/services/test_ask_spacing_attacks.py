"""Issue 25, part 5, attacked: ways of asking Khalti about one payment that the
spacing's first cut left out.

The bound under attack (docs/explanation/security.rst): no request pattern, from
any number of addresses, makes more than a handful of Khalti calls per payment per
minute; and an answer that is not known leaves a payment pending. Khalti is the
shipped kit's fake; each request comes from its own address, so that the API's
per-address throttles do not stand in for the spacing.
"""

from __future__ import annotations

import io
import json
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from django_khalti.conf import DEFAULTS
from django_khalti.models import DbNow, Payment
from shop.models import Order

Status = Payment.Status
VERIFY_URL = reverse("django_khalti:verify")
SPACING = DEFAULTS["ASK_SPACING"]


@pytest.fixture
def spaced(settings):
    """dj-khalti's default ``ASK_SPACING`` (the test project's is a millisecond)."""
    settings.KHALTI = {**settings.KHALTI, "ASK_SPACING": SPACING}


def asked_ago(payment, seconds):
    """Time passes: Khalti was last asked about ``payment`` ``seconds`` ago, on the
    database's clock."""
    Payment.objects.filter(pk=payment.pk).update(last_asked_at=DbNow() - timedelta(seconds=seconds))


def post_from(address, body):
    return Client().post(
        VERIFY_URL, json.dumps(body), content_type="application/json", REMOTE_ADDR=address
    )


def addresses(count):
    return [f"10.7.{n // 250}.{n % 250}" for n in range(count)]


# --- a pending payment's reported idx, posted as a token -------------------------------


@pytest.mark.django_db
def test_a_reported_idx_posted_as_a_token_from_many_addresses_asks_khalti_a_handful(khalti, spaced):
    """A page reports any string as its payment's idx; Khalti keeps that payment at
    Initiated, so it stays pending. Posting that string as a token (for an order that
    does not exist, or the wrong amount) used to ask Khalti's transaction record of
    it on every request, before the order was even looked at."""
    Order.objects.create(reference="ORD-B", total=1000)
    never_confirmed = khalti.add_payment(amount=1000, state="Initiated")
    squatter = {**never_confirmed.payload("ORD-B"), "idx": "reported-idx"}
    assert post_from("192.0.2.1", squatter).json()["code"] == "in_progress"
    assert Payment.objects.get().status == Status.PENDING
    khalti.reset_calls()

    attack = [
        {"token": "reported-idx", "amount": 1000, "product_identity": "NO-SUCH-ORDER"},
        {"token": "reported-idx", "amount": 999, "product_identity": "ORD-B"},
    ]
    codes = {
        post_from(address, attack[n % 2]).status_code for n, address in enumerate(addresses(40))
    }

    assert codes <= {400, 404, 409}
    assert len(khalti.calls) <= 2, [call.endpoint for call in khalti.calls]


# --- a refund of unknown outcome, asked about by every reconciler ----------------------


def refund_khalti_cannot_tell(khalti):
    """A payment refunded Rs 3 of 10, then Rs 2 more with an outcome never known:
    Khalti says "Partially refunded", which does not tell whether the Rs 2 went back,
    so the refund stays pending for a person (each asker asks Khalti's status)."""
    from django.utils import timezone

    from django_khalti.models import Refund, order_key

    paid = khalti.add_payment(amount=1000, state="Partially refunded", refunded_amount=300)
    payment = Payment.objects.create(
        token=paid.token,
        product_identity="ORD-A",
        amount=1000,
        order_claim=order_key("ORD-A"),
        status=Status.PARTIALLY_REFUNDED,
        idx=paid.idx,
        refunded_amount=300,
        verified_at=timezone.now(),
    )
    refund = Refund.objects.create(payment=payment, amount=200, claim=payment.pk)
    Refund.objects.filter(pk=refund.pk).update(created_at=timezone.now() - timedelta(hours=1))
    return payment, refund


@pytest.mark.django_db
def test_reconcile_runs_ask_about_a_payments_unknown_refund_once_per_spacing(khalti, spaced):
    """Cron on several hosts (or run again and again): each run asked Khalti's status
    about the payment of an unknown refund, whatever the spacing."""
    payment, refund = refund_khalti_cannot_tell(khalti)

    for _ in range(10):
        call_command("khalti_reconcile", stdout=io.StringIO())

    assert [call.endpoint for call in khalti.calls] == ["status"]
    refund.refresh_from_db()
    assert refund.status == refund.Status.PENDING  # not known: left for a person
    asked_ago(payment, SPACING)
    call_command("khalti_reconcile", stdout=io.StringIO())
    assert [call.endpoint for call in khalti.calls] == ["status", "status"]


@pytest.mark.concurrency
@pytest.mark.django_db(transaction=True)
def test_concurrent_reconcilers_ask_about_a_payments_unknown_refund_once(khalti, spaced):
    """Four hosts' cron, at once, again and again: one question about the payment."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connections

    _payment, refund = refund_khalti_cannot_tell(khalti)
    # A slow Khalti, so that the runs overlap the question in flight.
    khalti.on_next("status", lambda request: None, delay=0.2, times=None)
    barrier = threading.Barrier(4)

    def cron():
        try:
            barrier.wait(timeout=10)
            for _ in range(3):
                call_command("khalti_reconcile", stdout=io.StringIO())
        finally:
            connections.close_all()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: cron(), range(4)))

    assert [call.endpoint for call in khalti.calls] == ["status"]
    refund.refresh_from_db()
    assert refund.status == refund.Status.PENDING


# --- the spacing as a lock: one asker keeps an order's holder from being asked ----------


def start_from(browser, reference, address):
    return browser.post(
        reverse("django_khalti:epayment-start", args=[reference]), REMOTE_ADDR=address
    )


@pytest.mark.django_db
def test_one_asker_per_spacing_cannot_keep_other_buyers_from_paying_an_order(khalti, spaced):
    Order.objects.create(reference="ORD-A", total=1000)
    squatter = Client()
    assert start_from(squatter, "ORD-A", "203.0.113.5").status_code == 302
    link = khalti.last_epayment
    holder = Payment.objects.get(pidx=link.pidx)
    honest = Client()

    answers = []
    for _minute_part in range(6):  # a minute of the squatter's six GETs
        asked_ago(holder, SPACING)  # the spacing is over...
        squatter.get(khalti.return_url(link), REMOTE_ADDR="203.0.113.5")  # ...and taken
        for _ in range(2):  # the honest buyer clicks Pay, and again 5 s later
            answers.append(start_from(honest, "ORD-A", "198.51.100.7").status_code)
            Payment.objects.filter(pk=holder.pk).update(
                last_asked_at=DbNow() - timedelta(seconds=SPACING / 2)
            )

    assert 302 in answers, answers  # the honest buyer got a link to pay, some time
