"""A second reader's attacks on the order of a payment's signals and the receivers'
read-only copies (issue 25, parts 1 and 2), from the shop's side.

The shop and its helpers are those of ``test_signal_order``: receivers as the docs
write them, whose story (shipped, cancelled) and what they heard are asserted.
"""

from __future__ import annotations

import re
import threading
import time

import pytest
from django.db import OperationalError, close_old_connections, connection
from django.test import Client
from django.urls import reverse

from django_khalti import services
from django_khalti.exceptions import KhaltiPaymentAsSent
from django_khalti.models import Payment, SignalDelivery
from django_khalti.signals import payment_verified
from shop.models import Order

from . import test_signal_order as signal_order

VERIFY, pay, reconcile = signal_order.VERIFY, signal_order.pay, signal_order.reconcile
# The fixtures of the shop those tests build: its receivers, signals due again at once.
shop = signal_order.shop
due_at_once = signal_order.due_at_once
only_this_shops_receivers = signal_order.only_this_shops_receivers

pytestmark = pytest.mark.django_db(transaction=True)


def _fails_the_look_for_the_next_signal():
    """An execute wrapper failing, as a terminated connection would, the first read
    of the outbox once a signal was marked delivered: the deliverer's look for the
    payment's next signal. On PostgreSQL that look is the delivered mark's own
    statement (issue 27), which fails with it. And the list of what it failed."""
    marked, failed = [], []

    def wrapper(execute, sql, params, many, context):
        looks = re.match(r"WITH marked AS \(UPDATE .*signaldelivery", sql) or (
            marked and re.match(r"SELECT .*signaldelivery", sql)
        )
        if re.match(r"UPDATE .*signaldelivery.* SET .*delivered_at", sql):
            marked.append(sql)
        elif looks and not failed:
            failed.append(sql)
            raise OperationalError("server closed the connection unexpectedly")
        return execute(sql, params, many, context)

    return wrapper, failed


def test_a_database_fault_after_a_delivery_is_no_500_for_a_verified_payment(client, khalti, shop):
    """The buyer paid, the shop heard it; the database drops the connection as the
    deliverer looks for the payment's next signal. The buyer is told the payment
    is verified (not a 500), and the signal stays delivered (on PostgreSQL, where
    the look and the mark are one statement, the mark is made again on its own)."""
    wrapper, failed = _fails_the_look_for_the_next_signal()
    with connection.execute_wrapper(wrapper):
        payment, _ = pay(client, khalti)
    assert failed, "the look for a later signal was not made"
    assert payment.status == Payment.Status.VERIFIED
    assert shop.story == [("shipped", "ORD-1")]
    assert [h[1] for h in shop.heard] == ["verified"]
    assert SignalDelivery.objects.get().delivered_at is not None


def test_a_database_fault_after_a_delivery_leaves_reconcile_to_deliver_the_rest(
    client, khalti, shop
):
    """Two payments' signals are due again; the connection drops as reconcile looks
    for the first one's next signal. The run goes on with the second payment's."""
    shop.warehouse_down = 2
    pay(client, khalti, "ORD-1")
    pay(client, khalti, "ORD-2")
    assert shop.story == []
    wrapper, failed = _fails_the_look_for_the_next_signal()
    with connection.execute_wrapper(wrapper):
        reconcile()
    assert failed
    assert sorted(shop.story) == [("shipped", "ORD-1"), ("shipped", "ORD-2")]
    assert not SignalDelivery.objects.filter(delivered_at=None).exists()


# --- a receiver's copy cannot write the row, whichever way it saves ----------------------


@pytest.mark.parametrize(
    "write_back",
    [
        pytest.param(lambda payment: payment.save_base(), id="save_base"),
        pytest.param(
            lambda payment: Payment.objects.bulk_update([payment], ["status", "refunded_amount"]),
            id="bulk_update",
        ),
    ],
)
def test_a_retried_delivery_cannot_rewind_a_refunded_payment_by_any_write(
    client, khalti, shop, write_back
):
    """During a retry of payment_verified after a refund, a receiver writes its copy
    back by another door than ``save()``: refused, and the row stays refunded."""
    shop.warehouse_down = 1
    refused = []

    def writes_it_back(sender, payment, **kwargs):
        try:
            write_back(payment)
        except KhaltiPaymentAsSent:
            refused.append(payment.pk)

    payment, _ = pay(client, khalti)
    services.refund_payment(payment)
    payment_verified.connect(writes_it_back, sender=Payment)
    try:
        reconcile()
    finally:
        payment_verified.disconnect(writes_it_back, sender=Payment)
    assert refused == [payment.pk]
    payment.refresh_from_db()
    assert payment.status == Payment.Status.REFUNDED
    assert payment.refundable_amount == 0


# --- a receiver slower than its delivery's wait ------------------------------------------


def test_a_receiver_slower_than_the_wait_does_not_let_its_signal_be_heard_after_a_later_one(
    khalti, shop, settings
):
    """payment_verified has two receivers: a notifier that hangs (a mail server that
    does not answer) and README's mark_order_paid. While the notifier hangs past
    the delivery's wait, support refunds, and reconcile delivers verified again
    and then refunded (the order is cancelled). When the hung worker wakes up, its
    remaining receiver must not hear payment_verified after payment_refunded."""
    settings.KHALTI = {**settings.KHALTI, "SIGNAL_GRACE_PERIOD": 0.3}
    hung, wake = threading.Event(), threading.Event()

    def notifier(sender, payment, **kwargs):
        if not hung.is_set():
            hung.set()
            wake.wait(10)

    payment_verified.disconnect(shop.mark_order_paid, sender=Payment)
    payment_verified.connect(notifier, sender=Payment)
    payment_verified.connect(shop.mark_order_paid, sender=Payment)
    try:
        Order.objects.create(reference="ORD-1", total=1000)
        paid = khalti.add_payment(amount=1000)
        answered = []

        def buyer():
            try:
                response = Client().post(
                    VERIFY, paid.payload("ORD-1"), content_type="application/json"
                )
                answered.append(response.status_code)
            finally:
                close_old_connections()

        thread = threading.Thread(target=buyer)
        thread.start()
        assert hung.wait(10)
        services.refund_payment(Payment.objects.get(token=paid.token))
        time.sleep(0.5)  # the verified delivery's wait is over: it is due again
        reconcile()
        assert shop.story == [("shipped", "ORD-1"), ("cancelled", "ORD-1")]
        wake.set()
        thread.join(10)
    finally:
        wake.set()
        payment_verified.disconnect(notifier, sender=Payment)
        payment_verified.disconnect(shop.mark_order_paid, sender=Payment)
        payment_verified.connect(shop.mark_order_paid, sender=Payment)
    assert answered == [200]
    heard = [signal for _, signal, _, _ in shop.heard]
    assert heard[heard.index("refunded") :] == ["refunded"], heard


# --- the admin's re-send in a project with ATOMIC_REQUESTS -------------------------------


@pytest.mark.skipif(connection.vendor == "sqlite", reason="two writers at once: a server database")
def test_the_admins_resend_with_atomic_requests_lets_a_refund_made_meanwhile_follow(
    admin_client, client, khalti, shop, monkeypatch
):
    """In a project with ATOMIC_REQUESTS, a person re-sends two payments' signals after
    the warehouse came back. While the second one's receivers run, support refunds
    the first payment, whose payment_verified the same request just delivered: its
    payment_refunded must follow at once (the shop cancels the order), not wait
    for the next cron."""
    shop.warehouse_down = 2
    first, _ = pay(client, khalti, "ORD-1")
    second, _ = pay(client, khalti, "ORD-2")
    refunded = []

    def support_refunds_the_first(sender, payment, **kwargs):
        if payment.pk == second.pk and not refunded:

            def refund():
                try:
                    refunded.append(services.refund_payment(Payment.objects.get(pk=first.pk)))
                finally:
                    close_old_connections()

            thread = threading.Thread(target=refund)
            thread.start()
            thread.join(10)

    monkeypatch.setitem(connection.settings_dict, "ATOMIC_REQUESTS", True)
    payment_verified.connect(support_refunds_the_first, sender=Payment)
    try:
        selected = SignalDelivery.objects.order_by("created_at").values_list("pk", flat=True)
        admin_client.post(
            reverse("admin:django_khalti_signaldelivery_changelist"),
            {"action": "resend", "_selected_action": list(selected)},
            follow=True,
        )
    finally:
        payment_verified.disconnect(support_refunds_the_first, sender=Payment)
    assert len(refunded) == 1
    assert shop.story == [("shipped", "ORD-1"), ("shipped", "ORD-2"), ("cancelled", "ORD-1")]
    assert not SignalDelivery.objects.filter(delivered_at=None).exists()
