"""One model of what Khalti answers, two doors: the kit and the sandbox answer alike.

Each scenario is played twice, with the same requests: once against the testing kit
(``requests`` to ``BASE_URL``, answered in-process), once against the sandbox's URLs
(Django's test client, as a shop's server would call them). The two transcripts,
with ids and times normalised, must be equal, so that a rule changed at one door
alone fails here.
"""

import re
from datetime import timedelta
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
import requests
from django.test import Client
from django.utils import timezone
from rest_framework.response import Response

from django_khalti.sandbox import books
from django_khalti.sandbox.models import SandboxEpayment, SandboxTransaction
from django_khalti.sandbox.views import merchant

SECRET = "test_secret_key_testproject"
PUBLIC = "test_public_key_testproject"
KEYS = {
    "secret": f"Key {SECRET}",
    "none": None,
    "wrong": "Key test_secret_key_someone_else",
    "public": f"Key {PUBLIC}",
    "bearer": f"Bearer {SECRET}",
    "accented": "Key tëst_secret_key_testproject",
}
_ID = re.compile(r"^[23456789A-HJ-NP-Za-km-z]{22}$")
_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


class KitDoor:
    """The testing kit: ``requests`` to its BASE_URL."""

    name = "kit"

    def __init__(self, khalti):
        self.khalti = khalti

    def call(self, method, path, *, json=None, data=None, query=None, key="secret"):
        headers = {"Authorization": KEYS[key]} if KEYS[key] else {}
        url = f"{self.khalti.base_url}{path}" + (f"?{urlencode(query)}" if query else "")
        answer = requests.request(method, url, json=json, data=data, headers=headers, timeout=5)
        return answer.status_code, answer.json()

    def widget_payment(self, amount, funded_by="wallet"):
        payment = self.khalti.add_payment(amount=amount, mobile="9800000001", funded_by=funded_by)
        return payment.token, payment.idx

    def unconfirmed_payment(self, amount):
        return self.khalti.add_payment(amount=amount, state="Initiated").token

    def pay(self, pidx, *, cancel=False):
        try:
            back = (self.khalti.cancel if cancel else self.khalti.pay)(
                pidx, **({} if cancel else {"mobile": "9800000001"})
            )
        except ValueError:
            return "refused"
        return returned(back)

    def run_out(self, pidx):
        self.khalti.epayment(pidx).expires_at = timezone.now() - timedelta(seconds=1)

    @property
    def base(self):
        return self.khalti.base_url

    def foreign(self, amount, *, minutes_ago, refunded_amount=0):
        when = timezone.now() - timedelta(minutes=minutes_ago)
        state = "Completed" if not refunded_amount else "Partially refunded"
        kept = self.khalti.add_foreign(
            amount, state=state, refunded_amount=refunded_amount, created_on=when
        )
        return kept.idx

    def dashboard_refund(self, idx, amount=None, mobile=None):
        try:
            self.khalti.refund_in_dashboard(idx, amount, mobile=mobile)
        except ValueError as refused:
            return re.search(r"\(([a-z.-]+)\)", str(refused))[1]
        return "refunded"


class SandboxDoor:
    """The sandbox: its URLs, through Django's test client."""

    name = "sandbox"

    def __init__(self):
        self.client = Client()

    def call(self, method, path, *, json=None, data=None, query=None, key="secret"):
        given = KEYS[key]
        headers = {"Authorization": given} if given else {}
        url = f"/sandbox/{path}" + (f"?{urlencode(query)}" if query else "")
        if json is not None:
            answer = self.client.generic(
                method,
                url,
                data=__import__("json").dumps(json),
                content_type="application/json",
                headers=headers,
            )
        elif data is not None:
            answer = self.client.generic(
                method,
                url,
                data=urlencode(data),
                content_type="application/x-www-form-urlencoded",
                headers=headers,
            )
        else:
            answer = self.client.generic(method, url, headers=headers)
        return answer.status_code, answer.json()

    def widget_payment(self, amount, funded_by="wallet"):
        product = {
            "public_key": PUBLIC,
            "amount": amount,
            "product_identity": "ORD-1",
            "product_name": "ORD-1",
        }
        if funded_by == "bank":
            query = {**product, "bank": "SandboxEbankA7kqWmR3xTn2Y", "mobile": "9800000001"}
            answer = self.client.post(f"/sandbox/ebanking/initiate/?{urlencode(query)}")
            assert answer.status_code == 200, answer.content
            row = SandboxTransaction.objects.latest("created_at")
            return row.token, row.idx
        answer = self.client.post(
            "/sandbox/widget/pay/",
            {**product, "mobile": "9800000001", "mpin": "1111"},
            content_type="application/json",
        )
        assert answer.status_code == 200, answer.content
        return answer.json()["token"], answer.json()["idx"]

    def unconfirmed_payment(self, amount):
        answer = self.client.post(
            "/sandbox/api/v2/payment/initiate/",
            {
                "public_key": PUBLIC,
                "amount": amount,
                "product_identity": "ORD-1",
                "product_name": "ORD-1",
                "mobile": "9800000001",
                "transaction_pin": "1111",
            },
            content_type="application/json",
        )
        assert answer.status_code == 200, answer.content
        return answer.json()["token"]

    def pay(self, pidx, *, cancel=False):
        form = {"action": "cancel"} if cancel else {"mobile": "9800000001", "mpin": "1111"}
        answer = self.client.post(f"/sandbox/pay/?pidx={pidx}", {"pidx": pidx, **form})
        return returned(answer["Location"]) if answer.status_code == 302 else "refused"

    def run_out(self, pidx):
        SandboxEpayment.objects.filter(pidx=pidx).update(
            expires_at=timezone.now() - timedelta(seconds=1)
        )

    base = "http://testserver/sandbox/"

    def foreign(self, amount, *, minutes_ago, refunded_amount=0):
        when = timezone.now() - timedelta(minutes=minutes_ago)
        return books.add_foreign(
            amount=amount, refunded_amount=refunded_amount, created_on=when
        ).idx

    def dashboard_refund(self, idx, amount=None, mobile=None):
        answer = books.refund_in_dashboard(idx, amount, mobile or "")
        return "refunded" if answer.status == 200 else answer.rule


def returned(url):
    """Where Khalti sent the buyer back: the return URL's path and query."""
    parts = urlsplit(url)
    return [parts.path, dict(parse_qsl(parts.query, keep_blank_values=True))]


class Transcript:
    """What a door answered, with ids and times made comparable."""

    def __init__(self, door):
        self.door = door
        self.lines = []
        self._ids = {}

    def name(self, value):
        """A placeholder for an id, by the order ids were first seen."""
        return self._ids.setdefault(value, f"<id{len(self._ids) + 1}>")

    def normal(self, value):
        if isinstance(value, dict):
            return {key: self.normal(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.normal(item) for item in value]
        if isinstance(value, str) and value.startswith(self.door.base):
            return "<base>/" + value[len(self.door.base) :]
        if isinstance(value, str) and _ID.match(value):
            return self.name(value)
        if isinstance(value, str) and _TIME.match(value):
            return "<time>" if value.endswith("+05:45") else f"<time, not Nepal's: {value}>"
        return value

    def call(self, what, method, path, **kwargs):
        status, body = self.door.call(method, path, **kwargs)
        if "payment_url" in body:
            body = {**body, "payment_url": "<payment_url>"}
        self.lines.append((what, status, self.normal(body)))
        return body

    def note(self, what, value):
        self.lines.append((what, self.normal(value)))


def widget_story(t):
    token, idx = t.door.widget_payment(1000)
    t.note("token and idx", [token, idx])
    verify = "api/v2/payment/verify/"
    for key in ("none", "wrong", "public", "bearer", "accented"):
        t.call(f"verify, key {key}", "POST", verify, json={"token": token, "amount": 1000}, key=key)
    t.call("verify, nothing", "POST", verify, json={})
    t.call("verify, amount not a number", "POST", verify, json={"token": token, "amount": "ten"})
    t.call("verify, blank token", "POST", verify, data={"token": " ", "amount": "1000"})
    t.call("verify, unknown token", "POST", verify, json={"token": "x" * 22, "amount": 1000})
    t.call(
        "status, confirmed", "GET", "api/v2/payment/status/", query={"token": token, "amount": 1000}
    )
    t.call("status, no amount", "GET", "api/v2/payment/status/", query={"token": token})
    t.call("record before verify", "GET", f"api/v2/merchant-transaction/{idx}/")
    t.call("refund before verify", "POST", f"api/merchant-transaction/{idx}/refund/", json={})
    t.call("verify, wrong amount", "POST", verify, json={"token": token, "amount": 1100})
    t.call("verify, below Rs 10", "POST", verify, json={"token": token, "amount": 500})
    t.call("verify, as a form", "POST", verify, data={"token": token, "amount": "1000"})
    t.call("verify again", "POST", verify, json={"token": token, "amount": 1000})
    for asked, amount in ((token, 1000), (idx, 1000), (token, 999)):
        t.call("status", "GET", "api/v2/payment/status/", query={"token": asked, "amount": amount})
    t.call("record by idx", "GET", f"api/v2/merchant-transaction/{idx}/")
    t.call("record by token", "GET", f"api/v2/merchant-transaction/{token}/")
    refund = f"api/merchant-transaction/{idx}/refund/"
    t.call("refund by token", "POST", f"api/merchant-transaction/{token}/refund/", json={})
    for wrong in ("some", 0, -5, 1001):
        t.call(f"refund {wrong}", "POST", refund, json={"amount": wrong})
    t.call("refund 400", "POST", refund, data={"amount": "400"})
    t.call(
        "status, partly refunded",
        "GET",
        "api/v2/payment/status/",
        query={"token": token, "amount": 1000},
    )
    t.call("record, partly refunded", "GET", f"api/v2/merchant-transaction/{idx}/")
    t.call("refund 700 of 600", "POST", refund, json={"amount": 700})
    t.call("refund the rest", "POST", refund)
    t.call(
        "status, refunded", "GET", "api/v2/payment/status/", query={"token": token, "amount": 1000}
    )
    t.call("refund again", "POST", refund, json={})
    t.call("refund of nothing", "POST", "api/merchant-transaction/nothing/refund/", json={})
    waiting = t.door.unconfirmed_payment(2000)
    status = {"token": waiting, "amount": 2000}
    t.call("status, unconfirmed", "GET", "api/v2/payment/status/", query=status)
    t.call("verify, unconfirmed", "POST", verify, json=status)


def bank_story(t):
    token, _ = t.door.widget_payment(10000, funded_by="bank")
    verify = "api/v2/payment/verify/"
    record = t.call("verify", "POST", verify, json={"token": token, "amount": 10000})
    refund = f"api/merchant-transaction/{record.get('idx', '?')}/refund/"
    t.call("refund, no mobile", "POST", refund, json={"amount": 1000})
    t.call("refund, blank mobile", "POST", refund, data={"mobile": ""})
    t.call("refund to a mobile", "POST", refund, json={"amount": 1000, "mobile": "9800000001"})
    t.call("refund the rest to a mobile", "POST", refund, json={"mobile": "9800000001"})


def started(**changes):
    return {
        "return_url": "http://testserver/back/",
        "website_url": "http://testserver",
        "amount": 1000,
        "purchase_order_id": "ORD-1",
        "purchase_order_name": "Dragon",
        **changes,
    }


def epayment_story(t):
    initiate, lookup = "api/v2/epayment/initiate/", "api/v2/epayment/lookup/"
    t.call("initiate, nothing", "POST", initiate, json={})
    t.call("initiate, wrong key", "POST", initiate, json=started(), key="wrong")
    for change in (
        {"amount": 500},
        {"amount": "ten"},
        {"amount": 10.5},
        {"amount": 2**63},  # more than Khalti's records hold
        {"return_url": "back"},
        {"website_url": "ftp://shop"},
        {"purchase_order_id": "x" * 256},
        {"amount_breakdown": [{"label": "Dragon", "amount": 900}]},
        {"customer_info": {"email": "not-an-email"}},
        {"customer_info": "me"},
    ):
        t.call(f"initiate, {change}", "POST", initiate, json=started(**change))
    paid = t.call(
        "initiate",
        "POST",
        initiate,
        json=started(amount_breakdown=[{"label": "D", "amount": 1000}]),
    )
    pidx = paid.get("pidx", "?")
    t.call("lookup, nothing", "POST", lookup, json={})
    t.call("lookup, unknown", "POST", lookup, json={"pidx": "x" * 22})
    t.call("lookup, initiated", "POST", lookup, json={"pidx": pidx})
    t.note("the buyer pays", t.door.pay(pidx))
    t.note("the buyer pays again", t.door.pay(pidx))
    body = t.call("lookup, paid", "POST", lookup, data={"pidx": pidx})
    transaction_id = body.get("transaction_id") or "?"
    t.call("record", "GET", f"api/v2/merchant-transaction/{transaction_id}/")
    t.call(
        "status of an ePayment",
        "GET",
        "api/v2/payment/status/",
        query={"token": transaction_id, "amount": 1000},
    )
    t.call(
        "verify an ePayment",
        "POST",
        "api/v2/payment/verify/",
        json={"token": transaction_id, "amount": 1000},
    )
    refund = f"api/merchant-transaction/{transaction_id}/refund/"
    t.call("refund by pidx", "POST", f"api/merchant-transaction/{pidx}/refund/", json={})
    t.call("refund 300", "POST", refund, json={"amount": 300})
    t.call("lookup, partly refunded", "POST", lookup, json={"pidx": pidx})
    t.call("refund the rest", "POST", refund, json={})
    t.call("lookup, refunded", "POST", lookup, json={"pidx": pidx})

    cancelled = t.call("initiate", "POST", initiate, json=started(purchase_order_id="ORD-2"))
    t.note("the buyer cancels", t.door.pay(cancelled["pidx"], cancel=True))
    t.call("lookup, cancelled", "POST", lookup, json={"pidx": cancelled["pidx"]})
    t.note("the buyer pays after cancelling", t.door.pay(cancelled["pidx"]))

    late = t.call("initiate", "POST", initiate, json=started(purchase_order_id="ORD-3"))
    t.door.run_out(late["pidx"])
    t.note("the buyer pays too late", t.door.pay(late["pidx"]))
    t.note("the buyer cancels too late", t.door.pay(late["pidx"], cancel=True))
    t.call("lookup, expired", "POST", lookup, json={"pidx": late["pidx"]})


def ledger_story(t):
    """The merchant's transaction list: what reached the merchant, paged, newest first."""
    listed, older = "api/v2/merchant-transaction/", "api/merchant-transaction/"
    t.call("list, nothing yet", "GET", listed)
    t.call("list, page 2 of nothing", "GET", listed, query={"page": 2})
    t.call("list, no key", "GET", listed, key="none")
    t.call("list, public key", "GET", older, key="public")
    token, idx = t.door.widget_payment(1000)
    t.call("list, a payment not verified", "GET", listed)
    t.call("verify", "POST", "api/v2/payment/verify/", json={"token": token, "amount": 1000})
    _, unverified = t.door.widget_payment(2000)  # confirmed, never verified: never listed
    t.note("a foreign one", t.door.foreign(5000, minutes_ago=30))
    t.note(
        "a foreign one refunded in part", t.door.foreign(7000, minutes_ago=20, refunded_amount=700)
    )
    t.note("dashboard refund 400", t.door.dashboard_refund(idx, 400))
    for wrong in (601, 0):
        t.note(f"dashboard refund {wrong}", t.door.dashboard_refund(idx, wrong))
    t.note("dashboard refund, not verified", t.door.dashboard_refund(unverified))
    paid = t.call("initiate", "POST", "api/v2/epayment/initiate/", json=started(amount=3000))
    t.note("the buyer pays", t.door.pay(paid["pidx"]))
    body = t.call("lookup", "POST", "api/v2/epayment/lookup/", json={"pidx": paid["pidx"]})
    t.note("dashboard refund, all", t.door.dashboard_refund(body["transaction_id"]))
    t.note("dashboard refund, again", t.door.dashboard_refund(body["transaction_id"]))
    t.call("lookup, refunded", "POST", "api/v2/epayment/lookup/", json={"pidx": paid["pidx"]})
    t.call("list", "GET", listed)
    for page in (1, 2, 3):
        t.call(f"list, page {page} of 2", "GET", listed, query={"page": page, "page_size": 2})
    t.call("list, older path", "GET", older, query={"page_size": 3, "page": 2})
    for no_page in (0, -1, "two", "", 99):
        t.call(f"list, page {no_page!r}", "GET", listed, query={"page": no_page})
    for size in (0, "many", 1000):
        t.call(f"list, page_size {size!r}", "GET", listed, query={"page_size": size})


# The ledger story first: it starts from an empty list (test_page runs them in turn).
STORIES = [ledger_story, widget_story, bank_story, epayment_story]


@pytest.mark.parametrize("story", STORIES)
def test_the_kit_and_the_sandbox_answer_the_same_requests_alike(doors, story):
    kit, sandbox = Transcript(doors[0]), Transcript(doors[1])

    story(kit)
    story(sandbox)

    assert kit.lines == sandbox.lines
    assert len(kit.lines) >= 5


def test_the_transcripts_tell_a_drift(doors, monkeypatch):
    # A rule changed at one door alone: the comparison above sees it.
    kit, sandbox = Transcript(doors[0]), Transcript(doors[1])
    widget_story(kit)

    def refunds_say_more(answer):
        return Response({**answer.body, "refunded": True}, status=answer.status)

    monkeypatch.setattr(merchant, "answered", refunds_say_more)
    widget_story(sandbox)
    assert kit.lines != sandbox.lines
