"""Attacks on "money that moved for this token keeps its order" (issue 25, parts 3 and 6).

A hostile buyer, and a Khalti that is slow, repeats, misspells and contradicts
itself, against: a widget payment verified with its ``idx`` unknown; the refund
that must find that idx (from Khalti's records, or from a person); the read-only
check of a token a pending payment's page reported as its ``claimed_idx``; and
the ePayment link's expiry on the database's clock.

Khalti is the shipped kit's fake (``django_khalti.testing``).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.cache import cache
from django.db import connection
from django.urls import reverse

from django_khalti import services
from django_khalti.conf import DEFAULTS
from django_khalti.models import DbNow, Payment
from shop.models import Order

pytestmark = pytest.mark.django_db

Status = Payment.Status
VERIFY_URL = reverse("django_khalti:verify")


@pytest.fixture
def spaced(settings):
    """dj-khalti's default ``ASK_SPACING`` (the test project's is a millisecond)."""
    settings.KHALTI = {**settings.KHALTI, "ASK_SPACING": DEFAULTS["ASK_SPACING"]}
    cache.clear()
    yield
    cache.clear()


def post(client, payload, address="198.51.100.1"):
    return client.post(VERIFY_URL, payload, content_type="application/json", REMOTE_ADDR=address)


def pending_with_claimed_idx(client, khalti, claimed_idx):
    """A buyer's payment whose verify timed out before Khalti read it: pending, its
    page having reported ``claimed_idx`` as its transaction id."""
    Order.objects.create(reference="ORD-A", total=1000)
    paid = khalti.add_payment(amount=1000, outcome="timeout")
    response = post(client, paid.payload("ORD-A", idx=claimed_idx))
    assert response.status_code == 504, response.content
    payment = Payment.objects.get()
    assert (payment.status, payment.claimed_idx) == (Status.PENDING, claimed_idx)
    return payment


# --- part 6: a token reported as a pending payment's idx ----------------------------------


def test_a_token_reported_as_a_pending_idx_does_not_open_a_door_to_khalti(client, khalti, spaced):
    """40 posts of a pending payment's claimed idx, as a token for an order that does
    not exist, each from its own address: the app must not ask Khalti 40 times (a
    bogus order is refused before Khalti, as for any other token)."""
    pending_with_claimed_idx(client, khalti, "CLAIMED-IDX-1")
    khalti.reset_calls()
    for n in range(40):
        body = {"token": "CLAIMED-IDX-1", "amount": 1000, "product_identity": "NO-SUCH"}
        response = post(client, body, address=f"203.0.113.{n + 1}")
        assert response.status_code == 404, response.content
    assert len(khalti.transaction_calls) <= 3, khalti.transaction_calls


# --- part 3: a second payment of an order, its transaction id unknown ---------------------


ERROR = {"status": False, "state": "Error", "detail": "Transaction not found."}


def test_money_that_paid_an_order_twice_can_be_refunded_with_the_idx_a_person_gives(client, khalti):
    """The states table: "a re-check finds a failed payment paid after all, when another
    payment paid the order meanwhile ... a second payment of it, for a person to refund".
    Its idx is unknown (the minimal body; verify's answer lost). The person finds the
    transaction in Khalti's dashboard and gives its id: the money goes back."""
    Order.objects.create(reference="ORD-B", total=1000)
    first = khalti.add_payment(amount=1000, outcome="timeout_after_processing")
    body = {"token": first.token, "amount": 1000, "product_identity": "ORD-B"}
    assert post(client, body).status_code == 504  # Khalti verified it; the answer was lost
    khalti.answer_next("status", json=ERROR, key=first.token)  # Khalti contradicts itself
    assert post(client, body).status_code == 400
    second = khalti.add_payment(amount=1000)
    assert post(client, second.payload("ORD-B")).status_code == 200
    twice = services.reconcile(Payment.objects.get(token=first.token))  # the re-check
    assert (twice.status, twice.idx, twice.order_claim) == (Status.NEEDS_REVIEW, None, None)

    refund = services.refund_payment(twice, idx=first.idx)
    assert refund.status == "succeeded"
    assert khalti.payments[first.token].refunds == [(1000, None)]


# --- part 6: an ePayment link's expiry without USE_TZ ---------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("khalti_gives", ["expires_at", "expires_in"])
def test_a_link_starts_and_keeps_its_expiry_without_use_tz(client, khalti, settings, khalti_gives):
    """A project without USE_TZ starts an ePayment; Khalti gives its expiry as a time
    with its offset (which SQLite, MySQL and MariaDB refuse without USE_TZ: the start
    was a 500), or as seconds. The buyer is sent to the link; it expires 30 minutes
    from now on the database's clock, the one link ages are read on (not 5h45 off,
    Kathmandu's offset), so the buyer coming back is sent to the same link."""
    settings.USE_TZ = False
    connection.close()
    Order.objects.create(reference="ORD-TZ", total=1000)
    if khalti_gives == "expires_in":
        url = f"{khalti.base_url}pay/?pidx=PIDX-TZ"
        khalti.answer_next(
            "initiate", json={"pidx": "PIDX-TZ", "payment_url": url, "expires_in": 1800}
        )
    response = client.post(reverse("django_khalti:epayment-start", args=["ORD-TZ"]))
    assert response.status_code == 302, response.content
    payment = Payment.objects.get()
    early = Payment.objects.filter(pk=payment.pk, expires_at__lt=DbNow() + timedelta(minutes=28))
    late = Payment.objects.filter(pk=payment.pk, expires_at__gt=DbNow() + timedelta(minutes=32))
    assert not early.exists(), payment.expires_at
    assert not late.exists(), payment.expires_at
    again = client.post(reverse("django_khalti:epayment-start", args=["ORD-TZ"]))
    assert again["Location"] == response["Location"]
    assert len(khalti.initiate_calls) == 1
