"""services.reconcile_due, the one reconciliation path of khalti_reconcile and the
admin's re-check: what it reads, in what batches, when it gives up, what it counts."""

import io
from datetime import timedelta

import pytest
import requests
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from django_khalti import services
from django_khalti.models import Payment, Refund, order_key
from shop.models import Order

pytestmark = pytest.mark.django_db


def pending(token, age=timedelta(minutes=10)):
    reference = f"ORD-{token}"
    Order.objects.get_or_create(reference=reference, defaults={"total": 1000})
    payment = Payment.objects.create(
        token=token,
        product_identity=reference,
        amount=1000,
        order_claim=order_key(reference),
        claimed_idx=f"idx-{token}",
    )
    Payment.objects.filter(pk=payment.pk).update(created_at=timezone.now() - age)
    return Payment.objects.get(pk=payment.pk)


def failed(token, age=timedelta(hours=3)):
    """A failed payment last looked at two hours ago: due for a re-check."""
    payment = pending(token, age=age)
    Payment.objects.filter(pk=payment.pk).update(
        status=Payment.Status.FAILED,
        order_claim=None,
        token_claim=None,
        updated_at=timezone.now() - timedelta(hours=2),
    )
    return Payment.objects.get(pk=payment.pk)


DOWN = requests.exceptions.ConnectTimeout()


def test_three_unanswered_in_a_row_give_up_even_when_the_third_is_the_last(expect_khalti):
    for i in range(3):
        failed(f"f{i}", age=timedelta(hours=3 + i))
    expect_khalti.expect("status", body=DOWN, times=3)
    report = services.reconcile_due()
    assert report.unanswered == {"failed": 3}
    assert report.given_up


def test_the_command_says_it_gave_up_when_the_third_unanswered_was_the_last(expect_khalti):
    for i in range(3):
        failed(f"f{i}", age=timedelta(hours=3 + i))
    expect_khalti.expect("status", body=DOWN, times=3)
    with pytest.raises(CommandError, match="did not answer 3 times in a row"):
        call_command("khalti_reconcile", stdout=io.StringIO())


def test_the_give_up_count_starts_again_after_an_answer(expect_khalti):
    for i in range(5):
        pending(f"r{i}", age=timedelta(minutes=10 - i))
    for i, answer in enumerate([DOWN, DOWN, None, DOWN, DOWN]):
        if answer is None:
            expect_khalti.status(f"r{i}", 1000, "status_initiated")
        else:
            expect_khalti.status(f"r{i}", 1000, body=answer)
    report = services.reconcile_due(batch_size=2)
    assert report.unanswered == {"pending": 4}
    assert report.pending == {"pending": 1}
    assert not report.given_up


@pytest.mark.parametrize(("limit", "size"), [(2, 5), (4, 2), (5, 2), (6, 3), (None, 2), (6, 6)])
def test_limit_and_batch_size_check_each_payment_once(expect_khalti, limit, size):
    for i in range(6):
        pending(f"l{i}", age=timedelta(minutes=10 - i))
    checked = 6 if limit is None else limit
    for i in range(checked):  # oldest first
        expect_khalti.status(f"l{i}", 1000, "status_initiated")
    report = services.reconcile_due(limit=limit, batch_size=size)
    assert report.pending == {"pending": checked}
    assert report.limited is (checked < 6)


def test_limited_when_pending_payments_were_left_though_the_failed_ones_fit(expect_khalti):
    for i in range(3):
        pending(f"p{i}", age=timedelta(minutes=10 - i))
    for i in range(2):
        failed(f"f{i}", age=timedelta(hours=3 + i))
    report = services.reconcile_due(limit=2, dry_run=True)
    assert sorted(p.token for p in report.would_check) == ["f0", "f1", "p0", "p1"]
    assert report.limited


def test_a_payment_the_run_failed_is_not_rechecked_by_it(expect_khalti):
    payment = pending("once")
    expect_khalti.status("once", 1000, "status_error")
    report = services.reconcile_due(Payment.objects.filter(pk=payment.pk))
    assert report.pending == {"failed": 1}
    assert not report.failed


def test_a_payment_another_worker_is_settling_is_passed_over(expect_khalti):
    payment = pending("busy")
    Payment.objects.filter(pk=payment.pk).update(claimed_at=timezone.now())
    report = services.reconcile_due(Payment.objects.filter(pk=payment.pk))
    assert report.busy == 1
    assert not report.pending
    assert not expect_khalti.calls


def test_a_misconfiguration_stops_it_before_khalti_is_asked(expect_khalti, settings):
    pending("mc")
    settings.KHALTI = {**settings.KHALTI, "SECRET_KEY": ""}
    with pytest.raises(CommandError, match="misconfigured"):
        call_command("khalti_reconcile", stdout=io.StringIO())
    assert not expect_khalti.calls
    assert Payment.objects.get().claimed_at is None


def test_a_refund_still_in_flight_is_left_alone_whatever_older_than(expect_khalti):
    payment = pending("yr")
    Payment.objects.filter(pk=payment.pk).update(
        status=Payment.Status.VERIFIED, idx="IDX-YR", verified_at=timezone.now()
    )
    Refund.objects.create(payment=payment, amount=1000, claim=payment.pk)
    report = services.reconcile_due(older_than=timedelta(0))
    assert not report.refunds
    assert not report.unreachable
    assert not expect_khalti.calls


def test_batches_read_every_payment_made_in_the_same_millisecond(expect_khalti):
    # Created by the database's clock, as the app creates them: on SQLite several share
    # a millisecond, and a batch's cursor must not skip the rest of the last one's.
    for i in range(7):
        Payment.objects.create(
            token=f"ms{i}", product_identity=f"ORD-ms{i}", amount=1000, order_claim=f"ms{i}"
        )
    expect_khalti.expect("status", json={"status": True, "state": "Initiated"}, times=7)
    report = services.reconcile_due(older_than=timedelta(0), batch_size=2)
    assert report.pending == {"pending": 7}
    assert {c.params["token"] for c in expect_khalti.calls} == {f"ms{i}" for i in range(7)}
