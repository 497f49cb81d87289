"""Each receiver's copy of the payment as it was, attacked from the shop's side: what a
receiver is handed on the first delivery, on a delivery again (``khalti_reconcile``,
a resubmission, the admin), and what the caller and the row say, must be one payment.
"""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from django_khalti.models import Payment, SignalDelivery
from django_khalti.signals import payment_verified

from .test_delivery import Flaky, past_grace, post, reconcile, short_grace

__all__ = ["short_grace"]  # a fixture of the tests below

pytestmark = pytest.mark.django_db

INITIATE = reverse("django_khalti:epayment-initiate")
RETURN = reverse("django_khalti:epayment-return")
PIDX = "bZQLD9wRVWo4CdESSfuSsB"


def as_handed(payment):
    """Every field of ``payment`` as a receiver reads it."""
    return {
        field.attname: getattr(payment, field.attname) for field in Payment._meta.concrete_fields
    }


def test_a_delivery_again_hands_over_the_payment_the_first_delivery_did_to_the_microsecond(
    client, expect_khalti, order, django_capture_on_commit_callbacks
):
    """The shop's receiver keys what it did on the payment's times (``verified_at``,
    Khalti's ``expires_at``): its warehouse is down the first time, and reconcile hands
    the signal over again. Both deliveries are one payment as it was, and that is the
    row, which nothing changed since; a time cut to the millisecond on the way through
    the outbox (as Django's JSON encoder writes times) is another payment."""
    expect_khalti.initiate(order.total, order.reference)
    body = {"product_identity": order.reference, "product_name": "Dragon"}
    assert (
        client.post(INITIATE, json.dumps(body), content_type="application/json").status_code == 201
    )
    expect_khalti.lookup(PIDX, "epayment_lookup_completed")
    seen = []

    def record(sender, payment, **kwargs):
        seen.append(as_handed(payment))

    with Flaky():
        payment_verified.connect(record, sender=Payment, weak=False)
        try:
            with django_capture_on_commit_callbacks(execute=True):
                client.get(RETURN, {"pidx": PIDX, "status": "Completed"})
            past_grace()
            reconcile()
        finally:
            payment_verified.disconnect(record, sender=Payment)
    assert SignalDelivery.objects.get().delivered_at is not None
    first, again = seen
    assert first == again
    row = Payment.objects.get()
    assert row.expires_at.microsecond  # Khalti's time, to the microsecond
    times = ["created_at", "updated_at", "verified_at", "expires_at"]
    assert {name: first[name] for name in times} == {name: getattr(row, name) for name in times}


def test_every_delivery_hands_over_a_payment_of_the_database_it_is_written_to(
    client, expect_khalti, payload, django_capture_on_commit_callbacks
):
    """A receiver's copy says which database it came from (``_state.db``, what its
    ``refresh_from_db()`` reads): the same on the first delivery and on a delivery
    again, on every database."""
    expect_khalti.verify(payload["token"], 1000)
    seen = []

    def note(sender, payment, **kwargs):
        seen.append(payment._state.db)

    with Flaky():
        payment_verified.connect(note, sender=Payment, weak=False)
        try:
            with django_capture_on_commit_callbacks(execute=True):
                post(client, payload)
            past_grace()
            reconcile()
        finally:
            payment_verified.disconnect(note, sender=Payment)
    assert seen == ["default", "default"]
