"""What the shop hears of one payment comes in the order its status changed (issue 25).

Written from the shop's side: receivers as the docs write them (README's
``mark_order_paid``, the refunds how-to's ``on_refunded``) keep the shop's story
(what it shipped, cancelled, released), some raise, and the tests assert the story
after every deliverer had its turn: the status change's own worker, a resubmission,
``khalti_reconcile`` and the admin's re-send. They run on every database of CI's
matrix (SQLite, PostgreSQL, MariaDB at READ COMMITTED and REPEATABLE READ).
"""

from __future__ import annotations

import io
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import close_old_connections
from django.db.models import F
from django.urls import reverse
from django.utils import timezone

from django_khalti import services
from django_khalti.exceptions import KhaltiPaymentAsSent
from django_khalti.models import Payment, SignalDelivery
from django_khalti.signals import (
    payment_failed,
    payment_needs_review,
    payment_refunded,
    payment_verified,
)
from shop.models import Order

pytestmark = pytest.mark.django_db(transaction=True)

VERIFY = reverse("django_khalti:verify")


@pytest.fixture(autouse=True)
def due_at_once(settings):
    """Signals a receiver raised for are due again at once: no test waits for the grace."""
    settings.KHALTI = {**settings.KHALTI, "SIGNAL_GRACE_PERIOD": 0}


@pytest.fixture(autouse=True)
def only_this_shops_receivers(no_shop_receivers):
    """The test project's own receivers off: the shop here is the one each test builds."""


@dataclass
class Shop:
    """A shop whose receivers are the docs' own, and whose warehouse may be down.

    ``story`` is what the shop did, in order: ("shipped" | "cancelled" |
    "released", order reference). ``heard`` is every call of any receiver:
    (payment id, signal, the payment's status and count of status changes as the
    receiver was handed them).
    """

    story: list[tuple[str, str]] = field(default_factory=list)
    heard: list[tuple[str, str, str, int]] = field(default_factory=list)
    warehouse_down: int = 0  # how many more calls of mark_order_paid raise
    flaky: random.Random | None = None  # every receiver raises at random with it
    lock: threading.Lock = field(default_factory=threading.Lock)

    def hear(self, signal: str, payment: Payment) -> None:
        with self.lock:
            self.heard.append((str(payment.pk), signal, payment.status, payment.status_changes))
            if self.flaky is not None and self.flaky.random() < 0.4:
                raise ConnectionError("the shop's fulfilment service is down")

    # --- README's mark_order_paid and the refunds how-to's on_refunded ------------------

    def mark_order_paid(self, sender, payment, **kwargs):
        self.hear("verified", payment)
        if self.warehouse_down:
            self.warehouse_down -= 1
            raise ConnectionError("the warehouse API is down")
        changed = Order.objects.filter(reference=payment.order_reference, paid_at=None).update(
            paid_at=timezone.now()
        )
        if changed:
            self.story.append(("shipped", payment.order_reference))

    def on_refunded(self, sender, payment, amount, **kwargs):
        self.hear("refunded", payment)
        if payment.verified_at is None:
            return  # it never paid the order
        if payment.status == Payment.Status.REFUNDED:
            Order.objects.filter(reference=payment.order_reference).update(paid=False)
            self.story.append(("cancelled", payment.order_reference))

    def on_failed(self, sender, payment, reason, **kwargs):
        # Releases the order for a new payment: unpaid again, as if never paid.
        self.hear("failed", payment)
        Order.objects.filter(reference=payment.order_reference).update(paid_at=None)
        self.story.append(("released", payment.order_reference))

    def on_needs_review(self, sender, payment, reason, **kwargs):
        self.hear("needs_review", payment)

    def connect(self) -> None:
        payment_verified.connect(self.mark_order_paid, sender=Payment)
        payment_refunded.connect(self.on_refunded, sender=Payment)
        payment_failed.connect(self.on_failed, sender=Payment)
        payment_needs_review.connect(self.on_needs_review, sender=Payment)

    def disconnect(self) -> None:
        payment_verified.disconnect(self.mark_order_paid, sender=Payment)
        payment_refunded.disconnect(self.on_refunded, sender=Payment)
        payment_failed.disconnect(self.on_failed, sender=Payment)
        payment_needs_review.disconnect(self.on_needs_review, sender=Payment)


@pytest.fixture
def shop() -> Iterator[Shop]:
    the_shop = Shop()
    the_shop.connect()
    yield the_shop
    the_shop.disconnect()


def reconcile(*, may_fail: bool = False) -> str:
    """``khalti_reconcile``; with ``may_fail``, a receiver that raised is no error here."""
    out = io.StringIO()
    try:
        call_command("khalti_reconcile", stdout=out)
    except CommandError:
        if not may_fail:
            raise
    return out.getvalue()


def pay(client, khalti, reference="ORD-1", amount=1000) -> tuple[Payment, dict]:
    Order.objects.get_or_create(reference=reference, defaults={"total": amount})
    paid = khalti.add_payment(amount=amount)
    payload = paid.payload(reference)
    response = client.post(VERIFY, payload, content_type="application/json")
    assert response.status_code == 200, response.content
    return Payment.objects.get(token=paid.token), payload


# --- the reproduction: a refund while payment_verified is still undelivered ------------


def test_a_refund_is_heard_after_the_payment_verified_its_receiver_raised_for(client, khalti, shop):
    shop.warehouse_down = 1
    payment, _ = pay(client, khalti)
    assert shop.story == []  # the warehouse was down: nothing shipped yet

    services.refund_payment(payment)  # support gives the money back
    assert shop.story == [], "payment_refunded must wait for payment_verified"
    refunded = SignalDelivery.objects.get(signal="payment_refunded")
    assert refunded.delivered_at is None
    assert refunded.attempts == 0

    output = reconcile()
    # One run: verified delivered again, and the refund it held back follows it.
    assert shop.story == [("shipped", "ORD-1"), ("cancelled", "ORD-1")], output
    assert [h[1:3] for h in shop.heard] == [
        ("verified", "verified"),
        ("verified", "verified"),
        ("refunded", "refunded"),
    ]
    assert not SignalDelivery.objects.filter(delivered_at=None).exists()
    assert "signals delivered again 2, still undelivered 0" in output


def test_a_resubmission_delivers_what_waits_in_order(client, khalti, shop):
    shop.warehouse_down = 1
    payment, payload = pay(client, khalti)
    services.refund_payment(payment)
    assert shop.story == []

    # The buyer's page sends the same payload again: it delivers both, in order.
    response = client.post(VERIFY, payload, content_type="application/json")
    assert response.status_code == 200
    assert shop.story == [("shipped", "ORD-1"), ("cancelled", "ORD-1")]


def test_the_admins_resend_of_a_later_signal_waits_for_the_earlier_one(
    admin_client, client, khalti, shop
):
    shop.warehouse_down = 2
    payment, _ = pay(client, khalti)
    services.refund_payment(payment)
    refunded = SignalDelivery.objects.get(signal="payment_refunded")
    verified = SignalDelivery.objects.get(signal="payment_verified")
    changelist = reverse("admin:django_khalti_signaldelivery_changelist")

    # A person re-sends only the refund: it waits, and the page says why.
    response = admin_client.post(
        changelist, {"action": "resend", "_selected_action": [refunded.pk]}, follow=True
    )
    assert "waits for an earlier signal" in response.content.decode()
    assert shop.story == []

    # Re-sending both: the verified one first (its receiver raises once more), so
    # the refund still waits; then once more, and both go, in order.
    both = {"action": "resend", "_selected_action": [refunded.pk, verified.pk]}
    admin_client.post(changelist, both, follow=True)
    assert shop.story == []
    admin_client.post(changelist, both, follow=True)
    assert shop.story == [("shipped", "ORD-1"), ("cancelled", "ORD-1")]


def test_payment_failed_retried_is_heard_before_the_payment_verified_after_it(client, khalti, shop):
    """A failed payment's receiver raised; Khalti then completed it (a re-check). The
    shop must release the order before it ships it, never after."""
    Order.objects.create(reference="ORD-1", total=1000)
    paid = khalti.add_payment(amount=1000)
    khalti.fail_next("verify", "rejected", key=paid.token)
    khalti.fail_next("status", "rejected", key=paid.token)
    payment_failed.disconnect(shop.on_failed, sender=Payment)
    payment_failed.connect(raising_on_failed := _raises(shop), sender=Payment)
    response = client.post(VERIFY, paid.payload("ORD-1"), content_type="application/json")
    assert response.status_code == 400
    payment = Payment.objects.get(token=paid.token)
    assert payment.status == Payment.Status.FAILED

    payment_failed.disconnect(raising_on_failed, sender=Payment)
    payment_failed.connect(shop.on_failed, sender=Payment)
    paid.verified = True  # Khalti completed it after all
    services.recheck_failed(payment)
    assert Payment.objects.get(pk=payment.pk).status == Payment.Status.VERIFIED
    assert shop.story == [], "payment_verified must wait for payment_failed"

    reconcile()
    assert shop.story == [("released", "ORD-1"), ("shipped", "ORD-1")]
    assert Order.objects.get(reference="ORD-1").paid_at is not None


def _raises(shop: Shop):
    def on_failed(sender, payment, **kwargs):
        shop.hear("failed", payment)
        raise ConnectionError("the shop's database is down")

    return on_failed


def test_a_later_signal_whose_earlier_one_was_delivered_meanwhile_goes_at_once(
    client, khalti, shop
):
    payment, _ = pay(client, khalti)
    services.refund_payment(payment)
    # Nothing waited: each went after its own commit.
    assert shop.story == [("shipped", "ORD-1"), ("cancelled", "ORD-1")]
    assert SignalDelivery.objects.filter(delivered_at=None).count() == 0


# --- each receiver its own copy, which cannot write --------------------------------------


def test_each_receiver_is_handed_its_own_copy_of_the_payment(client, khalti, shop):
    handed = []

    def refunds_it(sender, payment, **kwargs):
        # As the refunds how-to suggests, then reads the row again.
        services.refund_payment(Payment.objects.get(pk=payment.pk))
        payment.refresh_from_db()
        handed.append((id(payment), payment.status))

    def next_receiver(sender, payment, **kwargs):
        handed.append((id(payment), payment.status))

    payment_verified.connect(refunds_it, sender=Payment)
    payment_verified.connect(next_receiver, sender=Payment)
    try:
        pay(client, khalti)
    finally:
        payment_verified.disconnect(refunds_it, sender=Payment)
        payment_verified.disconnect(next_receiver, sender=Payment)
    (first, refunded), (second, seen) = handed
    assert refunded == Payment.Status.REFUNDED
    assert seen == Payment.Status.VERIFIED  # the payment as payment_verified announced it
    assert first != second


def test_a_receivers_copy_refuses_save_and_delete(client, khalti, shop):
    tried = []

    def writes_it_back(sender, payment, **kwargs):
        for action in (payment.save, payment.delete):
            with pytest.raises(KhaltiPaymentAsSent) as refused:
                action()
            tried.append(str(refused.value))

    payment_verified.connect(writes_it_back, sender=Payment)
    try:
        payment, _ = pay(client, khalti)
    finally:
        payment_verified.disconnect(writes_it_back, sender=Payment)
    assert len(tried) == 2
    assert "as it was when payment_verified was sent" in tried[0]
    assert "cannot be saved" in tried[0]
    assert "cannot be deleted" in tried[1]
    assert "Payment.objects.get(pk=payment.pk)" in tried[0]
    assert Payment.objects.filter(pk=payment.pk).exists()


def test_a_retried_delivery_cannot_rewind_a_refunded_payment(client, khalti, shop):
    """A receiver saving its payment during a retry of payment_verified, after a refund,
    would write "verified" back over "refunded", and the money could go back twice."""
    shop.warehouse_down = 1
    saved = []

    def saves_it(sender, payment, **kwargs):
        try:
            payment.save()
        except KhaltiPaymentAsSent:
            saved.append("refused")

    payment, _ = pay(client, khalti)
    services.refund_payment(payment)
    payment_verified.connect(saves_it, sender=Payment)
    try:
        reconcile()
    finally:
        payment_verified.disconnect(saves_it, sender=Payment)
    assert saved == ["refused"]
    payment.refresh_from_db()
    assert payment.status == Payment.Status.REFUNDED
    assert payment.refundable_amount == 0


# --- randomized: whatever raises, each payment's signals come in its status order -------


@dataclass
class Script:
    """A payment's life, driven through the public API, with its status history."""

    client: Any
    khalti: Any
    rng: random.Random
    history: dict[str, list[tuple[int, str]]] = field(default_factory=dict)

    def note(self, payment: Payment) -> None:
        payment = Payment.objects.get(pk=payment.pk)
        seen = self.history.setdefault(str(payment.pk), [])
        if payment.status_changes and (not seen or seen[-1][0] != payment.status_changes):
            seen.append((payment.status_changes, payment.status))

    def maybe_reconcile(self) -> None:
        if self.rng.random() < 0.5:
            reconcile(may_fail=True)

    def verified_then_refunded(self, reference: str) -> None:
        payment, payload = pay(self.client, self.khalti, reference)
        self.note(payment)
        for amount in (300, None):
            self.maybe_reconcile()
            if self.rng.random() < 0.3:  # the buyer's page sends it again
                self.client.post(VERIFY, payload, content_type="application/json")
            services.refund_payment(Payment.objects.get(pk=payment.pk), amount)
            self.note(payment)

    def failed_then_rechecked(self, reference: str, held: bool) -> None:
        Order.objects.create(reference=reference, total=1000)
        paid = self.khalti.add_payment(amount=1000)
        self.khalti.fail_next("verify", "rejected", key=paid.token)
        self.khalti.fail_next("status", "rejected", key=paid.token)
        self.client.post(VERIFY, paid.payload(reference), content_type="application/json")
        payment = Payment.objects.get(token=paid.token)
        self.note(payment)
        self.maybe_reconcile()
        if held:  # another payment pays the order meanwhile: this one needs review
            self.note(pay(self.client, self.khalti, reference)[0])
        paid.verified = True
        services.recheck_failed(Payment.objects.get(pk=payment.pk))
        self.note(payment)
        self.maybe_reconcile()
        services.refund_payment(Payment.objects.get(pk=payment.pk))
        self.note(payment)


@pytest.mark.parametrize("seed", range(4))
def test_whatever_raises_each_payments_signals_follow_its_status_history(
    client, khalti, shop, seed
):
    rng = random.Random(seed)
    shop.flaky = random.Random(seed)
    script = Script(client, khalti, rng)
    script.verified_then_refunded("ORD-A")
    script.failed_then_rechecked("ORD-B", held=False)
    script.failed_then_rechecked("ORD-C", held=True)

    shop.flaky = None  # the shop's services are back: everything is delivered
    reconcile()
    assert not SignalDelivery.objects.filter(delivered_at=None).exists()
    for payment_id, history in script.history.items():
        heard = [(changes, status) for pid, _, status, changes in shop.heard if pid == payment_id]
        # At least once: a signal may be heard again right after itself, never after a later one.
        in_order = [h for i, h in enumerate(heard) if i == 0 or heard[i - 1] != h]
        assert in_order == history, (seed, payment_id)
    assert len(script.history) == 4  # ORD-C's second payment too


# --- deliverers racing for one payment's signals ------------------------------------------


@pytest.mark.concurrency
def test_deliverers_racing_for_one_payment_keep_its_order(client, khalti, shop, settings):
    # A grace period, as every shop has (E004 refuses none): without one, each
    # attempt's wait is over as it starts, and racers run one signal together.
    settings.KHALTI = {**settings.KHALTI, "SIGNAL_GRACE_PERIOD": 30}
    shop.warehouse_down = 1
    payment, _ = pay(client, khalti)
    services.refund_payment(payment, 400)
    services.refund_payment(Payment.objects.get(pk=payment.pk))
    assert shop.story == []
    # The wait of payment_verified's retry is over (dated back, as test_delivery does).
    SignalDelivery.objects.filter(delivered_at=None).update(
        next_attempt_at=F("next_attempt_at") - timedelta(seconds=30)
    )
    barrier = threading.Barrier(6)

    def run(n: int) -> None:
        try:
            barrier.wait()
            if n % 3 == 0:
                reconcile(may_fail=True)
            elif n % 3 == 1:
                services.deliver_due(Payment.objects.get(pk=payment.pk))
            else:
                for delivery in services.due_deliveries(payments=payment):
                    services.deliver(delivery, now=True)
        finally:
            close_old_connections()

    threads = [threading.Thread(target=run, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    reconcile()  # whatever a racer left waiting
    assert shop.story == [("shipped", "ORD-1"), ("cancelled", "ORD-1")]
    statuses = [h[2] for h in shop.heard]
    first_refund = statuses.index("partially_refunded")
    assert set(statuses[:first_refund]) == {"verified"}
    assert statuses[first_refund:] == ["partially_refunded", "refunded"]
