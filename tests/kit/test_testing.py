"""``django_khalti.testing``: the fake Khalti a shop's tests use, proven against the real app.

Here the kit's fixture is used under the name shops use, ``khalti`` (this
project's own ``tests/conftest.py`` has a fixture of that name, canned answers
and expectations over the kit, which the module-level fixture below overrides
for this file).
"""

import contextlib
import os
import re
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
from django.conf import settings as django_settings
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone

from django_khalti import services
from django_khalti.client import KhaltiClient
from django_khalti.exceptions import (
    KhaltiBadResponse,
    KhaltiConnectionError,
    KhaltiNotRefundable,
    KhaltiRefundFailed,
    KhaltiRefundUnknown,
    KhaltiRejected,
    KhaltiTimeout,
)
from django_khalti.models import Payment, Refund
from django_khalti.testing import OUTCOMES, KhaltiFake
from shop.models import Order, OrderEvent

from ..conftest import KhaltiExpectations

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]
VERIFY_URL = reverse("django_khalti:verify")
INITIATE_URL = reverse("django_khalti:epayment-initiate")
Status = Payment.Status


def verify(client, payload):
    return client.post(VERIFY_URL, payload, content_type="application/json")


def initiate(client, order):
    response = client.post(
        INITIATE_URL,
        {"product_identity": order.reference, "product_name": "Dragon"},
        content_type="application/json",
    )
    assert response.status_code == 201, response.content
    return response.json()


def events():
    return list(OrderEvent.objects.order_by("pk").values_list("kind", flat=True))


def paid(order):
    order.refresh_from_db()
    return order.paid


# --- the widget flow ------------------------------------------------------------------


def test_a_widget_payment_is_verified_through_the_real_endpoint(
    client, khalti, order, django_capture_on_commit_callbacks
):
    payment = khalti.add_payment(amount=1000)
    with django_capture_on_commit_callbacks(execute=True):
        response = verify(client, payment.payload("ORD-1"))

    assert response.status_code == 200
    assert response.json()["payment"]["idx"] == payment.idx
    assert paid(order)
    assert events() == ["paid"]
    row = Payment.objects.get()
    assert (row.status, row.token, row.idx) == (Status.VERIFIED, payment.token, payment.idx)
    assert (row.fee_amount, row.mobile) == (30, "98XXXXXXX9")
    assert khalti.verify_calls == [(payment.token, 1000)]
    assert khalti.status_calls == []
    assert khalti.transaction_calls == []
    (call,) = khalti.calls
    assert (call.endpoint, call.method, call.authorized, call.outcome, call.status_code) == (
        "verify",
        "POST",
        True,
        None,
        200,
    )
    assert call.url == "https://khalti.test/api/v2/payment/verify/"
    # Khalti's state moved: verified now, and a second verify is refused.
    assert payment.verified
    assert KhaltiClient.from_settings().status(payment.token, 1000).state == "Complete"


#: Each outcome of a first verify: what the buyer's page gets, and the payment's status.
VERIFY_OUTCOMES = [
    ("rejected", 400, "verification_failed", Status.FAILED),
    ("wrong_amount", 400, "needs_review", Status.NEEDS_REVIEW),
    ("timeout", 504, "khalti_unavailable", Status.PENDING),
    ("timeout_after_processing", 504, "khalti_unavailable", Status.PENDING),
    ("connection_error", 503, "khalti_unavailable", Status.PENDING),
    ("server_error", 502, "khalti_unavailable", Status.PENDING),
    ("not_json", 502, "khalti_unavailable", Status.PENDING),
    ("unauthorized", 502, "khalti_unavailable", Status.PENDING),
]


def test_every_outcome_is_tried():
    assert sorted(OUTCOMES) == sorted(outcome for outcome, *_ in VERIFY_OUTCOMES)


@pytest.mark.parametrize(("outcome", "http", "code", "status"), VERIFY_OUTCOMES)
def test_each_outcome_of_verify_reaches_the_buyer_as_the_app_promises(
    client, khalti, order, outcome, http, code, status, django_capture_on_commit_callbacks
):
    payment = khalti.add_payment(amount=1000, outcome=outcome)
    with django_capture_on_commit_callbacks(execute=True):
        response = verify(client, payment.payload("ORD-1"))

    assert (response.status_code, response.json()["code"]) == (http, code)
    assert Payment.objects.get().status == status
    assert not paid(order)
    assert events() == (["payment_failed"] if status == Status.FAILED else [])
    assert khalti.verify_calls == [(payment.token, 1000)]
    # A refusal is failed only on the status endpoint's proof ("Error": not found).
    asked = ["verify", "status"] if outcome == "rejected" else ["verify"]
    assert [(c.endpoint, c.outcome) for c in khalti.calls] == [(e, outcome) for e in asked]


def test_an_unknown_token_is_refused_by_khalti(client, khalti, order):
    response = verify(client, {"token": "never-paid", "amount": 1000, "product_identity": "ORD-1"})

    assert (response.status_code, response.json()["code"]) == (400, "verification_failed")
    assert khalti.verify_calls == [("never-paid", 1000)]
    assert khalti.calls[0].status_code == 400
    assert "Invalid token." in Payment.objects.get().failure_reason


def test_a_buyer_who_paid_less_is_refused_by_khalti_for_the_orders_amount(client, khalti, order):
    Order.objects.filter(pk=order.pk).update(total=2000)
    payment = khalti.add_payment(amount=1000)  # paid Rs 10 for a Rs 20 order

    # The page claims Rs 20: the app asks Khalti for the order's amount, Khalti refuses.
    response = verify(client, payment.payload("ORD-1", amount=2000))
    assert (response.status_code, response.json()["code"]) == (400, "verification_failed")
    assert khalti.verify_calls == [(payment.token, 2000)]
    # The page tells the truth: the app refuses without asking Khalti.
    other = khalti.add_payment(amount=1000)
    assert verify(client, other.payload("ORD-1")).json()["code"] == "amount_mismatch"
    assert len(khalti.verify_calls) == 1


def test_after_a_timeout_a_resubmission_asks_status_then_verifies(
    client, khalti, order, django_capture_on_commit_callbacks
):
    payment = khalti.add_payment(amount=1000, outcome="timeout")
    assert verify(client, payment.payload("ORD-1")).status_code == 504
    assert Payment.objects.get().status == Status.PENDING
    assert not paid(order)

    with django_capture_on_commit_callbacks(execute=True):
        response = verify(client, payment.payload("ORD-1"))

    assert response.status_code == 200
    assert paid(order)
    assert events() == ["paid"]
    # Khalti never saw the first verify: status says Confirmed, so verify again.
    assert khalti.status_calls == [(payment.token, 1000)]
    assert khalti.verify_calls == [(payment.token, 1000)] * 2
    assert [c.endpoint for c in khalti.calls] == ["verify", "status", "verify"]


def test_after_a_lost_answer_a_resubmission_settles_without_verifying_again(
    client, khalti, order, django_capture_on_commit_callbacks
):
    payment = khalti.add_payment(amount=1000, outcome="timeout_after_processing")
    assert verify(client, payment.payload("ORD-1")).status_code == 504
    assert payment.verified  # Khalti did verify it: the money moved

    with django_capture_on_commit_callbacks(execute=True):
        response = verify(client, payment.payload("ORD-1"))

    assert response.status_code == 200
    assert paid(order)
    assert events() == ["paid"]
    assert khalti.verify_calls == [(payment.token, 1000)]  # never twice
    assert khalti.status_calls == [(payment.token, 1000)]
    # The token is checked to be no transaction's idx, then the widget's idx with Khalti.
    assert khalti.transaction_calls == [payment.token, payment.idx]
    assert Payment.objects.get().idx == payment.idx


def test_a_wrong_secret_key_gets_401_from_khalti_and_502_from_the_app(
    client, khalti, order, settings
):
    payment = khalti.add_payment(amount=1000)
    khalti.secret_key = "test_secret_key_khalti_knows"  # the shop is configured with another

    response = verify(client, payment.payload("ORD-1"))

    assert (response.status_code, response.json()["code"]) == (502, "khalti_unavailable")
    assert Payment.objects.get().status == Status.PENDING
    (call,) = khalti.calls
    assert (call.authorized, call.status_code) == (False, 401)
    assert not payment.verified


@pytest.mark.parametrize(
    ("state", "verified", "answer"),
    [
        ("Initiated", False, "Initiated"),
        ("Completed", False, "Confirmed"),
        ("Completed", True, "Complete"),
        ("Failed", False, "Failed"),
        ("Refunded", True, "Refunded"),
        ("partially refunded", True, "Partially refunded"),
    ],
)
def test_status_answers_by_khaltis_state(khalti, state, verified, answer):
    payment = khalti.add_payment(amount=1000, state=state, verified=verified)
    client = KhaltiClient.from_settings()

    assert client.status(payment.token, 1000).state == answer
    assert client.status(payment.idx, 1000).state == answer  # by idx as well
    assert client.status(payment.token, 999).state == "Error"  # wrong amount: not found
    assert client.status("unknown", 1000).raw == {
        "status": False,
        "state": "Error",
        "detail": "Transaction not found",
    }


def test_a_payment_refunded_at_khalti_before_verification_is_reconciled(
    khalti, order, django_capture_on_commit_callbacks
):
    payment = khalti.add_payment(amount=1000, state="Refunded")
    row = Payment.objects.create(
        token=payment.token, product_identity="ORD-1", amount=1000, claimed_idx=payment.idx
    )

    with django_capture_on_commit_callbacks(execute=True):  # a service: not a request
        assert services.reconcile(row).status == Status.REFUNDED
    assert khalti.status_calls == [(payment.token, 1000)]


# --- the ePayment flow ------------------------------------------------------------------


def test_an_epayment_is_initiated_paid_and_verified_on_return(
    client, khalti, order, django_capture_on_commit_callbacks
):
    started = initiate(client, order)
    epayment = khalti.last_epayment
    assert (started["pidx"], started["payment_url"]) == (epayment.pidx, epayment.payment_url)
    (sent,) = khalti.initiate_calls
    assert (sent["amount"], sent["purchase_order_id"], sent["purchase_order_name"]) == (
        1000,
        "ORD-1",
        "Dragon",
    )
    assert sent["return_url"] == "http://testserver/khalti/epayment/return/"
    assert khalti.lookup_calls == []

    back = khalti.pay(epayment)  # the buyer pays on Khalti's page and is sent back
    query = dict(parse_qsl(urlsplit(back).query))
    assert back.startswith("http://testserver/khalti/epayment/return/?")
    assert query["pidx"] == epayment.pidx
    assert query["status"] == "Completed"
    assert query["transaction_id"] == query["tidx"] == epayment.transaction_id
    assert (query["amount"], query["purchase_order_id"]) == ("1000", "ORD-1")
    with django_capture_on_commit_callbacks(execute=True):
        response = client.get(back)

    assert response.status_code == 200
    row = Payment.objects.get()
    assert (row.status, row.pidx, row.idx) == (
        Status.VERIFIED,
        epayment.pidx,
        epayment.transaction_id,
    )
    assert paid(order)
    assert events() == ["paid"]
    assert khalti.lookup_calls == [epayment.pidx]


@pytest.mark.parametrize("buyer", ["cancel", "expire"])
def test_an_epayment_canceled_or_expired_fails_on_return(
    client, khalti, order, buyer, django_capture_on_commit_callbacks
):
    pidx = initiate(client, order)["pidx"]
    if buyer == "cancel":
        back = khalti.cancel(pidx)
        assert dict(parse_qsl(urlsplit(back).query))["status"] == "User canceled"
    else:
        khalti.expire(pidx)
        back = khalti.return_url(pidx)
    with django_capture_on_commit_callbacks(execute=True):
        assert client.get(back).status_code == 200

    assert Payment.objects.get().status == Status.FAILED
    assert not paid(order)
    assert events() == ["payment_failed"]
    assert khalti.calls[-1].status_code == 400  # Khalti answers both with HTTP 400


def test_a_pending_epayment_stays_pending_until_khalti_completes_it(
    client, khalti, order, django_capture_on_commit_callbacks
):
    pidx = initiate(client, order)["pidx"]
    assert client.get(khalti.pay(pidx, status="Pending")).status_code == 200
    assert Payment.objects.get().status == Status.PENDING

    khalti.pay(pidx)  # Khalti settles it later
    with django_capture_on_commit_callbacks(execute=True):
        client.get(khalti.return_url(pidx))  # the buyer reloads
    assert Payment.objects.get().status == Status.VERIFIED
    assert paid(order)
    assert khalti.lookup_calls == [pidx, pidx]


@pytest.mark.parametrize(
    ("status", "http"),
    [
        ("Initiated", 200),
        ("Pending", 200),
        ("Completed", 200),
        ("Expired", 400),
        ("User canceled", 400),
        ("Refunded", 200),
        ("Partially Refunded", 200),
    ],
)
def test_lookup_answers_by_status(khalti, status, http):
    epayment = khalti.add_epayment(amount=1000, status=status)

    answer = KhaltiClient.from_settings().lookup(epayment.pidx)

    assert (answer.status, answer.total_amount) == (status, 1000)
    assert khalti.calls[-1].status_code == http
    assert (answer.transaction_id is None) == (status in ("Initiated", "Expired", "User canceled"))
    assert answer.refunded == ("Refunded" in status)


def test_lookup_of_an_unknown_pidx_and_a_link_past_its_time(khalti):
    client = KhaltiClient.from_settings()
    with pytest.raises(KhaltiRejected) as caught:
        client.lookup("no-such-pidx")
    assert caught.value.khalti_status == 404
    late = khalti.add_epayment(amount=1000, expires_at=timezone.now() - timedelta(seconds=1))
    assert client.lookup(late.pidx).status == "Expired"


def test_initiate_refuses_like_khalti(khalti):
    client = KhaltiClient.from_settings()
    with pytest.raises(KhaltiRejected) as caught:
        client.initiate(
            return_url="http://testserver/back/",
            website_url="http://testserver",
            amount=500,
            purchase_order_id="ORD-1",
            purchase_order_name="Dragon",
        )
    assert caught.value.body == {
        "amount": ["Amount should be greater than Rs. 10, that is 1000 paisa."],
        "error_key": "validation_error",
    }
    assert khalti.epayments == {}


def test_an_epayment_that_times_out_on_return_is_settled_by_a_reload(
    client, khalti, order, django_capture_on_commit_callbacks
):
    pidx = initiate(client, order)["pidx"]
    khalti.fail_next("lookup", "timeout", key=pidx)
    back = khalti.pay(pidx)
    assert client.get(back).status_code == 200
    assert Payment.objects.get().status == Status.PENDING

    with django_capture_on_commit_callbacks(execute=True):
        client.get(back)
    assert Payment.objects.get().status == Status.VERIFIED
    assert [c.outcome for c in khalti.calls] == [None, "timeout", None]


# --- refunds ----------------------------------------------------------------------------


@pytest.fixture
def verified(client, khalti, order):
    """A widget payment of ORD-1 verified through the app: (Khalti's side, our row)."""
    payment = khalti.add_payment(amount=1000)
    assert verify(client, payment.payload("ORD-1")).status_code == 200
    return payment, Payment.objects.get()


def test_refunds_are_tracked_by_khalti(khalti, verified, django_capture_on_commit_callbacks):
    payment, row = verified

    with django_capture_on_commit_callbacks(execute=True):  # a service: not a request
        services.refund_payment(row, 400)
    assert khalti.refund_calls == [(payment.idx, 400, None)]
    assert (payment.state, payment.refunded_amount) == ("Partially refunded", 400)
    assert KhaltiClient.from_settings().status(payment.token, 1000).state == "Partially refunded"

    with django_capture_on_commit_callbacks(execute=True):
        services.refund_payment(row)  # the rest
    assert khalti.refund_calls[-1] == (payment.idx, 600, None)
    assert (payment.state, payment.refunds) == ("Refunded", [(400, None), (600, None)])
    row.refresh_from_db()
    assert (row.status, row.refunded_amount) == (Status.REFUNDED, 1000)

    with pytest.raises(KhaltiNotRefundable):
        services.refund_payment(row)
    assert len(khalti.refund_calls) == 2


def test_a_full_refund_sends_an_empty_body_and_an_epayment_is_refunded_by_transaction_id(
    client, khalti, order, django_capture_on_commit_callbacks
):
    pidx = initiate(client, order)["pidx"]
    client.get(khalti.pay(pidx))
    row = Payment.objects.get()

    with django_capture_on_commit_callbacks(execute=True):  # a service: not a request
        services.refund_payment(row)

    epayment = khalti.epayment(pidx)
    assert khalti.refund_calls == [(epayment.transaction_id, None, None)]
    assert KhaltiClient.from_settings().lookup(pidx).status == "Refunded"


@pytest.mark.parametrize(
    ("outcome", "raised", "refund_status", "refunded_at_khalti"),
    [
        ("rejected", KhaltiRefundFailed, Refund.Status.FAILED, 0),
        ("timeout", KhaltiRefundUnknown, Refund.Status.PENDING, 0),
        ("timeout_after_processing", KhaltiRefundUnknown, Refund.Status.PENDING, 1000),
        ("server_error", KhaltiRefundUnknown, Refund.Status.PENDING, 0),
    ],
)
def test_refund_outcomes(khalti, verified, outcome, raised, refund_status, refunded_at_khalti):
    payment, row = verified
    khalti.fail_next("refund", outcome, key=payment.token)  # any name of the payment will do

    with pytest.raises(raised):
        services.refund_payment(row)

    assert Refund.objects.get().status == refund_status
    assert payment.refunded_amount == refunded_at_khalti
    assert khalti.refund_calls == [(payment.idx, None, None)]


# --- choosing answers, recording calls, no network -------------------------------------


def test_fail_next_counts_calls_and_answer_next_gives_any_answer(khalti):
    client = KhaltiClient.from_settings()
    payment = khalti.add_payment(amount=1000)
    khalti.fail_next("any", "connection_error", times=2)
    khalti.answer_next("status", status=200, json={"status": True, "state": "Bogus", "detail": ""})

    for _ in range(2):
        with pytest.raises(Exception, match="could not be reached"):
            client.status(payment.token, 1000)
    assert client.status(payment.token, 1000).state == "Bogus"
    assert client.status(payment.token, 1000).state == "Confirmed"
    assert [(c.outcome, c.status_code) for c in khalti.calls] == [
        ("connection_error", None),
        ("connection_error", None),
        ("answer", 200),
        (None, 200),
    ]

    khalti.fail_next("status", "server_error", times=None, key="someone-else")
    assert client.status(payment.token, 1000).state == "Confirmed"
    khalti.reset_calls()
    assert khalti.calls == []
    assert khalti.status_calls == []


def test_each_choice_tells_which_calls_it_answered(khalti):
    client = KhaltiClient.from_settings()
    payment = khalti.add_payment(amount=1000)
    down = khalti.fail_next("status", "server_error", key=payment.token)
    bogus = khalti.answer_next("status", json={"status": True, "state": "Bogus", "detail": ""})
    assert (down.used, down.spent, bogus.used) == (False, False, False)

    with pytest.raises(Exception, match="could not be reached"):
        client.status(payment.token, 1000)
    assert client.status(payment.token, 1000).state == "Bogus"
    assert client.status(payment.token, 1000).state == "Confirmed"  # Khalti's state again

    assert down.calls == [khalti.calls[0]]
    assert bogus.calls == [khalti.calls[1]]
    assert (down.spent, bogus.spent) == (True, True)
    assert [c.choice for c in khalti.calls] == [down, bogus, None]


def test_on_next_lets_a_callback_answer(khalti):
    client = KhaltiClient.from_settings()
    payment = khalti.add_payment(amount=1000)
    seen = []

    def watch(request):  # None: Khalti answers by its state
        seen.append(request)

    khalti.on_next("verify", watch)
    khalti.on_next("status", lambda request: "rejected")
    khalti.on_next(
        "status",
        lambda request: (200, {"status": True, "state": "Odd", "detail": request.params["token"]}),
    )
    khalti.on_next("status", lambda request: (200, "<html>maintenance</html>"))
    khalti.on_next("status", lambda request: requests.exceptions.ReadTimeout("slow"))

    def boom(request):
        raise requests.exceptions.ConnectionError("refused")

    khalti.on_next("status", boom)

    assert client.verify(payment.token, 1000).idx == payment.idx
    (request,) = seen
    assert (request.endpoint, request.method, request.authorized) == ("verify", "POST", True)
    assert request.params == {"token": payment.token, "amount": 1000}
    assert request.headers["Authorization"] == "Key test_secret_key_testproject"
    assert client.status(payment.token, 1000).state == "Error"
    status = client.status(payment.token, 1000)
    assert (status.state, status.detail) == ("Odd", payment.token)
    with pytest.raises(KhaltiBadResponse):
        client.status(payment.token, 1000)
    with pytest.raises(KhaltiTimeout):
        client.status(payment.token, 1000)
    with pytest.raises(KhaltiConnectionError):
        client.status(payment.token, 1000)
    assert [(c.outcome, c.status_code) for c in khalti.calls] == [
        (None, 200),
        ("rejected", 200),
        ("answer", 200),
        ("answer", 200),
        ("callback", None),
        ("callback", None),
    ]
    assert client.status(payment.token, 1000).state == "Complete"  # all used up


def test_on_next_is_not_reached_by_a_wrong_key_and_refuses_nonsense(khalti):
    payment = khalti.add_payment(amount=1000)
    called = []
    choice = khalti.on_next("verify", called.append)
    khalti.secret_key = "test_secret_key_other"
    with pytest.raises(KhaltiBadResponse):
        KhaltiClient.from_settings().verify(payment.token, 1000)  # 401 from Khalti
    assert called == []
    assert not choice.used
    with pytest.raises(TypeError, match="callable"):
        khalti.on_next("verify", "rejected")
    with pytest.raises(ValueError, match="delay"):
        khalti.answer_next("verify", json={}, delay=-1)

    khalti.secret_key = "test_secret_key_testproject"
    khalti.on_next("status", lambda request: "slow")
    with pytest.raises(ValueError, match="unknown outcome 'slow'"):
        KhaltiClient.from_settings().status(payment.token, 1000)
    khalti.on_next("status", lambda request: 42)
    with pytest.raises(TypeError, match="must return"):
        KhaltiClient.from_settings().status(payment.token, 1000)


def test_a_delayed_answer_lets_other_calls_through_meanwhile(khalti):
    import threading
    import time

    slow, quick = khalti.add_payment(amount=1000), khalti.add_payment(amount=2000)
    khalti.answer_next(
        "status",
        key=slow.token,
        delay=0.5,
        json={"status": True, "state": "Initiated", "detail": "slow"},
    )
    khalti.fail_next("status", "timeout", key=quick.token, delay=0.1)
    client = KhaltiClient.from_settings()
    answers: dict[object, Any] = {}

    def ask(payment):
        started = time.monotonic()
        try:
            answers[payment.token] = client.status(payment.token, payment.amount).detail
        except Exception as exc:
            answers[payment.token] = type(exc).__name__
        answers[payment.token, "took"] = time.monotonic() - started

    threads = [threading.Thread(target=ask, args=(p,)) for p in (slow, quick)]
    for thread in threads:
        thread.start()
        time.sleep(0.05)  # the slow one is asked first
    for thread in threads:
        thread.join()
    assert answers[slow.token] == "slow"
    assert answers[quick.token] == "KhaltiTimeout"
    assert answers[slow.token, "took"] >= 0.5
    assert answers[quick.token, "took"] < 0.4  # not held up behind the slow answer
    assert [c.params["token"] for c in khalti.calls] == [quick.token, slow.token]


def test_an_answer_slower_than_the_timeout_ends_the_call_at_it_and_khalti_goes_on(khalti):
    """As with a real Khalti: the call raises KhaltiTimeout at its deadline, while
    Khalti still completes the verify it was asked for, a moment later."""
    import time

    paid = khalti.add_payment(amount=1000)
    choice = khalti.on_next("verify", lambda request: None, delay=0.8)
    client = KhaltiClient("test_secret_key_testproject", khalti.base_url, timeout=0.3)
    started = time.monotonic()
    with pytest.raises(KhaltiTimeout):
        client.verify(paid.token, 1000)
    assert time.monotonic() - started < 0.6
    assert not khalti.payments[paid.token].verified  # Khalti is still at it
    until = time.monotonic() + 5
    while not choice.calls and time.monotonic() < until:
        time.sleep(0.02)
    assert khalti.payments[paid.token].verified
    assert [call.status_code for call in choice.calls] == [200]


def test_bad_choices_are_refused_at_once(khalti):
    with pytest.raises(ValueError, match="Unknown outcome"):
        khalti.fail_next("verify", "slow")
    with pytest.raises(ValueError, match="Unknown endpoint"):
        khalti.fail_next("verfiy", "timeout")
    with pytest.raises(ValueError, match="wrong_amount"):
        khalti.fail_next("refund", "wrong_amount")
    with pytest.raises(ValueError, match="Unknown widget state"):
        khalti.add_payment(amount=1000, state="Paid")
    payment = khalti.add_epayment(amount=1000, status="Expired")
    with pytest.raises(ValueError, match="cannot be paid"):
        khalti.pay(payment.pidx)


@pytest.mark.parametrize("amount", [1, 999, 10])  # 10: Rs 10 given in rupees
def test_no_payment_below_khaltis_minimum_can_be_added(khalti, amount):
    # Khalti's widget and initiate take nothing below Rs 10: no token of it can exist.
    with pytest.raises(ValueError, match=r"below Rs 10 \(1000 paisa\)"):
        khalti.add_payment(amount=amount)
    with pytest.raises(ValueError, match=r"below Rs 10 \(1000 paisa\)"):
        khalti.add_epayment(amount=amount)
    assert (khalti.payments, khalti.epayments) == ({}, {})
    assert khalti.add_payment(amount=1000).amount == 1000  # the minimum itself is fine


def test_verify_of_an_amount_below_khaltis_minimum_is_refused_as_khalti_does(khalti):
    # A payment changed behind the fake's back: still no payment of Rs 5 at Khalti.
    payment = khalti.add_payment(amount=1000)
    payment.amount = 500
    answer = requests.post(
        f"{khalti.base_url}api/v2/payment/verify/",
        json={"token": payment.token, "amount": 500},
        headers={"Authorization": f"Key {django_settings.KHALTI['SECRET_KEY']}"},
        timeout=1,
    )
    assert (answer.status_code, answer.json()) == (400, {"token": ["Invalid token."]})
    assert not payment.verified


def test_no_call_ever_reaches_the_network(khalti):
    for url in (
        "https://example.com/",
        "https://khalti.com/api/v2/payment/verify/",
        "https://khalti.test/api/v2/payment/unknown/",
    ):
        with pytest.raises(requests.ConnectionError, match="Connection refused by Responses"):
            requests.post(url, json={}, timeout=1)
    assert khalti.calls == []


def test_the_fake_answers_where_khalti_settings_point_when_the_call_is_made(
    client, khalti, order, django_capture_on_commit_callbacks
):
    payment = khalti.add_payment(amount=1000)
    moved = {**django_settings.KHALTI, "BASE_URL": "https://dev.khalti.test/sandbox"}
    with override_settings(KHALTI=moved), django_capture_on_commit_callbacks(execute=True):
        assert verify(client, payment.payload("ORD-1")).status_code == 200
    assert khalti.calls[0].url == "https://dev.khalti.test/sandbox/api/v2/payment/verify/"
    assert paid(order)


def test_as_a_context_manager_with_its_own_url_and_key(order):
    send = requests.adapters.HTTPAdapter.send
    with KhaltiFake(base_url="https://khalti.test", secret_key="test_secret_key_other") as fake:
        payment = fake.add_payment(amount=1000)
        with pytest.raises(Exception, match="could not be reached"):
            KhaltiClient.from_settings().verify(payment.token, 1000)  # our key is not the one
        fake.secret_key = "test_secret_key_testproject"
        assert KhaltiClient.from_settings().verify(payment.token, 1000).idx == payment.idx
    assert requests.adapters.HTTPAdapter.send is send  # stopped: requests is itself again
    fake.start()
    try:
        assert KhaltiClient.from_settings().status(payment.token, 1000).state == "Complete"
    finally:
        fake.stop()


def test_the_plugin_is_loaded_by_its_entry_point(request, khalti):
    plugin = request.config.pluginmanager.get_plugin("django_khalti")
    assert plugin is not None
    assert plugin.__name__ == "django_khalti.testing.plugin"
    # Nothing in this project shadows the plugin's ``khalti``: conftest.py's strict
    # expectations are a fixture of their own name, ``expect_khalti``, over ``khalti_fake``.
    assert isinstance(khalti, KhaltiFake)
    assert not isinstance(khalti, KhaltiExpectations)


# --- the testing how-to's example, run here and in a bare shop project -----------------

#: The how-to a shop follows to test its integration.
TESTING_HOWTO = ROOT / "docs" / "howto" / "testing.rst"


def _howto_block(language: str) -> str:
    """The first ``language`` code block of docs/howto/testing.rst."""
    block = TESTING_HOWTO.read_text().split(f".. code-block:: {language}\n\n", 1)[1]
    lines = []
    for line in block.split("\n"):
        if line and not line.startswith("    "):
            break
        lines.append(line[4:])
    return "\n".join(lines).strip() + "\n"


#: The pytest.ini the testing how-to tells a shop to write.
HOWTO_PYTEST_INI = _howto_block("ini")


#: The example test module of the testing how-to (its first Python block).
HOWTO_EXAMPLE = _howto_block("python")

# The example's tests run in this suite too, word for word (with the ``khalti``
# fixture above standing for the plugin's).
_example: dict = {"__name__": __name__}
exec(compile(HOWTO_EXAMPLE, "docs/howto/testing.rst example", "exec"), _example)
globals().update({name: value for name, value in _example.items() if name.startswith("test_")})


def run_pytest(directory, *args, env=None):
    """pytest in a bare project at ``directory``: this repo's test project, no conftest,
    and the testing how-to's pytest.ini (its settings the test project's, found on ``pythonpath``
    where a shop's are found beside its manage.py).
    """
    ini = HOWTO_PYTEST_INI.replace("yourproject.settings", "testproject.settings")
    (directory / "pytest.ini").write_text(f"{ini}pythonpath = {ROOT / 'testproject'}\n")
    environ = {**os.environ, **(env or {})}
    environ.pop("DJANGO_SETTINGS_MODULE", None)  # the ini names the settings, nothing else
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args, str(directory)],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=300,
        env=environ,
    )


def test_the_howto_example_passes_in_a_shop_project_with_only_the_plugin(tmp_path):
    (tmp_path / "test_payments.py").write_text(HOWTO_EXAMPLE)
    own = tmp_path / "own"
    own.mkdir()
    (own / "conftest.py").write_text(
        textwrap.dedent("""\
        import pytest

        @pytest.fixture
        def khalti():
            return "the shop's own"
    """)
    )
    (own / "test_own.py").write_text(
        textwrap.dedent("""\
        def test_a_conftest_fixture_named_khalti_wins(khalti, khalti_fake):
            assert khalti == "the shop's own"
            assert type(khalti_fake).__name__ == "KhaltiFake"
    """)
    )

    result = run_pytest(tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 passed" in result.stdout  # the how-to's five, and the shop's own


def test_the_howto_pytest_ini_is_the_two_lines_pytest_django_needs():
    assert HOWTO_PYTEST_INI.splitlines() == [
        "[pytest]",
        "DJANGO_SETTINGS_MODULE = yourproject.settings",
    ]


def test_the_testing_extra_brings_what_the_howto_example_needs():
    # (tomllib is Python 3.11+: the line is read as it is written.)
    pyproject = (ROOT / "pyproject.toml").read_text()
    (line,) = re.findall(r"^testing = \[(.*)\]$", pyproject, re.MULTILINE)
    names = {re.split(r"[<>=\[]", item.strip(' "'))[0] for item in line.split(",")}
    # pytest itself for its version: 8, whose pluggy runs the plugin's hook wrapper.
    assert names == {"responses", "pytest-django", "pytest"}


def test_the_plugin_never_breaks_a_run_without_responses(tmp_path):
    hidden = tmp_path / "site" / "responses"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text('raise ImportError("responses is not installed here")\n')
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_shop.py").write_text(
        textwrap.dedent("""\
        def test_without_the_fixture():
            assert True

        def test_with_the_fixture(khalti):
            pass
    """)
    )

    result = run_pytest(tests, env={"PYTHONPATH": str(tmp_path / "site")})

    assert "1 passed, 1 error" in result.stdout, result.stdout + result.stderr
    assert 'pip install "dj-khalti[testing]"' in result.stdout


# --- the project's own canned-answer fixture (tests/conftest.py) over the kit ------------


@pytest.mark.parametrize("mistake", ["amount", "token", "key", "twice", "never", "unexpected"])
def test_the_suites_expectations_fails_a_test_whose_calls_are_not_the_expected_ones(mistake):
    with KhaltiFake() as fake:
        mock = KhaltiExpectations(fake)
        mock.verify("tok", 1000)
        client = KhaltiClient.from_settings()
        if mistake == "key":
            fake.secret_key = "test_secret_key_other"
        if mistake != "never":
            with contextlib.suppress(Exception):
                client.verify(
                    {"amount": "tok", "token": "other"}.get(mistake, "tok"),
                    1001 if mistake == "amount" else 1000,
                )
        if mistake == "twice":
            with pytest.raises(KhaltiRejected):  # no answer left: Khalti's own refusal
                client.verify("tok", 1000)
        if mistake == "unexpected":
            client.status("tok", 1000)
    with pytest.raises(AssertionError, match="not called as expected"):
        mock.check()


def test_the_suites_expectations_passes_calls_made_as_expected():
    with KhaltiFake() as fake:
        mock = KhaltiExpectations(fake)
        mock.verify("tok", 1000, body=requests.exceptions.ConnectTimeout())
        mock.verify("tok", 1000)
        mock.expect("status", json={"status": True, "state": "Initiated", "detail": ""}, times=2)
        client = KhaltiClient.from_settings()
        with pytest.raises(Exception, match="did not answer in time"):
            client.verify("tok", 1000)
        assert client.verify("tok", 1000).amount == 1000
        client.status("a", 1000)
        client.status("b", 1000)
    mock.check()
    assert [c.outcome for c in mock.calls] == ["timeout", "answer", "answer", "answer"]


def test_the_key_khalti_knows_follows_settings_changed_after_the_fake_started(
    client, khalti, settings
):
    """A test applying override_settings (or pytest-django's settings) after the
    fixture started: the fake knows the key the app is configured with."""

    Order.objects.create(reference="ORD-K", total=1000)
    settings.KHALTI = {**settings.KHALTI, "SECRET_KEY": "live_secret_key_changed_in_the_test"}
    payment = khalti.add_payment(amount=1000)
    response = verify(client, payment.payload("ORD-K"))
    assert response.status_code == 200
