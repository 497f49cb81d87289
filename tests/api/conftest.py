"""What the API's hostile-input, throttling and secrets tests share: the orders they aim
at, one verified payment, and the checks that nothing reached Khalti or changed."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from django_khalti.models import Payment, order_key
from shop.models import Order

VERIFY = reverse("django_khalti:verify")
INITIATE = reverse("django_khalti:epayment-initiate")
RETURN = reverse("django_khalti:epayment-return")
PAID_TOKEN = "paid-token"


# --- fixtures and checks ----------------------------------------------------------------


@pytest.fixture
def shop(db):
    """The orders the hostile inputs aim at, and one verified payment."""
    Order.objects.create(reference="ORD-1", total=1000)
    Order.objects.create(reference="ORD-CHEAP", total=500)
    Order.objects.create(reference="ORD-PAID", total=1000, paid=True)
    paid = Payment.objects.create(
        token=PAID_TOKEN,
        product_identity="ORD-PAID",
        amount=1000,
        idx="paid-idx",
        status=Payment.Status.VERIFIED,
        verified_at=timezone.now(),
        order_claim=order_key("ORD-PAID"),
    )
    return paid


def assert_refused_json(response, expect_khalti, shop):
    """A 4xx with a JSON body; Khalti never called; no payment made or changed."""
    assert 400 <= response.status_code < 500, (response.status_code, response.content[:300])
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    assert isinstance(response.json(), (dict, list))
    assert_untouched(expect_khalti, shop)


def assert_refused_page(response, expect_khalti, shop):
    assert 400 <= response.status_code < 500, (response.status_code, response.content[:300])
    assert response["Content-Type"].startswith("text/html"), response["Content-Type"]
    assert_untouched(expect_khalti, shop)


def assert_untouched(expect_khalti, shop):
    assert not expect_khalti.calls, expect_khalti.calls
    assert list(Payment.objects.values_list("pk", "status")) == [(shop.pk, Payment.Status.VERIFIED)]


def hostile_client() -> Client:
    """A fresh client a request, so that no cookie or session carries over."""
    return Client()
