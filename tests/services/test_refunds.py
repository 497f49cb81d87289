"""Refunds in services: asking Khalti for one, its outcome when Khalti does not answer or
contradicts itself (an older answer never undoes a newer proof), and a person resolving
what Khalti cannot tell."""

from datetime import timedelta

import pytest
import requests
from django.core.exceptions import PermissionDenied
from django.utils import timezone

from django_khalti import services
from django_khalti.exceptions import (
    KhaltiInvalidRefundAmount,
    KhaltiNotRefundable,
    KhaltiRefundConflict,
    KhaltiRefundFailed,
    KhaltiRefundInProgress,
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
    # The payment is free for a new refund again.
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
