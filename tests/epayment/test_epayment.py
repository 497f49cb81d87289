"""Khalti's ePayment (KPG-2) flow: initiate → redirect → return → lookup."""

import io
import json
from datetime import datetime, timedelta
from unittest import mock

import pytest
import requests
from django.core.management import call_command
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from django_khalti import services
from django_khalti.client import KhaltiClient, parsing
from django_khalti.models import Payment, order_key
from shop.models import Order, OrderEvent

from ..conftest import epayment_started, fixture

pytestmark = pytest.mark.django_db

INITIATE = reverse("django_khalti:epayment-initiate")
RETURN = reverse("django_khalti:epayment-return")
PIDX = "bZQLD9wRVWo4CdESSfuSsB"
SETTINGS = {
    "SECRET_KEY": "test_secret_key_testproject",
    "BASE_URL": "https://khalti.test/",
    "AMOUNT_RESOLVER": "shop.khalti.order_amount",
    "WEBSITE_URL": "http://testserver",
}


def initiate(client, **data):
    body = {"product_identity": "ORD-1", "product_name": "Dragon", **data}
    return client.post(INITIATE, json.dumps(body), content_type="application/json")


def started(client, expect_khalti, order):
    """An ePayment started for ``order`` (Khalti answered with PIDX)."""
    expect_khalti.initiate(order.total, order.reference)
    assert initiate(client, product_identity=order.reference).status_code == 201
    return Payment.objects.get(pidx=PIDX)


def come_back(client, pidx=PIDX, **params):
    return client.get(RETURN, {"pidx": pidx, **params})


def test_urls_are_named_as_documented():
    assert INITIATE == "/khalti/epayment/initiate/"
    assert RETURN == "/khalti/epayment/return/"
    assert (
        reverse("django_khalti:epayment-start", args=["ORD-1"]) == "/khalti/epayment/start/ORD-1/"
    )


# --- starting a payment -------------------------------------------------------------------


def test_initiate_answers_201_with_where_to_send_the_buyer(client, expect_khalti, order):
    expect_khalti.initiate(
        1000,
        "ORD-1",
        return_url="http://testserver/khalti/epayment/return/",
        website_url="http://testserver",
        purchase_order_name="Dragon",
        customer_info={"name": "Ram Bahadur", "email": "ram@example.com", "phone": "9800000001"},
    )
    response = initiate(
        client,
        customer_info={"name": "Ram Bahadur", "email": "ram@example.com", "phone": "9800000001"},
    )
    assert response.status_code == 201
    payment = Payment.objects.get()
    body = response.json()
    assert set(body) == {"payment", "pidx", "payment_url", "expires_at"}
    assert (body["payment"], body["pidx"], body["payment_url"]) == (
        str(payment.pk),
        PIDX,
        fixture("epayment_initiate")["payment_url"],
    )
    assert parse_datetime(body["expires_at"]) == payment.expires_at
    assert payment.expires_at > timezone.now() + timedelta(minutes=29)
    assert payment.flow == Payment.Flow.EPAYMENT
    assert payment.status == Payment.Status.PENDING
    assert (payment.amount, payment.purchase_order_name, payment.token) == (1000, "Dragon", None)
    assert payment.expires_at is not None
    assert payment.claimed_at is None
    assert "Ram Bahadur" not in response.content.decode()


def test_the_amount_is_the_resolvers_never_the_clients(client, expect_khalti, order):
    expect_khalti.initiate(1000, "ORD-1")
    response = initiate(client, amount=10, total_amount=10)
    assert response.status_code == 201
    sent = expect_khalti.calls[0].params
    assert sent["amount"] == 1000
    assert Payment.objects.get().amount == 1000


@override_settings(KHALTI={**SETTINGS, "WEBSITE_URL": "https://shop.example.com"})
def test_website_url_setting_is_sent_when_set(client, expect_khalti, order):
    expect_khalti.initiate(1000, "ORD-1", website_url="https://shop.example.com")
    assert initiate(client).status_code == 201


def test_asking_again_while_the_link_is_good_returns_the_same_payment(client, expect_khalti, order):
    expect_khalti.initiate(1000, "ORD-1")
    first, second = initiate(client), initiate(client)
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    assert len(expect_khalti.calls) == 1
    assert Payment.objects.count() == 1


def test_an_expired_link_is_settled_and_a_new_payment_started(client, expect_khalti, order):
    payment = started(client, expect_khalti, order)
    Payment.objects.filter(pk=payment.pk).update(expires_at=timezone.now() - timedelta(minutes=5))
    expect_khalti.lookup(PIDX, "epayment_lookup_expired")
    expect_khalti.initiate(1000, "ORD-1", json=epayment_started(pidx="second-pidx"))
    response = initiate(client)
    assert response.status_code == 201
    assert response.json()["pidx"] == "second-pidx"
    payment.refresh_from_db()
    assert payment.status == Payment.Status.FAILED


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"product_identity": None}, "product_identity"),
        ({"product_name": ""}, "product_name"),
        ({"customer_info": {"email": "not-an-email"}}, "customer_info"),
        ({"customer_info": "Ram"}, "customer_info"),
    ],
)
def test_malformed_input_is_400_and_never_reaches_khalti(client, expect_khalti, order, data, field):
    body = {"product_identity": "ORD-1", "product_name": "Dragon", **data}
    body = {k: v for k, v in body.items() if v is not None}
    response = client.post(INITIATE, json.dumps(body), content_type="application/json")
    assert response.status_code == 400
    assert field in response.json()
    assert not expect_khalti.calls


def test_unknown_order_is_404(client, expect_khalti, order):
    response = initiate(client, product_identity="NOPE")
    assert response.status_code == 404
    assert response.json()["code"] == "unknown_order"
    assert not expect_khalti.calls


@pytest.mark.parametrize(
    ("hidden", "answer"),
    # A paid order the resolver hides: that it was paid is not the buyer's to learn.
    [(True, (404, "unknown_order")), (False, (409, "already_paid"))],
)
def test_a_paid_order_is_404_if_the_resolver_hides_it_else_409(
    client, expect_khalti, order, hidden, answer
):
    Payment.objects.create(
        token="t",
        product_identity="ORD-1",
        amount=1000,
        order_claim=order_key("ORD-1"),
        status=Payment.Status.VERIFIED,
    )
    Order.objects.filter(pk=order.pk).update(paid=hidden)  # the resolver hides paid orders
    response = initiate(client)
    assert (response.status_code, response.json()["code"]) == answer
    assert not expect_khalti.calls


def test_below_rs_10_is_refused_before_khalti_is_called(client, expect_khalti):
    Order.objects.create(reference="CHEAP", total=999)
    response = initiate(client, product_identity="CHEAP")
    assert response.status_code == 400
    assert response.json()["code"] == "amount_too_small"
    assert not expect_khalti.calls
    assert not Payment.objects.exists()


def test_khaltis_validation_errors_are_passed_on_as_400(client, expect_khalti, order, signals):
    expect_khalti.initiate(
        1000, "ORD-1", status=400, json=fixture("epayment_initiate_validation_error")
    )
    response = initiate(client)
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "initiation_rejected"
    assert body["errors"] == {
        "amount": ["Amount should be greater than Rs. 10, that is 1000 paisa."]
    }
    payment = Payment.objects.get()
    assert payment.status == Payment.Status.FAILED
    assert payment.order_claim is None  # the order is free for another try


@pytest.mark.parametrize(
    ("mock", "status"),
    [
        ({"body": requests.exceptions.ReadTimeout()}, 504),
        ({"body": requests.exceptions.ConnectionError()}, 503),
        ({"status": 500, "body": "oops"}, 502),
        ({"status": 200, "json": {"pidx": "x"}}, 502),
    ],
)
def test_khalti_unavailable_while_starting_is_5xx_and_frees_the_order(
    client, expect_khalti, order, mock, status
):
    expect_khalti.initiate(1000, "ORD-1", **mock)
    response = initiate(client)
    assert response.status_code == status
    assert response.json()["code"] == "khalti_unavailable"
    # The buyer never got a link: nothing can have been paid, the order is free.
    assert Payment.objects.get().status == Payment.Status.FAILED
    expect_khalti.initiate(1000, "ORD-1")
    assert initiate(client).status_code == 201


def test_a_pending_widget_payment_blocks_a_new_epayment(client, expect_khalti, order):
    Payment.objects.create(
        token="w",
        product_identity="ORD-1",
        amount=1000,
        order_claim=order_key("ORD-1"),
        claimed_at=timezone.now(),
    )
    response = initiate(client)
    assert response.status_code == 409
    assert response.json()["code"] == "in_progress"
    assert not expect_khalti.calls


# --- the no-JavaScript start view -------------------------------------------------------------


def test_start_view_post_redirects_the_browser_to_khalti(client, expect_khalti, order):
    # The name on Khalti's page is the order's reference: nothing else comes from the browser.
    expect_khalti.initiate(1000, "ORD-1", purchase_order_name="ORD-1")
    response = client.post(
        reverse("django_khalti:epayment-start", args=["ORD-1"]), {"product_name": "Forged name"}
    )
    assert response.status_code == 302
    assert "no-cache" in response["Cache-Control"] or "max-age=0" in response["Cache-Control"]
    assert response["Location"] == fixture("epayment_initiate")["payment_url"]
    assert Payment.objects.get().pidx == PIDX


def test_start_view_get_shows_a_pay_button_and_starts_nothing(client, expect_khalti, order):
    url = reverse("django_khalti:epayment-start", args=["ORD-1"])
    response = client.get(url)
    assert response.status_code == 200
    page = response.content.decode()
    assert f'<form method="post" action="{url}">' in page
    assert 'name="csrfmiddlewaretoken"' in page
    assert "Rs 10.00" in page
    assert not Payment.objects.exists()
    assert not expect_khalti.calls


@pytest.mark.parametrize("method", ["get", "post"])
@pytest.mark.parametrize(("reference", "status"), [("NOPE", 404), ("CHEAP", 400)])
def test_start_view_shows_a_page_for_refusals(client, expect_khalti, reference, status, method):
    Order.objects.create(reference="CHEAP", total=500)
    response = getattr(client, method)(reverse("django_khalti:epayment-start", args=[reference]))
    assert response.status_code == status
    assert "Payment not completed" in response.content.decode()
    assert not expect_khalti.calls


def test_start_view_takes_only_get_and_post(client, order):
    assert client.put(reverse("django_khalti:epayment-start", args=["ORD-1"])).status_code == 405


# --- coming back ----------------------------------------------------------------------------------


def test_completed_return_verifies_with_one_signal_and_shows_success(
    client, expect_khalti, order, signals, django_capture_on_commit_callbacks
):
    payment = started(client, expect_khalti, order)
    expect_khalti.lookup(PIDX, "epayment_lookup_completed")
    with django_capture_on_commit_callbacks(execute=True):
        response = come_back(
            client, status="Completed", transaction_id="GFq9PFS7b2iYvL8Lir9oXe", mobile="98XXXXXXX9"
        )
    assert response.status_code == 200
    assert "Payment received" in response.content.decode()
    payment.refresh_from_db()
    assert payment.status == Payment.Status.VERIFIED
    assert payment.idx == "GFq9PFS7b2iYvL8Lir9oXe"  # the refund id
    assert [name for name, _, _ in signals] == ["verified"]
    order.refresh_from_db()
    assert order.paid


@override_settings(KHALTI={**SETTINGS, "SUCCESS_URL": "/thanks/", "FAILURE_URL": "admin:index"})
@pytest.mark.parametrize(
    ("lookup", "location"),
    [
        ("epayment_lookup_completed", "/thanks/?payment={id}"),
        ("epayment_lookup_canceled", "/admin/?payment={id}"),
    ],
)
def test_redirects_to_success_or_failure_url_with_the_payment(
    client, expect_khalti, order, lookup, location
):
    payment = started(client, expect_khalti, order)
    expect_khalti.lookup(PIDX, lookup)
    response = come_back(client)
    assert response.status_code == 302
    assert response["Location"] == location.format(id=payment.pk)


@override_settings(KHALTI={**SETTINGS, "SUCCESS_URL": "https://shop.example.com/done?from=khalti"})
def test_success_url_may_be_absolute_with_a_query(client, expect_khalti, order):
    payment = started(client, expect_khalti, order)
    expect_khalti.lookup(PIDX, "epayment_lookup_completed")
    assert (
        come_back(client)["Location"]
        == f"https://shop.example.com/done?from=khalti&payment={payment.pk}"
    )


@pytest.mark.parametrize(
    ("lookup", "status", "page"),
    [
        ("epayment_lookup_pending", Payment.Status.PENDING, "Confirming your payment"),
        ("epayment_lookup_initiated", Payment.Status.PENDING, "Confirming your payment"),
        ("epayment_lookup_expired", Payment.Status.FAILED, "Payment not completed"),
        ("epayment_lookup_canceled", Payment.Status.FAILED, "Payment not completed"),
        ("epayment_lookup_refunded", Payment.Status.REFUNDED, "Payment refunded"),
        (
            "epayment_lookup_partially_refunded",
            Payment.Status.NEEDS_REVIEW,
            "Payment being checked",
        ),
    ],
)
def test_every_lookup_status_settles_as_it_should(
    client, expect_khalti, order, signals, django_capture_on_commit_callbacks, lookup, status, page
):
    payment = started(client, expect_khalti, order)
    expect_khalti.lookup(PIDX, lookup)
    with django_capture_on_commit_callbacks(execute=True):
        response = come_back(client)
    assert response.status_code == 200
    assert page in response.content.decode()
    payment.refresh_from_db()
    assert payment.status == status
    if status == Payment.Status.FAILED:
        assert fixture(lookup)["status"] in payment.failure_reason
        assert [name for name, _, _ in signals] == ["failed"]
    if status == Payment.Status.PENDING:
        assert payment.claimed_at is None
        assert not signals
    assert not order.__class__.objects.get(pk=order.pk).paid


def test_completed_for_another_amount_needs_review(
    client, expect_khalti, order, signals, django_capture_on_commit_callbacks
):
    payment = started(client, expect_khalti, order)
    expect_khalti.lookup(PIDX, "epayment_lookup_completed", total_amount=10)
    with django_capture_on_commit_callbacks(execute=True):
        response = come_back(client, amount="1000", total_amount="1000")
    assert "Payment being checked" in response.content.decode()
    payment.refresh_from_db()
    assert payment.status == Payment.Status.NEEDS_REVIEW
    assert payment.received_amount == 10
    assert "10 paisa" in payment.failure_reason
    assert [name for name, _, _ in signals] == ["needs_review"]
    assert not order.__class__.objects.get(pk=order.pk).paid


def test_the_browsers_word_is_never_taken(client, expect_khalti, order):
    """A return URL claiming Completed is settled by what lookup says."""
    payment = started(client, expect_khalti, order)
    expect_khalti.lookup(PIDX, "epayment_lookup_canceled")
    come_back(
        client,
        status="Completed",
        amount="1000",
        total_amount="1000",
        purchase_order_id="ORD-1",
        transaction_id="forged",
    )
    payment.refresh_from_db()
    assert payment.status == Payment.Status.FAILED
    assert payment.idx is None


def test_a_cheap_paid_pidx_cannot_pay_an_expensive_order(
    client, expect_khalti, signals, django_capture_on_commit_callbacks
):
    cheap = Order.objects.create(reference="CHEAP", total=1000)
    dear = Order.objects.create(reference="DEAR", total=500000)
    started(client, expect_khalti, cheap)
    expect_khalti.lookup(PIDX, "epayment_lookup_completed")
    with django_capture_on_commit_callbacks(execute=True):
        come_back(client, purchase_order_id="DEAR", amount="500000", total_amount="500000")
    dear.refresh_from_db()
    cheap.refresh_from_db()
    assert not dear.paid
    assert cheap.paid
    assert Payment.objects.get().product_identity == "CHEAP"
    assert [kw["payment"].product_identity for _, _, kw in signals] == ["CHEAP"]


def test_reloading_the_return_page_settles_once(
    client, expect_khalti, order, signals, django_capture_on_commit_callbacks
):
    started(client, expect_khalti, order)
    expect_khalti.lookup(PIDX, "epayment_lookup_completed")
    with django_capture_on_commit_callbacks(execute=True):
        first, second = come_back(client), come_back(client)
    assert first.status_code == second.status_code == 200
    assert len(expect_khalti.calls_to("https://khalti.test/api/v2/epayment/lookup/")) == 1
    assert len(signals) == 1


@pytest.mark.parametrize("params", [{"pidx": "never-ours"}, {"pidx": ""}, {}, {"pidx": "x" * 300}])
def test_unknown_pidx_is_404_without_asking_khalti(client, expect_khalti, params):
    response = client.get(RETURN, params)
    assert response.status_code == 404
    assert not expect_khalti.calls


@pytest.mark.parametrize(
    "mock",
    [
        {"body": requests.exceptions.ReadTimeout()},
        {"status": 502, "body": "<html/>"},
        {"status": 404, "json": fixture("epayment_lookup_not_found")},
    ],
)
def test_khalti_unreachable_on_return_shows_being_confirmed_and_stays_pending(
    client, expect_khalti, order, mock
):
    payment = started(client, expect_khalti, order)
    expect_khalti.lookup(PIDX, **mock)
    response = come_back(client, status="Completed")
    assert response.status_code == 200
    assert "Confirming your payment" in response.content.decode()
    payment.refresh_from_db()
    assert payment.status == Payment.Status.PENDING
    assert payment.claimed_at is None


def test_return_page_is_overridable_and_shows_no_payer_details(client, expect_khalti, order):
    started(client, expect_khalti, order)
    expect_khalti.lookup(PIDX, "epayment_lookup_completed")
    page = come_back(client, mobile="9800000001").content.decode()
    assert "9800000001" not in page


def test_the_payers_mobile_from_the_return_url_is_never_logged(
    client, expect_khalti, order, caplog
):
    caplog.set_level("DEBUG")
    started(client, expect_khalti, order)
    expect_khalti.lookup(PIDX, "epayment_lookup_completed")
    come_back(client, mobile="9800000001", status="Completed")
    assert "9800000001" not in caplog.text
    assert "Completed" in caplog.text  # the untrusted status is logged


# --- reconciliation and refunds ------------------------------------------------------------------


def test_reconcile_settles_a_buyer_who_never_came_back(
    client, expect_khalti, order, signals, django_capture_on_commit_callbacks
):
    payment = started(client, expect_khalti, order)
    Payment.objects.filter(pk=payment.pk).update(created_at=timezone.now() - timedelta(minutes=10))
    expect_khalti.lookup(PIDX, "epayment_lookup_completed")
    out = io.StringIO()
    with django_capture_on_commit_callbacks(execute=True):
        call_command("khalti_reconcile", stdout=out)
    assert "checked 1: 1 verified" in out.getvalue()
    assert OrderEvent.objects.filter(kind="paid").count() == 1


def test_reconcile_fails_an_expired_link(client, expect_khalti, order):
    payment = started(client, expect_khalti, order)
    Payment.objects.filter(pk=payment.pk).update(
        created_at=timezone.now() - timedelta(hours=2),
        expires_at=timezone.now() - timedelta(hours=1),
    )
    expect_khalti.lookup(PIDX, "epayment_lookup_expired")
    out = io.StringIO()
    call_command("khalti_reconcile", stdout=out)
    assert "1 failed" in out.getvalue()
    payment.refresh_from_db()
    assert payment.status == Payment.Status.FAILED
    assert "Expired" in payment.failure_reason


def test_an_initiation_that_died_midway_is_failed_by_reconcile(expect_khalti, order):
    """A worker killed between writing the row and getting a pidx: no link, no money."""
    payment = Payment.objects.create(
        flow=Payment.Flow.EPAYMENT,
        product_identity="ORD-1",
        amount=1000,
        order_claim=order_key("ORD-1"),
        claimed_at=timezone.now() - timedelta(hours=1),
    )
    Payment.objects.filter(pk=payment.pk).update(created_at=timezone.now() - timedelta(hours=1))
    call_command("khalti_reconcile", stdout=io.StringIO())
    payment.refresh_from_db()
    assert payment.status == Payment.Status.FAILED
    assert not expect_khalti.calls


def test_epayments_are_refunded_by_their_transaction_id(client, expect_khalti, order):
    payment = started(client, expect_khalti, order)
    expect_khalti.lookup(PIDX, "epayment_lookup_completed")
    come_back(client)
    expect_khalti.refund("GFq9PFS7b2iYvL8Lir9oXe", {"amount": 400})
    payment.refresh_from_db()
    services.refund_payment(payment, amount=400)
    payment.refresh_from_db()
    assert payment.status == Payment.Status.PARTIALLY_REFUNDED


def test_an_unknown_epayment_refund_is_settled_by_lookup(client, expect_khalti, order):
    from django_khalti.models import Refund

    payment = started(client, expect_khalti, order)
    expect_khalti.lookup(PIDX, "epayment_lookup_completed")
    come_back(client)
    payment.refresh_from_db()
    refund = Refund.objects.create(payment=payment, amount=1000, claim=payment.pk)
    Refund.objects.filter(pk=refund.pk).update(created_at=timezone.now() - timedelta(hours=1))
    refund.refresh_from_db()
    expect_khalti.lookup(PIDX, "epayment_lookup_refunded")
    assert services.reconcile_refund(refund).status == Refund.Status.SUCCEEDED
    payment.refresh_from_db()
    assert payment.status == Payment.Status.REFUNDED


def test_admin_shows_flow_pidx_and_link_and_filters_by_flow(
    admin_client, client, expect_khalti, order
):
    started(client, expect_khalti, order)
    Payment.objects.create(token="w", product_identity="W-1", amount=1000)
    changelist = reverse("admin:django_khalti_payment_changelist")
    page = admin_client.get(changelist, {"flow__exact": "epayment"}).content.decode()
    assert "ORD-1" in page
    assert "W-1" not in page
    assert admin_client.get(changelist, {"q": PIDX}).content.decode().count("ORD-1") >= 1
    change = admin_client.get(
        reverse("admin:django_khalti_payment_change", args=[Payment.objects.get(pidx=PIDX).pk])
    ).content.decode()
    assert PIDX in change
    assert fixture("epayment_initiate")["payment_url"].replace("&", "&amp;") in change


# --- review: answers of the wrong shape, dead links, lost links --------------------------


@pytest.mark.parametrize("total_amount", [None, "1000", 1000.0, True])
def test_completed_without_a_usable_amount_stays_pending_never_failed(
    client, expect_khalti, order, signals, total_amount
):
    payment = started(client, expect_khalti, order)
    body = {**fixture("epayment_lookup_completed"), "pidx": PIDX, "total_amount": total_amount}
    if total_amount is None:
        del body["total_amount"]
    expect_khalti.lookup(PIDX, json=body)
    response = come_back(client)
    assert "Confirming your payment" in response.content.decode()
    payment.refresh_from_db()
    assert payment.status == Payment.Status.PENDING
    assert not signals


def test_lookup_about_another_pidx_is_not_believed(client, expect_khalti, order):
    payment = started(client, expect_khalti, order)
    expect_khalti.lookup(
        PIDX, json={**fixture("epayment_lookup_completed"), "pidx": "someone-else"}
    )
    come_back(client)
    payment.refresh_from_db()
    assert payment.status == Payment.Status.PENDING


@pytest.mark.parametrize(
    "answer",
    [
        {"status": 404, "json": fixture("epayment_lookup_not_found")},
        {"json": {**fixture("epayment_lookup_initiated"), "pidx": PIDX}},
    ],
    ids=["not-found", "initiated"],
)
def test_a_dead_link_khalti_no_longer_knows_or_still_calls_initiated_is_failed(
    client, expect_khalti, order, answer
):
    payment = started(client, expect_khalti, order)
    Payment.objects.filter(pk=payment.pk).update(expires_at=timezone.now() - timedelta(hours=1))
    expect_khalti.lookup(PIDX, **answer)
    come_back(client)
    payment.refresh_from_db()
    assert payment.status == Payment.Status.FAILED
    assert payment.order_claim is None  # the order can be paid again


def test_the_link_is_never_handed_out_if_the_row_was_taken_over_meanwhile(
    client, expect_khalti, order, monkeypatch
):
    """A stall longer than the claim timeout after the insert: another worker
    failed the row (no pidx yet); the buyer must not get a link stored nowhere."""
    real_initiate = KhaltiClient.initiate

    def slow_initiate(self, **kwargs):
        answer = real_initiate(self, **kwargs)
        payment = Payment.objects.get()
        Payment.objects.filter(pk=payment.pk).update(claimed_at=timezone.now() - timedelta(hours=1))
        services.reconcile(Payment.objects.get())  # the other worker: no pidx → failed
        return answer

    monkeypatch.setattr(KhaltiClient, "initiate", slow_initiate)
    expect_khalti.initiate(1000, "ORD-1")
    response = initiate(client)
    assert response.status_code == 409
    assert "payment_url" not in response.json()
    payment = Payment.objects.get()
    assert payment.status == Payment.Status.FAILED
    assert payment.pidx == PIDX  # stored anyway: a fact about the row


def test_nested_validation_errors_from_khalti_are_400_with_the_fields(client, expect_khalti, order):
    body = {"customer_info": {"phone": ["Enter a valid phone."]}, "error_key": "validation_error"}
    expect_khalti.initiate(1000, "ORD-1", status=400, json=body)
    response = initiate(client, customer_info={"phone": "12"})
    assert response.status_code == 400
    assert response.json()["code"] == "initiation_rejected"
    assert response.json()["errors"] == {"customer_info": {"phone": ["Enter a valid phone."]}}
    assert "customer_info.phone: Enter a valid phone." in response.json()["detail"]


@pytest.mark.parametrize(
    "mock",
    [
        {"status": 400, "json": fixture("epayment_initiate_validation_error")},
        {"body": requests.exceptions.ReadTimeout()},
    ],
)
def test_a_payment_that_never_started_sends_no_payment_failed(
    client, expect_khalti, order, signals, django_capture_on_commit_callbacks, mock
):
    expect_khalti.initiate(1000, "ORD-1", **mock)
    with django_capture_on_commit_callbacks(execute=True):
        initiate(client)
    assert Payment.objects.get().status == Payment.Status.FAILED
    assert not signals


def test_expires_in_stands_in_for_a_missing_expires_at(client, expect_khalti, order):
    answer = epayment_started()
    del answer["expires_at"]
    expect_khalti.initiate(1000, "ORD-1", json=answer)
    first, second = initiate(client), initiate(client)
    assert first.json() == second.json()  # the link is reused: it has an expiry
    payment = Payment.objects.get()
    assert (
        timezone.now() + timedelta(minutes=29)
        < payment.expires_at
        < timezone.now() + timedelta(minutes=31)
    )


class _HostTwoHoursAhead(datetime):
    """This host's clock, running two hours ahead of the database's."""

    @classmethod
    def now(cls, tz=None):
        return datetime.now(tz) + timedelta(hours=2)


def test_expires_in_is_counted_on_the_database_clock_not_the_hosts(client, expect_khalti, order):
    """Khalti gives only ``expires_in`` (30 minutes). The host that starts the link runs
    two hours ahead: the link still expires 30 minutes from now on the database's clock
    (the one link ages are read on), so the same buyer is sent back to it."""
    answer = epayment_started()
    del answer["expires_at"]
    expect_khalti.initiate(1000, "ORD-1", json=answer)
    ahead = timezone.now() + timedelta(hours=2)
    with (
        mock.patch("django.utils.timezone.now", return_value=ahead),
        mock.patch.object(parsing, "datetime", _HostTwoHoursAhead),
    ):
        first = initiate(client)
    assert first.status_code == 201
    database_now = timezone.now()  # (the database's clock is the real one here)
    expires_at = Payment.objects.get().expires_at
    assert database_now + timedelta(minutes=29) < expires_at < database_now + timedelta(minutes=31)
    # A link the database says has 30 minutes left is handed back, not replaced.
    assert initiate(client).json() == first.json()


@override_settings(KHALTI={**SETTINGS, "WEBSITE_URL": "https://shop.example.com"})
def test_return_url_is_built_on_website_url_when_set(client, expect_khalti, order):
    expect_khalti.initiate(
        1000, "ORD-1", return_url="https://shop.example.com/khalti/epayment/return/"
    )
    assert initiate(client).status_code == 201


def test_a_new_order_total_is_not_paid_by_the_old_link(client, expect_khalti, order, signals):
    old = started(client, expect_khalti, order)
    Order.objects.filter(pk=order.pk).update(total=50000)
    expect_khalti.lookup(PIDX, "epayment_lookup_initiated")  # the old link, still unpaid
    expect_khalti.initiate(
        50000, "ORD-1", json={**fixture("epayment_initiate"), "pidx": "NEW-PIDX"}
    )
    response = initiate(client)
    assert response.status_code == 201
    assert response.json()["pidx"] == "NEW-PIDX"
    old.refresh_from_db()
    assert old.status == Payment.Status.FAILED
    assert "Superseded" in old.failure_reason
    assert not signals  # the buyer paid nothing on the old link


def test_the_link_is_not_reused_in_its_last_minute(client, expect_khalti, order):
    payment = started(client, expect_khalti, order)
    Payment.objects.filter(pk=payment.pk).update(expires_at=timezone.now() + timedelta(seconds=30))
    expect_khalti.lookup(PIDX, "epayment_lookup_initiated")
    expect_khalti.initiate(1000, "ORD-1", json={**fixture("epayment_initiate"), "pidx": "NEW-PIDX"})
    assert initiate(client).json()["pidx"] == "NEW-PIDX"


def test_user_cancelled_spelt_the_british_way_also_fails(client, expect_khalti, order):
    payment = started(client, expect_khalti, order)
    expect_khalti.lookup(
        PIDX,
        json={**fixture("epayment_lookup_canceled"), "pidx": PIDX, "status": "User cancelled"},
        status=400,
    )
    come_back(client)
    payment.refresh_from_db()
    assert payment.status == Payment.Status.FAILED


@override_settings(KHALTI={**SETTINGS, "SUCCESS_URL": "/thanks/", "FAILURE_URL": "/sorry/"})
def test_refunded_at_first_lookup_is_not_shown_as_success(client, expect_khalti, order, signals):
    payment = started(client, expect_khalti, order)
    expect_khalti.lookup(PIDX, "epayment_lookup_refunded")
    assert come_back(client)["Location"] == f"/sorry/?payment={payment.pk}"
    assert not signals


@override_settings(KHALTI={**SETTINGS, "SUCCESS_URL": "no-such-url-name"})
def test_an_unresolvable_success_url_falls_back_to_the_page(client, expect_khalti, order, caplog):
    started(client, expect_khalti, order)
    expect_khalti.lookup(PIDX, "epayment_lookup_completed")
    response = come_back(client)
    assert response.status_code == 200
    assert "Payment received" in response.content.decode()
    assert "cannot be resolved" in caplog.text


@pytest.mark.parametrize("pidx", ["abc\x00def", "abc\ndef"])
def test_control_characters_in_pidx_are_404(client, expect_khalti, pidx):
    assert client.get(RETURN, {"pidx": pidx}).status_code == 404
    assert not expect_khalti.calls


def test_our_database_failing_on_return_is_a_503_page(client, expect_khalti, order, monkeypatch):
    from django.db import DatabaseError

    started(client, expect_khalti, order)

    def broken(pidx):
        raise DatabaseError("connection lost")

    monkeypatch.setattr(services, "settle_epayment_return", broken)
    response = come_back(client)
    assert response.status_code == 503
    assert "connection lost" not in response.content.decode()


@pytest.mark.parametrize(
    ("mock", "status"),
    [({"body": requests.exceptions.ReadTimeout()}, 504), ({"status": 500, "body": "x"}, 502)],
)
def test_start_view_when_khalti_is_unavailable_shows_a_page(
    client, expect_khalti, order, mock, status
):
    expect_khalti.initiate(1000, "ORD-1", **mock)
    response = client.post(reverse("django_khalti:epayment-start", args=["ORD-1"]))
    assert response.status_code == status
    assert "Payment not completed" in response.content.decode()


@override_settings(KHALTI={**SETTINGS, "AMOUNT_RESOLVER": "shop.nowhere.resolver"})
def test_start_view_with_a_broken_configuration_is_a_503_page(client, expect_khalti, order, caplog):
    response = client.get(reverse("django_khalti:epayment-start", args=["ORD-1"]))
    assert response.status_code == 503
    assert "AMOUNT_RESOLVER" not in response.content.decode()
    assert "AMOUNT_RESOLVER" in caplog.text


@override_settings(KHALTI={**SETTINGS, "SECRET_KEY": ""})
def test_return_view_with_a_broken_configuration_leaves_the_payment_pending(
    client, expect_khalti, order
):
    payment = Payment.objects.create(
        flow=Payment.Flow.EPAYMENT,
        pidx=PIDX,
        product_identity="ORD-1",
        amount=1000,
        order_claim=order_key("ORD-1"),
    )
    response = come_back(client)
    assert response.status_code == 200
    assert "Confirming your payment" in response.content.decode()
    payment.refresh_from_db()
    assert payment.status == Payment.Status.PENDING


def test_a_double_click_on_start_gets_a_page_that_reloads_into_the_link(
    client, expect_khalti, order
):
    Payment.objects.create(
        flow=Payment.Flow.EPAYMENT,
        product_identity="ORD-1",
        amount=1000,
        order_claim=order_key("ORD-1"),
        claimed_at=timezone.now(),
    )
    url = reverse("django_khalti:epayment-start", args=["ORD-1"])
    response = client.post(url)
    assert response.status_code == 409
    page = response.content.decode()
    assert "Please wait" in page
    assert "being confirmed" in page
    assert f'content="5; url={url}?tries=1"' in page
    assert not expect_khalti.calls


def test_the_pending_page_stops_reloading_after_a_while(client, expect_khalti, order):
    started(client, expect_khalti, order)
    expect_khalti.lookup(PIDX, "epayment_lookup_pending")
    page = client.get(RETURN, {"pidx": PIDX, "tries": "12"}).content.decode()
    assert 'http-equiv="refresh"' not in page
    assert "come back to your order later" in page


def test_the_result_page_is_overridable(client, expect_khalti, order, settings, tmp_path):
    (tmp_path / "django_khalti").mkdir()
    (tmp_path / "django_khalti" / "epayment_result.html").write_text("SHOP PAGE {{ state }}")
    settings.TEMPLATES = [{**settings.TEMPLATES[0], "DIRS": [str(tmp_path)]}]
    started(client, expect_khalti, order)
    expect_khalti.lookup(PIDX, "epayment_lookup_completed")
    assert come_back(client).content.decode() == "SHOP PAGE verified"


@override_settings(KHALTI={**SETTINGS, "SUCCESS_URL": "/thanks/", "FAILURE_URL": "/sorry/"})
def test_a_pending_return_shows_the_confirming_page_even_with_success_and_failure_urls(
    client, expect_khalti, order
):
    started(client, expect_khalti, order)
    expect_khalti.lookup(PIDX, "epayment_lookup_pending")
    response = come_back(client)
    assert response.status_code == 200  # not a redirect to SUCCESS_URL or FAILURE_URL
    assert "Confirming your payment" in response.content.decode()
    assert Payment.objects.get().status == Payment.Status.PENDING


@pytest.fixture
def rf_session_request(rf):
    """A buyer's request as the service sees it: anonymous, with a session."""
    from django.contrib.auth.models import AnonymousUser
    from django.contrib.sessions.backends.db import SessionStore

    request = rf.post("/")
    request.user = AnonymousUser()
    request.session = SessionStore()
    return request


def test_start_epayment_takes_its_details_as_documented(expect_khalti, rf_session_request):
    """start_epayment(request, product_identity, product_name, customer_info=None,
    amount_breakdown=None, product_details=None): positionally too, and a misspelt
    detail is a TypeError before anything is stored or sent."""
    Order.objects.create(reference="ORD-E", total=5000)
    with pytest.raises(TypeError):
        services.start_epayment(rf_session_request, "ORD-E", "Order E", customer_infoo={})  # type: ignore[call-arg]
    assert not Payment.objects.exists()
    expect_khalti.initiate(5000, "ORD-E", customer_info={"name": "Ram"})
    payment = services.start_epayment(rf_session_request, "ORD-E", "Order E", {"name": "Ram"})
    assert payment.status == Payment.Status.PENDING
