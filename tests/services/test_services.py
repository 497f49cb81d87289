"""Business rules in services: the shop's amount, reconciling one payment, claims and transitions."""

import re
from datetime import timedelta
from decimal import Decimal

import pytest
import requests
from django.test import RequestFactory, override_settings
from django.utils import timezone

from django_khalti import services
from django_khalti.exceptions import (
    KhaltiConfigurationError,
    KhaltiUnavailable,
    KhaltiUnknownOrder,
)
from django_khalti.models import Payment, order_key
from django_khalti.orders import KhaltiOrder
from django_khalti.services import state, writes

from ..conftest import transaction_record

pytestmark = pytest.mark.django_db

seen = {}


def recording_resolver(request, product_identity):
    seen["request"], seen["product_identity"] = request, product_identity
    return 1500


def resolver_returning(value):
    def resolver(request, product_identity):
        if isinstance(value, Exception):
            raise value
        return value

    return resolver


def khalti_settings_with(resolver):
    return override_settings(
        KHALTI={
            "SECRET_KEY": "test_secret_key_testproject",
            "BASE_URL": "https://khalti.test/",
            "AMOUNT_RESOLVER": resolver,
        }
    )


def test_resolver_gets_the_request_and_product_identity():
    request = RequestFactory().post("/")
    with khalti_settings_with("tests.services.test_services.recording_resolver"):
        assert services.expected_amount(request, "ORD-9") == 1500
    assert seen == {"request": request, "product_identity": "ORD-9"}


@pytest.mark.parametrize(
    "outcome",
    [None, ValueError("invalid literal for int()"), Payment.DoesNotExist()],
)
def test_resolver_finding_no_order_means_unknown_order(outcome):
    with khalti_settings_with(resolver_returning(outcome)), pytest.raises(KhaltiUnknownOrder):
        services.expected_amount(None, "x")


@pytest.mark.parametrize("bad", [10.0, "1000", True, 0, -5])
def test_resolver_returning_something_else_than_positive_paisa_is_a_shop_bug(bad):
    with khalti_settings_with(resolver_returning(bad)):
        with pytest.raises(KhaltiConfigurationError, match="positive int"):
            services.expected_amount(None, "x")


def test_resolver_not_configured_is_a_configuration_error():
    with khalti_settings_with(None), pytest.raises(KhaltiConfigurationError):
        services.expected_amount(None, "x")


def pending(token="tok", claimed_at=None, attempts=1, claimed_idx="IDX-1"):
    """A pending widget payment whose page reported Khalti's ``idx`` (the widget does)."""
    return Payment.objects.create(
        token=token,
        product_identity="ORD-1",
        amount=1000,
        order_claim=order_key("ORD-1"),
        claimed_at=claimed_at,
        attempts=attempts,
        claimed_idx=claimed_idx,
    )


def test_reconcile_complete_verifies_and_signals_once(
    expect_khalti, signals, django_capture_on_commit_callbacks
):
    payment = pending()
    expect_khalti.status("tok", 1000, "status_complete")
    expect_khalti.not_a_transaction("tok")
    expect_khalti.transaction("IDX-1")  # what ties Khalti's "Complete" to this payment
    with django_capture_on_commit_callbacks(execute=True):
        assert services.reconcile(payment).status == Payment.Status.VERIFIED
        services.reconcile(payment)  # already settled: no call, no signal
    assert [name for name, _, _ in signals] == ["verified"]
    assert len(expect_khalti.calls) == 3  # status, the token's record (none), the idx's record
    payment.refresh_from_db()
    assert payment.verified_at is not None
    assert payment.idx == "IDX-1"
    assert payment.order_claim == order_key("ORD-1")


def test_a_complete_status_for_a_token_that_is_no_idx_pays_with_its_idx_unknown(
    expect_khalti, signals, django_capture_on_commit_callbacks, caplog
):
    # The status endpoint answers for a token *or an idx*. Khalti knows no transaction
    # whose idx is this token: "Complete" for it and this amount is this token's money.
    payment = pending(claimed_idx="")
    expect_khalti.status("tok", 1000, "status_complete")
    expect_khalti.not_a_transaction("tok")
    with django_capture_on_commit_callbacks(execute=True):
        assert services.reconcile(payment).status == Payment.Status.VERIFIED
    assert [name for name, _, _ in signals] == ["verified"]
    assert payment.idx is None  # unknown: a refund looks for it, or asks a person
    assert payment.order_claim == order_key("ORD-1")
    assert [r.levelname for r in caplog.records if "is unknown" in r.message] == ["WARNING"]


@pytest.mark.parametrize(
    ("record", "why"),
    [
        ({"json": transaction_record(amount=500, idx="IDX-1")}, "for 500 paisa"),
        ({"json": transaction_record(state="Pending", idx="IDX-1")}, "is Pending"),
    ],
)
def test_a_complete_status_whose_reported_idx_does_not_match_pays_with_its_idx_unknown(
    expect_khalti, record, why, caplog
):
    # The page's idx is the browser's word: a record that does not match it is not
    # recorded, and takes nothing from status's proof.
    payment = pending()
    expect_khalti.status("tok", 1000, "status_complete")
    expect_khalti.not_a_transaction("tok")
    expect_khalti.transaction("IDX-1", **record)
    assert services.reconcile(payment).status == Payment.Status.VERIFIED
    assert payment.idx is None
    assert any(why in r.message for r in caplog.records)


def test_a_complete_status_for_a_token_that_is_its_own_idx_needs_review(expect_khalti):
    # An idx posted as a token, with the page's "idx" the same: the status endpoint
    # answers Complete for the idx; the "token" is a transaction id, not a token.
    payment = pending(token="IDX-A", claimed_idx="")
    expect_khalti.status("IDX-A", 1000, "status_complete")
    expect_khalti.transaction(
        "IDX-A", json=transaction_record(idx="IDX-A")
    )  # found by its own name
    assert services.reconcile(payment).status == Payment.Status.NEEDS_REVIEW
    assert "transaction id, not a payment token" in payment.failure_reason


def another_payments(idx):
    return Payment.objects.create(
        token="tok-a",
        product_identity="ORD-A",
        amount=1000,
        idx=idx,
        status=Payment.Status.VERIFIED,
        verified_at=timezone.now(),
    )


def test_an_idx_the_page_reported_that_is_another_payments_is_not_recorded(expect_khalti):
    another_payments("IDX-1")
    payment = pending()  # its page reported IDX-1
    expect_khalti.status("tok", 1000, "status_complete")
    expect_khalti.not_a_transaction("tok")
    expect_khalti.transaction("IDX-1")
    assert services.reconcile(payment).status == Payment.Status.VERIFIED
    assert payment.idx is None


def test_a_complete_status_naming_another_payments_transaction_needs_review(
    expect_khalti, signals, django_capture_on_commit_callbacks
):
    # Khalti's own answer ties this token to money another payment holds: not this one's.
    another_payments("8xmeJnNXfoVjCvGcZiiGe7")
    payment = pending()
    expect_khalti.status("tok", 1000, "status_complete_with_idx")
    expect_khalti.not_a_transaction("tok")
    with django_capture_on_commit_callbacks(execute=True):
        assert services.reconcile(payment).status == Payment.Status.NEEDS_REVIEW
    assert "another payment" in payment.failure_reason
    assert payment.order_claim is None  # let go: none of this payment's money moved
    assert [name for name, _, _ in signals] == ["needs_review"]


def test_reconcile_confirmed_verifies_with_the_expected_amount(expect_khalti, signals):
    payment = pending()
    expect_khalti.status("tok", 1000, "status_confirmed")
    expect_khalti.verify("tok", 1000)
    assert services.reconcile(payment).status == Payment.Status.VERIFIED
    assert payment.idx == "8xmeJnNXfoVjCvGcZiiGe7"
    assert payment.fee_amount == 30


def test_reconcile_error_fails_and_frees_the_order_for_another_token(
    expect_khalti, signals, django_capture_on_commit_callbacks
):
    payment = pending()
    expect_khalti.status("tok", 1000, "status_error")
    with django_capture_on_commit_callbacks(execute=True):
        assert services.reconcile(payment).status == Payment.Status.FAILED
    assert "Transaction not found" in payment.failure_reason
    assert payment.order_claim is None
    assert [name for name, _, _ in signals] == ["failed"]
    assert signals[0][2]["reason"] == payment.failure_reason


def test_reconcile_initiated_stays_pending_and_unclaimed(expect_khalti, signals):
    payment = pending()
    expect_khalti.status("tok", 1000, "status_initiated")
    assert services.reconcile(payment).status == Payment.Status.PENDING
    payment.refresh_from_db()
    assert payment.claimed_at is None
    assert not signals


def test_reconcile_when_khalti_is_down_raises_and_stays_pending(expect_khalti):
    payment = pending()
    expect_khalti.status(payment.token, payment.amount, status=500, body="")
    with pytest.raises(KhaltiUnavailable):
        services.reconcile(payment)
    payment.refresh_from_db()
    assert payment.status == Payment.Status.PENDING
    assert payment.claimed_at is None


def test_reconcile_leaves_a_payment_another_worker_holds(expect_khalti):
    payment = pending(claimed_at=timezone.now())
    assert services.reconcile(payment).status == Payment.Status.PENDING
    assert not expect_khalti.calls


def test_a_stale_claim_is_taken_over(expect_khalti):
    payment = pending(claimed_at=timezone.now() - timedelta(minutes=5), attempts=1)
    expect_khalti.status("tok", 1000, "status_complete")
    expect_khalti.not_a_transaction("tok")
    expect_khalti.transaction("IDX-1")
    assert services.reconcile(payment).status == Payment.Status.VERIFIED
    payment.refresh_from_db()
    assert payment.attempts == 2


def test_transition_changes_a_status_only_once(signals, django_capture_on_commit_callbacks):
    payment = pending()
    other_copy = Payment.objects.get(pk=payment.pk)
    with django_capture_on_commit_callbacks(execute=True):
        assert writes._transition(payment, Payment.Status.VERIFIED) is True
        assert writes._transition(other_copy, Payment.Status.FAILED, failure_reason="x") is False
    assert other_copy.status == Payment.Status.VERIFIED  # sees the winner's row
    assert [name for name, _, _ in signals] == ["verified"]


def test_signal_is_sent_only_after_commit(signals, django_capture_on_commit_callbacks):
    payment = pending()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        writes._transition(payment, Payment.Status.VERIFIED)
    assert not signals
    assert len(callbacks) == 1
    callbacks[0]()
    assert [name for name, _, _ in signals] == ["verified"]


# --- reconcile: refunded states and transaction details ------------------------------


def test_reconcile_complete_with_idx_fetches_fee_and_mobile_from_the_record(expect_khalti, signals):
    payment = pending()
    expect_khalti.status("tok", 1000, "status_complete_with_idx")
    expect_khalti.not_a_transaction("tok")
    expect_khalti.transaction("8xmeJnNXfoVjCvGcZiiGe7")
    services.reconcile(payment)
    payment.refresh_from_db()
    assert payment.status == Payment.Status.VERIFIED
    assert (payment.idx, payment.fee_amount, payment.mobile) == (
        "8xmeJnNXfoVjCvGcZiiGe7",
        30,
        "98XXXXXXX9",
    )


def test_a_complete_status_pays_while_khalti_has_no_record_of_its_idx_yet(expect_khalti):
    # A record may lag behind the status: the idx stays unknown, the payment is paid.
    payment = pending()
    expect_khalti.status("tok", 1000, "status_complete")
    expect_khalti.not_a_transaction("tok")
    expect_khalti.transaction("IDX-1", status=404, json={"detail": "Not found."})
    assert services.reconcile(payment).status == Payment.Status.VERIFIED
    payment.refresh_from_db()
    assert (payment.idx, payment.claimed_at) == (None, None)


def test_a_refunded_status_for_a_token_that_is_an_idx_fails_the_payment(
    expect_khalti, signals, django_capture_on_commit_callbacks
):
    # The status of someone's refunded transaction, asked by its idx posted as a
    # token: nothing of this payment's moved, and the shop is not told of a refund.
    payment = pending(token="IDX-R", claimed_idx="")
    expect_khalti.status("IDX-R", 1000, "status_refunded")
    expect_khalti.transaction("IDX-R", json=transaction_record(idx="IDX-R"))
    with django_capture_on_commit_callbacks(execute=True):
        assert services.reconcile(payment).status == Payment.Status.FAILED
    assert "transaction id" in payment.failure_reason
    assert [name for name, _, _ in signals] == ["failed"]


def test_a_complete_status_stays_pending_while_its_record_cannot_be_fetched(expect_khalti):
    payment = pending()
    expect_khalti.status("tok", 1000, "status_complete_with_idx")
    expect_khalti.not_a_transaction("tok")
    expect_khalti.transaction("8xmeJnNXfoVjCvGcZiiGe7", status=500, json={})
    with pytest.raises(KhaltiUnavailable):
        services.reconcile(payment)
    payment.refresh_from_db()
    assert payment.status == Payment.Status.PENDING
    assert payment.claimed_at is None  # released: the next attempt asks again


def test_refunded_before_verified_lets_the_order_go_and_tells_the_shop(
    expect_khalti, signals, django_capture_on_commit_callbacks
):
    payment = pending()
    expect_khalti.status("tok", 1000, "status_refunded")
    expect_khalti.not_a_transaction("tok")  # the token is a token, not a refunded payment's idx
    with django_capture_on_commit_callbacks(execute=True):
        assert services.reconcile(payment).status == Payment.Status.REFUNDED
    assert payment.refunded_amount == 1000
    assert payment.verified_at is None  # the shop never fulfilled the order
    assert payment.order_claim is None  # ... and may be paid again
    assert [(name, kwargs["amount"]) for name, _, kwargs in signals] == [("refunded", 1000)]


def test_partially_refunded_before_verified_needs_review(
    expect_khalti, signals, django_capture_on_commit_callbacks
):
    # Part of the money stayed with the merchant for an order never fulfilled.
    payment = pending()
    expect_khalti.status("tok", 1000, "status_partially_refunded")
    expect_khalti.not_a_transaction("tok")
    with django_capture_on_commit_callbacks(execute=True):
        assert services.reconcile(payment).status == Payment.Status.NEEDS_REVIEW
    assert [name for name, _, _ in signals] == ["needs_review"]
    assert payment.order_claim == order_key("ORD-1")  # kept until a person refunds it


def test_a_late_worker_cannot_fail_a_payment_another_worker_took_over(expect_khalti, signals):
    payment = pending(claimed_at=timezone.now() - timedelta(hours=1))  # worker A, stalled
    late_a = Payment.objects.get(pk=payment.pk)
    assert state.claim(payment)  # worker B takes the stale claim over
    assert state._fail(late_a, "Khalti rejected the payment: token: Invalid token.") is False
    payment.refresh_from_db()
    assert payment.status == Payment.Status.PENDING
    assert payment.order_claim == order_key("ORD-1")
    assert not signals


def test_release_only_lets_go_of_this_workers_own_claim():
    payment = pending(claimed_at=timezone.now() - timedelta(hours=1))
    late_a = Payment.objects.get(pk=payment.pk)
    assert state.claim(payment)
    state._release(late_a)  # A's stale claim is no longer the row's
    payment.refresh_from_db()
    assert payment.claimed_at is not None
    state._release(Payment.objects.get(pk=payment.pk))
    payment.refresh_from_db()
    assert payment.claimed_at is None


def test_settling_clears_the_claim(expect_khalti):
    payment = pending()
    expect_khalti.status("tok", 1000, "status_complete")
    expect_khalti.not_a_transaction("tok")
    expect_khalti.transaction("IDX-1")
    services.reconcile(payment)
    payment.refresh_from_db()
    assert payment.status == Payment.Status.VERIFIED
    assert payment.claimed_at is None


def test_reconcile_status_failed_fails_the_payment(
    expect_khalti, signals, django_capture_on_commit_callbacks
):
    payment = pending()
    expect_khalti.status("tok", 1000, "status_failed")
    with django_capture_on_commit_callbacks(execute=True):
        assert services.reconcile(payment).status == Payment.Status.FAILED
    assert "Payment failed" in payment.failure_reason
    assert [n for n, _, _ in signals] == ["failed"]


@pytest.mark.parametrize(
    ("verify", "then", "status"),
    [
        ({"body": requests.exceptions.ReadTimeout()}, None, Payment.Status.PENDING),
        # A refusal after an attempt of unknown outcome is not final by itself:
        # status decides ("Error": nothing moved for this token and amount).
        ({"status": 400, "json": {"token": ["Invalid token."]}}, "status_error", "failed"),
        ({"status": 400, "json": {"token": ["Invalid token."]}}, "status_confirmed", "pending"),
    ],
)
def test_confirmed_then_verify_times_out_or_is_rejected(expect_khalti, verify, then, status):
    payment = pending()
    expect_khalti.status("tok", 1000, "status_confirmed")
    expect_khalti.verify("tok", 1000, **verify)
    if then:
        expect_khalti.status("tok", 1000, then)
    if status == Payment.Status.PENDING and not then:
        with pytest.raises(KhaltiUnavailable):
            services.reconcile(payment)
    else:
        services.reconcile(payment)
    payment.refresh_from_db()
    assert payment.status == status
    assert payment.claimed_at is None


@pytest.mark.parametrize(
    ("returned", "said"),
    [
        (12.5, "returned 12.5 (a float): amounts are integer paisa"),
        (Decimal("12.50"), "returned 12.50 (a Decimal): amounts are integer paisa"),
        # The mistake under test: a KhaltiOrder whose amount is rupees.
        (KhaltiOrder("ORD-1", Decimal("1500")), "returned 1500 (a Decimal)"),  # type: ignore[arg-type]
    ],
    ids=["float", "decimal", "khalti-order-with-a-decimal"],
)
def test_a_resolver_returning_rupees_is_asked_whether_they_are_rupees(returned, said):
    with khalti_settings_with(resolver_returning(returned)):
        with pytest.raises(KhaltiConfigurationError) as caught:
            services.expected_amount(None, "ORD-1")
    message = str(caught.value)
    assert said in message
    assert "Rupees instead of paisa?" in message


@pytest.mark.parametrize(
    ("returned", "conversion"),
    [
        (12.5, "Rs 12.50 is 1250 paisa."),
        (Decimal("1500"), "Rs 1500.00 is 150000 paisa."),
        (Decimal("0.999"), "Rs 1 is 100 paisa."),  # no whole paisa: no conversion to show
    ],
)
def test_the_rupees_question_shows_the_amount_in_paisa(returned, conversion):
    with khalti_settings_with(resolver_returning(returned)):
        with pytest.raises(KhaltiConfigurationError, match=re.escape(conversion)):
            services.expected_amount(None, "ORD-1")


@pytest.mark.parametrize("returned", [float("nan"), float("inf"), -12.5, Decimal("0")])
def test_no_rupees_question_for_an_amount_that_cannot_be_rupees(returned):
    with khalti_settings_with(resolver_returning(returned)):
        with pytest.raises(KhaltiConfigurationError, match="positive int") as caught:
            services.expected_amount(None, "ORD-1")
    assert "Rupees" not in str(caught.value)
