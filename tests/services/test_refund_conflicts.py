"""The third hostile pass on issue 13 (refund conflicts and deliveries): each test failed
before its fix. A refusal of one call never overturns a refund recorded succeeded; an
older Khalti answer arriving last never undoes a newer proof of a refund; a re-send never
overlaps a running delivery; ePayment link ages on the database's clock; the deliveries
admin only for who may see payments."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from django_khalti import services
from django_khalti.exceptions import (
    KhaltiRefundConflict,
    KhaltiRefundFailed,
)
from django_khalti.models import Payment, Refund, SignalDelivery
from django_khalti.services import epayment, lookup

from ..conftest import fixture
from .test_delivery import past_grace, short_grace, unknown_refund, verified_payment  # noqa: F401

pytestmark = pytest.mark.django_db
Status = Payment.Status


# --- a refusal, or an older answer, against a refund recorded succeeded -----------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_refusal_never_overturns_a_refund_a_person_recorded_succeeded(
    expect_khalti, admin_user, signals
):
    """The person saw the money back in the dashboard (it was refunded there) and
    recorded it; the app's own call, still in flight, is then refused. Khalti's
    status says 'Refunded' -- yet the refusal 'contradicts' and wins."""
    payment = verified_payment()

    def person_meanwhile(request):
        pending = Refund.objects.get(status=Refund.Status.PENDING)
        services.resolve_refund(pending, succeeded=True, by=admin_user, note="dashboard")
        return 400, {"detail": "Refund period expired."}

    expect_khalti.expect("refund", "IDX-1", {}, callback=person_meanwhile)
    expect_khalti.status("tok-v", 1000, "status_refunded")
    with pytest.raises((KhaltiRefundFailed, KhaltiRefundConflict)):
        services.refund_payment(payment, by=admin_user)
    payment.refresh_from_db()
    refund = payment.refunds.get()
    # Khalti itself says the whole payment is refunded:
    assert refund.status == Refund.Status.SUCCEEDED, refund.failure_reason
    assert payment.refunded_amount == 1000, (payment.status, payment.refunded_amount)


@pytest.mark.django_db(transaction=True)
def test_a_refusal_never_overturns_a_partial_refund_a_person_recorded(
    expect_khalti, admin_user, signals
):
    """Same, for a partial refund of 300: the app then believes nothing was refunded,
    needs_review demands a whole refund of 1000, which Khalti refuses (700 left):
    the buyer's remaining 700 can never be refunded through the app."""
    payment = verified_payment()

    def person_meanwhile(request):
        pending = Refund.objects.get(status=Refund.Status.PENDING)
        services.resolve_refund(pending, succeeded=True, by=admin_user, note="dashboard")
        return 400, {"detail": "Refund period expired."}

    expect_khalti.expect("refund", "IDX-1", {"amount": 300}, callback=person_meanwhile)
    expect_khalti.status("tok-v", 1000, "status_partially_refunded")
    with pytest.raises((KhaltiRefundFailed, KhaltiRefundConflict)):
        services.refund_payment(payment, amount=300, by=admin_user)
    payment.refresh_from_db()
    assert payment.refunded_amount == 300, (payment.status, payment.refunded_amount)


# --- D. deliveries ---------------------------------------------------------------------


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


# --- E. _link_dead / _link_still_good on SQLite ---------------------------------------


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


@pytest.mark.django_db(transaction=True)
def test_an_older_answer_arriving_last_never_undoes_khaltis_proof_of_a_refund(
    expect_khalti, signals
):
    """Two reconcilers (two cron hosts). R2 asks first and reads 'Complete' (the refund
    is not through yet); R1 asks a moment later, reads 'Refunded' and records it.
    R2's older answer lands last: the refund is flipped to failed, refunded_amount
    back to 0, the payment refundable whole again."""
    payment = verified_payment()
    refund = unknown_refund(payment)
    stale = Refund.objects.get(pk=refund.pk)

    def r1_meanwhile(request):
        services.reconcile_refund(Refund.objects.get(pk=refund.pk))  # R1
        return 200, fixture("status_complete")  # R2's answer, read earlier

    expect_khalti.expect(
        "status", "tok-v", {"token": "tok-v", "amount": "1000"}, callback=r1_meanwhile
    )
    expect_khalti.status("tok-v", 1000, "status_refunded")  # R1's
    services.reconcile_refund(stale)  # R2
    payment.refresh_from_db()
    assert Refund.objects.get(pk=refund.pk).status == Refund.Status.SUCCEEDED
    assert payment.refunded_amount == 1000


def test_deliveries_admin_without_payment_permission(
    client, django_user_model, expect_khalti, payload, django_capture_on_commit_callbacks
):
    from django.contrib.auth.models import Permission
    from django.urls import reverse

    from .test_delivery import Flaky

    with Flaky():
        delivery = _verified_with_delivery(
            expect_khalti, payload, django_capture_on_commit_callbacks, client
        )
    user = django_user_model.objects.create_user("ops", password="pw", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(codename__in=["view_signaldelivery", "change_signaldelivery"])
    )
    client.force_login(user)
    lst = reverse("admin:django_khalti_signaldelivery_changelist")
    one = reverse("admin:django_khalti_signaldelivery_change", args=[delivery.pk])
    assert client.get(lst).status_code == 403
    assert client.get(one).status_code == 403
    r = client.post(lst, {"action": "resend", "_selected_action": [str(delivery.pk)], "index": "0"})
    assert r.status_code == 403
    delivery.refresh_from_db()
    assert delivery.attempts == 1
    assert b"signaldelivery" not in client.get(reverse("admin:index")).content
