"""Money safety (issue 12): a payment Khalti completed is never recorded failed, and one
Khalti payment never pays two orders.

Each scenario the hostile review reproduced is a test here, run in process against the
shipped kit (``django_khalti.testing``) playing Khalti: a Khalti that is slow, repeats
itself, spells its states otherwise, answers for an idx as for a token, completes a
payment after we failed it. Scenarios 1, 2 and 4 are also run through gunicorn on a real
database in ``tests/system/test_reliability.py``.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import Client, override_settings
from django.urls import reverse
from django.utils import timezone

from django_khalti import services
from django_khalti.exceptions import KhaltiRefundUnknown
from django_khalti.models import Payment, Refund
from django_khalti.orders import KhaltiOrder
from shop.models import Order

pytestmark = pytest.mark.django_db

VERIFY_URL = reverse("django_khalti:verify")
Status = Payment.Status


@pytest.fixture
def orders(db):
    return {
        ref: Order.objects.create(reference=ref, total=total)
        for ref, total in [("ORD-A", 1000), ("ORD-B", 1000), ("ORD-C", 2000)]
    }


def post(client, payload):
    return client.post(VERIFY_URL, payload, content_type="application/json")


def reconcile(*args):
    call_command("khalti_reconcile", "--older-than", "0", *args, stdout=io.StringIO())


def khalti_settings(**changes):
    from django.conf import settings

    return override_settings(KHALTI={**settings.KHALTI, **changes})


# --- 1. a retry while Khalti is still processing the first verify ----------------------


@pytest.mark.django_db(transaction=True)
def test_a_retry_while_khalti_still_processes_the_first_verify_never_fails_the_payment(
    client, khalti, orders, signals
):
    """The buyer's page resubmits after our TIMEOUT while Khalti still works on the first
    verify. Khalti says Confirmed, so dj-khalti verifies again; Khalti completes the first
    and refuses the repeat. That refusal follows an attempt of unknown outcome: it is not
    final, status is asked, and the payment is verified, once."""
    paid = khalti.add_payment(amount=1000)
    first_done = threading.Event()

    def slow_first(request):
        time.sleep(1.5)  # Khalti completes it after our TIMEOUT of 1 s

    def repeat(request):
        # Khalti finishes the first, then refuses this repeat (state: already verified).
        deadline = time.monotonic() + 5
        while not khalti.payments[paid.token].verified and time.monotonic() < deadline:
            time.sleep(0.02)
        first_done.set()

    khalti.on_next("verify", slow_first)
    khalti.on_next("verify", repeat)
    payload = paid.payload("ORD-A")
    with khalti_settings(TIMEOUT=1):
        first = post(client, payload)
        assert first.status_code == 504
        assert Payment.objects.get().status == Status.PENDING
        retry = post(client, payload)  # at once, as README's page would after 2 s
    assert retry.status_code == 200, retry.json()
    assert first_done.is_set()
    payment = Payment.objects.get()
    assert (payment.status, payment.idx) == (Status.VERIFIED, paid.idx)
    assert [name for name, _, _ in signals] == ["verified"]
    # Khalti moved the money once, and the order stays claimed: no second payment.
    assert [call.status_code for call in khalti.calls if call.endpoint == "verify"] == [200, 400]
    second = khalti.add_payment(amount=1000)
    refused = post(client, second.payload("ORD-A"))
    # The shop's receiver marked the order paid, so its resolver hides it: 404.
    assert refused.json().get("code") == "unknown_order"
    assert not khalti.payments[second.token].verified


def test_a_refused_verify_after_an_unknown_attempt_fails_only_on_statuss_proof(
    client, khalti, orders, signals, django_capture_on_commit_callbacks
):
    """The first verify's outcome is unknown; Khalti in fact refused it. The retry's
    verify is refused as well: status ("Error": not found for this token and amount)
    proves nothing moved, and only then is the payment failed."""
    wrong = khalti.add_payment(amount=1500)  # Khalti refuses it for 1000
    khalti.fail_next("verify", "timeout")
    payload = {**wrong.payload("ORD-A"), "amount": 1000}
    assert post(client, payload).status_code == 504
    khalti.fail_next("status", "timeout")  # the retry cannot ask yet: nothing is decided
    assert post(client, payload).status_code == 504
    assert Payment.objects.get().status == Status.PENDING
    with django_capture_on_commit_callbacks(execute=True):
        response = post(client, payload)
    assert response.json().get("code") == "verification_failed"
    assert Payment.objects.get().status == Status.FAILED
    assert [name for name, _, _ in signals] == ["failed"]
    assert [c.endpoint for c in khalti.calls] == ["verify", "status", "status"]


# --- 2. one payment's idx presented as another's token ---------------------------------


def test_a_paid_payments_idx_sent_as_a_token_is_refused_before_khalti(client, khalti, orders):
    paid = khalti.add_payment(amount=1000)
    assert post(client, paid.payload("ORD-A")).status_code == 200
    khalti.reset_calls()
    attack = {"token": paid.idx, "amount": 1000, "product_identity": "ORD-B"}
    response = post(client, attack)
    assert (response.status_code, response.json().get("code")) == (409, "token_used")
    assert not khalti.calls
    assert not Payment.objects.filter(order_reference="ORD-B").exists()


def test_an_idx_a_pending_payments_page_reported_is_refused_on_khaltis_record(
    client, khalti, orders
):
    paid = khalti.add_payment(amount=1000, outcome="timeout_after_processing")
    assert post(client, paid.payload("ORD-A")).status_code == 504  # A pending, idx reported
    khalti.reset_calls()
    attack = {"token": paid.idx, "amount": 1000, "product_identity": "ORD-B"}
    # The browser's word, checked read-only: Khalti's records know it as a transaction's
    # id. Refused for good, and never sent to verify. (The attempt is kept, failed and
    # holding nothing, so that the same payload is answered from it.)
    assert post(client, attack).json().get("code") == "token_used"
    assert [call.endpoint for call in khalti.calls] == ["transaction"]
    assert not Payment.objects.filter(order_reference="ORD-B").exclude(status=Status.FAILED)
    assert not Payment.objects.filter(order_claim__isnull=False, order_reference="ORD-B")
    assert post(client, attack).json().get("code") == "verification_failed"
    assert [call.endpoint for call in khalti.calls] == ["transaction"]
    assert post(client, paid.payload("ORD-A")).status_code == 200  # A settles as ever


def test_an_idx_reported_by_a_settled_payment_locks_nobody_out(client, khalti, orders):
    """A buyer reports someone's token as the "idx" of their own payment: once that
    payment settles, the honest token still pays its order."""
    honest = khalti.add_payment(amount=1000)
    own = khalti.add_payment(amount=1000)
    assert post(client, {**own.payload("ORD-B"), "idx": honest.token}).status_code == 200
    garbage = {"token": "garbage", "amount": 1000, "product_identity": "ORD-C", "idx": honest.token}
    assert post(client, garbage).status_code == 400  # Khalti refuses the garbage token
    assert post(client, honest.payload("ORD-A")).status_code == 200


@pytest.mark.parametrize("honest_first", [False, True])
def test_a_payment_pending_for_good_that_reports_a_token_as_its_idx_locks_nobody_out(
    client, khalti, orders, signals, django_capture_on_commit_callbacks, honest_first
):
    """A page reports someone's token (a stolen one) as the "idx" of its own payment,
    whose token Khalti keeps at Initiated: that payment stays pending for good. The
    honest token still pays its order, whether it comes after it or was first posted
    before it (its answer lost) and is posted again."""
    honest = khalti.add_payment(amount=1000, outcome="timeout" if honest_first else None)
    if honest_first:
        assert post(client, honest.payload("ORD-A")).status_code == 504
    never_confirmed = khalti.add_payment(amount=1000, state="Initiated")
    squatter = {**never_confirmed.payload("ORD-B"), "idx": honest.token}
    assert post(client, squatter).json().get("code") == "in_progress"
    with django_capture_on_commit_callbacks(execute=True):
        reconcile()  # Khalti still says Initiated: it stays pending (the honest one settles)
    assert Payment.objects.get(order_reference="ORD-B").status == Status.PENDING
    with django_capture_on_commit_callbacks(execute=True):
        response = post(client, honest.payload("ORD-A"))
    assert response.status_code == 200, response.json()
    assert khalti.payments[honest.token].verified
    assert Order.objects.get(reference="ORD-A").paid
    assert [name for name, _, _ in signals] == ["verified"]


@pytest.mark.parametrize("claimed_idx", ["same", "none", "other"])
def test_an_idx_sent_as_a_token_never_verifies_a_second_order(
    client, khalti, orders, signals, django_capture_on_commit_callbacks, claimed_idx
):
    """Order A's page forwarded no idx, so dj-khalti does not know A's idx yet. A buyer
    posts it as B's token; verify's answer is unknown once; the resubmission asks
    status(token=<A's idx>), which Khalti answers Complete. Nothing ties that answer to
    B: B needs review, and is never verified."""
    paid = khalti.add_payment(amount=1000, outcome="timeout_after_processing")
    payload_a = paid.payload("ORD-A")
    del payload_a["idx"]
    assert post(client, payload_a).status_code == 504
    other = khalti.add_payment(amount=1000, verified=True)
    attack = {
        "token": paid.idx,
        "amount": 1000,
        "product_identity": "ORD-B",
        "idx": {"same": paid.idx, "none": "", "other": other.idx}[claimed_idx],
    }
    khalti.fail_next("verify", "server_error", key=paid.idx)
    assert post(client, attack).status_code == 502
    with django_capture_on_commit_callbacks(execute=True):
        response = post(client, attack)
    assert response.json().get("code") == "needs_review"
    b = Payment.objects.get(order_reference="ORD-B")
    assert b.status == Status.NEEDS_REVIEW
    assert b.idx is None  # nothing of A's is recorded on B: it cannot be refunded as B's
    assert "verified" not in [name for name, _, _ in signals]
    assert not Order.objects.get(reference="ORD-B").paid


# --- 3. a state spelled otherwise -------------------------------------------------------


@pytest.mark.parametrize("state", ["completed", "Complete", "COMPLETED", " Completed"])
def test_a_completed_record_however_spelled_is_paid_not_failed(
    client, khalti, orders, signals, django_capture_on_commit_callbacks, state
):
    paid = khalti.add_payment(amount=1000)
    record = paid.record()
    record["state"]["name"] = state
    khalti.answer_next("verify", json=record)
    with django_capture_on_commit_callbacks(execute=True):
        assert post(client, paid.payload("ORD-A")).status_code == 200
    assert Payment.objects.get().status == Status.VERIFIED
    assert [name for name, _, _ in signals] == ["verified"]


@pytest.mark.parametrize("state", ["complete", "COMPLETE", "Completed"])
def test_a_paid_status_however_spelled_is_paid(client, khalti, orders, state):
    paid = khalti.add_payment(amount=1000, outcome="timeout_after_processing")
    assert post(client, paid.payload("ORD-A")).status_code == 504
    khalti.answer_next("status", json={"status": True, "state": state, "detail": "ok"})
    assert post(client, paid.payload("ORD-A")).status_code == 200
    assert Payment.objects.get().status == Status.VERIFIED


@pytest.mark.parametrize("status", ["completed", "COMPLETED", "Completed "])
def test_a_completed_lookup_however_spelled_is_paid(client, khalti, orders, status):
    start = client.post(reverse("django_khalti:epayment-start", args=["ORD-A"]))
    assert start.status_code == 302
    epayment = khalti.last_epayment
    back = khalti.pay(epayment)
    khalti.answer_next("lookup", json={**epayment.lookup_body(), "status": status})
    client.get(back)
    assert Payment.objects.get().status == Status.VERIFIED


@pytest.mark.parametrize("state", ["Processing", "Settled", "", "Complete-ish"])
def test_a_state_khalti_never_documented_leaves_the_payment_pending(
    client, khalti, orders, signals, django_capture_on_commit_callbacks, state
):
    paid = khalti.add_payment(amount=1000, outcome="timeout_after_processing")
    assert post(client, paid.payload("ORD-A")).status_code == 504
    khalti.answer_next("status", json={"status": True, "state": state, "detail": "?"})
    with django_capture_on_commit_callbacks(execute=True):
        response = post(client, paid.payload("ORD-A"))
    assert response.status_code == 409  # not decided: pending, and asked again later
    payment = Payment.objects.get()
    assert (payment.status, payment.claimed_at) == (Status.PENDING, None)
    assert not signals


# --- 4. one order, one live payment, whatever the browser's spelling --------------------


def by_integer_id(request, product_identity):
    """A resolver on an integer id: "5" and "05" name one order."""
    order = Order.objects.filter(pk=int(product_identity), paid=False).first()
    return KhaltiOrder(str(order.pk), order.total) if order else None


@pytest.mark.parametrize(
    ("resolver", "spellings"),
    [
        ("tests.services.test_money_safety.by_integer_id", ["{pk}", "0{pk}"]),
        ("shop.khalti.order_amount", ["ORD-A", "ord-a"]),  # README's reference lookup
    ],
)
def test_two_spellings_of_one_order_are_one_claim(
    client, khalti, orders, signals, django_capture_on_commit_callbacks, resolver, spellings
):
    first, second = (s.format(pk=orders["ORD-A"].pk) for s in spellings)
    one = khalti.add_payment(amount=1000, outcome="timeout_after_processing")
    two = khalti.add_payment(amount=1000)
    with (
        khalti_settings(AMOUNT_RESOLVER=resolver),
        django_capture_on_commit_callbacks(execute=True),
    ):
        assert post(client, one.payload(first)).status_code == 504
        response = post(client, two.payload(second))
        # The first is settled first (Khalti completed it): the second is refused.
        assert response.json().get("code") == "already_paid"
    assert not khalti.payments[two.token].verified  # its money never moved
    assert [name for name, _, _ in signals] == ["verified"]
    payment = Payment.objects.get()
    assert payment.order_claim is not None
    assert payment.product_identity == first
    # The canonical reference is the resolver's: the shop's receivers look it up.
    canonical = str(orders["ORD-A"].pk) if "integer" in resolver else "ORD-A"
    assert payment.order_reference == canonical


def test_a_plain_int_resolver_still_works_and_names_the_reference_given(client, khalti, orders):
    def flat(request, product_identity):
        return 1000 if product_identity == "ANY" else None

    paid = khalti.add_payment(amount=1000)
    with khalti_settings(AMOUNT_RESOLVER=flat):
        assert post(client, paid.payload("ANY")).status_code == 200
    assert Payment.objects.get().order_reference == "ANY"


# --- 5. refunded at Khalti before we verified it ----------------------------------------


def test_refunded_before_verified_frees_the_order_and_tells_the_shop(
    client, khalti, orders, signals, django_capture_on_commit_callbacks
):
    refunded = khalti.add_payment(amount=1000, outcome="timeout_after_processing")
    assert post(client, refunded.payload("ORD-A")).status_code == 504
    khalti.set_state(refunded.token, "Refunded")  # the merchant refunded it in Khalti
    with django_capture_on_commit_callbacks(execute=True):
        response = post(client, refunded.payload("ORD-A"))
    assert response.json().get("code") == "verification_failed"
    assert [(name, kw["amount"]) for name, _, kw in signals] == [("refunded", 1000)]
    assert Payment.objects.get().verified_at is None
    # The order may be paid again.
    again = khalti.add_payment(amount=1000)
    assert post(client, again.payload("ORD-A")).status_code == 200


# --- 6. failed is not final when Khalti later completes the payment ---------------------


def start_and_cancel(client, khalti, reference="ORD-A"):
    assert client.post(reverse("django_khalti:epayment-start", args=[reference])).status_code == 302
    epayment = khalti.last_epayment
    client.get(khalti.cancel(epayment))
    payment = Payment.objects.get(pidx=epayment.pidx)
    assert payment.status == Status.FAILED
    return epayment, payment


def completes_at_khalti(khalti, epayment):
    epayment.status = "Completed"
    epayment.transaction_id = "TX-LATE"


def test_an_epayment_cancelled_then_completed_is_verified_on_its_return_page(
    client, khalti, orders, signals, django_capture_on_commit_callbacks, caplog
):
    with django_capture_on_commit_callbacks(execute=True):
        epayment, payment = start_and_cancel(client, khalti)
        completes_at_khalti(khalti, epayment)
        page = client.get(khalti.return_url(epayment))
    assert "Payment received" in page.content.decode()
    payment.refresh_from_db()
    assert (payment.status, payment.idx) == (Status.VERIFIED, "TX-LATE")
    assert [name for name, _, _ in signals] == ["failed", "verified"]
    assert Order.objects.get(reference="ORD-A").paid
    assert any(
        r.levelno >= logging.WARNING and "after it was recorded failed" in r.message
        for r in caplog.records
    )


def test_a_failed_payment_khalti_completes_for_a_paid_order_needs_review(
    client, khalti, orders, signals, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        epayment, payment = start_and_cancel(client, khalti)
        paid = khalti.add_payment(amount=1000)
        assert post(client, paid.payload("ORD-A")).status_code == 200  # paid by the widget
        completes_at_khalti(khalti, epayment)  # ... and the ePayment completes too
        Payment.objects.filter(pk=payment.pk).update(updated_at=timezone.now() - timedelta(hours=2))
        reconcile()
    payment.refresh_from_db()
    assert payment.status == Status.NEEDS_REVIEW
    assert payment.order_claim is None
    assert payment.refundable_amount == 1000  # the admin's refund takes it in one step
    assert [name for name, _, _ in signals] == ["failed", "verified", "needs_review"]


def test_reconcile_rechecks_recent_failed_payments_read_only(
    client, khalti, orders, signals, django_capture_on_commit_callbacks
):
    """A widget payment failed on a refusal that was not final: Khalti later completed
    it. khalti_reconcile re-checks recent failed payments with status (never verify)."""
    paid = khalti.add_payment(amount=1000)
    khalti.fail_next("verify", "rejected", key=paid.token)
    khalti.fail_next("status", "rejected", key=paid.token)  # "Error", that once
    with django_capture_on_commit_callbacks(execute=True):
        assert post(client, paid.payload("ORD-A")).status_code == 400
        khalti.payments[paid.token].verified = True  # Khalti completed it after all
        payment = Payment.objects.get()
        reconcile()  # failed just now: re-checked at most once an hour
        assert len(khalti.status_calls) == 1  # the one that proved the refusal
        Payment.objects.update(updated_at=timezone.now() - timedelta(hours=2))
        reconcile()
    payment.refresh_from_db()
    assert payment.status == Status.VERIFIED
    assert len(khalti.verify_calls) == 1  # only the first, refused one
    assert [name for name, _, _ in signals] == ["failed", "verified"]
    # Older than --failed-within: left alone.
    old = Payment.objects.create(
        token="old", product_identity="ORD-C", amount=2000, status=Status.FAILED
    )
    Payment.objects.filter(pk=old.pk).update(
        created_at=timezone.now() - timedelta(days=8), updated_at=timezone.now() - timedelta(days=8)
    )
    khalti.reset_calls()
    reconcile("--failed-within", "7")
    assert not khalti.calls


# --- 7. a stolen widget token cannot lock its buyer out ---------------------------------


def test_a_replayed_token_refused_by_khalti_can_still_pay_its_own_order(
    client, khalti, orders, signals, django_capture_on_commit_callbacks
):
    honest = khalti.add_payment(amount=1000)  # the buyer of ORD-A paid Rs 10
    # The token, stolen, is replayed on ORD-C for Rs 20: Khalti refuses that amount.
    with django_capture_on_commit_callbacks(execute=True):
        stolen = post(client, {**honest.payload("ORD-C"), "amount": 2000})
    assert stolen.json().get("code") == "verification_failed"
    with django_capture_on_commit_callbacks(execute=True):
        mine = post(client, honest.payload("ORD-A"))
    assert mine.status_code == 200, mine.json()
    assert Order.objects.get(reference="ORD-A").paid
    assert dict(Payment.objects.values_list("order_reference", "status")) == {
        "ORD-C": Status.FAILED,
        "ORD-A": Status.VERIFIED,
    }
    # Now the token is bound to its paid payment for good.
    for order, amount in [("ORD-C", 2000), ("ORD-B", 1000)]:
        again = post(client, {**honest.payload(order), "amount": amount})
        assert again.json().get("code") == "token_used"


def test_a_token_bound_to_a_live_payment_is_never_bound_again(client, khalti, orders):
    held = khalti.add_payment(amount=1000, outcome="timeout")
    assert post(client, held.payload("ORD-A")).status_code == 504
    # While its payment is pending, another order's submission may retry...
    assert post(client, held.payload("ORD-B")).json().get("code") == "in_progress"
    assert post(client, held.payload("ORD-A")).status_code == 200
    # ...once it is paid, the token is bound for good.
    assert post(client, held.payload("ORD-B")).json().get("code") == "token_used"


# --- the status endpoint's readable refusal proves nothing ------------------------------


STATUS_REFUSAL = {"token": ["Invalid token."]}


def test_a_readable_status_refusal_leaves_a_resubmitted_payment_pending_and_released(
    client, khalti, orders, signals, django_capture_on_commit_callbacks
):
    paid = khalti.add_payment(amount=1000, outcome="timeout")
    assert post(client, paid.payload("ORD-A")).status_code == 504
    khalti.answer_next("status", status=400, json=STATUS_REFUSAL)
    with django_capture_on_commit_callbacks(execute=True):
        response = post(client, paid.payload("ORD-A"))
    assert (response.status_code, response.json().get("code")) == (502, "khalti_unavailable")
    payment = Payment.objects.get()
    assert (payment.status, payment.claimed_at) == (Status.PENDING, None)
    assert payment.order_claim is not None
    assert not signals


def test_a_readable_status_refusal_leaves_a_reconciled_payment_pending_and_released(
    client, khalti, orders, signals, django_capture_on_commit_callbacks
):
    paid = khalti.add_payment(amount=1000, outcome="timeout")
    assert post(client, paid.payload("ORD-A")).status_code == 504
    khalti.answer_next("status", status=400, json=STATUS_REFUSAL)
    with (
        django_capture_on_commit_callbacks(execute=True),
        pytest.raises(CommandError, match="could not be reached for 1"),
    ):
        reconcile()
    payment = Payment.objects.get()
    assert (payment.status, payment.claimed_at) == (Status.PENDING, None)
    assert not signals


# --- found by the second, hostile review of this work ----------------------------------


def test_a_stolen_token_reported_as_an_idx_locks_nobody_out(
    client, khalti, orders, django_capture_on_commit_callbacks
):
    """The "idx" a page reports is the browser's word: reported by a refused payment,
    or by a buyer's own paid one, it never refuses the token's own buyer."""
    victim = khalti.add_payment(amount=1000)
    own = khalti.add_payment(amount=1000)
    garbage = {"token": "garbage", "amount": 1000, "product_identity": "ORD-C", "idx": victim.token}
    assert post(client, garbage).status_code == 400
    assert post(client, {**own.payload("ORD-B"), "idx": victim.token}).status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        mine = post(client, victim.payload("ORD-A"))
    assert mine.status_code == 200, mine.json()
    assert Order.objects.get(reference="ORD-A").paid


def test_a_failed_payment_never_holds_khaltis_transaction_id(
    client, khalti, orders, django_capture_on_commit_callbacks
):
    """A replay refused as a 200 record in state Failed naming the real transaction:
    the failed payment keeps no idx, so the honest payment still records its own."""
    honest = khalti.add_payment(amount=1000)
    refused = {**honest.record(), "state": {"name": "Failed"}}
    khalti.answer_next("verify", json=refused)
    khalti.answer_next("status", json={"status": False, "state": "Error", "detail": "x"})
    assert post(client, {**honest.payload("ORD-C"), "amount": 2000}).status_code == 400
    assert Payment.objects.get().idx is None
    with django_capture_on_commit_callbacks(execute=True):
        assert post(client, honest.payload("ORD-A")).status_code == 200
    assert Payment.objects.get(order_reference="ORD-A").idx == honest.idx
    assert Order.objects.get(reference="ORD-A").paid


@pytest.mark.django_db(transaction=True)
def test_a_repeat_refused_as_a_failed_record_after_a_lost_answer_never_fails_it(
    client, khalti, orders, signals
):
    """As the first scenario, with Khalti refusing the repeat as a 200 record in state
    Failed rather than HTTP 400: status decides, and the order is paid once."""
    paid = khalti.add_payment(amount=1000, outcome="timeout_after_processing")
    assert post(client, paid.payload("ORD-A")).status_code == 504
    khalti.answer_next("status", json={"status": True, "state": "Confirmed", "detail": ""})
    khalti.answer_next("verify", json={**paid.record(), "state": {"name": "Failed"}})
    assert post(client, paid.payload("ORD-A")).status_code == 200  # status: Complete
    second = khalti.add_payment(amount=1000)
    assert post(client, second.payload("ORD-A")).json().get("code") == "unknown_order"  # paid
    assert [name for name, _, _ in signals] == ["verified"]


def test_a_refused_duplicate_of_the_first_verify_never_fails_a_paid_payment(
    client, khalti, orders, signals, django_capture_on_commit_callbacks
):
    """The first verify was delivered twice (a proxy retrying): Khalti completed one
    delivery, and the refusal of the other is what we read. Status decides."""
    paid = khalti.add_payment(amount=1000)

    def delivered_twice(request):
        khalti.payments[paid.token].verified = True
        return 400, {"token": ["Invalid token."]}

    khalti.on_next("verify", delivered_twice)
    with django_capture_on_commit_callbacks(execute=True):
        response = post(client, paid.payload("ORD-A"))
    assert response.status_code == 200
    assert [name for name, _, _ in signals] == ["verified"]


def test_a_lagging_transaction_record_pays_the_order_and_a_refund_finds_its_idx_later(
    client, khalti, orders, signals, django_capture_on_commit_callbacks
):
    """Status proves the token's money moved; the record of the idx the page reported is
    not there yet. The order is paid, its idx unknown; a refund finds it once it is."""
    paid = khalti.add_payment(amount=1000, outcome="timeout_after_processing")
    assert post(client, paid.payload("ORD-A")).status_code == 504

    def lagging(request):
        return (404, {"detail": "Not found."}) if request.params["idx"] == paid.idx else None

    khalti.on_next("transaction", lagging, times=2)  # the token's and the idx's records
    with django_capture_on_commit_callbacks(execute=True):
        assert post(client, paid.payload("ORD-A")).status_code == 200
    payment = Payment.objects.get()
    assert (payment.status, payment.idx) == (Status.VERIFIED, None)
    assert [name for name, _, _ in signals] == ["verified"]
    again = khalti.add_payment(amount=1000)
    assert post(client, again.payload("ORD-A")).json().get("code") == "unknown_order"  # paid
    with django_capture_on_commit_callbacks(execute=True):
        services.refund_payment(payment)
    payment.refresh_from_db()
    assert (payment.status, payment.idx) == (Status.REFUNDED, paid.idx)
    assert khalti.payments[paid.token].refunds == [(1000, None)]


def test_a_completed_lookup_marked_refunded_is_not_paid(
    client, khalti, orders, signals, django_capture_on_commit_callbacks
):
    assert client.post(reverse("django_khalti:epayment-start", args=["ORD-A"])).status_code == 302
    epayment = khalti.last_epayment
    back = khalti.pay(epayment)
    khalti.answer_next("lookup", json={**epayment.lookup_body(), "refunded": True})
    with django_capture_on_commit_callbacks(execute=True):
        client.get(back)
    assert Payment.objects.get().status == Status.PENDING  # it contradicts itself: unknown
    assert not signals


def test_a_refunded_transactions_idx_sent_as_a_token_is_not_a_refund_of_this_order(
    client, khalti, orders, signals, django_capture_on_commit_callbacks
):
    other = khalti.add_payment(amount=1000, verified=True, state="Refunded")
    attack = {"token": other.idx, "amount": 1000, "product_identity": "ORD-B"}
    khalti.fail_next("verify", "server_error")
    assert post(client, attack).status_code == 502
    with django_capture_on_commit_callbacks(execute=True):
        post(client, attack)
    assert Payment.objects.get().status == Status.FAILED
    assert "refunded" not in [name for name, _, _ in signals]


@pytest.mark.django_db(transaction=True)
def test_a_replay_still_at_khalti_asks_the_honest_buyer_to_retry_not_to_give_up(
    client, khalti, orders
):
    honest = khalti.add_payment(amount=1000)
    khalti.on_next("verify", lambda request: None, delay=1.0)  # Khalti takes 1 s to refuse
    replayed = {}

    def replay():
        try:
            replayed["answer"] = Client().post(
                VERIFY_URL,
                {**honest.payload("ORD-C"), "amount": 2000},
                content_type="application/json",
            )
        finally:
            connection.close()

    attacker = threading.Thread(target=replay)
    attacker.start()
    deadline = time.monotonic() + 5
    while not Payment.objects.filter(order_reference="ORD-C").exists():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    mine = post(client, honest.payload("ORD-A"))
    attacker.join()
    assert replayed["answer"].json().get("code") == "verification_failed"
    assert mine.json().get("code") == "in_progress"  # README's page retries it...
    assert post(client, honest.payload("ORD-A")).status_code == 200  # ...and it pays


def test_payments_that_never_paid_their_order_are_not_counted_paid(
    client, khalti, orders, django_capture_on_commit_callbacks
):
    review = khalti.add_payment(amount=1000, outcome="wrong_amount")
    assert post(client, review.payload("ORD-A")).json().get("code") == "needs_review"
    refunded = khalti.add_payment(amount=1000, outcome="timeout_after_processing")
    assert post(client, refunded.payload("ORD-B")).status_code == 504
    khalti.set_state(refunded.token, "Refunded")
    post(client, refunded.payload("ORD-B"))
    payment = Payment.objects.get(order_reference="ORD-A")
    khalti.payments[review.token].verified = True
    with django_capture_on_commit_callbacks(execute=True):
        services.refund_payment(payment)  # the admin's one step
    assert set(Payment.objects.values_list("status", flat=True)) == {Status.REFUNDED}
    assert not Payment.objects.paid().exists()


def test_an_unknown_refund_of_a_payment_paid_for_another_amount_is_settled(client, khalti, orders):
    paid = khalti.add_payment(amount=1100)  # the buyer paid Rs 11 at Khalti
    khalti.answer_next("verify", json=paid.record())
    khalti.payments[paid.token].verified = True
    response = post(client, {**paid.payload("ORD-A"), "amount": 1000})
    assert response.json().get("code") == "needs_review"
    payment = Payment.objects.get()
    khalti.fail_next("refund", "timeout_after_processing")
    with pytest.raises(KhaltiRefundUnknown):
        services.refund_payment(payment)
    Refund.objects.update(created_at=timezone.now() - timedelta(hours=1))
    refund = services.reconcile_refund(Refund.objects.get())
    assert refund.status == Refund.Status.SUCCEEDED  # status asked for the amount paid
    assert khalti.status_calls[-1] == (paid.token, 1100)


def test_a_failed_epayment_whose_pidx_khalti_forgot_stays_failed(client, khalti, orders):
    assert client.post(reverse("django_khalti:epayment-start", args=["ORD-A"])).status_code == 302
    epayment = khalti.last_epayment
    client.get(khalti.cancel(epayment))
    forgotten = {"detail": "Not found.", "error_key": "validation_error"}
    khalti.answer_next("lookup", status=404, json=forgotten)
    page = client.get(khalti.return_url(epayment))  # the return page re-checks it
    assert page.status_code == 200
    Payment.objects.update(updated_at=timezone.now() - timedelta(hours=2))
    khalti.answer_next("lookup", status=404, json=forgotten)
    reconcile()  # and so does khalti_reconcile, without a traceback
    assert Payment.objects.get().status == Status.FAILED
