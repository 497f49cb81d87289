"""Refunds in services: asking Khalti for one, its outcome when Khalti does not answer or
contradicts itself (an older answer never undoes a newer proof), and a person resolving
what Khalti cannot tell."""

import io
import logging
from datetime import timedelta

import pytest
import requests
from django.core.exceptions import PermissionDenied
from django.core.management import call_command
from django.db import connections
from django.utils import timezone

from django_khalti import services
from django_khalti.exceptions import (
    KhaltiInvalidRefundAmount,
    KhaltiNotRefundable,
    KhaltiRefundConflict,
    KhaltiRefundFailed,
    KhaltiRefundInProgress,
    KhaltiRefundUnknown,
    KhaltiTransactionUnknown,
    KhaltiUnavailable,
)
from django_khalti.models import Payment, Refund, order_key

from ..conftest import fixture, transaction_record
from .test_delivery import short_grace, unknown_refund, verified_payment  # noqa: F401
from .test_services import pending

pytestmark = pytest.mark.django_db
Status = Payment.Status

# --- refunds ----------------------------------------------------------------------------


def verified(amount=1000, idx="IDX-1", token="tok-v"):
    return Payment.objects.create(
        token=token,
        product_identity="ORD-1",
        amount=amount,
        order_claim=order_key("ORD-1"),
        status=Payment.Status.VERIFIED,
        idx=idx,
        verified_at=timezone.now(),
    )


def test_full_refund_calls_khalti_with_an_empty_body_and_records_it(
    expect_khalti, signals, admin_user, django_capture_on_commit_callbacks
):
    payment = verified()
    expect_khalti.refund("IDX-1", {})
    with django_capture_on_commit_callbacks(execute=True):
        refund = services.refund_payment(payment, by=admin_user)
    payment.refresh_from_db()
    assert payment.status == Payment.Status.REFUNDED
    assert payment.refunded_amount == 1000
    assert refund.status == Refund.Status.SUCCEEDED
    assert refund.amount == 1000
    assert refund.requested_by == admin_user
    assert refund.settled_at is not None
    assert refund.khalti_response == {"detail": "Transaction refund successful."}
    assert [(name, kw["amount"]) for name, _, kw in signals] == [("refunded", 1000)]


def test_partial_refunds_then_the_rest(expect_khalti, signals, django_capture_on_commit_callbacks):
    payment = verified()
    expect_khalti.refund("IDX-1", {"amount": 400})
    expect_khalti.refund("IDX-1", {"amount": 600})
    with django_capture_on_commit_callbacks(execute=True):
        services.refund_payment(payment, amount=400)
        payment.refresh_from_db()
        assert payment.status == Payment.Status.PARTIALLY_REFUNDED
        assert payment.refundable_amount == 600
        services.refund_payment(payment)  # all that remains
    payment.refresh_from_db()
    assert payment.status == Payment.Status.REFUNDED
    assert payment.refunded_amount == 1000
    assert [kw["amount"] for _, _, kw in signals] == [400, 600]
    assert list(payment.refunds.values_list("amount", "status")) == [
        (400, "succeeded"),
        (600, "succeeded"),
    ]


def test_mobile_is_sent_for_bank_funded_payments(expect_khalti):
    payment = verified()
    expect_khalti.refund("IDX-1", {"mobile": "9800000001"})
    assert services.refund_payment(payment, mobile="9800000001").mobile == "9800000001"


@pytest.mark.parametrize("amount", [0, -1, 1001, True, 10.5])
def test_refund_amount_must_be_within_what_remains(expect_khalti, amount):
    payment = verified()
    with pytest.raises(KhaltiInvalidRefundAmount):
        services.refund_payment(payment, amount=amount)
    assert not expect_khalti.calls
    assert not Refund.objects.exists()


@pytest.mark.parametrize(
    "status", [Payment.Status.PENDING, Payment.Status.FAILED, Payment.Status.REFUNDED]
)
def test_only_a_confirmed_payment_with_money_left_can_be_refunded(expect_khalti, status):
    payment = verified()
    Payment.objects.filter(pk=payment.pk).update(status=status)
    with pytest.raises(KhaltiNotRefundable):
        services.refund_payment(payment)
    assert not expect_khalti.calls


def test_a_paid_payment_whose_idx_khaltis_records_do_not_name_is_not_refunded(expect_khalti):
    payment = verified(idx=None)
    expect_khalti.status("tok-v", 1000, "status_complete")  # Khalti's records asked: no idx
    with pytest.raises(KhaltiTransactionUnknown, match="Khalti's dashboard"):
        services.refund_payment(payment)
    assert not Refund.objects.exists()  # nothing was asked of Khalti's refund


def test_a_refund_finds_an_unknown_idx_that_khaltis_status_names_now(
    expect_khalti, signals, django_capture_on_commit_callbacks
):
    payment = verified(idx=None)
    expect_khalti.status("tok-v", 1000, "status_complete_with_idx")
    expect_khalti.transaction("8xmeJnNXfoVjCvGcZiiGe7")  # its record: paid, Rs 10
    expect_khalti.refund("8xmeJnNXfoVjCvGcZiiGe7", {})
    with django_capture_on_commit_callbacks(execute=True):
        services.refund_payment(payment)
    payment.refresh_from_db()
    assert (payment.status, payment.idx) == (Status.REFUNDED, "8xmeJnNXfoVjCvGcZiiGe7")
    assert [(name, kw["amount"]) for name, _, kw in signals] == [("refunded", 1000)]


def test_a_refund_takes_the_idx_a_person_found_once_khaltis_record_matches(
    expect_khalti, admin_user
):
    payment = verified(idx=None)
    expect_khalti.transaction("IDX-DASH", json=transaction_record(idx="IDX-DASH"))
    expect_khalti.refund("IDX-DASH", {"amount": 400})
    services.refund_payment(payment, amount=400, by=admin_user, idx="IDX-DASH")
    payment.refresh_from_db()
    assert (payment.status, payment.idx) == (Status.PARTIALLY_REFUNDED, "IDX-DASH")
    assert payment.refunds.get().requested_by == admin_user


@pytest.mark.parametrize(
    ("record", "why"),
    [
        ({"status": 404, "json": {"detail": "Not found."}}, "no transaction IDX-DASH"),
        ({"json": transaction_record(amount=5000, idx="IDX-DASH")}, "for 5000 paisa"),
        ({"json": transaction_record(state="Initiated", idx="IDX-DASH")}, "is Initiated"),
        ({"json": transaction_record(idx="IDX-DASH")}, "another payment's"),
    ],
)
def test_an_idx_a_person_gives_that_cannot_be_the_payments_is_refused(expect_khalti, record, why):
    if why == "another payment's":
        Payment.objects.create(
            token="tok-other", product_identity="ORD-2", amount=1000, idx="IDX-DASH",
            status=Status.VERIFIED, verified_at=timezone.now(),
        )  # fmt: skip
    payment = verified(idx=None)
    expect_khalti.transaction("IDX-DASH", **record)
    with pytest.raises(KhaltiTransactionUnknown, match=why):
        services.refund_payment(payment, idx="IDX-DASH")
    assert Payment.objects.get(pk=payment.pk).idx is None
    assert not payment.refunds.exists()


def test_an_idx_given_for_a_payment_whose_idx_is_known_must_be_it(expect_khalti):
    payment = verified()
    with pytest.raises(KhaltiNotRefundable, match="IDX-1"):
        services.refund_payment(payment, idx="IDX-OTHER")
    assert not expect_khalti.calls


def test_a_refund_of_a_paid_epayment_without_transaction_id_looks_it_up(expect_khalti):
    payment = Payment.objects.create(
        flow=Payment.Flow.EPAYMENT, pidx="PIDX-T", product_identity="ORD-1", amount=1000,
        order_claim=order_key("ORD-1"), status=Status.VERIFIED, verified_at=timezone.now(),
    )  # fmt: skip
    expect_khalti.lookup("PIDX-T", "epayment_lookup_completed", transaction_id="TX-NOW")
    expect_khalti.transaction("TX-NOW", json=transaction_record(idx="TX-NOW"))
    expect_khalti.refund("TX-NOW", {})
    services.refund_payment(payment)
    payment.refresh_from_db()
    assert (payment.status, payment.idx) == (Status.REFUNDED, "TX-NOW")


def test_khalti_refusing_records_nothing_refunded(
    expect_khalti, signals, django_capture_on_commit_callbacks
):
    payment = verified()
    expect_khalti.refund("IDX-1", {}, status=400, json=fixture("refund_refused"))
    expect_khalti.status("tok-v", 1000, "status_complete")  # asked: not refunded after all
    with django_capture_on_commit_callbacks(execute=True):
        with pytest.raises(KhaltiRefundFailed, match=r"Refund period expired\."):
            services.refund_payment(payment)
    payment.refresh_from_db()
    assert payment.status == Payment.Status.VERIFIED
    assert payment.refunded_amount == 0
    refund = payment.refunds.get()
    assert refund.status == Refund.Status.FAILED
    assert "Refund period expired." in refund.failure_reason
    assert not signals


def test_refund_needs_the_permission_when_a_user_asks(expect_khalti, django_user_model):
    from django.contrib.auth.models import Permission

    payment = verified()
    clerk = django_user_model.objects.create_user("clerk", is_staff=True)
    with pytest.raises(PermissionDenied):
        services.refund_payment(payment, by=clerk)
    assert not expect_khalti.calls
    clerk.user_permissions.add(Permission.objects.get(codename="refund_payment"))
    clerk = django_user_model.objects.get(pk=clerk.pk)  # fresh permission cache
    expect_khalti.refund("IDX-1", {})
    assert services.refund_payment(payment, by=clerk).status == Refund.Status.SUCCEEDED


def test_unknown_refund_outcome_blocks_another_refund_until_reconciled(
    expect_khalti, signals, django_capture_on_commit_callbacks
):
    payment = verified()
    expect_khalti.expect("refund", "IDX-1", {}, body=requests.exceptions.ReadTimeout())
    with pytest.raises(KhaltiUnavailable):
        services.refund_payment(payment)
    refund = payment.refunds.get()
    assert refund.status == Refund.Status.PENDING
    payment.refresh_from_db()
    assert payment.status == Payment.Status.VERIFIED

    # Money may have moved: no second refund until the first is settled.
    with pytest.raises(KhaltiRefundInProgress):
        services.refund_payment(payment)
    # Still within the claim timeout: it may be in flight, so it is left alone.
    assert services.reconcile_refund(refund).status == Refund.Status.PENDING

    Refund.objects.filter(pk=refund.pk).update(created_at=timezone.now() - timedelta(hours=1))
    refund.refresh_from_db()
    expect_khalti.status("tok-v", 1000, "status_refunded")
    with django_capture_on_commit_callbacks(execute=True):
        assert services.reconcile_refund(refund).status == Refund.Status.SUCCEEDED
    payment.refresh_from_db()
    assert payment.status == Payment.Status.REFUNDED
    assert [(name, kw["amount"]) for name, _, kw in signals] == [("refunded", 1000)]


def test_unknown_refund_that_khalti_shows_not_refunded_is_failed(expect_khalti):
    payment = verified()
    refund = Refund.objects.create(payment=payment, amount=1000, claim=payment.pk)
    Refund.objects.filter(pk=refund.pk).update(created_at=timezone.now() - timedelta(hours=1))
    refund.refresh_from_db()
    expect_khalti.status("tok-v", 1000, "status_complete")
    assert services.reconcile_refund(refund).status == Refund.Status.FAILED
    payment.refresh_from_db()
    assert payment.status == Payment.Status.VERIFIED
    # The payment is free for a new refund again, once Khalti (asked again, read-only)
    # still shows nothing refunded: it may apply a refund after it was recorded failed.
    expect_khalti.status("tok-v", 1000, "status_complete")
    expect_khalti.refund("IDX-1", {})
    assert services.refund_payment(payment).status == Refund.Status.SUCCEEDED


def test_resubmitting_the_payload_of_a_refunded_payment_is_200_with_its_status(
    client, expect_khalti
):
    verified(token="QUvsT4Y8aWd3zTVdLCbsNs")
    Payment.objects.update(status=Payment.Status.REFUNDED, refunded_amount=1000)
    response = client.post(
        "/khalti/verify/",
        {"token": "QUvsT4Y8aWd3zTVdLCbsNs", "amount": 1000, "product_identity": "ORD-1"},
        content_type="application/json",
    )
    assert response.status_code == 200
    assert response.json()["payment"]["status"] == "refunded"
    assert not expect_khalti.calls


def stale_refund(payment, amount):
    refund = Refund.objects.create(payment=payment, amount=amount, claim=payment.pk)
    Refund.objects.filter(pk=refund.pk).update(created_at=timezone.now() - timedelta(hours=1))
    refund.refresh_from_db()
    return refund


def test_a_second_partial_refund_of_unknown_outcome_is_not_taken_as_done(expect_khalti, signals):
    """After one partial refund, "Partially refunded" proves nothing about the next."""
    payment = verified()
    Payment.objects.filter(pk=payment.pk).update(
        status=Payment.Status.PARTIALLY_REFUNDED, refunded_amount=300
    )
    payment.refresh_from_db()
    refund = stale_refund(payment, 200)
    expect_khalti.status("tok-v", 1000, "status_partially_refunded")
    assert services.reconcile_refund(refund).status == Refund.Status.PENDING
    payment.refresh_from_db()
    assert payment.refunded_amount == 300
    assert not signals


def test_refunded_for_less_than_what_remains_is_not_taken_as_this_refund(expect_khalti):
    payment = verified()
    refund = stale_refund(payment, 400)
    expect_khalti.status("tok-v", 1000, "status_refunded")
    assert services.reconcile_refund(refund).status == Refund.Status.PENDING


def test_a_first_partial_refund_is_proven_by_partially_refunded(expect_khalti):
    payment = verified()
    refund = stale_refund(payment, 400)
    expect_khalti.status("tok-v", 1000, "status_partially_refunded")
    assert services.reconcile_refund(refund).status == Refund.Status.SUCCEEDED
    payment.refresh_from_db()
    assert (payment.status, payment.refunded_amount) == (Payment.Status.PARTIALLY_REFUNDED, 400)


def test_reconcile_refund_when_khalti_is_down_raises_and_stays_pending(expect_khalti):
    refund = stale_refund(verified(), 1000)
    expect_khalti.status(refund.payment.token, refund.payment.amount, status=503, body="")
    with pytest.raises(KhaltiUnavailable):
        services.reconcile_refund(refund)
    refund.refresh_from_db()
    assert refund.status == Refund.Status.PENDING


def test_a_person_resolves_what_khalti_cannot_tell(
    expect_khalti, signals, admin_user, django_user_model, django_capture_on_commit_callbacks
):
    payment = verified()
    refund = stale_refund(payment, 1000)
    clerk = django_user_model.objects.create_user("clerk2", is_staff=True)
    with pytest.raises(PermissionDenied):
        services.resolve_refund(refund, succeeded=True, by=clerk)
    with django_capture_on_commit_callbacks(execute=True):
        services.resolve_refund(refund, succeeded=True, by=admin_user, note="seen in dashboard")
    payment.refresh_from_db()
    assert payment.status == Payment.Status.REFUNDED
    assert refund.khalti_response == {"resolved_by": str(admin_user), "note": "seen in dashboard"}
    assert [(n, kw["amount"]) for n, _, kw in signals] == [("refunded", 1000)]
    assert not expect_khalti.calls


@pytest.mark.parametrize(
    ("seen", "message"),
    [
        ({"refunded_before": 0}, r"It was refunded meanwhile \(Rs 3.00 so far\)"),
        ({"status_before": "verified"}, "It is Partially refunded now, not Verified"),
    ],
)
def test_a_persons_word_needs_the_payment_as_they_saw_it(
    expect_khalti, signals, admin_user, django_capture_on_commit_callbacks, seen, message
):
    payment = verified()
    Payment.objects.filter(pk=payment.pk).update(
        status=Status.PARTIALLY_REFUNDED, refunded_amount=300
    )
    refund = stale_refund(payment, 700)
    with django_capture_on_commit_callbacks(execute=True):
        with pytest.raises(KhaltiRefundConflict, match=message):
            services.resolve_refund(refund, succeeded=True, by=admin_user, **seen)
    refund.refresh_from_db()
    assert refund.status == Refund.Status.PENDING
    payment.refresh_from_db()
    assert (payment.status, payment.refunded_amount) == (Status.PARTIALLY_REFUNDED, 300)
    assert signals == []


@pytest.mark.parametrize("succeeded", [True, False])
def test_a_persons_word_on_a_refund_settled_meanwhile_is_refused_even_the_same_way(
    expect_khalti, signals, admin_user, django_capture_on_commit_callbacks, succeeded
):
    refund = stale_refund(verified(), 1000)
    first = "refunded" if succeeded else "complete"
    expect_khalti.status("tok-v", 1000, f"status_{first}")
    with django_capture_on_commit_callbacks(execute=True):
        services.reconcile_refund(refund)
        settled = Refund.objects.get(pk=refund.pk)
        label = "Succeeded" if succeeded else "Failed"
        with pytest.raises(KhaltiRefundConflict, match=f"already recorded {label}"):
            services.resolve_refund(refund, succeeded=succeeded, by=admin_user, note="seen")
    assert Refund.objects.get(pk=refund.pk).khalti_response == settled.khalti_response
    assert [name for name, _, _ in signals] == (["refunded"] if succeeded else [])


def test_a_refund_asked_for_a_payment_in_another_status_than_seen_is_refused(
    expect_khalti, admin_user
):
    payment = verified()
    with pytest.raises(KhaltiRefundConflict, match="It is Verified now, not Pending"):
        services.refund_payment(payment, by=admin_user, refunded_before=0, status_before="pending")
    assert not Refund.objects.exists()
    assert not expect_khalti.calls


def test_refund_uses_the_rows_idx_not_a_stale_copy(expect_khalti):
    payment = verified(idx="IDX-ROW")
    stale_copy = Payment.objects.get(pk=payment.pk)
    stale_copy.idx = None
    expect_khalti.refund("IDX-ROW", {})
    assert services.refund_payment(stale_copy).status == Refund.Status.SUCCEEDED


def test_a_payment_refunded_before_we_verified_it_is_not_refundable_from_the_app(expect_khalti):
    payment = pending()
    expect_khalti.status("tok", 1000, "status_refunded")
    expect_khalti.not_a_transaction("tok")
    services.reconcile(payment)
    assert payment.status == Payment.Status.REFUNDED
    assert payment.refundable_amount == 0
    with pytest.raises(KhaltiNotRefundable):
        services.refund_payment(payment, amount=100)
    assert [c.endpoint for c in expect_khalti.calls] == ["status", "transaction"]  # no refund


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


# --- a refusal, or an older answer, against a refund recorded succeeded -----------------


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


# --- our database failing once Khalti was asked: unknown, never a crash ------------------

#: What Khalti did and answered while the refund's database connection was lost, and
#: what its status says once asked again.
ANSWERED_MEANWHILE = {
    # Khalti refunds, but answers after our timeout.
    "timeout": (requests.exceptions.ReadTimeout("read timed out"), "status_refunded"),
    "refunded": ((200, fixture("refund_success")), "status_refunded"),
    "refused": ((400, fixture("refund_refused")), "status_complete"),
    "already refunded": ((400, {"detail": "Transaction already refunded."}), "status_refunded"),
}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("answer", list(ANSWERED_MEANWHILE))
def test_a_refund_whose_database_connection_is_lost_while_khalti_answers_stays_unknown(
    expect_khalti, signals, lost_connection, answer
):
    """The connection is ended for real on PostgreSQL and MariaDB: whatever Khalti
    answered, refund_payment says the outcome is unknown (not a bare database error),
    and the refund stays pending for khalti_reconcile, which settles it once."""
    payment = verified()
    khalti_says, state_later = ANSWERED_MEANWHILE[answer]

    def slow_khalti(request):
        lost_connection.lose(payment, Refund.objects.get(payment=payment))
        return khalti_says

    expect_khalti.expect("refund", "IDX-1", {}, callback=slow_khalti)
    with pytest.raises(KhaltiRefundUnknown):
        services.refund_payment(payment)
    lost_connection.restore()
    refund = payment.refunds.get()
    assert refund.status == Refund.Status.PENDING
    assert Payment.objects.get(pk=payment.pk).status == Payment.Status.VERIFIED
    assert not signals

    Refund.objects.filter(pk=refund.pk).update(created_at=timezone.now() - timedelta(hours=1))
    expect_khalti.status("tok-v", 1000, state_later)
    services.reconcile_due(older_than=timedelta(0))
    services.reconcile_due(older_than=timedelta(0))  # nothing left to settle: no call
    payment.refresh_from_db()
    if state_later == "status_refunded":
        assert (payment.status, payment.refunded_amount) == (Payment.Status.REFUNDED, 1000)
        assert [(name, kw["amount"]) for name, _, kw in signals] == [("refunded", 1000)]
    else:
        assert (payment.status, payment.refunded_amount) == (Payment.Status.VERIFIED, 0)
        assert payment.refunds.get().status == Refund.Status.FAILED
        assert not signals


@pytest.mark.django_db(transaction=True)
def test_the_database_lost_while_an_earlier_refund_is_re_checked_starts_no_refund(
    expect_khalti, signals, lost_connection
):
    payment = verified()
    failed = Refund.objects.create(
        payment=payment, amount=1000, status=Refund.Status.FAILED, settled_at=timezone.now()
    )

    def slow_khalti(request):
        lost_connection.lose(payment, failed)
        return 200, fixture("status_refunded")  # Khalti applied it late

    expect_khalti.expect(
        "status", "tok-v", {"token": "tok-v", "amount": "1000"}, callback=slow_khalti
    )
    with pytest.raises(KhaltiUnavailable, match="nothing was refunded"):
        services.refund_payment(payment)
    lost_connection.restore()
    assert list(payment.refunds.values_list("status", flat=True)) == [Refund.Status.FAILED]
    assert Payment.objects.get(pk=payment.pk).refunded_amount == 0
    assert not signals


# --- a refund Khalti applies late: after it was recorded failed ------------------------


def shop_story(signals):
    """What the shop's receivers were told, in order: signal, the payment's status, amount."""
    return [(name, kw["payment"].status, kw.get("amount")) for name, _, kw in signals]


def reconcile_command():
    out = io.StringIO()
    call_command("khalti_reconcile", "--older-than", "0", stdout=out)
    return out.getvalue()


def an_hour_on(refund):
    """An hour passes for ``refund``: its call, its settlement and its last re-check."""
    hour_ago = timezone.now() - timedelta(hours=1, minutes=1)
    Refund.objects.filter(pk=refund.pk).update(
        created_at=hour_ago, settled_at=hour_ago, rechecked_at=None
    )


@pytest.mark.django_db(transaction=True)
def test_a_refund_khalti_applies_after_reconcile_recorded_it_failed_is_found_and_announced(
    expect_khalti, signals, caplog
):
    payment = verified()
    expect_khalti.expect("refund", "IDX-1", {}, body=requests.exceptions.ReadTimeout())
    with pytest.raises(KhaltiRefundUnknown):
        services.refund_payment(payment)
    refund = payment.refunds.get()
    an_hour_on(refund)
    expect_khalti.status("tok-v", 1000, "status_complete")  # not (yet) refunded
    reconcile_command()
    assert Refund.objects.get(pk=refund.pk).status == Refund.Status.FAILED
    assert shop_story(signals) == []

    # Khalti applies it late. khalti_reconcile re-checks refunds recorded failed, hourly.
    assert "failed refunds" not in reconcile_command()  # not due yet: no call
    an_hour_on(refund)
    expect_khalti.status("tok-v", 1000, "status_refunded")
    with caplog.at_level(logging.WARNING, "django_khalti"):
        out = reconcile_command()
    assert "failed refunds re-checked 1: 1 succeeded, 0 still failed" in out
    assert "after the refund was recorded failed" in caplog.text
    refund.refresh_from_db()
    assert refund.status == Refund.Status.SUCCEEDED
    assert refund.khalti_response == fixture("status_refunded")
    payment.refresh_from_db()
    assert (payment.status, payment.refunded_amount) == (Payment.Status.REFUNDED, 1000)
    assert shop_story(signals) == [("refunded", "refunded", 1000)]

    an_hour_on(refund)
    reconcile_command()  # nothing failed is left to re-check: no call
    assert shop_story(signals) == [("refunded", "refunded", 1000)]


@pytest.mark.django_db(transaction=True)
def test_a_second_refund_first_finds_the_failed_one_khalti_applied_late(expect_khalti, signals):
    """Rs 3 recorded failed, which Khalti applies late; a person asks for Rs 3 again. Khalti
    is asked (read-only) first: the money went back once, and no second refund starts."""
    payment = verified()
    failed = Refund.objects.create(
        payment=payment, amount=300, status=Refund.Status.FAILED, settled_at=timezone.now()
    )
    expect_khalti.status("tok-v", 1000, "status_partially_refunded")
    with pytest.raises(KhaltiRefundConflict, match="refunded meanwhile"):
        services.refund_payment(payment, amount=300, refunded_before=0)
    assert Refund.objects.get(pk=failed.pk).status == Refund.Status.SUCCEEDED
    payment.refresh_from_db()
    assert (payment.status, payment.refunded_amount) == (Payment.Status.PARTIALLY_REFUNDED, 300)
    assert payment.refunds.count() == 1
    assert shop_story(signals) == [("refunded", "partially_refunded", 300)]


@pytest.mark.django_db(transaction=True)
def test_partially_refunded_proves_no_refund_when_another_could_be_its_doing(
    expect_khalti, signals
):
    payment = verified()
    for amount in (300, 500):
        Refund.objects.create(
            payment=payment, amount=amount, status=Refund.Status.FAILED, settled_at=timezone.now()
        )
    expect_khalti.status("tok-v", 1000, "status_partially_refunded", times=2)
    services.reconcile_due(Payment.objects.filter(pk=payment.pk))
    assert set(payment.refunds.values_list("status", flat=True)) == {Refund.Status.FAILED}
    assert Payment.objects.get(pk=payment.pk).refunded_amount == 0
    assert shop_story(signals) == []


@pytest.mark.django_db(transaction=True)
def test_a_failed_refund_is_not_re_checked_while_another_refund_of_it_is_in_flight(
    expect_khalti, signals
):
    payment = verified()
    Refund.objects.create(
        payment=payment, amount=300, status=Refund.Status.FAILED, settled_at=timezone.now()
    )
    Refund.objects.create(payment=payment, amount=200, claim=payment.pk)  # in flight
    services.reconcile_due(Payment.objects.filter(pk=payment.pk))  # asks Khalti nothing
    assert Payment.objects.get(pk=payment.pk).refunded_amount == 0
    assert shop_story(signals) == []


@pytest.mark.django_db(transaction=True)
def test_a_re_check_records_nothing_when_another_refund_started_while_khalti_was_asked(
    expect_khalti, signals
):
    """Khalti's "Refunded" may then be the new refund's doing, not the failed one's."""
    payment = verified()
    failed = Refund.objects.create(
        payment=payment, amount=1000, status=Refund.Status.FAILED, settled_at=timezone.now()
    )

    def another_refund_meanwhile(request):
        Refund.objects.create(payment=payment, amount=1000, claim=payment.pk)
        connections["default"].close()  # the callback's thread's
        return 200, fixture("status_refunded")

    expect_khalti.expect(
        "status", "tok-v", {"token": "tok-v", "amount": "1000"}, callback=another_refund_meanwhile
    )
    assert services.recheck_failed_refund(failed).status == Refund.Status.FAILED
    assert Payment.objects.get(pk=payment.pk).refunded_amount == 0
    assert shop_story(signals) == []


def test_a_failed_refund_is_re_checked_at_most_once_per_ask_spacing_of_its_payment(
    expect_khalti, signals, settings
):
    settings.KHALTI = {**settings.KHALTI, "ASK_SPACING": 10}
    payment = verified()
    failed = Refund.objects.create(
        payment=payment, amount=1000, status=Refund.Status.FAILED, settled_at=timezone.now()
    )
    expect_khalti.status("tok-v", 1000, "status_complete")  # once: not refunded (yet)
    assert services.recheck_failed_refund(failed).status == Refund.Status.FAILED
    Refund.objects.filter(pk=failed.pk).update(rechecked_at=None)  # as if due again
    # Asked about the payment moments ago: nothing is asked now.
    again = Refund.objects.get(pk=failed.pk)
    assert services.recheck_failed_refund(again).status == Refund.Status.FAILED
    assert len(expect_khalti.calls) == 1


# --- a frozen refund worker, resumed after khalti_reconcile settled its refund ---------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("khalti_refunded", ["before reconcile asked", "after reconcile asked"])
def test_a_frozen_refund_worker_resumed_after_reconcile_tells_the_shop_once(
    expect_khalti, signals, khalti_refunded
):
    """The worker's call to Khalti hangs past the claim timeout (the process is frozen,
    not killed); khalti_reconcile asks Khalti's status and settles the refund; then
    Khalti refunds, and the worker resumes with its success."""
    payment = verified()

    def frozen(request):
        Refund.objects.update(created_at=timezone.now() - timedelta(hours=1))
        reconcile_command()
        connections["default"].close()  # the callback's thread's
        return 200, fixture("refund_success")

    expect_khalti.expect("refund", "IDX-1", {}, callback=frozen)
    before = khalti_refunded == "before reconcile asked"
    expect_khalti.status("tok-v", 1000, "status_refunded" if before else "status_complete")
    refund = services.refund_payment(payment)
    assert refund.status == Refund.Status.SUCCEEDED
    assert (refund.payment.status, refund.payment.refunded_amount) == (
        Payment.Status.REFUNDED,
        1000,
    )
    assert shop_story(signals) == [("refunded", "refunded", 1000)]
    reconcile_command()  # nothing left to settle or re-check: no call, no signal
    assert shop_story(signals) == [("refunded", "refunded", 1000)]
