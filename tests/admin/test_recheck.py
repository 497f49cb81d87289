"""Re-check with Khalti: pending payments (and refunds of unknown outcome) settled from
Khalti's answer, at most RECHECK_LIMIT a click, stopping at the first unanswered."""

from datetime import timedelta

import pytest
from django.utils import timezone

from django_khalti.admin import RECHECK_LIMIT
from django_khalti.conf import khalti_settings
from django_khalti.models import Payment, Refund, order_key
from shop.models import Order

from ..conftest import fixture, transaction_record
from .conftest import (
    CHANGELIST,
    action_choices,
    confirm_refund,
    fresh,
    messages_of,
    mock_refund,
    mock_status,
    pending_payment,
    run_action,
    unknown_refund,
    verified_payment,
)

pytestmark = pytest.mark.django_db


def test_recheck_is_offered_to_support_staff(support_client, payments):
    assert action_choices(support_client.get(CHANGELIST))["recheck"] == "Re-check with Khalti"


def test_recheck_settles_each_pending_payment_from_khaltis_answer(
    support_client, expect_khalti, sent, django_capture_on_commit_callbacks
):
    complete, error, initiated = pending_payment(1), pending_payment(2, 2000), pending_payment(3)
    verified = verified_payment()
    expect_khalti.complete(complete.token, complete.amount)
    expect_khalti.status(error.token, error.amount, "status_error")
    expect_khalti.status(initiated.token, initiated.amount, "status_initiated")

    with django_capture_on_commit_callbacks(execute=True):
        response = run_action(support_client, "recheck", [complete, error, initiated, verified])

    assert response.status_code == 200
    assert messages_of(response) == [
        ("success", "Re-checked 3 with Khalti: 1 failed, 1 pending, 1 verified.")
    ]
    assert fresh(complete).status == Payment.Status.VERIFIED
    assert fresh(complete).verified_at is not None
    assert fresh(error).status == Payment.Status.FAILED
    assert "Transaction not found" in fresh(error).failure_reason
    assert fresh(initiated).status == Payment.Status.PENDING
    assert fresh(initiated).claimed_at is None  # free for the next re-check
    assert fresh(verified).status == Payment.Status.VERIFIED
    # The verified payment was not sent to Khalti: one status call per pending payment.
    assert sorted(c.params["token"] for c in expect_khalti.calls if c.endpoint == "status") == [
        complete.token,
        error.token,
        initiated.token,
    ]
    assert sorted((name, kw["payment"].pk) for name, kw in sent) == [
        ("failed", error.pk),
        ("verified", complete.pk),
    ]


def test_recheck_of_nothing_pending_says_so_and_asks_khalti_nothing(support_client, expect_khalti):
    verified = verified_payment()
    response = run_action(support_client, "recheck", [verified])
    assert messages_of(response) == [("warning", "None of the selected payments awaits Khalti.")]
    assert len(expect_khalti.calls) == 0


def test_recheck_when_khalti_is_down_reports_it_and_leaves_the_payment_pending(
    support_client, expect_khalti, sent, django_capture_on_commit_callbacks
):
    payment = pending_payment(1)
    mock_status(expect_khalti, payment, {"detail": "Internal server error"}, status=500)
    with django_capture_on_commit_callbacks(execute=True):
        response = run_action(support_client, "recheck", [payment])
    assert messages_of(response) == [
        ("error", "Khalti could not be reached; the payments not re-checked stay pending.")
    ]
    row = fresh(payment)
    assert row.status == Payment.Status.PENDING
    assert row.claimed_at is None
    assert sent == []


def test_recheck_settles_a_refund_whose_outcome_was_unknown(
    support_client, expect_khalti, sent, django_capture_on_commit_callbacks
):
    payment = verified_payment(amount=1000)
    refund = Refund.objects.create(
        payment=payment,
        amount=1000,
        claim=payment.pk,
        failure_reason="Khalti did not answer in time.",
    )
    stale = timezone.now() - timedelta(seconds=khalti_settings.stale_after + 60)
    Refund.objects.filter(pk=refund.pk).update(created_at=stale)
    mock_status(
        expect_khalti,
        payment,
        {"status": True, "state": "Refunded", "detail": "Transaction is refunded"},
    )

    with django_capture_on_commit_callbacks(execute=True):
        response = run_action(support_client, "recheck", [payment])

    assert messages_of(response) == [("success", "Re-checked 1 with Khalti: 1 refund succeeded.")]
    refund.refresh_from_db()
    assert refund.status == Refund.Status.SUCCEEDED
    assert refund.settled_at is not None
    row = fresh(payment)
    assert row.status == Payment.Status.REFUNDED
    assert row.refunded_amount == 1000
    assert [(name, kw["payment"].pk, kw["amount"]) for name, kw in sent] == [
        ("refunded", payment.pk, 1000)
    ]


def test_recheck_leaves_a_refund_that_may_still_be_in_flight(support_client, expect_khalti):
    payment = verified_payment(amount=1000)
    refund = Refund.objects.create(payment=payment, amount=1000, claim=payment.pk)
    run_action(support_client, "recheck", [payment])
    assert len(expect_khalti.calls) == 0
    refund.refresh_from_db()
    assert refund.status == Refund.Status.PENDING
    assert fresh(payment).status == Payment.Status.VERIFIED


@pytest.mark.parametrize("selected", [RECHECK_LIMIT, RECHECK_LIMIT + 5])
def test_one_recheck_asks_khalti_about_at_most_20_pending_payments(
    support_client, expect_khalti, selected
):
    # Each call may take up to TIMEOUT: a click must not hold the request for minutes.
    assert RECHECK_LIMIT == 20
    chosen = [pending_payment(n) for n in range(selected)]
    expect_khalti.expect("status", json=fixture("status_initiated"), times=20)  # 20 calls, no more
    response = run_action(support_client, "recheck", chosen)

    assert len(expect_khalti.calls) == 20
    asked = {c.params["token"] for c in expect_khalti.calls}
    assert len(asked) == 20  # each one once
    expected = [("success", "Re-checked 20 with Khalti: 20 pending.")]
    if selected > RECHECK_LIMIT:
        expected.insert(
            0,
            (
                "warning",
                "Only the first 20 pending payments were re-checked; "
                "run khalti_reconcile for more.",
            ),
        )
    assert messages_of(response) == expected
    # The ones left over were not even claimed: the next click or khalti_reconcile takes them.
    untouched = {p.token for p in Payment.objects.filter(attempts=0)}
    assert untouched == {p.token for p in chosen} - asked
    assert len(untouched) == selected - 20
    assert all(
        (p.status, p.claimed_at) == (Payment.Status.PENDING, None)
        for p in Payment.objects.filter(pk__in=[p.pk for p in chosen])
    )


def test_recheck_stops_at_the_first_payment_khalti_does_not_answer(
    support_client, expect_khalti, sent, django_capture_on_commit_callbacks
):
    chosen = [pending_payment(n) for n in range(3)]
    # A refund of unknown outcome in the selection is not asked about either.
    refunded = verified_payment(amount=1000)
    refund = unknown_refund(refunded, stale=True)
    expect_khalti.expect(
        "status", status=500, json={"detail": "Internal server error"}
    )  # whichever first
    with django_capture_on_commit_callbacks(execute=True):
        response = run_action(support_client, "recheck", [*chosen, refunded])

    # The others would only wait for Khalti's timeout too.
    assert len(expect_khalti.calls) == 1
    assert messages_of(response) == [
        ("error", "Khalti could not be reached; the payments not re-checked stay pending.")
    ]
    for payment in chosen:
        row = fresh(payment)
        assert (row.status, row.claimed_at) == (Payment.Status.PENDING, None)
    refund.refresh_from_db()
    assert refund.status == Refund.Status.PENDING
    assert fresh(refunded).status == Payment.Status.VERIFIED
    assert sent == []


def test_recheck_reports_what_it_settled_before_khalti_stopped_answering(
    support_client, expect_khalti, sent, django_capture_on_commit_callbacks
):
    chosen = [pending_payment(n) for n in range(3)]
    # Whichever payment is asked first is complete; Khalti fails on the next one.
    expect_khalti.expect("status", status=200, json=fixture("status_complete"))
    expect_khalti.expect(
        "transaction",
        # The token is no transaction's idx; the idx its page reported is Khalti's record.
        callback=lambda request: (
            (404, {"detail": "Not found."})
            if request.params["idx"].startswith("tok-")
            else (200, transaction_record(idx=request.params["idx"]))
        ),
        times=2,
    )
    expect_khalti.expect("status", status=500, json={"detail": "Internal server error"})
    with django_capture_on_commit_callbacks(execute=True):
        response = run_action(support_client, "recheck", chosen)

    assert len(expect_khalti.calls) == 4
    assert messages_of(response) == [
        ("success", "Re-checked 1 with Khalti: 1 verified."),
        ("error", "Khalti could not be reached; the payments not re-checked stay pending."),
    ]
    statuses = sorted(fresh(p).status for p in chosen)
    assert statuses == [Payment.Status.PENDING, Payment.Status.PENDING, Payment.Status.VERIFIED]
    assert all(fresh(p).claimed_at is None for p in chosen)
    assert [name for name, _ in sent] == ["verified"]


def test_a_payment_left_pending_by_a_timed_out_verify_is_settled_and_refunded_from_the_admin(
    refunder_client, expect_khalti, sent, django_capture_on_commit_callbacks
):
    # What issue 3 calls done: re-check settles it with exactly one payment_verified,
    # then a staff member with the permission refunds it.
    order = Order.objects.create(reference="ORD-1", total=1000)
    payment = Payment.objects.create(
        token="tok-timed-out",
        product_identity="ORD-1",
        amount=1000,
        order_claim=order_key("ORD-1"),
        attempts=1,
    )
    mock_status(
        expect_khalti,
        payment,
        {
            "status": True,
            "state": "Complete",
            "detail": "Transaction is complete",
            "idx": "idx-late",
        },
    )
    expect_khalti.not_a_transaction(payment.token)
    expect_khalti.transaction("idx-late", json=transaction_record(amount=1000, idx="idx-late"))
    with django_capture_on_commit_callbacks(execute=True):
        run_action(refunder_client, "recheck", [payment])
        run_action(refunder_client, "recheck", [payment])  # a second look changes nothing
    row = fresh(payment)
    assert (row.status, row.idx, row.fee_amount, row.mobile) == (
        Payment.Status.VERIFIED,
        "idx-late",
        30,
        "98XXXXXXX9",
    )
    order.refresh_from_db()
    assert order.paid
    assert [name for name, _ in sent] == ["verified"]

    mock_refund(expect_khalti, "idx-late", {})
    with django_capture_on_commit_callbacks(execute=True):
        response = confirm_refund(refunder_client, [payment])
    assert ("success", "Refunded Rs 10.00 of ORD-1.") in messages_of(response)
    assert fresh(payment).status == Payment.Status.REFUNDED
    assert [name for name, _ in sent] == ["verified", "refunded"]


def test_recheck_warns_when_pending_payments_were_left_though_the_failed_ones_fit(
    support_client, expect_khalti
):
    chosen = [pending_payment(n) for n in range(RECHECK_LIMIT + 1)]
    for n in range(RECHECK_LIMIT):
        failed = pending_payment(f"F{n}")
        Payment.objects.filter(pk=failed.pk).update(
            status=Payment.Status.FAILED, order_claim=None, token_claim=None
        )
        chosen.append(failed)
    expect_khalti.expect("status", json=fixture("status_initiated"), times=2 * RECHECK_LIMIT)
    response = run_action(support_client, "recheck", chosen)
    assert messages_of(response) == [
        (
            "warning",
            "Only the first 20 pending payments were re-checked; run khalti_reconcile for more.",
        ),
        ("success", "Re-checked 40 with Khalti: 20 failed, 20 pending."),
    ]


def test_recheck_counts_a_payment_another_worker_is_settling_as_pending(
    support_client, expect_khalti
):
    payment = pending_payment(1)
    Payment.objects.filter(pk=payment.pk).update(claimed_at=timezone.now())  # a worker is at it
    response = run_action(support_client, "recheck", [payment])
    assert messages_of(response) == [("success", "Re-checked 1 with Khalti: 1 pending.")]
    assert not expect_khalti.calls
