"""A delivered mark and the look for the payment's next signal, one statement on
PostgreSQL (issue 27), from the shop's side: whatever is written while a signal is
being delivered or marked, the shop hears the payment's signals in order, the later
one gone on with at once by the deliverer of the earlier one or by its own worker,
and never by a deliverer whose attempt was taken over.

The shop and its helpers are those of ``test_signal_order``. The races run on the
server databases, where another connection can hold the mark's row: on PostgreSQL
the one statement, on MariaDB the two it replaces there.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from django.db import close_old_connections, connection, connections
from django.db.models import F

from django_khalti import services
from django_khalti.models import Payment, SignalDelivery
from django_khalti.services import outbox
from django_khalti.signals import payment_verified

from . import test_signal_order as signal_order
from .test_hot_queries_attacks import heard, two_status_changes

pay, reconcile = signal_order.pay, signal_order.reconcile
shop, due_at_once = signal_order.shop, signal_order.due_at_once
only_this_shops_receivers = signal_order.only_this_shops_receivers
__all__ = ["heard"]  # a fixture of the tests below

pytestmark = pytest.mark.django_db(transaction=True)

server_only = pytest.mark.skipif(
    connection.vendor == "sqlite", reason="another connection holding a row: a server database"
)


# --- the refund's worker and the verification's deliverer, one after the other ----------


def test_a_refund_the_shops_receiver_makes_is_heard_next_in_the_same_request(client, khalti, shop):
    """The shop cannot fill the order and refunds it from its payment_verified
    receiver. The refund's own worker finds payment_verified not yet marked and
    leaves the refund to its deliverer, which goes on with it before the buyer's
    request ends: shipped, then cancelled, nothing left to reconcile."""

    def out_of_stock(sender, payment, **kwargs):
        services.refund_payment(Payment.objects.get(pk=payment.pk))

    payment_verified.connect(out_of_stock, sender=Payment, weak=False)
    try:
        pay(client, khalti)
    finally:
        payment_verified.disconnect(out_of_stock, sender=Payment)
    assert shop.story == [("shipped", "ORD-1"), ("cancelled", "ORD-1")]
    assert [h[1] for h in shop.heard] == ["verified", "refunded"]
    assert not SignalDelivery.objects.filter(delivered_at=None).exists()


def test_a_mark_whose_attempt_was_taken_over_does_not_go_on_to_the_next_signal(heard):
    """payment_verified's receivers ran longer than its wait, and another deliverer
    took the attempt over (it runs them again). The first one's mark finds the
    attempt no longer its own: it must not go on with the refund waiting behind,
    which would have the shop hear the refund before payment_verified is delivered."""
    payment = Payment.objects.create(
        token="tok-over", amount=1000, product_identity="A", status="refunded"
    )
    first, second = two_status_changes(payment)
    SignalDelivery.objects.filter(pk=second.pk).update(
        attempts=0, attempts_finished=0, last_error=outbox._WAITING
    )  # its own worker left it waiting for the first

    def taken_over(sender, payment, **kwargs):
        SignalDelivery.objects.filter(pk=first.pk).update(attempts=F("attempts") + 1)

    payment_verified.connect(taken_over, sender=Payment, weak=False)
    try:
        run = outbox.deliver_in_order(first, first=True)
    finally:
        payment_verified.disconnect(taken_over, sender=Payment)
    assert [(d.signal, ok) for d, ok in run] == [("payment_verified", False)]
    assert heard == ["verified"]
    refund = SignalDelivery.objects.get(pk=second.pk)
    assert (refund.delivered_at, refund.attempts) == (None, 0)


# --- the refund's worker while the verification's mark waits for its row ----------------


@pytest.fixture
def row_held() -> Iterator[RowHeld]:
    held = RowHeld()
    yield held
    held.release()


class RowHeld:
    """Another connection holding a delivery's row (``SELECT ... FOR UPDATE`` in a
    transaction), so that its mark waits, once it began, until :meth:`release`.
    """

    def __init__(self) -> None:
        self.other = type(connections["default"])(dict(connection.settings_dict), "other")

    def hold(self, delivery: SignalDelivery) -> None:
        table = connection.ops.quote_name(SignalDelivery._meta.db_table)
        pk = SignalDelivery._meta.pk.get_db_prep_value(delivery.pk, self.other)
        self.other.set_autocommit(False)
        with self.other.cursor() as cursor:
            cursor.execute(f"SELECT 1 FROM {table} WHERE id = %s FOR UPDATE", [pk])

    def wait_for_the_mark(self) -> None:
        """Until another connection's delivered mark waits for a row lock (MariaDB's
        ``innodb_trx`` does not list it: its process list does)."""
        waiting = (
            "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND query LIKE 'WITH marked AS (UPDATE %'"
            if connection.vendor == "postgresql"
            else "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = DATABASE()"
            " AND INFO LIKE 'UPDATE %signaldelivery%delivered_at%'"
        )
        for _ in range(200):
            with connection.cursor() as cursor:
                cursor.execute(waiting)
                if cursor.fetchone()[0]:
                    return
            time.sleep(0.05)
        raise AssertionError("the mark never waited for the row")

    def release(self) -> None:
        if self.other.connection is not None:
            self.other.commit()
            self.other.close()


def delivering_in_a_thread(deliver, row_held: RowHeld, delivery: SignalDelivery):
    """Run ``deliver()`` in a thread whose last payment_verified receiver has
    ``row_held`` hold ``delivery``'s row: its mark then waits. The thread and what
    ``deliver()`` returned, once joined."""
    ran: list = []
    receivers_done = threading.Event()
    held = threading.Event()

    def hold_the_row(sender, payment, **kwargs):
        receivers_done.set()
        assert held.wait(10)

    def run() -> None:
        try:
            ran.append(deliver())
        finally:
            close_old_connections()

    payment_verified.connect(hold_the_row, sender=Payment, weak=False)
    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert receivers_done.wait(10)
        row_held.hold(delivery)
    finally:
        held.set()
        payment_verified.disconnect(hold_the_row, sender=Payment)
    row_held.wait_for_the_mark()
    return thread, ran


@server_only
def test_a_refund_made_while_the_delivered_mark_waits_is_heard_next(client, khalti, shop, row_held):
    """payment_verified is delivered again (its receiver raised the first time);
    as its mark is about to be written, support refunds the payment. The refund's
    own worker finds payment_verified not yet marked and leaves the refund to its
    deliverer: written after that deliverer's statement began, it must still be
    seen and gone on with, without waiting for the next reconcile."""
    shop.warehouse_down = 1
    payment, _ = pay(client, khalti)
    verified = SignalDelivery.objects.get()
    thread, _ = delivering_in_a_thread(
        lambda: services.deliver_due(Payment.objects.get(pk=payment.pk)), row_held, verified
    )
    services.refund_payment(Payment.objects.get(pk=payment.pk))
    assert shop.story == [("shipped", "ORD-1")], "the refund must wait for payment_verified"
    row_held.release()
    thread.join(10)
    assert shop.story == [("shipped", "ORD-1"), ("cancelled", "ORD-1")]
    assert [h[1] for h in shop.heard] == ["verified", "verified", "refunded"]
    assert not SignalDelivery.objects.filter(delivered_at=None).exists()


@server_only
def test_a_later_signals_worker_waiting_while_the_mark_waits_is_gone_on_with(heard, row_held):
    """The refund's status change committed before payment_verified's mark began; its
    own worker runs while the mark waits for its row, finds payment_verified not
    yet marked and leaves the refund waiting (uncounted) for its deliverer. That
    deliverer must read the refund as it was left, and go on with it."""
    payment = Payment.objects.create(
        token="tok-waits", amount=1000, product_identity="A", status="refunded"
    )
    first, second = two_status_changes(payment)
    thread, ran = delivering_in_a_thread(
        lambda: outbox.deliver_in_order(first, first=True), row_held, first
    )
    assert outbox.deliver(second, first=True) is None  # it waits for the first
    assert heard == ["verified"]
    row_held.release()
    thread.join(10)
    assert [(d.signal, ok) for d, ok in ran[0]] == [
        ("payment_verified", True),
        ("payment_refunded", True),
    ]
    assert heard == ["verified", "refunded"]
    assert not SignalDelivery.objects.filter(delivered_at=None).exists()
