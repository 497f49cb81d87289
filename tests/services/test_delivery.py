"""Nothing lost after the commit (issue 13): signals delivered at least once, refund
conflicts surfaced, receivers given the payment as it was, one clock.

Each scenario the second hostile review reproduced is a test here; they run on every
database of the matrix (.ci/run: SQLite, PostgreSQL, and MariaDB at READ COMMITTED and
at its own default, REPEATABLE READ). The worker killed by gunicorn's timeout in the
middle of a receiver is ``tests/system/test_reliability.py``'s, through the rig.
"""

from __future__ import annotations

import io
import logging
from datetime import timedelta
from unittest import mock

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import OperationalError, connection, connections
from django.db.models import F
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from django_khalti import services
from django_khalti.exceptions import (
    KhaltiRefundConflict,
    KhaltiRefundFailed,
    KhaltiRefundUnknown,
)
from django_khalti.models import Payment, Refund, SignalDelivery, order_key
from django_khalti.services import reconciliation, state
from django_khalti.signals import payment_verified
from shop import receivers
from shop.models import Order, OrderEvent

from ..conftest import fixture

pytestmark = pytest.mark.django_db

VERIFY_URL = reverse("django_khalti:verify")
Status = Payment.Status
GRACE = 30  # seconds: SIGNAL_GRACE_PERIOD in these tests


@pytest.fixture(autouse=True)
def short_grace(settings):
    settings.KHALTI = {**settings.KHALTI, "SIGNAL_GRACE_PERIOD": GRACE}


def post(client, payload):
    return client.post(VERIFY_URL, payload, content_type="application/json")


def reconcile(*args):
    out = io.StringIO()
    call_command("khalti_reconcile", "--older-than", "0", *args, stdout=out)
    return out.getvalue()


def past_grace(periods=1):
    """Let ``periods`` grace periods pass for the undelivered signals: date their next
    attempt back (as tests/system/test_reliability.py's ``stale`` does for claims)."""
    SignalDelivery.objects.filter(next_attempt_at__isnull=False).update(
        next_attempt_at=F("next_attempt_at") - timedelta(seconds=GRACE * periods)
    )


class Flaky:
    """A receiver, connected ahead of the shop's, that raises (``exc``) the first
    ``times`` times, then records the payment it was given."""

    def __init__(self, times=1, exc=None):
        self.times, self.seen = times, []
        self.exc = exc or RuntimeError("the warehouse is down")
        self.__qualname__ = "Flaky"  # Django's send_robust logs a receiver by it

    def __call__(self, sender, payment, **kwargs):
        if self.times:
            self.times -= 1
            raise self.exc
        self.seen.append(payment)

    def __enter__(self):
        payment_verified.disconnect(receivers.mark_order_paid, sender=Payment)
        payment_verified.connect(self, sender=Payment, weak=False)
        payment_verified.connect(receivers.mark_order_paid, sender=Payment)
        return self

    def __exit__(self, *exc):
        payment_verified.disconnect(self, sender=Payment)


def paid(reference="ORD-1"):
    return Order.objects.get(reference=reference).paid


# --- 1. a receiver raising, a worker dying, a commit the client did not see ------------


def test_a_raising_receiver_is_logged_and_its_signal_delivered_again_after_the_grace(
    client, expect_khalti, payload, caplog, django_capture_on_commit_callbacks
):
    expect_khalti.verify(payload["token"], 1000)
    with Flaky() as flaky, caplog.at_level(logging.ERROR, "django_khalti"):
        with django_capture_on_commit_callbacks(execute=True):
            assert post(client, payload).status_code == 200
        payment = Payment.objects.get()
        assert str(payment.pk) in caplog.text
        assert "the warehouse is down" in caplog.text
        delivery = SignalDelivery.objects.get()
        assert (delivery.attempts, delivery.delivered_at) == (1, None)
        assert "RuntimeError: the warehouse is down" in delivery.last_error

        assert "signals delivered" not in reconcile()  # within the grace: not yet
        assert flaky.seen == []
        past_grace()
        out = reconcile()
    assert "signals delivered again 1, still undelivered 0" in out
    assert [p.pk for p in flaky.seen] == [payment.pk]
    delivery.refresh_from_db()
    assert (delivery.attempts, delivery.last_error) == (2, "")
    assert delivery.delivered_at is not None
    assert delivery.next_attempt_at is None
    assert paid()
    assert OrderEvent.objects.filter(kind="paid").count() == 1  # the shop's receiver is idempotent


def test_a_resubmission_delivers_what_is_still_undelivered(
    client, expect_khalti, payload, django_capture_on_commit_callbacks
):
    expect_khalti.verify(payload["token"], 1000)
    with Flaky() as flaky:
        with django_capture_on_commit_callbacks(execute=True):
            post(client, payload)
        with django_capture_on_commit_callbacks(execute=True):
            assert post(client, payload).status_code == 200  # within the grace: not again
        assert flaky.seen == []
        past_grace()
        with django_capture_on_commit_callbacks(execute=True):
            assert post(client, payload).json()["status"] == "verified"
    assert len(flaky.seen) == 1
    assert SignalDelivery.objects.get().delivered_at is not None
    assert len(expect_khalti.calls) == 1  # Khalti was not asked again


def test_a_receiver_that_keeps_raising_is_retried_less_and_less_often_and_reported(
    client, expect_khalti, payload, django_capture_on_commit_callbacks
):
    expect_khalti.verify(payload["token"], 1000)
    with Flaky(times=10):
        with django_capture_on_commit_callbacks(execute=True):
            post(client, payload)
        past_grace()
        began = timezone.now()
        with pytest.raises(CommandError, match=r"1 signal\(s\) could not be delivered"):
            reconcile()
        delivery = SignalDelivery.objects.get()
        assert delivery.attempts == 2
        # The third attempt waits twice the grace after the second began.
        wait = (delivery.next_attempt_at - began).total_seconds()
        assert 2 * GRACE - 5 < wait < 2 * GRACE + 5
        past_grace()
        assert services.due_deliveries() == []
        past_grace()
        assert services.due_deliveries() == [delivery]


def test_a_worker_killed_in_a_receiver_leaves_the_signal_to_deliver_again(
    client, expect_khalti, payload, django_capture_on_commit_callbacks
):
    """gunicorn's worker timeout raises SystemExit in the receiver, which send_robust
    does not catch: the status is committed, the shop's receiver never ran."""
    expect_khalti.verify(payload["token"], 1000)
    with Flaky(exc=SystemExit(1)):
        with pytest.raises(SystemExit), django_capture_on_commit_callbacks(execute=True):
            post(client, payload)
        assert Payment.objects.get().status == Status.VERIFIED
        assert not paid()
        past_grace()
        reconcile()
    assert paid()
    assert SignalDelivery.objects.get().delivered_at is not None


@pytest.mark.django_db(transaction=True)
def test_a_commit_the_client_saw_fail_still_delivers(expect_khalti, payload):
    """The database commits the settlement but the client sees an error (an ambiguous
    commit: of the transaction, or of the one statement that settles on PostgreSQL):
    the signal is not delivered then; the outbox row committed with the status."""
    expect_khalti.verify(payload["token"], 1000)
    real_commit = connection.commit
    settled = []

    def watch(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if "INSERT INTO" in sql and "signaldelivery" in sql and not settled:
            settled.append(True)
            if connection.get_autocommit():  # one statement (PostgreSQL): its own commit
                settled.append(True)
                raise OperationalError("server closed the connection unexpectedly")
        return result

    def commit_then_fail():
        real_commit()
        if settled and len(settled) == 1:
            settled.append(True)
            raise OperationalError("server closed the connection unexpectedly")

    with (
        mock.patch.object(connections["default"], "commit", commit_then_fail),
        connection.execute_wrapper(watch),
    ):
        response = post(Client(), payload)
    assert response.status_code == 502, response.content  # as far as the page knows: pending
    assert Payment.objects.get().status == Status.VERIFIED  # but it was committed
    assert not paid()
    past_grace()
    assert post(Client(), payload).status_code == 200
    assert paid()


# --- 2. refund settlements report whether they won --------------------------------------


def verified_payment(token="tok-v", idx="IDX-1", reference="ORD-1"):
    return Payment.objects.create(
        token=token,
        product_identity=reference,
        amount=1000,
        order_claim=order_key(reference),
        status=Status.VERIFIED,
        idx=idx,
        verified_at=timezone.now(),
    )


def unknown_refund(payment):
    refund = Refund.objects.create(payment=payment, amount=1000, claim=payment.pk)
    Refund.objects.filter(pk=refund.pk).update(created_at=timezone.now() - timedelta(hours=1))
    return Refund.objects.get(pk=refund.pk)


@pytest.mark.django_db(transaction=True)
def test_a_person_resolving_not_refunded_while_khalti_says_refunded_loses_to_khalti(
    expect_khalti, admin_user, signals, caplog
):
    payment = verified_payment()
    refund = unknown_refund(payment)

    def person_meanwhile(request):
        services.resolve_refund(refund, succeeded=False, by=admin_user, note="dashboard")
        return 200, fixture("status_refunded")

    expect_khalti.expect(
        "status", "tok-v", {"token": "tok-v", "amount": "1000"}, callback=person_meanwhile
    )
    with caplog.at_level(logging.WARNING, "django_khalti"):
        settled = services.reconcile_refund(Refund.objects.get(pk=refund.pk))
    assert settled.status == Refund.Status.SUCCEEDED  # Khalti's answer stands...
    assert "then Khalti showed the money back" in settled.failure_reason
    assert settled.khalti_response == fixture("status_refunded")
    payment.refresh_from_db()
    # ...as the refund it was: the money went back, and the shop hears it.
    assert (payment.status, payment.refunded_amount) == (Status.REFUNDED, 1000)
    assert payment.refundable_amount == 0
    assert "after the refund was recorded failed" in caplog.text
    assert [(name, kw["amount"]) for name, _, kw in signals] == [("refunded", 1000)]


@pytest.mark.django_db(transaction=True)
def test_a_refund_khalti_confirms_after_a_person_recorded_it_failed_is_recorded_refunded(
    expect_khalti, admin_user, signals
):
    payment = verified_payment()

    def person_meanwhile(request):
        pending = Refund.objects.get(status=Refund.Status.PENDING)
        services.resolve_refund(pending, succeeded=False, by=admin_user)
        return 200, fixture("refund_success")

    expect_khalti.expect("refund", "IDX-1", {}, callback=person_meanwhile)
    refund = services.refund_payment(payment, by=admin_user)
    assert refund.status == Refund.Status.SUCCEEDED
    assert (refund.payment.status, refund.payment.refunded_amount) == (Status.REFUNDED, 1000)
    assert [(name, kw["amount"]) for name, _, kw in signals] == [("refunded", 1000)]


@pytest.mark.django_db(transaction=True)
def test_a_late_refund_that_would_give_back_more_than_was_paid_needs_review(
    expect_khalti, admin_user, signals
):
    """Recorded failed, then refunded again in full; Khalti then confirms the first
    one too: that cannot be what happened, so nothing is announced as refunded."""
    payment = verified_payment()

    def refunded_again_meanwhile(request):
        pending = Refund.objects.get(status=Refund.Status.PENDING)
        services.resolve_refund(pending, succeeded=False, by=admin_user)
        Refund.objects.create(payment=payment, amount=1000, status=Refund.Status.SUCCEEDED)
        Payment.objects.filter(pk=payment.pk).update(status=Status.REFUNDED, refunded_amount=1000)
        return 200, fixture("refund_success")

    expect_khalti.expect("refund", "IDX-1", {}, callback=refunded_again_meanwhile)
    with pytest.raises(KhaltiRefundConflict, match="recorded failed meanwhile"):
        services.refund_payment(payment, by=admin_user)
    payment.refresh_from_db()
    assert payment.status == Status.NEEDS_REVIEW
    assert "contradicts" in payment.failure_reason
    assert [name for name, _, _ in signals] == ["needs_review"]


def test_a_person_cannot_overrule_what_khalti_settled(expect_khalti, admin_user, signals):
    payment = verified_payment()
    refund = unknown_refund(payment)
    expect_khalti.status("tok-v", 1000, "status_refunded")
    services.reconcile_refund(refund)
    with pytest.raises(KhaltiRefundConflict, match="already recorded Succeeded"):
        services.resolve_refund(refund, succeeded=False, by=admin_user)
    refund.refresh_from_db()
    assert refund.status == Refund.Status.SUCCEEDED
    payment.refresh_from_db()
    assert payment.status == Status.REFUNDED


def test_khalti_already_refunded_is_reconciled_not_a_failure(
    expect_khalti, signals, django_capture_on_commit_callbacks
):
    payment = verified_payment()
    expect_khalti.refund("IDX-1", {}, status=400, json={"detail": "Transaction already refunded."})
    expect_khalti.status("tok-v", 1000, "status_refunded")
    with django_capture_on_commit_callbacks(execute=True):
        refund = services.refund_payment(payment)
    assert refund.status == Refund.Status.SUCCEEDED
    assert refund.payment.status == Status.REFUNDED
    assert [(n, kw["amount"]) for n, _, kw in signals] == [("refunded", 1000)]


def test_already_refunded_that_status_cannot_confirm_stays_pending(expect_khalti, signals):
    payment = verified_payment()
    expect_khalti.refund(
        "IDX-1", {}, status=400, json={"detail": "This payment is already refunded."}
    )
    expect_khalti.status("tok-v", 1000, status=503, json={"detail": "down"})
    with pytest.raises(KhaltiRefundUnknown, match="already refunded"):
        services.refund_payment(payment)
    assert payment.refunds.get().status == Refund.Status.PENDING
    assert not signals


# --- 3. receivers get the payment as it was ---------------------------------------------


def test_a_receiver_that_refunds_does_not_change_what_the_next_receiver_sees(
    client, expect_khalti, payload, django_capture_on_commit_callbacks
):
    seen = []

    def refund_at_once(sender, payment, **kwargs):
        services.refund_payment(payment)

    def fulfil(sender, payment, **kwargs):
        seen.append(payment.status)

    expect_khalti.verify(payload["token"], 1000)
    expect_khalti.refund("8xmeJnNXfoVjCvGcZiiGe7", {})
    payment_verified.connect(refund_at_once, sender=Payment, weak=False)
    payment_verified.connect(fulfil, sender=Payment, weak=False)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            assert post(client, payload).status_code == 200
    finally:
        payment_verified.disconnect(refund_at_once, sender=Payment)
        payment_verified.disconnect(fulfil, sender=Payment)
    assert seen == [Status.VERIFIED]
    assert Payment.objects.get().status == Status.REFUNDED


def test_a_signal_delivered_again_carries_the_payment_as_it_was_then(
    client, expect_khalti, payload, django_capture_on_commit_callbacks
):
    expect_khalti.verify(payload["token"], 1000)
    with Flaky() as flaky:
        with django_capture_on_commit_callbacks(execute=True):
            post(client, payload)
        Payment.objects.update(status=Status.REFUNDED, refunded_amount=1000)  # since then
        past_grace()
        reconcile()
    [payment] = flaky.seen
    assert (payment.status, payment.refunded_amount) == (Status.VERIFIED, 0)
    assert payment.verified_at is not None
    assert payment.mobile == "98XXXXXXX9"


# --- 4. one clock: the database's ---------------------------------------------------------


def host_clock_ahead(hours=1):
    ahead = timezone.now() + timedelta(hours=hours)
    return mock.patch("django.utils.timezone.now", return_value=ahead)


def test_a_host_whose_clock_runs_ahead_does_not_take_over_a_live_claim(expect_khalti):
    payment = Payment.objects.create(
        token="tok-live", product_identity="ORD-1", amount=1000, order_claim=order_key("ORD-1")
    )
    Payment.objects.filter(pk=payment.pk).update(created_at=timezone.now() - timedelta(hours=2))
    assert state.claim(Payment.objects.get(pk=payment.pk))  # a worker is at it right now
    with host_clock_ahead():
        out = reconcile("--payment", str(payment.pk))
    assert "0 verified" in out
    assert "0 still pending" in out
    assert Payment.objects.get(pk=payment.pk).status == Status.PENDING


def test_a_host_whose_clock_runs_ahead_leaves_a_refund_in_flight_alone(expect_khalti):
    payment = verified_payment()
    refund = Refund.objects.create(payment=payment, amount=1000, claim=payment.pk)
    with host_clock_ahead():
        assert services.reconcile_refund(refund).status == Refund.Status.PENDING
    # (the strict fake fails the test if Khalti was asked)


def test_reconcile_ages_are_read_on_the_database_clock(expect_khalti):
    fresh = Payment.objects.create(
        token="tok-new", product_identity="ORD-1", amount=1000, order_claim=order_key("ORD-1")
    )
    with host_clock_ahead():
        batch = services.reconcile_due(dry_run=True, failed_within=timedelta(0)).would_check
    assert fresh not in batch


# --- the admin: undelivered signals, and a re-send ----------------------------------------

DELIVERIES = reverse("admin:django_khalti_signaldelivery_changelist")


def test_the_admin_lists_undelivered_signals_and_re_sends_them(
    admin_client, expect_khalti, payload, django_capture_on_commit_callbacks
):
    expect_khalti.verify(payload["token"], 1000)
    with Flaky(times=1) as flaky:
        with django_capture_on_commit_callbacks(execute=True):
            post(Client(), payload)
        delivery = SignalDelivery.objects.get()
        page = admin_client.get(DELIVERIES, {"signals": "undelivered"})
        assert page.status_code == 200
        assert "the warehouse is down" in page.content.decode()
        payments = reverse("admin:django_khalti_payment_changelist")
        assert (
            admin_client.get(payments, {"signals": "undelivered"}).context["cl"].result_count == 1
        )

        # Within the grace period: a person may still re-send at once.
        response = admin_client.post(
            DELIVERIES,
            {"action": "resend", "_selected_action": [str(delivery.pk)], "index": "0"},
            follow=True,
        )
    assert [str(m) for m in response.context["messages"]] == ["Delivered 1 signal."]
    assert len(flaky.seen) == 1
    assert paid()
    delivery.refresh_from_db()
    assert delivery.delivered_at is not None
    assert delivery.attempts == 2
    assert admin_client.get(DELIVERIES, {"signals": "undelivered"}).context["cl"].result_count == 0


def test_re_sending_needs_the_change_permission(client, django_user_model):
    from django.contrib.auth.models import Permission

    viewer = django_user_model.objects.create_user("viewer", password="x", is_staff=True)
    for codename in ("view_signaldelivery", "view_payment"):
        viewer.user_permissions.add(Permission.objects.get(codename=codename))
    client.force_login(viewer)
    page = client.get(DELIVERIES)
    assert page.status_code == 200
    assert "resend" not in page.content.decode()


# --- the second hostile review's attacks (each failed before its fix) -------------------------


class Watch:
    """A payment_verified receiver, first in line, that records overlapping runs and
    runs ``during`` (once) while it is running."""

    def __init__(self, during=None):
        self.during, self.running, self.calls, self.overlaps = during, 0, 0, 0
        self.__qualname__ = "Watch"

    def __call__(self, sender, payment, **kwargs):
        self.calls += 1
        if self.running:
            self.overlaps += 1
        self.running += 1
        try:
            if self.during is not None:
                during, self.during = self.during, None
                during()
        finally:
            self.running -= 1

    def __enter__(self):
        payment_verified.disconnect(receivers.mark_order_paid, sender=Payment)
        payment_verified.connect(self, sender=Payment, weak=False)
        payment_verified.connect(receivers.mark_order_paid, sender=Payment)
        return self

    def __exit__(self, *exc):
        payment_verified.disconnect(self, sender=Payment)


@pytest.mark.django_db(transaction=True)
def test_review_person_says_refunded_khalti_says_not_leaves_needs_review_unrefundable(
    expect_khalti, admin_user, signals
):
    payment = verified_payment()
    refund = unknown_refund(payment)

    def person_meanwhile(request):
        # The person resolves "succeeded" while reconcile holds Khalti's "Complete".
        services.resolve_refund(refund, succeeded=True, by=admin_user, note="looked refunded")
        return 200, fixture("status_complete")

    expect_khalti.expect(
        "status", "tok-v", {"token": "tok-v", "amount": "1000"}, callback=person_meanwhile
    )
    services.reconcile_refund(Refund.objects.get(pk=refund.pk))
    payment.refresh_from_db()
    assert payment.status == Status.NEEDS_REVIEW  # Khalti says the money was NOT refunded
    assert payment.refunded_amount == 0  # Khalti's answer stands: nothing went back
    assert Refund.objects.get(pk=refund.pk).status == Refund.Status.FAILED
    # ...so a person can refund it now, whole (Khalti still shows it not refunded).
    expect_khalti.status("tok-v", 1000, "status_complete")
    expect_khalti.refund("IDX-1", {})
    refunded = services.refund_payment(payment, by=admin_user)
    assert refunded.payment.status == Status.REFUNDED


def test_review_refused_partial_refund_recorded_succeeded_from_unrelated_partial_state(
    expect_khalti, signals, django_capture_on_commit_callbacks
):
    """Someone refunded Rs 1 in Khalti's dashboard (state: Partially refunded). The app's
    refund of Rs 4 is refused outright (e.g. merchant balance too low); the status is
    asked and its "Partially refunded" is taken as proof that *this* refund went through."""
    payment = verified_payment()
    expect_khalti.refund(
        "IDX-1", {"amount": 400}, status=400, json={"detail": "Insufficient merchant balance."}
    )
    expect_khalti.status("tok-v", 1000, "status_partially_refunded")
    with django_capture_on_commit_callbacks(execute=True):
        with pytest.raises(KhaltiRefundFailed):
            services.refund_payment(payment, amount=400)
    assert payment.refunds.get().status == Refund.Status.FAILED
    assert not signals


def test_review_admin_resend_runs_receivers_concurrently_with_the_first_delivery(
    admin_client, expect_khalti, payload, django_capture_on_commit_callbacks
):
    def admin_resends():
        delivery = SignalDelivery.objects.get()
        # What the admin shows for an in-flight first delivery: indistinguishable
        # from one whose worker died.
        assert (delivery.attempts, delivery.last_error, delivery.delivered_at) == (1, "", None)
        admin_client.post(
            DELIVERIES, {"action": "resend", "_selected_action": [str(delivery.pk)], "index": "0"}
        )

    expect_khalti.verify(payload["token"], 1000)
    with Watch(during=admin_resends) as watch:
        with django_capture_on_commit_callbacks(execute=True):
            assert post(Client(), payload).status_code == 200
    assert watch.overlaps == 0, "the receivers ran twice at once, inside the grace period"


def test_review_admin_resend_runs_concurrently_with_reconciles_redelivery(
    admin_client, expect_khalti, payload, django_capture_on_commit_callbacks
):
    """The first attempt raised (last_error set); reconcile redelivers after the grace;
    meanwhile a person, seeing "not delivered, last error ...", re-sends."""
    state = {"raise": True}

    def receiver(sender, payment, **kwargs):
        if state.pop("raise", False):
            raise RuntimeError("warehouse down")

    def admin_resends():
        delivery = SignalDelivery.objects.get()
        admin_client.post(
            DELIVERIES, {"action": "resend", "_selected_action": [str(delivery.pk)], "index": "0"}
        )

    expect_khalti.verify(payload["token"], 1000)
    payment_verified.connect(receiver, sender=Payment, weak=False)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            post(Client(), payload)
        assert SignalDelivery.objects.get().last_error
        past_grace()
        with Watch(during=admin_resends) as watch:
            reconcile()
    finally:
        payment_verified.disconnect(receiver, sender=Payment)
    assert watch.overlaps == 0, "reconcile's and the admin's deliveries ran at once"


def test_review_a_delivery_taken_by_another_deliverer_is_reported_as_a_raising_receiver(
    expect_khalti, payload, django_capture_on_commit_callbacks
):
    expect_khalti.verify(payload["token"], 1000)
    with Watch(during=lambda: 1 / 0):  # first attempt raises
        with django_capture_on_commit_callbacks(execute=True):
            post(Client(), payload)
    past_grace()
    # Reconciler B reads its due list, then (while it settles payments) reconciler A
    # delivers the signal successfully.
    real = services.due_deliveries

    def read_then_other_delivers(*args, **kwargs):
        due = real(*args, **kwargs)
        for delivery in real(*args, **kwargs):
            assert services.deliver(delivery)  # reconciler A: delivered
        return due

    with mock.patch.object(reconciliation, "due_deliveries", read_then_other_delivers):
        out = reconcile()  # no CommandError: nothing raised
    assert "signals delivered again 0, still undelivered 0" in out


def test_review_host_clock_ahead_fails_a_live_epayment(expect_khalti, order, signals):
    pidx = "bZQLD9wRVWo4CdESSfuSsB"
    payment = Payment.objects.create(
        flow=Payment.Flow.EPAYMENT,
        product_identity="ORD-1",
        amount=1000,
        order_claim=order_key("ORD-1"),
        pidx=pidx,
        payment_url="https://pay.khalti.test/?pidx=" + pidx,
        expires_at=timezone.now() + timedelta(minutes=50),  # Khalti's link: live
    )
    Payment.objects.filter(pk=payment.pk).update(created_at=timezone.now() - timedelta(minutes=5))
    expect_khalti.lookup(pidx, "epayment_lookup_initiated")
    ahead = timezone.now() + timedelta(hours=2)
    with mock.patch("django.utils.timezone.now", return_value=ahead):
        reconcile("--payment", str(payment.pk))
    payment.refresh_from_db()
    assert payment.status == Status.PENDING, (
        f"a live link was failed on the host's clock ({payment.failure_reason}); "
        "the order is freed while the buyer can still pay"
    )


def test_review_failed_recheck_schedule_mixes_host_stamps_with_the_db_clock(expect_khalti, order):
    """A payment failed by a host running 2 hours ahead is not re-checked an hour (or
    even 65 minutes) later: updated_at is the host's stamp, compared with DbNow()."""
    payment = Payment.objects.create(
        token="tok-f", product_identity="ORD-1", amount=1000, order_claim=order_key("ORD-1")
    )
    state.claim(payment)
    with mock.patch("django.utils.timezone.now", return_value=timezone.now() + timedelta(hours=2)):
        state._fail(payment, "Khalti says failed")
    # 65 minutes pass on every clock.
    Payment.objects.filter(pk=payment.pk).update(
        updated_at=F("updated_at") - timedelta(minutes=65),
        created_at=F("created_at") - timedelta(minutes=65),
    )
    batch = services.reconcile_due(dry_run=True).would_check
    assert [p.pk for p in batch] == [payment.pk]


def test_review_holds_two_deliverers_with_the_same_stale_copy_run_once(
    expect_khalti, payload, django_capture_on_commit_callbacks
):
    expect_khalti.verify(payload["token"], 1000)
    with Watch(during=lambda: 1 / 0) as watch:
        with django_capture_on_commit_callbacks(execute=True):
            post(Client(), payload)
        past_grace()
        a, b = SignalDelivery.objects.get(), SignalDelivery.objects.get()
        assert services.deliver(a) is True
        assert services.deliver(b) is None  # not taken: a's attempt moved it on
        assert services.deliver(b, now=True) is None  # the admin with a stale copy
    assert watch.calls == 2
    assert SignalDelivery.objects.get().delivered_at is not None


def test_review_holds_resubmission_inside_grace_while_first_delivery_runs(
    expect_khalti, payload, django_capture_on_commit_callbacks
):
    expect_khalti.verify(payload["token"], 1000)

    def buyer_resubmits():
        assert post(Client(), payload).status_code == 200

    with Watch(during=buyer_resubmits) as watch:
        with django_capture_on_commit_callbacks(execute=True):
            post(Client(), payload)
    assert watch.overlaps == 0
    assert watch.calls == 1


def test_review_holds_systemexit_during_redelivery_leaves_it_for_later(
    expect_khalti, payload, django_capture_on_commit_callbacks
):
    expect_khalti.verify(payload["token"], 1000)
    with Watch(during=lambda: 1 / 0):
        with django_capture_on_commit_callbacks(execute=True):
            post(Client(), payload)
    past_grace()

    def die():
        raise SystemExit(1)

    with Watch(during=die):
        with pytest.raises(SystemExit):
            reconcile()
    d = SignalDelivery.objects.get()
    assert (d.attempts, d.delivered_at) == (2, None)
    assert services.due_deliveries() == []  # not again at once
    past_grace(2)
    reconcile()
    assert Order.objects.get(reference="ORD-1").paid


def test_review_holds_database_error_on_the_outbox_insert_keeps_the_payment_pending(
    expect_khalti, payload, signals
):
    expect_khalti.verify(payload["token"], 1000)

    def refuse_the_outbox(execute, sql, params, many, context):
        # The database refuses any statement writing to the outbox (on PostgreSQL
        # the one that also settles the payment).
        if "INSERT INTO" in sql and SignalDelivery._meta.db_table in sql:
            raise OperationalError("disk full")
        return execute(sql, params, many, context)

    with connection.execute_wrapper(refuse_the_outbox):
        assert post(Client(), payload).status_code == 502  # Khalti answered; we did not record it
    assert Payment.objects.get().status == Status.PENDING
    assert not signals


@pytest.mark.django_db(transaction=True)
def test_a_settlement_whose_outbox_row_the_database_refuses_is_not_recorded(
    expect_khalti, payload, signals, outbox_refused
):
    """The status change and its signal commit together or not at all, on every
    backend (on PostgreSQL they are one statement): no verified payment without
    its signal in the outbox, whatever Khalti said."""
    expect_khalti.verify(payload["token"], 1000)
    response = post(Client(), payload)
    assert response.status_code == 502, response.content  # Khalti answered; we did not record it
    payment = Payment.objects.get()
    assert (payment.status, payment.verified_at, payment.idx) == (Status.PENDING, None, None)
    assert not SignalDelivery.objects.exists()
    assert not signals


def test_review_holds_stale_payment_copy_cannot_claim(expect_khalti):
    payment = Payment.objects.create(
        token="tok-s", product_identity="ORD-1", amount=1000, order_claim=order_key("ORD-1")
    )
    stale = Payment.objects.get(pk=payment.pk)
    assert state.claim(payment)
    state._release(payment)
    assert not state.claim(stale)  # same status, no claim, but an older generation
    stale.refresh_from_db()
    assert state.claim(stale)
    assert not state._fail(payment, "old holder")  # the older holder cannot fail it
    assert Payment.objects.get(pk=payment.pk).status == Status.PENDING


def test_review_view_signaldelivery_alone_exposes_the_payments_token_and_payer(
    client, expect_khalti, payload, django_user_model, django_capture_on_commit_callbacks
):
    from django.contrib.auth.models import Permission

    expect_khalti.verify(payload["token"], 1000)
    with django_capture_on_commit_callbacks(execute=True):
        post(Client(), payload)
    delivery = SignalDelivery.objects.get()
    user = django_user_model.objects.create_user("ops", password="x", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_signaldelivery"))
    client.force_login(user)
    assert client.get(reverse("admin:django_khalti_payment_changelist")).status_code == 403
    page = client.get(
        reverse("admin:django_khalti_signaldelivery_change", args=[delivery.pk])
    ).content.decode()
    assert payload["token"] not in page, "the widget token is shown without view_payment"
    assert "98XXXXXXX9" not in page, "the payer's mobile is shown without view_payment"


# --- a re-send against a running delivery ----------------------------------------------


def _verified_with_delivery(expect_khalti, payload, capture, client):
    from .test_delivery import post

    expect_khalti.verify(payload["token"], 1000)
    with capture(execute=True):
        post(client, payload)
    return SignalDelivery.objects.get()


def test_resend_of_a_delivered_signal_is_refused(
    expect_khalti, payload, client, django_capture_on_commit_callbacks
):
    delivery = _verified_with_delivery(
        expect_khalti, payload, django_capture_on_commit_callbacks, client
    )
    assert delivery.delivered_at is not None
    assert services.deliver(delivery, now=True) is None


def test_resend_after_a_raise_runs_at_once_then_blocks_while_running(
    expect_khalti, payload, client, django_capture_on_commit_callbacks
):
    from .test_delivery import Flaky, Watch

    with Flaky():
        delivery = _verified_with_delivery(
            expect_khalti, payload, django_capture_on_commit_callbacks, client
        )
    delivery.refresh_from_db()
    assert (delivery.attempts, delivery.attempts_finished) == (1, 1)
    results = []

    def second():
        results.append(services.deliver(SignalDelivery.objects.get(), now=True))

    with Watch(during=second) as watch:
        assert services.deliver(delivery, now=True) is True
    assert results == [None]
    assert watch.overlaps == 0


def test_killed_attempt_resend_waits_then_runs(
    expect_khalti, payload, client, django_capture_on_commit_callbacks
):
    expect_khalti.verify(payload["token"], 1000)
    from .test_delivery import post

    with django_capture_on_commit_callbacks(execute=False):
        post(client, payload)  # the worker dies before its first delivery
    delivery = SignalDelivery.objects.get()
    assert services.deliver(delivery, now=True) is None
    past_grace()
    assert services.deliver(SignalDelivery.objects.get(), now=True) is True


def test_a_receiver_that_changes_khalti_s_record_on_its_payment_changes_no_other_receivers(
    client, expect_khalti, payload, django_capture_on_commit_callbacks
):
    """Each receiver holds its own payment, down to the record of Khalti's answer: one
    that annotates ``payment.khalti_response`` in place (a nested dict) leaves the
    next receiver's, and a later delivery's, as Khalti gave it."""
    seen = []

    def annotate(sender, payment, **kwargs):
        payment.khalti_response["shop_note"] = "packed"
        payment.khalti_response["user"].clear()

    def fulfil(sender, payment, **kwargs):
        seen.append(payment.khalti_response)

    expect_khalti.verify(payload["token"], 1000)
    with Flaky() as flaky:
        payment_verified.connect(annotate, sender=Payment, weak=False)
        payment_verified.connect(fulfil, sender=Payment, weak=False)
        try:
            with django_capture_on_commit_callbacks(execute=True):
                post(client, payload)  # Flaky raises: the first delivery is not marked
            past_grace()
            reconcile()  # delivered again, from the outbox row
        finally:
            payment_verified.disconnect(annotate, sender=Payment)
            payment_verified.disconnect(fulfil, sender=Payment)
        [again] = flaky.seen
    recorded = Payment.objects.get().khalti_response
    assert "shop_note" not in recorded
    assert recorded["user"]
    assert len(seen) == 2
    for response in [*seen, again.khalti_response]:
        assert response == recorded
