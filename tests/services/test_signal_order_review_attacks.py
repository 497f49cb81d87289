"""Attacks on the order in which the shop hears of one payment, from the shop's side.

The shop and its helpers are those of ``test_signal_order``: receivers as the docs
write them, whose story (shipped, cancelled) and what they heard are asserted.
"""

from __future__ import annotations

import pytest
from django.db.models import F

from django_khalti import services
from django_khalti.models import Payment, SignalDelivery

from . import test_signal_order as signal_order

pay, reconcile = signal_order.pay, signal_order.reconcile
shop = signal_order.shop
due_at_once = signal_order.due_at_once
only_this_shops_receivers = signal_order.only_this_shops_receivers

pytestmark = pytest.mark.django_db(transaction=True)


def _as_the_previous_release_wrote_it(payment: Payment) -> None:
    """The payment settled by a worker still running the release before signals were
    numbered (migration 0011 lets it insert, during a rolling deploy): its signal
    has ``sequence`` 0 and the payment's count of status changes did not move.
    """
    SignalDelivery.objects.filter(payment=payment).update(sequence=0)
    Payment.objects.filter(pk=payment.pk).update(status_changes=F("status_changes") - 1)


def test_a_refund_after_a_rolling_deploy_waits_for_the_old_workers_payment_verified(
    client, khalti, shop
):
    """During a rolling deploy, a worker of the previous release verified the payment
    (its payment_verified, sequence 0, raised: the warehouse was down). Support then
    refunds it on the new release: the refund's signal is the first the payment's
    count knows of (sequence 1), yet it must wait for the undelivered
    payment_verified, or the shop cancels the order and then ships it."""
    shop.warehouse_down = 1
    payment, _ = pay(client, khalti)
    _as_the_previous_release_wrote_it(payment)
    assert shop.story == []

    services.refund_payment(Payment.objects.get(pk=payment.pk))
    assert shop.story == [], "payment_refunded must wait for payment_verified"

    reconcile()
    assert shop.story == [("shipped", "ORD-1"), ("cancelled", "ORD-1")]
    assert [h[1] for h in shop.heard] == ["verified", "verified", "refunded"]
