"""The kit is as strict as Khalti: a shop's test that would fail at Khalti fails here too.

Written as a shop writes its tests: the ``khalti`` fixture, Django's test client
at dj-khalti's URLs, dj-khalti's services; and, for the sandbox, a browser's
HTTP client at the sandbox's pages.
"""

from datetime import timedelta
from urllib.parse import urlencode

import pytest
import requests
from django.urls import reverse
from django.utils import timezone

from django_khalti import services
from django_khalti.exceptions import KhaltiRefundFailed
from django_khalti.models import Payment, Refund
from django_khalti.sandbox.models import SandboxEpayment, SandboxTransaction
from shop.models import Order

pytestmark = pytest.mark.django_db

Status = Payment.Status


@pytest.fixture
def order():
    return Order.objects.create(reference="ORD-1", total=1000)


def verify(client, payload):
    return client.post(reverse("django_khalti:verify"), payload, content_type="application/json")


def start_epayment(client, order):
    response = client.post(
        reverse("django_khalti:epayment-initiate"),
        {"product_identity": order.reference, "product_name": "Dragon"},
        content_type="application/json",
    )
    assert response.status_code == 201, response.content
    return response.json()


# --- Part 4: a key shaped like a public key is no secret key ------------------------------


@pytest.mark.parametrize("public", ["live_public_key_" + "a" * 32, "test_public_key_" + "b" * 32])
def test_swapped_keys_get_401_from_khalti_even_where_the_fake_knows_that_key(
    client, khalti, order, settings, public
):
    # The shop swapped its keys: SECRET_KEY holds the public key. Real Khalti answers
    # 401 to every call made with it; so does the kit, though the key is "the shop's".
    settings.KHALTI = {**settings.KHALTI, "SECRET_KEY": public, "PUBLIC_KEY": "x"}
    payment = khalti.add_payment(amount=1000)

    response = verify(client, payment.payload("ORD-1"))

    assert (response.status_code, response.json()["code"]) == (502, "khalti_unavailable")
    (call,) = khalti.calls
    assert (call.authorized, call.status_code) == (False, 401)
    assert not payment.verified
    assert Payment.objects.get().status == Status.PENDING
    answer = requests.get(
        f"{khalti.base_url}api/v2/payment/status/",
        params={"token": payment.token, "amount": 1000},
        headers={"Authorization": f"Key {public}"},
        timeout=1,
    )
    assert (answer.status_code, answer.json()) == (401, {"detail": "Invalid token."})


def test_the_sandbox_answers_401_to_a_public_key_too(client, settings):
    settings.DEBUG = True
    public = "test_public_key_" + "c" * 32
    settings.KHALTI = {**settings.KHALTI, "SECRET_KEY": public}

    answer = client.post(
        "/sandbox/api/v2/epayment/lookup/",
        {"pidx": "x"},
        content_type="application/json",
        headers={"Authorization": f"Key {public}"},
    )

    assert (answer.status_code, answer.json()) == (401, {"detail": "Invalid token."})


# --- Part 5a: an expired link cannot be paid ------------------------------------------------


def test_a_stored_payment_link_cannot_be_paid_once_it_has_expired(client, khalti, order):
    # The shop keeps payment_url for a "continue to payment" e-mail, sent later.
    started = start_epayment(client, order)
    epayment = khalti.epayment(started["pidx"])
    epayment.expires_at = timezone.now() - timedelta(seconds=1)  # the link's time has passed

    with pytest.raises(ValueError, match=r"link expired at .*: it cannot be paid"):
        khalti.pay(started["pidx"])
    with pytest.raises(ValueError, match="link expired"):
        khalti.cancel(started["pidx"])

    assert epayment.status == "Expired"
    assert epayment.transaction_id is None


def test_the_sandboxs_pay_page_refuses_an_expired_link(client, settings):
    settings.DEBUG = True
    epayment = SandboxEpayment.objects.create(
        amount=1000,
        purchase_order_id="ORD-1",
        purchase_order_name="Dragon",
        return_url="http://testserver/back/",
        website_url="http://testserver",
        expires_at=timezone.now() - timedelta(seconds=1),
    )
    page = f"/sandbox/pay/?pidx={epayment.pidx}"

    assert 'data-status="Expired"' in client.get(page).content.decode()
    answer = client.post(page, {"pidx": epayment.pidx, "mobile": "9800000001", "mpin": "1111"})

    assert answer.status_code == 200  # the page again, no way back as paid
    assert 'data-status="Expired"' in answer.content.decode()
    epayment.refresh_from_db()
    assert (epayment.status, epayment.transaction) == ("Initiated", None)


# --- Part 5b: bank-funded payments need a mobile to be refunded ------------------------------


@pytest.fixture
def bank_payment(client, khalti, django_capture_on_commit_callbacks):
    Order.objects.create(reference="ORD-B", total=10000)
    payment = khalti.add_payment(amount=10000, funded_by="bank")
    with django_capture_on_commit_callbacks(execute=True):
        assert verify(client, payment.payload("ORD-B")).status_code == 200
    return payment, Payment.objects.get()


def test_a_bank_funded_payment_is_not_refunded_without_a_mobile(khalti, bank_payment):
    payment, row = bank_payment

    with pytest.raises(KhaltiRefundFailed):
        services.refund_payment(row)

    assert [call.status_code for call in khalti.calls if call.endpoint == "refund"] == [400]
    refund = Refund.objects.get()
    assert refund.status == Refund.Status.FAILED
    assert "Mobile is required" in refund.failure_reason
    assert (payment.state, payment.refunded_amount) == ("Completed", 0)


def test_a_bank_funded_payment_is_refunded_to_a_mobile(khalti, bank_payment):
    payment, row = bank_payment

    services.refund_payment(row, 2500, mobile="9800000001")

    assert khalti.refund_calls == [(payment.idx, 2500, "9800000001")]
    assert (payment.state, payment.refunds) == ("Partially refunded", [(2500, "9800000001")])


def test_no_bank_payment_below_rs_100_can_exist(khalti):
    with pytest.raises(ValueError, match=r"no bank payment below Rs 100 \(10000 paisa\)"):
        khalti.add_payment(amount=9999, funded_by="bank")
    with pytest.raises(ValueError, match="Unknown funded_by 'card'"):
        khalti.add_payment(amount=10000, funded_by="card")


def test_the_sandboxs_bank_popup_makes_a_bank_funded_payment(client, settings):
    settings.DEBUG = True
    query = {
        "public_key": settings.KHALTI["PUBLIC_KEY"],
        "amount": 10000,
        "product_identity": "ORD-1",
        "product_name": "Dragon",
        "bank": "SandboxEbankA7kqWmR3xTn2Y",
        "mobile": "9800000001",
    }

    assert client.post(f"/sandbox/ebanking/initiate/?{urlencode(query)}").status_code == 200
    assert SandboxTransaction.objects.get().funded_by == "bank"
    too_little = client.get(f"/sandbox/ebanking/initiate/?{urlencode({**query, 'amount': 5000})}")
    assert too_little.status_code == 400
    assert "10000 paisa" in too_little.content.decode()
