"""The verify endpoint, row by row of its response table."""

import json

import pytest
import requests
from django.db import DatabaseError
from django.test import override_settings
from django.urls import reverse

from django_khalti.models import Payment, order_key
from shop.models import Order

from ..conftest import fixture, transaction_record

pytestmark = pytest.mark.django_db
URL = reverse("django_khalti:verify")


def post(client, data, **kwargs):
    return client.post(URL, data=json.dumps(data), content_type="application/json", **kwargs)


def test_url_is_named_and_prefixed():
    assert URL == "/khalti/verify/"


def test_verified_answers_200_marks_order_paid_and_fires_signal_once(
    client, expect_khalti, payload, order, signals, django_capture_on_commit_callbacks
):
    expect_khalti.verify(payload["token"], 1000)
    with django_capture_on_commit_callbacks(execute=True):
        response = post(client, payload)

    assert response.status_code == 200
    body = response.json()
    payment = Payment.objects.get()
    assert body == {
        "status": "verified",
        "payment": {
            "id": str(payment.id),
            "product_identity": "ORD-1",
            "amount": 1000,
            "status": "verified",
            "idx": "8xmeJnNXfoVjCvGcZiiGe7",
            "verified_at": body["payment"]["verified_at"],
        },
    }
    assert body["payment"]["verified_at"]
    assert payment.status == Payment.Status.VERIFIED
    assert payment.fee_amount == 30
    assert payment.mobile == "98XXXXXXX9"
    assert payment.khalti_response["idx"] == "8xmeJnNXfoVjCvGcZiiGe7"
    assert [(name, kw["payment"].pk) for name, _, kw in signals] == [("verified", payment.pk)]
    assert signals[0][1] is Payment
    order.refresh_from_db()
    assert order.paid


def test_response_carries_no_payer_details_or_raw_record(client, expect_khalti, payload):
    expect_khalti.verify(payload["token"], 1000)
    text = post(client, payload).content.decode()
    assert "Test User" not in text
    assert "98XXXXXXX9" not in text
    assert "merchant" not in text
    assert "fee_amount" not in text


def test_form_body_is_accepted(client, expect_khalti, payload):
    expect_khalti.verify(payload["token"], 1000)
    response = client.post(URL, data={**payload, "amount": "1000"})
    assert response.status_code == 200
    assert response.json()["status"] == "verified"


def test_same_payload_again_is_200_without_calling_khalti_or_signalling_again(
    client, expect_khalti, payload, order, signals, django_capture_on_commit_callbacks
):
    expect_khalti.verify(payload["token"], 1000)
    with django_capture_on_commit_callbacks(execute=True):
        first = post(client, payload)
    # The receiver has run: the shop's resolver no longer knows the (paid) order.
    order.refresh_from_db()
    assert order.paid
    with django_capture_on_commit_callbacks(execute=True):
        second = post(client, payload)
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert len(expect_khalti.calls) == 1
    assert len(signals) == 1


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"token": None}, "token"),
        ({"token": ""}, "token"),
        ({"amount": None}, "amount"),
        ({"amount": 0}, "amount"),
        ({"amount": -1000}, "amount"),
        ({"amount": 1000.0}, "amount"),
        ({"amount": 999.5}, "amount"),
        ({"amount": True}, "amount"),
        ({"amount": "10e2"}, "amount"),
        ({"amount": 2**64}, "amount"),
        ({"amount": [1000]}, "amount"),
        ({"product_identity": None}, "product_identity"),
        ({"product_identity": {"id": 1}}, "product_identity"),
        ({"token": "x" * 256}, "token"),
    ],
)
def test_malformed_input_is_400_field_errors_and_never_reaches_khalti(
    client, expect_khalti, payload, change, field
):
    data = {**payload, **change}
    data = {k: v for k, v in data.items() if v is not None}
    response = post(client, data)
    assert response.status_code == 400
    assert field in response.json()
    assert not expect_khalti.calls
    assert not Payment.objects.exists()


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        ("{not json", "application/json", 400),
        ("[1, 2]", "application/json", 400),
        ("<xml/>", "application/xml", 415),
    ],
)
def test_unparseable_bodies_are_4xx_json(client, expect_khalti, body, content_type, status):
    response = client.post(URL, data=body, content_type=content_type)
    assert response.status_code == status
    assert response["Content-Type"] == "application/json"
    assert response.json()
    assert not expect_khalti.calls


def test_get_is_405(client):
    response = client.get(URL)
    assert response.status_code == 405
    assert response.json()["detail"]


def test_unknown_order_is_404(client, expect_khalti, payload):
    response = post(client, {**payload, "product_identity": "NOPE"})
    assert response.status_code == 404
    assert response.json()["code"] == "unknown_order"
    assert response.json()["detail"]
    assert not expect_khalti.calls


def test_amount_differing_from_the_shops_is_400_amount_mismatch(client, expect_khalti, payload):
    response = post(client, {**payload, "amount": 10})
    assert response.status_code == 400
    assert response.json()["code"] == "amount_mismatch"
    assert not expect_khalti.calls
    assert not Payment.objects.exists()


def test_token_replayed_on_another_order_is_409_token_used(client, expect_khalti, payload):
    Order.objects.create(reference="ORD-2", total=1000)
    expect_khalti.verify(payload["token"], 1000)
    assert post(client, payload).status_code == 200

    response = post(client, {**payload, "product_identity": "ORD-2"})
    assert response.status_code == 409
    assert response.json()["code"] == "token_used"
    assert len(expect_khalti.calls) == 1
    assert not Order.objects.get(reference="ORD-2").paid


def test_token_replayed_for_another_amount_is_409_token_used(client, expect_khalti, payload, order):
    expect_khalti.verify(payload["token"], 1000)
    assert post(client, payload).status_code == 200
    # The shop changed the order's total since (or another order costs more).
    Order.objects.create(reference="ORD-3", total=5000)
    response = post(client, {**payload, "product_identity": "ORD-3", "amount": 5000})
    assert response.status_code == 409
    assert response.json()["code"] == "token_used"
    assert len(expect_khalti.calls) == 1


def test_second_token_for_a_paid_order_the_resolver_hides_is_404_and_never_verified(
    client, expect_khalti, payload, order, django_capture_on_commit_callbacks
):
    expect_khalti.verify(payload["token"], 1000)
    with django_capture_on_commit_callbacks(execute=True):
        assert post(client, payload).status_code == 200
    order.refresh_from_db()
    assert order.paid  # and so the shop's resolver answers None for it now

    # Not 409 already_paid: an order the resolver hides is nobody's to learn about.
    response = post(client, {**payload, "token": "another-token"})
    assert response.status_code == 404
    assert response.json()["code"] == "unknown_order"
    assert len(expect_khalti.calls) == 1
    assert Payment.objects.count() == 1


def test_second_token_for_a_paid_order_the_resolver_names_is_409_already_paid(
    client, expect_khalti, payload, order
):
    expect_khalti.verify(payload["token"], 1000)
    assert post(client, payload).status_code == 200  # no receiver ran: the order looks unpaid
    response = post(client, {**payload, "token": "another-token"})
    assert (response.status_code, response.json()["code"]) == (409, "already_paid")
    assert len(expect_khalti.calls) == 1
    assert Payment.objects.count() == 1


def test_second_token_for_a_paid_order_the_resolver_still_knows_is_409_already_paid(
    client, expect_khalti, payload, order
):
    expect_khalti.verify(payload["token"], 1000)
    assert post(client, payload).status_code == 200  # receiver not run: order unpaid
    response = post(client, {**payload, "token": "another-token"})
    assert response.status_code == 409
    assert response.json()["code"] == "already_paid"
    assert len(expect_khalti.calls) == 1


def test_second_token_while_first_is_pending_settles_the_first_and_is_409_in_progress(
    client, expect_khalti, payload
):
    first = Payment.objects.create(
        token="first", product_identity="ORD-1", amount=1000, order_claim=order_key("ORD-1")
    )
    expect_khalti.status("first", 1000, "status_initiated")  # Khalti cannot tell yet
    response = post(client, {**payload, "token": "second"})
    assert response.status_code == 409
    assert response.json()["code"] == "in_progress"
    assert not expect_khalti.calls_to("https://khalti.test/api/v2/payment/verify/")
    first.refresh_from_db()
    assert first.status == Payment.Status.PENDING


def test_second_token_while_first_is_pending_and_paid_is_409_already_paid(
    client, expect_khalti, payload
):
    Payment.objects.create(
        token="first",
        product_identity="ORD-1",
        amount=1000,
        order_claim=order_key("ORD-1"),
        claimed_idx="IDX-FIRST",
    )
    expect_khalti.status("first", 1000, "status_complete")
    expect_khalti.not_a_transaction("first")
    expect_khalti.transaction("IDX-FIRST")
    response = post(client, {**payload, "token": "second"})
    assert response.status_code == 409
    assert response.json()["code"] == "already_paid"
    assert Payment.objects.get(token="first").status == Payment.Status.VERIFIED
    assert not Payment.objects.filter(token="second").exists()


def test_second_token_after_the_pending_first_turns_out_failed_pays_the_order(
    client, expect_khalti, payload
):
    Payment.objects.create(
        token="first", product_identity="ORD-1", amount=1000, order_claim=order_key("ORD-1")
    )
    expect_khalti.status("first", 1000, "status_error")
    expect_khalti.verify("second", 1000)
    response = post(client, {**payload, "token": "second"})
    assert response.status_code == 200
    assert Payment.objects.get(token="first").status == Payment.Status.FAILED
    assert Payment.objects.get(token="second").status == Payment.Status.VERIFIED


def test_second_token_while_the_first_is_in_flight_is_409_without_asking_khalti(
    client, expect_khalti, payload
):
    from django.utils import timezone

    Payment.objects.create(
        token="first",
        product_identity="ORD-1",
        amount=1000,
        order_claim=order_key("ORD-1"),
        claimed_at=timezone.now(),
    )
    response = post(client, {**payload, "token": "second"})
    assert response.status_code == 409
    assert response.json()["code"] == "in_progress"
    assert not expect_khalti.calls


def every_order_costs_1000(request, product_identity):
    return 1000


@override_settings(
    KHALTI={
        "SECRET_KEY": "test_secret_key_testproject",
        "BASE_URL": "https://khalti.test/",
        "AMOUNT_RESOLVER": "tests.api.test_views.every_order_costs_1000",
    }
)
def test_order_references_differing_only_in_case_are_different_orders(
    client, expect_khalti, payload
):
    # (The shop's own Order table could not even hold both on MariaDB: a resolver
    # that knows every reference stands in for a shop whose references differ in case.)
    expect_khalti.verify(payload["token"], 1000)
    expect_khalti.verify("lower", 1000, json=transaction_record(idx="idx-of-lower"))
    assert post(client, payload).status_code == 200
    response = post(client, {**payload, "token": "lower", "product_identity": "ord-1"})
    assert response.status_code == 200


def test_token_being_verified_right_now_is_409_in_progress(client, expect_khalti, payload):
    from django.utils import timezone

    Payment.objects.create(
        token=payload["token"],
        product_identity="ORD-1",
        amount=1000,
        order_claim=order_key("ORD-1"),
        claimed_at=timezone.now(),
        attempts=1,
    )
    response = post(client, payload)
    assert response.status_code == 409
    assert response.json()["code"] == "in_progress"
    assert not expect_khalti.calls


def test_khalti_rejecting_the_token_is_400_and_payment_failed(
    client, expect_khalti, payload, order, signals, django_capture_on_commit_callbacks
):
    expect_khalti.refused(payload["token"], 1000)
    with django_capture_on_commit_callbacks(execute=True):
        response = post(client, payload)
    assert response.status_code == 400
    assert response.json()["code"] == "verification_failed"
    assert "Invalid token." in response.json()["detail"]
    payment = Payment.objects.get()
    assert payment.status == Payment.Status.FAILED
    assert "Invalid token." in payment.failure_reason
    assert "Transaction not found" in payment.failure_reason  # status's proof
    assert payment.khalti_response == fixture("status_error")
    assert [name for name, _, _ in signals] == ["failed"]
    assert "Invalid token." in signals[0][2]["reason"]
    order.refresh_from_db()
    assert not order.paid


def test_failed_token_resubmitted_gives_the_same_answer_without_calling_khalti(
    client, expect_khalti, payload
):
    expect_khalti.refused(payload["token"], 1000)
    first = post(client, payload)
    second = post(client, payload)
    assert first.status_code == second.status_code == 400
    assert first.json() == second.json()
    assert len(expect_khalti.calls) == 2  # verify, then status's proof; nothing the second time


def test_new_token_after_a_failed_one_can_pay_the_order(client, expect_khalti, payload, order):
    expect_khalti.refused(payload["token"], 1000)
    expect_khalti.verify("second-token", 1000)
    assert post(client, payload).status_code == 400
    response = post(client, {**payload, "token": "second-token"})
    assert response.status_code == 200
    assert Payment.objects.verified().get().token == "second-token"


@pytest.mark.parametrize(
    ("record", "code", "status", "reason"),
    [
        (transaction_record(state="Failed"), "verification_failed", "failed", "Failed"),
        # Money moved for another amount: never paid, never failed; a person decides.
        (transaction_record(amount=10), "needs_review", "needs_review", "10 paisa"),
        (transaction_record(amount=100000), "needs_review", "needs_review", "100000 paisa"),
    ],
)
def test_khalti_record_not_completed_or_for_another_amount_is_400(
    client, expect_khalti, payload, order, record, code, status, reason
):
    expect_khalti.verify(payload["token"], 1000, json=record)
    if status == "failed":
        expect_khalti.status(payload["token"], 1000, "status_error")  # the proof nothing moved
    response = post(client, payload)
    assert response.status_code == 400
    assert response.json()["code"] == code
    payment = Payment.objects.get()
    assert payment.status == status
    assert reason in payment.failure_reason
    # Failed: nothing moved, the order is let go. Needs review: this token's money
    # moved, so the order is kept (not charged again) until a person refunds it.
    assert (payment.order_claim is None) == (status == "failed")
    order.refresh_from_db()
    assert not order.paid


@pytest.mark.parametrize("state", ["Pending", "Initiated", "Processing", "Completed!"])
def test_a_record_in_a_state_not_final_or_unknown_leaves_the_payment_pending(
    client, expect_khalti, payload, order, state, signals, django_capture_on_commit_callbacks
):
    expect_khalti.verify(payload["token"], 1000, json=transaction_record(state=state))
    with django_capture_on_commit_callbacks(execute=True):
        response = post(client, payload)
    assert response.status_code == 502
    assert response.json()["code"] == "khalti_unavailable"
    payment = Payment.objects.get()
    assert payment.status == Payment.Status.PENDING
    assert payment.claimed_at is None  # a retry asks Khalti's status at once
    assert not signals


@pytest.mark.parametrize("state", ["completed", "Complete", "COMPLETED", " Completed "])
def test_a_completed_record_is_paid_however_khalti_spells_it(
    client, expect_khalti, payload, order, state, signals, django_capture_on_commit_callbacks
):
    expect_khalti.verify(payload["token"], 1000, json=transaction_record(state=state))
    with django_capture_on_commit_callbacks(execute=True):
        response = post(client, payload)
    assert response.status_code == 200
    assert Payment.objects.get().status == Payment.Status.VERIFIED
    assert [name for name, _, _ in signals] == ["verified"]


@pytest.mark.parametrize(
    ("mock", "status"),
    [
        ({"body": requests.exceptions.ConnectTimeout()}, 504),
        ({"body": requests.exceptions.ReadTimeout()}, 504),
        ({"body": requests.exceptions.ConnectionError("reset")}, 503),
        ({"status": 500, "body": "<html>oops</html>"}, 502),
        ({"status": 502, "body": "Bad gateway"}, 502),
        ({"status": 503, "json": {"detail": "maintenance"}}, 502),
        ({"status": 429, "json": {"detail": "slow down"}}, 502),
        ({"status": 200, "body": "<html>not json</html>"}, 502),
        ({"status": 200, "body": '{"idx": "abc", "state": '}, 502),
        ({"status": 200, "json": {"state": {"name": "Completed"}, "amount": 1000}}, 502),
        (
            {"status": 200, "json": {"idx": "a", "state": {"name": "Completed"}, "amount": "1000"}},
            502,
        ),
        ({"status": 200, "json": {"idx": "a", "amount": 1000}}, 502),
        ({"status": 200, "json": ["not", "an", "object"]}, 502),
        ({"status": 401, "json": {"detail": "Invalid token."}}, 502),
        ({"status": 403, "json": {"detail": "Forbidden"}}, 502),
        ({"status": 400, "body": "<html>bad request</html>"}, 502),
        ({"status": 400, "json": {"weird": {"shape": 1}}}, 502),
        ({"status": 404, "json": {"detail": "Not found."}}, 502),
    ],
)
def test_khalti_unavailable_or_unusable_is_5xx_and_payment_stays_pending(
    client, expect_khalti, payload, order, signals, django_capture_on_commit_callbacks, mock, status
):
    expect_khalti.verify(payload["token"], 1000, **mock)
    with django_capture_on_commit_callbacks(execute=True):
        response = post(client, payload)
    assert response.status_code == status
    assert response.json()["code"] == "khalti_unavailable"
    payment = Payment.objects.get()
    assert payment.status == Payment.Status.PENDING
    assert payment.claimed_at is None  # released: a resubmission need not wait
    assert not signals
    order.refresh_from_db()
    assert not order.paid


def test_resubmit_after_unknown_outcome_asks_status_and_never_verifies_blindly(
    client, expect_khalti, payload, signals, django_capture_on_commit_callbacks
):
    expect_khalti.verify(payload["token"], 1000, body=requests.exceptions.ReadTimeout())
    assert post(client, payload).status_code == 504
    # Khalti did complete the payment; the answer was lost. A second verify
    # would be wrong: the status endpoint tells the truth, and Khalti's record of
    # the idx the buyer's page reported ties it to this payment. While that
    # record is out of reach, the payment stays pending.
    expect_khalti.status(payload["token"], 1000, "status_complete")
    expect_khalti.not_a_transaction(payload["token"])
    expect_khalti.transaction(payload["idx"], body=requests.exceptions.ConnectionError())
    assert post(client, payload).status_code == 503
    assert Payment.objects.get().status == Payment.Status.PENDING
    expect_khalti.status(payload["token"], 1000, "status_complete")
    expect_khalti.not_a_transaction(payload["token"])
    expect_khalti.transaction(payload["idx"])
    with django_capture_on_commit_callbacks(execute=True):
        response = post(client, payload)
    assert response.status_code == 200
    assert response.json()["status"] == "verified"
    assert response.json()["payment"]["idx"] == payload["idx"]
    assert len(expect_khalti.calls_to("https://khalti.test/api/v2/payment/verify/")) == 1
    assert len(signals) == 1


def test_resubmit_after_unknown_outcome_verifies_when_khalti_awaits_it(
    client, expect_khalti, payload
):
    expect_khalti.verify(payload["token"], 1000, status=503, body="down")
    assert post(client, payload).status_code == 502
    expect_khalti.status(payload["token"], 1000, "status_confirmed")
    expect_khalti.verify(payload["token"], 1000)
    response = post(client, payload)
    assert response.status_code == 200
    assert Payment.objects.get().idx == "8xmeJnNXfoVjCvGcZiiGe7"


def test_our_database_failing_after_khalti_answered_leaves_it_pending(
    client, expect_khalti, payload, monkeypatch, signals, django_capture_on_commit_callbacks
):
    from django_khalti.services import state

    expect_khalti.verify(payload["token"], 1000)
    real_transition = state._transition

    def broken(*args, **kwargs):
        raise DatabaseError("connection lost")

    monkeypatch.setattr(state, "_transition", broken)
    with django_capture_on_commit_callbacks(execute=True):
        response = post(client, payload)
    assert response.status_code == 502
    assert response.json()["code"] == "khalti_unavailable"
    assert Payment.objects.get().status == Payment.Status.PENDING
    assert not signals

    # Later, once the claim is stale, a resubmission settles it from Khalti's status,
    # tied to this payment by the transaction the page reported.
    monkeypatch.setattr(state, "_transition", real_transition)
    Payment.objects.update(claimed_at=Payment.objects.get().created_at.replace(year=2000))
    expect_khalti.status(payload["token"], 1000, "status_complete")
    expect_khalti.not_a_transaction(payload["token"])
    expect_khalti.transaction(payload["idx"])
    with django_capture_on_commit_callbacks(execute=True):
        response = post(client, payload)
    assert response.status_code == 200
    assert len(signals) == 1


def test_receiver_that_raises_is_logged_and_payment_stays_verified(
    client, expect_khalti, payload, caplog, django_capture_on_commit_callbacks
):
    from django_khalti.signals import payment_verified

    def broken_receiver(sender, payment, **kwargs):
        raise RuntimeError("shop bug")

    payment_verified.connect(broken_receiver)
    try:
        expect_khalti.verify(payload["token"], 1000)
        with django_capture_on_commit_callbacks(execute=True):
            response = post(client, payload)
    finally:
        payment_verified.disconnect(broken_receiver)
    assert response.status_code == 200
    assert Payment.objects.get().status == Payment.Status.VERIFIED
    assert "shop bug" in caplog.text


@override_settings(
    KHALTI={
        "SECRET_KEY": "test_secret_key_testproject",
        "BASE_URL": "https://khalti.test/",
        "AMOUNT_RESOLVER": "shop.khalti.order_amount",
    }
)
def test_secret_key_never_in_responses_or_logs(client, expect_khalti, payload, caplog):
    caplog.set_level("DEBUG")
    expect_khalti.verify(payload["token"], 1000, status=401, json=fixture("error_bad_key"))
    response = post(client, payload)
    assert response.status_code == 502
    assert "test_secret_key_testproject" not in response.content.decode()
    assert "test_secret_key_testproject" not in caplog.text
    assert "SECRET_KEY" in caplog.text  # the log says what to check, not its value


@pytest.mark.parametrize("resolver", [None, "shop.nowhere.resolver", "shop.models.Order.objects"])
def test_a_misconfigured_shop_gets_503_json_and_a_logged_error(
    client, expect_khalti, payload, caplog, resolver
):
    with override_settings(
        KHALTI={
            "SECRET_KEY": "test_secret_key_testproject",
            "BASE_URL": "https://khalti.test/",
            "AMOUNT_RESOLVER": resolver,
        }
    ):
        response = post(client, payload)
    assert response.status_code == 503
    assert response.json()["code"] == "not_configured"
    assert "AMOUNT_RESOLVER" in caplog.text
    assert "AMOUNT_RESOLVER" not in response.content.decode()
    assert not expect_khalti.calls


def test_same_token_and_order_with_another_amount_is_409_token_used(
    client, expect_khalti, payload, order
):
    expect_khalti.verify(payload["token"], 1000)
    assert post(client, payload).status_code == 200
    # The shop raised the order's total since; the old token cannot pay the new amount.
    Order.objects.filter(pk=order.pk).update(total=2000, paid=False)
    response = post(client, {**payload, "amount": 2000})
    assert response.status_code == 409
    assert response.json()["code"] == "token_used"
    assert len(expect_khalti.calls) == 1


def resolver_raising_type_error(request, product_identity):
    raise TypeError("order_amount() takes 1 positional argument but 2 were given")


def resolver_raising_http404(request, product_identity):
    from django.http import Http404

    raise Http404("No Order matches the given query.")


@pytest.mark.parametrize(
    ("resolver", "status", "code"),
    [
        ("tests.api.test_views.resolver_raising_type_error", 503, "not_configured"),
        ("tests.api.test_views.resolver_raising_http404", 404, "unknown_order"),
    ],
)
def test_a_resolver_raising_is_never_a_500(
    client, expect_khalti, payload, caplog, resolver, status, code
):
    with override_settings(
        KHALTI={
            "SECRET_KEY": "test_secret_key_testproject",
            "BASE_URL": "https://khalti.test/",
            "AMOUNT_RESOLVER": resolver,
        }
    ):
        response = post(client, payload)
    assert response.status_code == status
    assert response.json()["code"] == code
    assert not Payment.objects.exists()
    assert not expect_khalti.calls


def resolver_in_rupees(request, product_identity):
    from decimal import Decimal

    return Decimal("10.00")  # the order's price field, in rupees


def test_a_resolver_returning_rupees_is_503_json_and_asks_in_the_log(
    client, expect_khalti, payload, caplog
):
    with override_settings(
        KHALTI={
            "SECRET_KEY": "test_secret_key_testproject",
            "BASE_URL": "https://khalti.test/",
            "AMOUNT_RESOLVER": "tests.api.test_views.resolver_in_rupees",
        }
    ):
        response = post(client, payload)
    assert response.status_code == 503
    assert response.json()["code"] == "not_configured"
    assert "returned 10.00 (a Decimal)" in caplog.text
    assert "Rupees instead of paisa? Rs 10.00 is 1000 paisa." in caplog.text
    assert "Rupees" not in response.content.decode()  # the shop's bug, not the buyer's
    assert not Payment.objects.exists()
    assert not expect_khalti.calls


@pytest.mark.parametrize(
    "change", [{"TIMEOUT": "abc"}, {"BASE_URL": None}, {"SECRET_KEY": ""}], ids=str
)
def test_broken_client_settings_are_503_before_anything_is_written(
    client, expect_khalti, payload, change
):
    config = {
        "SECRET_KEY": "test_secret_key_testproject",
        "BASE_URL": "https://khalti.test/",
        "AMOUNT_RESOLVER": "shop.khalti.order_amount",
        **change,
    }
    with override_settings(KHALTI=config):
        response = post(client, payload)
    assert response.status_code == 503
    assert response.json()["code"] == "not_configured"
    assert not Payment.objects.exists()  # no orphan claim on the order


def test_our_database_failing_before_khalti_is_503_json(
    client, expect_khalti, payload, monkeypatch
):
    from django_khalti.services import widget

    def broken(*args, **kwargs):
        raise DatabaseError("database is locked")

    monkeypatch.setattr(widget, "_claim_order", broken)
    response = post(client, payload)
    assert response.status_code == 503
    assert response.json()["code"] == "unavailable"
    assert "locked" not in response.content.decode()
    assert not expect_khalti.calls


def test_a_long_payer_mobile_is_trimmed_not_a_database_error(client, expect_khalti, payload):
    record = transaction_record()
    record["user"]["mobile"] = "98" + "X" * 60
    expect_khalti.verify(payload["token"], 1000, json=record)
    response = post(client, payload)
    assert response.status_code == 200
    assert len(Payment.objects.get().mobile) == 32


def test_status_failed_after_unknown_outcome_fails_the_payment(client, expect_khalti, payload):
    expect_khalti.verify(payload["token"], 1000, body=requests.exceptions.ConnectionError())
    assert post(client, payload).status_code == 503
    expect_khalti.status(
        payload["token"],
        1000,
        json={"status": False, "state": "Failed", "detail": "Payment failed"},
    )
    response = post(client, payload)
    assert response.status_code == 400
    assert response.json()["code"] == "verification_failed"
    assert "Payment failed" in Payment.objects.get().failure_reason


def test_a_paid_status_naming_no_transaction_pays_the_order_with_its_idx_unknown(
    client, expect_khalti, payload, order, signals, django_capture_on_commit_callbacks
):
    """Khalti's status answer names no transaction, and the page reported no idx; Khalti
    knows no transaction whose idx is the token. "Complete" for this token and amount is
    this token's money: the order is paid; Khalti's transaction id stays unknown."""
    del payload["idx"]
    expect_khalti.verify(payload["token"], 1000, body=requests.exceptions.ReadTimeout())
    assert post(client, payload).status_code == 504
    expect_khalti.status(payload["token"], 1000, "status_complete")
    expect_khalti.not_a_transaction(payload["token"])
    with django_capture_on_commit_callbacks(execute=True):
        response = post(client, payload)
    assert response.status_code == 200
    assert response.json()["status"] == "verified"
    assert Payment.objects.get().idx is None
    assert [name for name, _, _ in signals] == ["verified"]
    order.refresh_from_db()
    assert order.paid


def test_a_record_khalti_already_refunded_is_not_paid(
    client, expect_khalti, payload, order, signals, django_capture_on_commit_callbacks
):
    record = transaction_record()
    record["refunded"] = True
    expect_khalti.verify(payload["token"], 1000, json=record)
    with django_capture_on_commit_callbacks(execute=True):
        response = post(client, payload)
    assert response.status_code == 400
    assert response.json()["code"] == "verification_failed"
    payment = Payment.objects.get()
    assert payment.status == Payment.Status.REFUNDED
    # The shop hears of it, and the order is free to be paid again.
    assert [(name, kwargs["amount"]) for name, _, kwargs in signals] == [("refunded", 1000)]
    assert payment.order_claim is None
    order.refresh_from_db()
    assert not order.paid
    # The same payload again gives the same answer.
    assert post(client, payload).status_code == 400
