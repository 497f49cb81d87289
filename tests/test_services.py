"""Business rules of services.py: the shop's amount, reconciliation, transitions."""

from datetime import timedelta

import pytest
from django.test import RequestFactory, override_settings
from django.utils import timezone

from django_khalti import services
from django_khalti.exceptions import (
    KhaltiConfigurationError,
    KhaltiUnavailable,
    KhaltiUnknownOrder,
)
from django_khalti.models import Payment

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
    with khalti_settings_with("tests.test_services.recording_resolver"):
        assert services.expected_amount(request, "ORD-9") == 1500
    assert seen == {"request": request, "product_identity": "ORD-9"}


@pytest.mark.parametrize(
    "outcome",
    [None, ValueError("invalid literal for int()"), Payment.DoesNotExist()],
)
def test_resolver_finding_no_order_means_unknown_order(outcome):
    with khalti_settings_with(resolver_returning(outcome)):
        with pytest.raises(KhaltiUnknownOrder):
            services.expected_amount(None, "x")


@pytest.mark.parametrize("bad", [10.0, "1000", True, 0, -5])
def test_resolver_returning_something_else_than_positive_paisa_is_a_shop_bug(bad):
    with khalti_settings_with(resolver_returning(bad)):
        with pytest.raises(KhaltiConfigurationError, match="positive int"):
            services.expected_amount(None, "x")


def test_resolver_not_configured_is_a_configuration_error():
    with khalti_settings_with(None):
        with pytest.raises(KhaltiConfigurationError):
            services.expected_amount(None, "x")


def pending(token="tok", claimed_at=None, attempts=1):
    return Payment.objects.create(
        token=token, product_identity="ORD-1", amount=1000, order_claim="ORD-1",
        claimed_at=claimed_at, attempts=attempts,
    )


def test_reconcile_complete_verifies_and_signals_once(
    khalti, signals, django_capture_on_commit_callbacks
):
    payment = pending()
    khalti.status("tok", 1000, "status_complete")
    with django_capture_on_commit_callbacks(execute=True):
        assert services.reconcile(payment).status == Payment.Status.VERIFIED
        services.reconcile(payment)  # already settled: no call, no signal
    assert [name for name, _, _ in signals] == ["verified"]
    assert len(khalti.calls) == 1
    payment.refresh_from_db()
    assert payment.verified_at is not None
    assert payment.order_claim == "ORD-1"


def test_reconcile_confirmed_verifies_with_the_expected_amount(khalti, signals):
    payment = pending()
    khalti.status("tok", 1000, "status_confirmed")
    khalti.verify("tok", 1000)
    assert services.reconcile(payment).status == Payment.Status.VERIFIED
    assert payment.idx == "8xmeJnNXfoVjCvGcZiiGe7"
    assert payment.fee_amount == 30


def test_reconcile_error_fails_and_frees_the_order_for_another_token(
    khalti, signals, django_capture_on_commit_callbacks
):
    payment = pending()
    khalti.status("tok", 1000, "status_error")
    with django_capture_on_commit_callbacks(execute=True):
        assert services.reconcile(payment).status == Payment.Status.FAILED
    assert "Transaction not found" in payment.failure_reason
    assert payment.order_claim is None
    assert [name for name, _, _ in signals] == ["failed"]
    assert signals[0][2]["reason"] == payment.failure_reason


def test_reconcile_initiated_stays_pending_and_unclaimed(khalti, signals):
    payment = pending()
    khalti.status("tok", 1000, "status_initiated")
    assert services.reconcile(payment).status == Payment.Status.PENDING
    payment.refresh_from_db()
    assert payment.claimed_at is None
    assert not signals


def test_reconcile_when_khalti_is_down_raises_and_stays_pending(khalti):
    payment = pending()
    khalti.rsps.get("https://khalti.test/api/v2/payment/status/", status=500)
    with pytest.raises(KhaltiUnavailable):
        services.reconcile(payment)
    payment.refresh_from_db()
    assert payment.status == Payment.Status.PENDING
    assert payment.claimed_at is None


def test_reconcile_leaves_a_payment_another_worker_holds(khalti):
    payment = pending(claimed_at=timezone.now())
    assert services.reconcile(payment).status == Payment.Status.PENDING
    assert not khalti.calls


def test_a_stale_claim_is_taken_over(khalti):
    payment = pending(claimed_at=timezone.now() - timedelta(minutes=5), attempts=1)
    khalti.status("tok", 1000, "status_complete")
    assert services.reconcile(payment).status == Payment.Status.VERIFIED
    payment.refresh_from_db()
    assert payment.attempts == 2


def test_transition_changes_a_status_only_once(signals, django_capture_on_commit_callbacks):
    payment = pending()
    other_copy = Payment.objects.get(pk=payment.pk)
    with django_capture_on_commit_callbacks(execute=True):
        assert services._transition(payment, Payment.Status.VERIFIED) is True
        assert services._transition(other_copy, Payment.Status.FAILED, failure_reason="x") is False
    assert other_copy.status == Payment.Status.VERIFIED  # sees the winner's row
    assert [name for name, _, _ in signals] == ["verified"]


def test_signal_is_sent_only_after_commit(signals, django_capture_on_commit_callbacks):
    payment = pending()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        services._transition(payment, Payment.Status.VERIFIED)
    assert not signals
    assert len(callbacks) == 1
    callbacks[0]()
    assert [name for name, _, _ in signals] == ["verified"]
