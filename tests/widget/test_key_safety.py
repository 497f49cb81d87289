"""The widget never publishes a key shaped like a secret key (issue 26, section 4), and
offers no Pay button for an amount ePayment refuses (under Rs 10), with ePayment's words.
"""

import logging
import re

import pytest
from django.template import Context, Template
from django.test import RequestFactory, override_settings
from django.urls import reverse

from django_khalti.exceptions import KhaltiAmountTooSmall

LIVE_SECRET = "live_secret_key_not_a_real_key_checks_tests"
LIVE_PUBLIC = "live_public_key_not_a_real_key_checks_tests"
BASE = {
    "SECRET_KEY": "test_secret_key_x",
    "PUBLIC_KEY": "test_public_key_x",
    "AMOUNT_RESOLVER": lambda request, reference: 1500,
}


def widget(**khalti):
    with override_settings(KHALTI={**BASE, **khalti}):
        return Template("{% load khalti %}{% khalti_widget 'ORD-9' 'Tea' %}").render(
            Context({"request": RequestFactory().get("/pay/")})
        )


@pytest.mark.parametrize(
    "keys",
    [
        {"SECRET_KEY": LIVE_PUBLIC, "PUBLIC_KEY": LIVE_SECRET},  # swapped
        {"SECRET_KEY": LIVE_SECRET, "PUBLIC_KEY": LIVE_SECRET},  # the secret in both
        {"PUBLIC_KEY": LIVE_SECRET.upper()},  # any case
    ],
    ids=["swapped", "equal", "upper-case"],
)
def test_the_tag_never_renders_a_secret_shaped_public_key(caplog, keys):
    with caplog.at_level(logging.ERROR, logger="django_khalti"):
        html = widget(**keys)
    assert LIVE_SECRET.lower() not in html.lower()
    assert "data-khalti-pay" not in html  # no Pay button
    assert "Payments are not available right now." in html
    # The log says why, without the key (caplog.text holds tracebacks too).
    assert "shaped like a secret key" in caplog.text
    assert LIVE_SECRET.lower() not in caplog.text.lower()


#: A bare key, as the ePayment sandbox's dashboard may give: its shape says nothing.
BARE_SECRET = "8f1a2b3c4d5e6f708192a3b4c5d6e7f8"


@pytest.mark.parametrize(
    "keys",
    [
        {"SECRET_KEY": BARE_SECRET, "PUBLIC_KEY": BARE_SECRET},  # the secret in both
        {"SECRET_KEY": BARE_SECRET, "PUBLIC_KEY": f" {BARE_SECRET}\n"},  # read from a file
        {"PUBLIC_KEY": f"Key {LIVE_SECRET}"},  # the Authorization header's value
        {"PUBLIC_KEY": f"\ufeff{LIVE_SECRET}"},  # a file's byte-order mark before it
    ],
    ids=["equal-bare", "equal-whitespace", "header-value", "byte-order-mark"],
)
def test_the_tag_never_renders_the_secret_key_whatever_its_shape(caplog, keys):
    with caplog.at_level(logging.ERROR, logger="django_khalti"):
        html = widget(**keys)
    for secret in (BARE_SECRET, LIVE_SECRET):
        assert secret not in html
        assert secret not in caplog.text
    assert "data-khalti-pay" not in html
    assert "Payments are not available right now." in html


def test_the_tag_publishes_no_key_that_is_not_a_string(caplog):
    # bytes (a key read with os.environb, or open(..., "rb")) would render as "b'...'".
    with caplog.at_level(logging.ERROR, logger="django_khalti"):
        html = widget(PUBLIC_KEY=LIVE_SECRET.encode())
    assert LIVE_SECRET not in html
    assert "data-khalti-pay" not in html
    assert "must be a string" in caplog.text
    assert LIVE_SECRET not in caplog.text


@pytest.mark.django_db
def test_verify_refuses_while_the_public_key_is_the_secret_key(client, caplog, payload):
    keys = {"SECRET_KEY": BARE_SECRET, "PUBLIC_KEY": BARE_SECRET}
    with override_settings(KHALTI={**BASE, **keys}):
        with caplog.at_level(logging.ERROR, logger="django_khalti"):
            response = client.post(
                reverse("django_khalti:verify"), payload, content_type="application/json"
            )
    assert response.status_code == 503
    assert response.json()["code"] == "not_configured"
    assert BARE_SECRET not in response.content.decode()
    assert "the same key" in caplog.text
    assert BARE_SECRET not in caplog.text


def test_the_tag_still_renders_a_public_key():
    html = widget(PUBLIC_KEY=LIVE_PUBLIC)
    assert LIVE_PUBLIC in html
    assert "data-khalti-pay" in html


@pytest.mark.django_db
def test_verify_refuses_while_the_public_key_is_shaped_like_a_secret(client, caplog, payload):
    with override_settings(KHALTI={**BASE, "PUBLIC_KEY": LIVE_SECRET}):
        with caplog.at_level(logging.ERROR, logger="django_khalti"):
            response = client.post(
                reverse("django_khalti:verify"), payload, content_type="application/json"
            )
    assert response.status_code == 503
    assert response.json()["code"] == "not_configured"
    assert LIVE_SECRET not in response.content.decode()
    assert "shaped like a secret key" in caplog.text
    assert LIVE_SECRET not in caplog.text


# --- under Rs 10: what ePayment refuses, the widget does not offer ----------------------------


@pytest.mark.parametrize("amount", [1, 500, 999])
def test_the_tag_offers_no_pay_button_under_rs_10_with_epayments_words(amount):
    html = widget(AMOUNT_RESOLVER=lambda request, reference: amount)
    assert "data-khalti-pay" not in html
    assert str(KhaltiAmountTooSmall.default_detail) in html
    assert "Khalti takes online payments of Rs 10 or more." in html


def test_the_tag_offers_rs_10():
    html = widget(AMOUNT_RESOLVER=lambda request, reference: 1000)
    assert "data-khalti-pay" in html


def widget_message(html):
    """The words the widget shows in place of its Pay button."""
    found = re.search(r'<p class="khalti-message khalti-unavailable"[^>]*>(.*?)</p>', html)
    return found.group(1) if found else None


@pytest.mark.django_db
def test_epayment_refuses_under_rs_10_with_the_same_words(client):
    # The two checkouts agree: what ePayment answers is what the widget shows.
    khalti = {**BASE, "WEBSITE_URL": "https://shop.example.com"}
    with override_settings(KHALTI={**khalti, "AMOUNT_RESOLVER": lambda request, reference: 999}):
        response = client.post(
            reverse("django_khalti:epayment-initiate"),
            {"product_identity": "ORD-9", "product_name": "Tea"},
            content_type="application/json",
        )
    assert response.status_code == 400
    assert response.json()["code"] == "amount_too_small"
    html = widget(AMOUNT_RESOLVER=lambda request, reference: 999)
    assert widget_message(html) == response.json()["detail"]
