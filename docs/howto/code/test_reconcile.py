"""A shop's test of reconciliation: a payment left pending is settled by the command."""

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.urls import reverse

from django_khalti.models import Payment
from shop.models import Order


@pytest.fixture
def order(db):
    return Order.objects.create(reference="ORD-1", total=1000)


def test_reconcile_settles_a_payment_whose_verification_timed_out(
    client, khalti, order, django_capture_on_commit_callbacks
):
    payment = khalti.add_payment(amount=1000, outcome="timeout")  # its verify times out
    client.post(
        reverse("django_khalti:verify"),
        payment.payload(order.reference),
        content_type="application/json",
    )
    # The buyer's page never sends it again; the command picks it up once it is old enough.
    pending = Payment.objects.get(status=Payment.Status.PENDING)
    Payment.objects.filter(pk=pending.pk).update(
        created_at=pending.created_at - timedelta(minutes=10)
    )

    with django_capture_on_commit_callbacks(execute=True):
        call_command("khalti_reconcile")

    order.refresh_from_db()
    assert order.paid_at is not None
    assert len(khalti.status_calls) == 1  # it asked Khalti's status endpoint
