import copy
import json
from pathlib import Path

import pytest
import responses
from responses import matchers

from django_khalti.models import Payment
from django_khalti.signals import payment_failed, payment_refunded, payment_verified
from shop.models import Order

FIXTURES = Path(__file__).parent / "fixtures"
BASE_URL = "https://khalti.test/"
SECRET = "test_secret_key_testproject"
VERIFY_URL = BASE_URL + "api/v2/payment/verify/"
STATUS_URL = BASE_URL + "api/v2/payment/status/"
KEY_HEADER = matchers.header_matcher({"Authorization": f"Key {SECRET}"})


def fixture(name):
    """A canned Khalti body from tests/fixtures/<name>.json."""
    return json.loads((FIXTURES / f"{name}.json").read_text())


def transaction_record(amount=1000, state="Completed", idx="8xmeJnNXfoVjCvGcZiiGe7"):
    record = copy.deepcopy(fixture("verify_completed"))
    record["amount"] = amount
    record["state"]["name"] = state
    record["idx"] = idx
    return record


def epayment_started(**changes):
    """Khalti's answer to initiate, with a link good for the next 30 minutes."""
    from datetime import datetime, timedelta, timezone

    expires = datetime.now(timezone(timedelta(hours=5, minutes=45))) + timedelta(minutes=30)
    return {**fixture("epayment_initiate"), "expires_at": expires.isoformat(), **changes}


class KhaltiMock:
    """``responses`` set up for Khalti: every expected call is matched on key and body."""

    def __init__(self, rsps):
        self.rsps = rsps

    def verify(self, token, amount, *, status=200, json=None, body=None, **kwargs):
        if json is None and body is None:
            json = transaction_record(amount=amount)
        return self.rsps.post(
            VERIFY_URL,
            status=status,
            json=json,
            body=body,
            match=[KEY_HEADER, matchers.json_params_matcher({"token": token, "amount": amount})],
            **kwargs,
        )

    def status(self, token, amount, state_fixture, *, status=200):
        return self.rsps.get(
            STATUS_URL,
            status=status,
            json=fixture(state_fixture),
            match=[
                KEY_HEADER,
                matchers.query_param_matcher({"token": token, "amount": str(amount)}),
            ],
        )

    def refund(self, idx, body=None, *, status=200, json=None):
        """Khalti's refund endpoint for ``idx``, expecting exactly ``body`` (``{}``: full)."""
        return self.rsps.post(
            f"{BASE_URL}api/merchant-transaction/{idx}/refund/",
            status=status,
            json=fixture("refund_success") if json is None else json,
            match=[KEY_HEADER, matchers.json_params_matcher(body or {})],
        )

    def transaction(self, idx, *, status=200, json=None):
        return self.rsps.get(
            f"{BASE_URL}api/v2/merchant-transaction/{idx}/",
            status=status,
            json=transaction_record(idx=idx) if json is None else json,
            match=[KEY_HEADER],
        )

    def initiate(self, amount, purchase_order_id, *, status=200, json=None, body=None, **extra):
        """ePayment initiate for this amount and order (matched on key and body)."""
        if json is None and body is None:
            json = epayment_started()
        expected = {"amount": amount, "purchase_order_id": purchase_order_id, **extra}
        return self.rsps.post(
            f"{BASE_URL}api/v2/epayment/initiate/",
            status=status,
            json=json,
            body=body,
            match=[KEY_HEADER, matchers.json_params_matcher(expected, strict_match=False)],
        )

    def lookup(self, pidx, fixture_name=None, *, status=None, json=None, body=None, **changes):
        """ePayment lookup of ``pidx``: a canned body; Expired/User canceled come as HTTP 400."""
        if json is None and body is None:
            json = {**fixture(fixture_name), "pidx": pidx, **changes}
            if status is None:
                status = 400 if json["status"] in ("Expired", "User canceled") else 200
        return self.rsps.post(
            f"{BASE_URL}api/v2/epayment/lookup/",
            status=status or 200,
            json=json,
            body=body,
            match=[KEY_HEADER, matchers.json_params_matcher({"pidx": pidx})],
        )

    @property
    def calls(self):
        return self.rsps.calls

    def calls_to(self, url):
        return [c for c in self.rsps.calls if c.request.url.split("?")[0] == url]


@pytest.fixture
def khalti():
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        yield KhaltiMock(rsps)


@pytest.fixture
def order(db):
    return Order.objects.create(reference="ORD-1", total=1000)


@pytest.fixture
def signals():
    """Every payment signal sent during the test, as (name, kwargs)."""
    sent = []

    def on_verified(sender, **kwargs):
        sent.append(("verified", sender, kwargs))

    def on_failed(sender, **kwargs):
        sent.append(("failed", sender, kwargs))

    def on_refunded(sender, **kwargs):
        sent.append(("refunded", sender, kwargs))

    payment_verified.connect(on_verified, weak=False)
    payment_failed.connect(on_failed, weak=False)
    payment_refunded.connect(on_refunded, weak=False)
    yield sent
    payment_verified.disconnect(on_verified)
    payment_failed.disconnect(on_failed)
    payment_refunded.disconnect(on_refunded)


@pytest.fixture
def payload(order):
    """What the widget's onSuccess hands the page, for ``order``."""
    return {
        "idx": "8xmeJnNXfoVjCvGcZiiGe7",
        "token": "QUvsT4Y8aWd3zTVdLCbsNs",
        "amount": order.total,
        "mobile": "98XXXXXXX9",
        "product_identity": order.reference,
        "product_name": "Dragon",
        "product_url": "http://127.0.0.1:8000/orders/ORD-1/",
        "widget_id": "khalti-widget-1",
    }


__all__ = ["Payment", "fixture", "transaction_record"]
