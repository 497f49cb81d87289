"""How old an ePayment link is, on the database's clock: when it is dead, and when it is
still good to send the same buyer back to."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from django_khalti.models import Payment
from django_khalti.services import epayment, lookup

pytestmark = pytest.mark.django_db
Status = Payment.Status


def _epayment(**kw):
    return Payment.objects.create(
        flow=Payment.Flow.EPAYMENT,
        product_identity="ORD-9",
        amount=1000,
        pidx="PIDX-9",
        payment_url="https://pay.khalti.com/?pidx=PIDX-9",
        **kw,
    )


@pytest.mark.parametrize(
    ("age_minutes", "dead"), [(0, False), (70, False), (74, False), (76, True), (24 * 60, True)]
)
def test_link_dead_without_expires_at(age_minutes, dead):
    payment = _epayment()
    Payment.objects.filter(pk=payment.pk).update(
        created_at=timezone.now() - timedelta(minutes=age_minutes)
    )
    assert lookup._link_dead(payment) is dead


@pytest.mark.parametrize(
    ("expires_in_minutes", "dead"), [(30, False), (-14, False), (-16, True), (-600, True)]
)
def test_link_dead_with_expires_at(expires_in_minutes, dead):
    payment = _epayment(expires_at=timezone.now() + timedelta(minutes=expires_in_minutes))
    assert lookup._link_dead(payment) is dead


@pytest.mark.parametrize(
    ("expires_in_seconds", "good"), [(30, False), (90, True), (3600, True), (-60, False)]
)
def test_link_still_good(expires_in_seconds, good):
    payment = _epayment(expires_at=timezone.now() + timedelta(seconds=expires_in_seconds))
    assert epayment._link_still_good(payment, 1000) is good
