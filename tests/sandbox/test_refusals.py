"""The sandbox refuses to serve with DEBUG off or a live key: a system check error at
start-up (khalti_sandbox.E001, E002), and a 403 that says why at every one of its URLs,
before anything is read or written.

The test project installs the sandbox under /sandbox/ and silences the two errors (its
tests run with DEBUG off); run_checks() still returns them, marked silenced.
"""

import html

import pytest
from django.core import checks
from django.urls import reverse

from django_khalti.sandbox import urls as sandbox_urls
from django_khalti.sandbox.models import SandboxEpayment, SandboxTransaction

pytestmark = pytest.mark.django_db

TEST_KEYS = {"SECRET_KEY": "test_secret_key_sandbox", "PUBLIC_KEY": "test_public_key_sandbox"}
LIVE_SECRET = "live_secret_key_0123456789abcdef"
LIVE_PUBLIC = "live_public_key_0123456789abcdef"

#: Every URL of the sandbox, by name, and how its refusal reads.
KINDS = {
    "verify": "api",
    "status": "api",
    "transaction": "api",
    "transactions": "api",
    "transactions-older": "api",
    "refund": "api",
    "epayment-initiate": "api",
    "epayment-lookup": "api",
    "pay": "page",
    "widget-initiate": "api",
    "widget-confirm": "api",
    "banks": "api",
    "bank-initiate": "page",
    "checkout-js": "script",
    "widget-pay": "api",
}


def khalti(settings, **keys):
    return {**settings.KHALTI, **TEST_KEYS, **keys}


def sandbox_errors():
    return [
        (m.id, m.msg) for m in checks.run_checks(tags=["khalti_sandbox"]) if m.level >= checks.ERROR
    ]


def url(name):
    kwargs = {"idx": "AnyIdx"} if name in ("transaction", "refund") else {}
    return reverse(f"khalti_sandbox:{name}", kwargs=kwargs)


def test_every_url_of_the_sandbox_is_named_here():
    assert {pattern.name for pattern in sandbox_urls.urlpatterns} == set(KINDS)


# --- at start-up: the system checks ------------------------------------------------


def test_debug_on_and_test_keys_raise_nothing(settings):
    settings.DEBUG = True
    settings.KHALTI = khalti(settings)
    assert sandbox_errors() == []


def test_debug_off_is_e001(settings):
    settings.DEBUG = False
    settings.KHALTI = khalti(settings)
    (error,) = checks.run_checks(tags=["khalti_sandbox"])
    assert error.id == "khalti_sandbox.E001"
    assert error.level == checks.ERROR
    assert "DEBUG is off" in error.msg
    assert "only in development settings" in error.hint


@pytest.mark.parametrize(
    ("keys", "named"),
    [
        ({"SECRET_KEY": LIVE_SECRET}, ["SECRET_KEY"]),
        ({"PUBLIC_KEY": LIVE_PUBLIC}, ["PUBLIC_KEY"]),
        ({"SECRET_KEY": LIVE_SECRET, "PUBLIC_KEY": LIVE_PUBLIC}, ["SECRET_KEY", "PUBLIC_KEY"]),
        ({"SECRET_KEY": LIVE_PUBLIC}, ["SECRET_KEY"]),  # swapped: still live
    ],
)
def test_a_live_key_is_e002_naming_the_setting_never_the_key(settings, keys, named):
    settings.DEBUG = True
    settings.KHALTI = khalti(settings, **keys)
    errors = sandbox_errors()
    assert [error_id for error_id, _ in errors] == ["khalti_sandbox.E002"] * len(named)
    for (_, message), name in zip(errors, named, strict=True):
        assert f"KHALTI['{name}'] is a live key" in message
        assert LIVE_SECRET not in message
        assert LIVE_PUBLIC not in message


def test_the_test_project_silences_them_and_manage_py_check_shows_them_otherwise(settings):
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError

    settings.DEBUG = False
    settings.KHALTI = khalti(settings, SECRET_KEY=LIVE_SECRET)
    assert all(m.is_silenced() for m in checks.run_checks(tags=["khalti_sandbox"]))
    settings.SILENCED_SYSTEM_CHECKS = []
    with pytest.raises(SystemCheckError) as caught:
        call_command("check", tags=["khalti_sandbox"])
    assert "khalti_sandbox.E001" in str(caught.value)
    assert "khalti_sandbox.E002" in str(caught.value)


# --- at request time: every URL ----------------------------------------------------


def assert_refused(response, kind, because):
    assert response.status_code == 403, response.content[:300]
    if kind == "api":
        assert response["Content-Type"] == "application/json"
        body = response.json()
        assert body["error_key"] == "sandbox_refused"
        assert because in body["detail"]
        assert response["Access-Control-Allow-Origin"] == "*"  # the widget reads it
    elif kind == "page":
        assert response["Content-Type"].startswith("text/html")
        text = html.unescape(response.content.decode())
        assert "The Khalti sandbox is not served here" in text
        assert because in text
    else:
        assert response["Content-Type"].startswith("application/javascript")
        assert response.content.decode().startswith("throw new Error(")
        assert because in response.content.decode()


@pytest.mark.parametrize("method", ["get", "post"])
@pytest.mark.parametrize("name", sorted(KINDS))
def test_with_debug_off_every_url_refuses_and_says_why(client, settings, name, method):
    settings.DEBUG = False
    settings.KHALTI = khalti(settings)
    response = getattr(client, method)(
        url(name), HTTP_AUTHORIZATION="Key " + TEST_KEYS["SECRET_KEY"]
    )
    assert_refused(response, KINDS[name], "only while DEBUG is on")


@pytest.mark.parametrize("name", sorted(KINDS))
@pytest.mark.parametrize("key", ["SECRET_KEY", "PUBLIC_KEY"])
def test_with_a_live_key_every_url_refuses_and_says_why(client, settings, name, key):
    settings.DEBUG = True
    settings.KHALTI = khalti(settings, **{key: LIVE_SECRET if key == "SECRET_KEY" else LIVE_PUBLIC})
    response = client.get(url(name))
    assert_refused(response, KINDS[name], f"KHALTI['{key}'] is a live key")
    assert LIVE_SECRET.encode() not in response.content
    assert LIVE_PUBLIC.encode() not in response.content


INITIATE = {
    "return_url": "http://127.0.0.1:8000/khalti/epayment/return/",
    "website_url": "http://127.0.0.1:8000",
    "amount": 1000,
    "purchase_order_id": "ORD-1",
    "purchase_order_name": "Momo",
}


def initiate(client):
    return client.post(
        url("epayment-initiate"),
        INITIATE,
        content_type="application/json",
        HTTP_AUTHORIZATION="Key " + TEST_KEYS["SECRET_KEY"],
    )


def test_a_refused_request_writes_nothing(client, settings):
    settings.DEBUG = False
    settings.KHALTI = khalti(settings)
    assert initiate(client).status_code == 403
    widget = {
        "public_key": TEST_KEYS["PUBLIC_KEY"],
        "mobile": "9800000001",
        "transaction_pin": "1111",
        "amount": 1000,
        "product_identity": "ORD-1",
        "product_name": "Momo",
    }
    assert (
        client.post(url("widget-pay"), widget, content_type="application/json").status_code == 403
    )
    assert not SandboxEpayment.objects.exists()
    assert not SandboxTransaction.objects.exists()


def test_with_debug_on_and_test_keys_it_serves(client, settings):
    settings.DEBUG = True
    settings.KHALTI = khalti(settings)
    response = initiate(client)
    assert response.status_code == 200, response.content
    pidx = response.json()["pidx"]
    assert response.json()["payment_url"] == f"http://testserver/sandbox/pay/?pidx={pidx}"
    page = client.get(response.json()["payment_url"])
    assert page.status_code == 200
    assert b'id="sandbox-pay"' in page.content


def test_the_sites_drf_throttles_do_not_reach_the_sandbox(client, settings, monkeypatch):
    """A shop's REST_FRAMEWORK defaults are its API's; the sandbox answers as Khalti."""
    from rest_framework.throttling import AnonRateThrottle

    from django_khalti.sandbox.views import merchant

    settings.DEBUG = True
    settings.KHALTI = khalti(settings)

    class OncePerDay(AnonRateThrottle):
        rate = "1/day"

    # What DEFAULT_THROTTLE_CLASSES in the shop's settings gives every APIView class
    # (DRF reads it, and the rates, once, when the class is made).
    monkeypatch.setattr(merchant.SandboxAPIView, "throttle_classes", [OncePerDay])
    assert [initiate(client).status_code for _ in range(3)] == [200, 200, 200]


# --- amounts no record holds: a 400, never a 500 -------------------------------------------


@pytest.mark.parametrize("amount", [2**63, 10**30])
def test_the_widget_refuses_an_amount_no_record_holds(client, settings, amount):
    settings.DEBUG = True
    answer = client.post(
        "/sandbox/api/v2/payment/initiate/",
        {
            "public_key": "test_public_key_testproject",
            "amount": amount,
            "product_identity": "ORD-1",
            "product_name": "ORD-1",
            "mobile": "9800000001",
            "transaction_pin": "1111",
        },
        content_type="application/json",
    )
    assert answer.status_code == 400
    assert answer.json()["amount"] == [
        "Ensure this value is less than or equal to 9223372036854775807."
    ]
    assert not SandboxTransaction.objects.exists()
