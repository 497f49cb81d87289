"""Side doors (issue 14), the items closed so far: the secret key's hygiene and its
exception chains are in tests/client/test_client.py and tests/project/test_checks.py; here, amounts
beyond what a payment holds, ``payment_url`` off Khalti's hosts, and the admin's refund
checked under the payment's row lock."""

from __future__ import annotations

import json

import pytest
import responses
from django.urls import reverse
from django.utils import timezone

from django_khalti.client import KhaltiClient
from django_khalti.exceptions import KhaltiBadResponse
from django_khalti.models import Payment, Refund, order_key

from ..conftest import fixture

pytestmark = pytest.mark.django_db

VERIFY = reverse("django_khalti:verify")
INITIATE = reverse("django_khalti:epayment-initiate")


def huge_amount(request, product_identity):
    return 2**64  # a resolver in the wrong unit, or a bug: not a payment


@pytest.mark.parametrize("where", ["verify", "initiate", "start"])
def test_an_amount_beyond_what_a_payment_holds_is_a_configuration_error_not_a_500(
    client, settings, where
):
    settings.KHALTI = {**settings.KHALTI, "AMOUNT_RESOLVER": huge_amount}
    if where == "verify":
        payload = {"token": "tok-huge", "amount": 1000, "product_identity": "ORD-1"}
        response = client.post(VERIFY, json.dumps(payload), content_type="application/json")
    elif where == "initiate":
        payload = {"product_identity": "ORD-1", "product_name": "Dragon"}
        response = client.post(INITIATE, json.dumps(payload), content_type="application/json")
    else:
        response = client.post(reverse("django_khalti:epayment-start", args=["ORD-1"]))
    assert response.status_code == 503
    if where != "start":
        assert response.json()["code"] == "not_configured"
    assert not Payment.objects.exists()


@pytest.fixture
def rsps():
    with responses.RequestsMock() as mock:
        yield mock


@pytest.mark.parametrize(
    ("payment_url", "accepted"),
    [
        ("https://pay.khalti.com/?pidx=abc", True),
        ("https://khalti.com/pay/abc", True),
        ("https://test-pay.khalti.com/?pidx=abc", True),
        ("https://khalti.test/pay/abc", True),  # BASE_URL's own host (a sandbox, a fake)
        ("https://evil.example/?pidx=abc", False),
        ("https://khalti.com.evil.example/", False),
        ("https://evilkhalti.com/", False),
        ("http://pay.khalti.com/?pidx=abc", False),  # not over https
        ("javascript:alert(1)", False),
        ("https://[::1", False),
    ],
)
def test_payment_url_must_be_on_khaltis_hosts(rsps, payment_url, accepted):
    answer = {**fixture("epayment_initiate"), "payment_url": payment_url}
    rsps.post("https://khalti.test/api/v2/epayment/initiate/", json=answer)
    client = KhaltiClient("test_secret_key_side_doors", "https://khalti.test/", timeout=5)

    def start():
        return client.initiate(
            return_url="https://shop.example/r/",
            website_url="https://shop.example/",
            amount=1000,
            purchase_order_id="ORD-1",
            purchase_order_name="Dragon",
        )

    if accepted:
        assert start().payment_url == payment_url
    else:
        with pytest.raises(KhaltiBadResponse):
            start()


def test_the_admins_refund_is_checked_against_what_was_refunded_under_the_row_lock(
    admin_client, expect_khalti, monkeypatch
):
    """Between the request's check of the page and the refund's claim, another refund
    completes: the refund is refused under the row lock, and Khalti is not asked."""
    from django_khalti import services

    payment = Payment.objects.create(
        token="tok-lock",
        product_identity="ORD-L",
        amount=1000,
        order_claim=order_key("ORD-L"),
        status=Payment.Status.VERIFIED,
        idx="IDX-L",
        verified_at=timezone.now(),
    )
    real = services.refund_payment

    def another_refund_lands_first(payment, **kwargs):
        Refund.objects.create(
            payment=payment, amount=300, status=Refund.Status.SUCCEEDED, settled_at=timezone.now()
        )
        Payment.objects.filter(pk=payment.pk).update(
            status=Payment.Status.PARTIALLY_REFUNDED, refunded_amount=300
        )
        return real(payment, **kwargs)

    monkeypatch.setattr(services, "refund_payment", another_refund_lands_first)
    changelist = reverse("admin:django_khalti_payment_changelist")
    page = admin_client.post(
        changelist, {"action": "refund", "_selected_action": [str(payment.pk)], "index": "0"}
    )
    assert page.status_code == 200
    response = admin_client.post(
        changelist,
        {
            "action": "refund",
            "_selected_action": [str(payment.pk)],
            "index": "0",
            "shown": page.context["form"]["shown"].value(),
            "amount": "",
            "mobile": "",
            "confirm": "Yes, refund",
        },
        follow=True,
    )
    texts = [str(m) for m in response.context["messages"]]
    assert any("refunded meanwhile" in text for text in texts), texts
    assert not expect_khalti.calls  # nothing reached Khalti
    payment.refresh_from_db()
    assert payment.refunded_amount == 300
