"""The hostile review of issue 14's first part: each test failed before its fix. A key
with an invisible character (a byte-order mark, a zero-width space) is E001 and never
reaches an exception; a backslash or userinfo cannot smuggle a ``payment_url`` past the
host check; amounts in Khalti's answers beyond a 64-bit column are unknown answers, not
500s; a misconfigured refund leaves no phantom pending refund."""

from __future__ import annotations

import http.server
import json
import threading
from decimal import Decimal

import pytest
import responses
from django.core import checks
from django.test import override_settings
from django.urls import reverse

from django_khalti.checks import check_settings
from django_khalti.client import KhaltiClient
from django_khalti.exceptions import KhaltiBadResponse, KhaltiConfigurationError
from django_khalti.models import Payment

from ..conftest import epayment_started, fixture
from .test_client import exception_chain

SECRET = "test_secret_key_testproject"
SETTINGS = {
    "SECRET_KEY": SECRET,
    "BASE_URL": "https://khalti.test/",
    "AMOUNT_RESOLVER": "shop.khalti.order_amount",
    "WEBSITE_URL": "http://testserver",
}
PIDX = "bZQLD9wRVWo4CdESSfuSsB"


@pytest.fixture
def server():
    class H(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *a):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_port}/"
    srv.shutdown()


# --- 1. a key with an invisible non-Latin-1 character (BOM, zero-width space) -------------

INVISIBLE = ["\ufeff" + SECRET, SECRET + "\u200b", "test_secret\u2060_key"]


@pytest.mark.parametrize("key", INVISIBLE)
def test_invisible_character_key_is_E001(key):
    with override_settings(KHALTI={**SETTINGS, "SECRET_KEY": key}):
        errors = [m for m in check_settings() if m.level >= checks.ERROR]
    assert [m.id for m in errors] == ["django_khalti.E001"]


@pytest.mark.parametrize("key", INVISIBLE)
def test_invisible_character_key_is_refused_by_the_client(key):
    with pytest.raises(KhaltiConfigurationError):
        KhaltiClient(key, "https://khalti.test/", timeout=5)


def test_invisible_character_key_never_reaches_an_exception(server):
    key = "\ufeff" + SECRET  # a key file saved "UTF-8 with BOM"
    client = KhaltiClient(SECRET, server, timeout=5)
    client._secret_key = key  # past the constructor's check: the call itself must not leak it
    with pytest.raises(Exception) as info:
        client.verify("tok", 1000)
    leaked = [
        (type(e).__name__, name)
        for e in exception_chain(info.value)
        for name, value in vars(e).items() | {("args", e.args)}
        if SECRET in repr(value)
    ] + [
        (type(e).__name__, "object")
        for e in exception_chain(info.value)
        if SECRET in repr(getattr(e, "object", ""))
    ]
    assert isinstance(info.value, KhaltiConfigurationError), type(info.value)
    assert not leaked, leaked


# --- 2. payment_url host check --------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example\\.khalti.com/",
        "https://evil.example\\@pay.khalti.com/",
        "https://evil.example\\\\.khalti.com/",
    ],
)
def test_backslash_payment_url_is_refused(url):
    # Browsers (WHATWG URL) treat "\" as "/" in https URLs: the host is evil.example.
    with responses.RequestsMock() as rsps:
        rsps.post(
            "https://khalti.test/api/v2/epayment/initiate/",
            json={**fixture("epayment_initiate"), "payment_url": url},
        )
        client = KhaltiClient(SECRET, "https://khalti.test/", timeout=5)
        with pytest.raises(KhaltiBadResponse):
            client.initiate(
                return_url="https://shop.example/r/",
                website_url="https://shop.example/",
                amount=1000,
                purchase_order_id="ORD-1",
                purchase_order_name="Dragon",
            )


# --- 3. amounts from Khalti beyond the column -----------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("changes", [{"total_amount": 2**64}, {"fee": 2**64}])
def test_huge_amount_in_khaltis_lookup_is_not_a_500(client, expect_khalti, order, changes):
    expect_khalti.initiate(order.total, order.reference)
    body = {"product_identity": order.reference, "product_name": "Dragon"}
    assert (
        client.post(
            reverse("django_khalti:epayment-initiate"),
            json.dumps(body),
            content_type="application/json",
        ).status_code
        == 201
    )
    expect_khalti.lookup(PIDX, "epayment_lookup_completed", **changes)
    client.raise_request_exception = False
    response = client.get(reverse("django_khalti:epayment-return"), {"pidx": PIDX})
    assert response.status_code != 500


@pytest.mark.django_db
@pytest.mark.parametrize("bad", [-5, 10.0, Decimal("1000"), 2**63])
def test_bad_resolver_amounts_are_not_configured(client, settings, bad):
    settings.KHALTI = {**settings.KHALTI, "AMOUNT_RESOLVER": lambda r, p: bad}
    payload = {"product_identity": "ORD-1", "product_name": "Dragon"}
    r = client.post(
        reverse("django_khalti:epayment-initiate"),
        json.dumps(payload),
        content_type="application/json",
    )
    assert r.status_code == 503
    assert r.json()["code"] == "not_configured"
    r = client.post(reverse("django_khalti:epayment-start", args=["ORD-1"]))
    assert r.status_code == 503
    assert not Payment.objects.exists()


# --- held? ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://khalti.com@evil.example/",
        "https://pay.khalti.com:x@evil.example/",
        "https://evil.example#.khalti.com",
        "https://evil.example?.khalti.com",
        "https://evil.example/.khalti.com",
        "https://khalti.com.evil.example./",
        "HTTPS://EVIL.EXAMPLE/?pay.khalti.com",
        "https://evil.example\uff0f.khalti.com",
        "https://evil.example\uff03.khalti.com",
        "https://evil.example%2f.khalti.com",
        "//pay.khalti.com/",
        "https:pay.khalti.com",
        "https://khalti.test.evil.example/",
        "http://khalti.test/",
    ],
)
def test_host_check_holds(url):
    with responses.RequestsMock() as rsps:
        rsps.post(
            "https://khalti.test/api/v2/epayment/initiate/",
            json={**fixture("epayment_initiate"), "payment_url": url},
        )
        client = KhaltiClient(SECRET, "https://khalti.test/", timeout=5)
        with pytest.raises(KhaltiBadResponse):
            client.initiate(
                return_url="https://shop.example/r/",
                website_url="https://shop.example/",
                amount=1000,
                purchase_order_id="ORD-1",
                purchase_order_name="Dragon",
            )


@pytest.mark.django_db
def test_backslash_payment_url_reaches_the_buyers_page_through_the_api(
    client, expect_khalti, order
):
    """The JSON API hands payment_url to the page verbatim (window.location = payment_url):
    a browser goes to evil.example. (The start view's 302 escapes the backslash to %5C.)"""
    expect_khalti.initiate(
        order.total,
        order.reference,
        json=epayment_started(payment_url="https://evil.example\\.khalti.com/"),
    )
    body = {"product_identity": order.reference, "product_name": "Dragon"}
    response = client.post(
        reverse("django_khalti:epayment-initiate"),
        json.dumps(body),
        content_type="application/json",
    )
    assert response.status_code != 201, response.json()["payment_url"]


@pytest.mark.django_db
def test_bom_key_verify_view_is_503_not_500(client, payload, settings, server):
    settings.KHALTI = {**settings.KHALTI, "SECRET_KEY": "\ufeff" + SECRET, "BASE_URL": server}
    client.raise_request_exception = False
    response = client.post(
        reverse("django_khalti:verify"), json.dumps(payload), content_type="application/json"
    )
    assert response.status_code == 503, response.status_code


@pytest.mark.django_db
def test_the_same_refund_page_submitted_twice_refunds_once(admin_client, expect_khalti):
    from django.utils import timezone

    from django_khalti.models import Refund, order_key

    payment = Payment.objects.create(
        token="tok-2x",
        product_identity="ORD-2X",
        amount=1000,
        order_claim=order_key("ORD-2X"),
        status=Payment.Status.VERIFIED,
        idx="IDX-2X",
        verified_at=timezone.now(),
    )
    expect_khalti.refund("IDX-2X", {"amount": 30000 // 100})
    changelist = reverse("admin:django_khalti_payment_changelist")
    selected = {"action": "refund", "_selected_action": [str(payment.pk)], "index": "0"}
    page = admin_client.post(changelist, selected)
    form = {
        **selected,
        "shown": page.context["form"]["shown"].value(),
        "amount": "3",
        "mobile": "",
        "confirm": "Yes, refund",
    }
    admin_client.post(changelist, form, follow=True)
    second = admin_client.post(changelist, form, follow=True)
    assert Refund.objects.filter(status=Refund.Status.SUCCEEDED).count() == 1
    payment.refresh_from_db()
    assert payment.refunded_amount == 300
    assert "Nothing was done: review these payments again." in second.content.decode()


@pytest.mark.django_db
def test_huge_fee_in_khaltis_verify_answer_is_not_a_500(client, expect_khalti, payload):
    from ..conftest import transaction_record

    record = transaction_record(amount=payload["amount"])
    record["fee_amount"] = 2**64
    expect_khalti.verify(payload["token"], payload["amount"], json=record)
    expect_khalti.strict = False
    client.raise_request_exception = False
    response = client.post(
        reverse("django_khalti:verify"), json.dumps(payload), content_type="application/json"
    )
    assert response.status_code != 500


@pytest.mark.django_db
def test_bom_key_admin_refund_leaves_no_phantom_pending_refund(
    admin_client, settings, server, caplog
):
    from django.utils import timezone

    from django_khalti.models import Refund, order_key

    settings.KHALTI = {**settings.KHALTI, "SECRET_KEY": "\ufeff" + SECRET, "BASE_URL": server}
    payment = Payment.objects.create(
        token="tok-b",
        product_identity="ORD-B",
        amount=1000,
        order_claim=order_key("ORD-B"),
        status=Payment.Status.VERIFIED,
        idx="IDX-B",
        verified_at=timezone.now(),
    )
    admin_client.raise_request_exception = False
    changelist = reverse("admin:django_khalti_payment_changelist")
    selected = {"action": "refund", "_selected_action": [str(payment.pk)], "index": "0"}
    page = admin_client.post(changelist, selected)
    response = admin_client.post(
        changelist,
        {
            **selected,
            "shown": page.context["form"]["shown"].value(),
            "amount": "",
            "mobile": "",
            "confirm": "Yes, refund",
        },
    )
    pending = Refund.objects.filter(status=Refund.Status.PENDING).count()
    assert (response.status_code, pending) == (200, 0) or response.status_code == 302
    assert SECRET not in caplog.text


@pytest.mark.django_db
@pytest.mark.parametrize("amount", [2**64, -1000])
def test_out_of_range_amount_in_khaltis_verify_answer_is_not_a_500(
    client, expect_khalti, payload, amount
):
    from ..conftest import transaction_record

    expect_khalti.verify(
        payload["token"], payload["amount"], json=transaction_record(amount=amount)
    )
    expect_khalti.strict = False
    client.raise_request_exception = False
    response = client.post(
        reverse("django_khalti:verify"), json.dumps(payload), content_type="application/json"
    )
    assert response.status_code != 500
