"""The kit's transaction list, and Khalti's books changed outside the app (issue 28).

What a shop's accounting reads (``GET api/v2/merchant-transaction/?page=N``), as
Khalti's server answers it, and what happens at Khalti without the app: a refund
in the dashboard, a transaction of another channel, a record lost or holding
another amount.
"""

from datetime import timedelta

import pytest
import requests
from django.urls import reverse
from django.utils import timezone

from django_khalti.client import KhaltiClient
from django_khalti.models import Payment
from django_khalti.rules.shapes import NPT

pytestmark = pytest.mark.django_db

LIST = "api/v2/merchant-transaction/"
OLDER = "api/merchant-transaction/"


def listing(khalti, settings, path=LIST, key=None, **query):
    """Khalti's answer to a page of the list: (HTTP status, JSON body)."""
    key = settings.KHALTI["SECRET_KEY"] if key is None else key
    answer = requests.get(
        khalti.base_url + path, params=query, headers={"Authorization": f"Key {key}"}, timeout=5
    )
    return answer.status_code, answer.json()


def records(khalti, settings, **query):
    status, body = listing(khalti, settings, **query)
    assert status == 200, body
    return {r["idx"]: (r["state"], r["amount"], r["refunded_amount"]) for r in body["records"]}


def aged(khalti, amount, minutes_ago):
    """A verified widget payment made ``minutes_ago``."""
    payment = khalti.add_payment(amount=amount, verified=True)
    payment.created_on = timezone.now() - timedelta(minutes=minutes_ago)
    return payment


# --- paging -------------------------------------------------------------------------------


def test_three_pages_newest_first_walked_by_their_next_links(khalti, settings):
    made = [aged(khalti, 1000 + n, minutes_ago=10 - n) for n in range(5)]  # made[4]: newest
    khalti.ledger_page_size = 2

    status, first = listing(khalti, settings)
    pages, url = [first], first["next"]
    while url:
        answer = requests.get(
            url, headers={"Authorization": f"Key {settings.KHALTI['SECRET_KEY']}"}, timeout=5
        )
        pages.append(answer.json())
        url = pages[-1]["next"]

    assert status == 200
    assert [[r["idx"] for r in page["records"]] for page in pages] == [
        [made[4].idx, made[3].idx],
        [made[2].idx, made[1].idx],
        [made[0].idx],
    ]
    assert [(p["current_page"], p["record_range"]) for p in pages] == [
        (1, [1, 2]),
        (2, [3, 4]),
        (3, [5, 5]),
    ]
    assert {(p["total_pages"], p["total_records"]) for p in pages} == {(3, 5)}
    assert pages[0]["previous"] is None
    assert pages[1]["previous"] == f"{khalti.base_url}{LIST}"  # page 1: no ?page=, as DRF
    assert pages[2]["previous"] == f"{khalti.base_url}{LIST}?page=2"
    assert pages[1]["next"] == f"{khalti.base_url}{LIST}?page=3"
    assert khalti.transactions_calls == [1, 2, 3]


def test_a_record_of_the_list_is_flat(khalti, settings):
    payment = khalti.add_payment(amount=10000, verified=True, funded_by="bank", mobile="9800000001")

    (record,) = listing(khalti, settings)[1]["records"]

    assert record == {
        "idx": payment.idx,
        "type": "Ebanking payment",
        "state": "Completed",
        "amount": 10000,
        "fee_amount": 300,
        "refunded_amount": 0,
        "created_on": payment.created_on.isoformat(),
        "source": {"idx": "cCaPkRPQGn5D8StkiqqMJg", "name": "Test User", "mobile": "98XXXXXXX1"},
    }
    assert record["created_on"].endswith("+05:45")


def test_only_what_reached_the_merchant_is_listed(client, khalti, settings, order):
    verified = khalti.add_payment(amount=1000)
    assert (
        client.post(
            reverse("django_khalti:verify"),
            verified.payload("ORD-1"),
            content_type="application/json",
        ).json()["status"]
        == Payment.Status.VERIFIED
    )
    khalti.add_payment(amount=1000)  # confirmed, never verified
    khalti.add_payment(amount=1000, state="Failed")
    khalti.add_payment(amount=1000, state="Initiated")
    khalti.add_epayment(amount=2000)  # initiated, unpaid
    khalti.add_epayment(amount=2000, status="Pending")
    paid = khalti.add_epayment(amount=3000, status="Completed")
    refunded = khalti.add_epayment(amount=4000, status="Refunded")

    assert records(khalti, settings) == {
        refunded.transaction_id: ("Refunded", 4000, 4000),
        paid.transaction_id: ("Completed", 3000, 0),
        verified.idx: ("Completed", 1000, 0),
    }


def test_no_transaction_yet_is_one_empty_page(khalti, settings):
    assert listing(khalti, settings) == (
        200,
        {
            "total_pages": 1,
            "total_records": 0,
            "next": None,
            "previous": None,
            "record_range": [0, 0],
            "current_page": 1,
            "records": [],
        },
    )


@pytest.mark.parametrize("page", ["0", "-1", "two", "", "1.5", "3"])
def test_a_page_it_has_not_is_404(khalti, settings, page):
    for amount in (1000, 2000, 3000):
        khalti.add_payment(amount=amount, verified=True)
    khalti.ledger_page_size = 2

    assert listing(khalti, settings, page=page) == (404, {"detail": "Invalid page."})


def test_page_size_is_honoured_from_1_to_100(khalti, settings):
    for n in range(3):
        khalti.add_payment(amount=1000 + n, verified=True)

    assert listing(khalti, settings, page_size=1)[1]["total_pages"] == 3
    assert listing(khalti, settings, page_size=0)[1]["total_pages"] == 1  # the default, 20
    khalti.ledger_page_size = 1
    assert listing(khalti, settings, page_size="many")[1]["total_pages"] == 3
    assert len(listing(khalti, settings, page_size=1000)[1]["records"]) == 3


def test_the_older_path_answers_the_same(khalti, settings):
    for n in range(3):
        aged(khalti, 1000 + n, minutes_ago=n)
    khalti.ledger_page_size = 2

    status, older = listing(khalti, settings, OLDER, page=2)
    newer = listing(khalti, settings, LIST, page=2)[1]

    assert status == 200
    assert older["records"] == newer["records"]
    assert older["previous"] == f"{khalti.base_url}{OLDER}"
    assert [c.url.split("?")[0] for c in khalti.calls] == [
        f"{khalti.base_url}{OLDER}",
        f"{khalti.base_url}{LIST}",
    ]
    assert khalti.transactions_calls == [2, 2]


def test_the_list_wants_the_secret_key(khalti, settings):
    assert listing(khalti, settings, key="test_secret_key_someone_else") == (
        401,
        {"detail": "Invalid token."},
    )
    assert listing(khalti, settings, OLDER, key=settings.KHALTI["PUBLIC_KEY"])[0] == 401


def test_the_list_takes_the_choices_of_other_endpoints(khalti, settings):
    khalti.add_payment(amount=1000, verified=True)
    khalti.fail_next("transactions", "server_error")
    khalti.fail_next("transactions", "rejected")
    choice = khalti.answer_next("transactions", json={"records": "garbage"})

    first = requests.get(khalti.base_url + LIST, timeout=5, headers=key_header(settings))
    assert (first.status_code, first.headers["Content-Type"]) == (500, "text/html; charset=utf-8")
    assert listing(khalti, settings) == (404, {"detail": "Invalid page."})
    assert listing(khalti, settings, OLDER) == (200, {"records": "garbage"})
    assert len(choice.calls) == 1
    assert listing(khalti, settings)[1]["total_records"] == 1  # the choices are spent
    with pytest.raises(ValueError, match="set_amount"):
        khalti.fail_next("transactions", "wrong_amount")
    with pytest.raises(ValueError, match="leave key out"):
        khalti.fail_next("transactions", "timeout", key="2")


def key_header(settings):
    return {"Authorization": f"Key {settings.KHALTI['SECRET_KEY']}"}


# --- Khalti's books, outside the app ----------------------------------------------------


def test_a_dashboard_refund_in_part_then_of_the_rest_shows_in_the_list(khalti, settings):
    payment = khalti.add_payment(amount=1000, verified=True)

    khalti.refund_in_dashboard(payment.idx, 300)
    assert records(khalti, settings) == {payment.idx: ("Partially refunded", 1000, 300)}
    assert KhaltiClient.from_settings().status(payment.token, 1000).state == "Partially refunded"

    khalti.refund_in_dashboard(payment.token)  # all that remains, by any of its ids
    assert records(khalti, settings) == {payment.idx: ("Refunded", 1000, 1000)}
    assert payment.refunds == [(300, None), (700, None)]
    # Nobody called Khalti's refund: the app was not involved.
    assert khalti.refund_calls == []
    assert {call.endpoint for call in khalti.calls} == {"transactions", "status"}


def test_a_dashboard_refund_of_an_epayment_shows_in_lookup_and_the_list(khalti, settings):
    epayment = khalti.add_epayment(amount=5000, status="Completed")

    khalti.refund_in_dashboard(epayment.pidx, 5000)

    assert records(khalti, settings) == {epayment.transaction_id: ("Refunded", 5000, 5000)}
    assert epayment.lookup_body()["status"] == "Refunded"


@pytest.mark.parametrize(
    ("make", "amount", "rule"),
    [
        (lambda k: k.add_payment(amount=1000), None, "refund.state"),  # never verified
        (lambda k: k.add_payment(amount=1000, state="Refunded"), None, "refund.state"),
        (lambda k: k.add_payment(amount=1000, verified=True), 1001, "refund.over"),
        (lambda k: k.add_payment(amount=1000, verified=True), 0, "refund.amount"),
        (lambda k: k.add_payment(amount=10000, verified=True, funded_by="bank"), 10, "bank-mobile"),
    ],
)
def test_a_dashboard_refund_khalti_would_refuse_raises_and_changes_nothing(
    khalti, make, amount, rule
):
    payment = make(khalti)
    before = (payment.state, payment.refunded_amount)

    with pytest.raises(ValueError, match=rule):
        khalti.refund_in_dashboard(payment.idx, amount)

    assert (payment.state, payment.refunded_amount) == before
    assert payment.refunds == []


def test_a_dashboard_refund_of_a_bank_payment_goes_to_a_mobile(khalti, settings):
    payment = khalti.add_payment(amount=10000, verified=True, funded_by="bank")

    khalti.refund_in_dashboard(payment.idx, 2500, mobile="9800000003")

    assert payment.refunds == [(2500, "9800000003")]
    assert records(khalti, settings) == {payment.idx: ("Partially refunded", 10000, 2500)}


def test_an_unpaid_epayment_or_an_unknown_key_cannot_be_refunded(khalti):
    epayment = khalti.add_epayment(amount=1000)
    with pytest.raises(ValueError, match="nothing was paid"):
        khalti.refund_in_dashboard(epayment.pidx)
    with pytest.raises(LookupError, match="No transaction"):
        khalti.refund_in_dashboard("nobody")


def test_a_foreign_transaction_is_listed_and_matches_no_payment(khalti, settings):
    ours = aged(khalti, 1000, minutes_ago=5)
    earlier = timezone.now() - timedelta(hours=1)
    foreign = khalti.add_foreign(5000, created_on=earlier)
    refunded = khalti.add_foreign(2000, state="refunded", funded_by="wallet")
    part = khalti.add_foreign(20000, state="Partially refunded", fee_amount=0, funded_by="bank")

    status, body = listing(khalti, settings)

    assert status == 200
    assert [r["idx"] for r in body["records"]] == [part.idx, refunded.idx, ours.idx, foreign.idx]
    assert body["records"][0] == part.record()
    assert (part.refunded_amount, body["records"][0]["fee_amount"]) == (10000, 0)
    assert body["records"][1]["state"] == "Refunded"
    assert body["records"][3]["created_on"] == earlier.astimezone(NPT).isoformat()
    # Khalti knows it: its record, and a refund through the API or the dashboard.
    assert KhaltiClient.from_settings().transaction(foreign.idx).amount == 5000
    khalti.refund_in_dashboard(foreign.idx, 1000)
    assert records(khalti, settings)[foreign.idx] == ("Partially refunded", 5000, 1000)
    assert not Payment.objects.exists()


def test_a_foreign_transaction_is_one_khalti_could_hold(khalti):
    with pytest.raises(ValueError, match="below Rs 10"):
        khalti.add_foreign(999)
    with pytest.raises(ValueError, match="bank payment below Rs 100"):
        khalti.add_foreign(5000, funded_by="bank")
    with pytest.raises(ValueError, match="Unknown transaction state"):
        khalti.add_foreign(5000, state="Initiated")
    with pytest.raises(ValueError, match="refunded_amount"):
        khalti.add_foreign(5000, state="Partially refunded", refunded_amount=6000)
    assert khalti.foreign == {}


def test_a_transaction_khalti_lost_is_gone_everywhere(khalti, settings):
    kept = khalti.add_payment(amount=1000, verified=True)
    lost = khalti.add_payment(amount=2000, verified=True)
    epayment = khalti.add_epayment(amount=3000, status="Completed")

    khalti.remove_transaction(lost.token)
    khalti.remove_transaction(epayment.transaction_id)

    assert records(khalti, settings) == {kept.idx: ("Completed", 1000, 0)}
    client = KhaltiClient.from_settings()
    assert client.status(lost.token, 2000).state == "Error"
    assert (
        requests.get(
            f"{khalti.base_url}{LIST}{lost.idx}/", headers=key_header(settings), timeout=5
        ).status_code
        == 404
    )
    with pytest.raises(LookupError):
        khalti.epayment(epayment.pidx)


def test_a_transaction_khalti_holds_for_another_amount(khalti, settings):
    payment = khalti.add_payment(amount=1000, verified=True)

    khalti.set_amount(payment.idx, 1500)

    assert records(khalti, settings) == {payment.idx: ("Completed", 1500, 0)}
    assert KhaltiClient.from_settings().transaction(payment.idx).amount == 1500
    with pytest.raises(ValueError, match="below Rs 10"):
        khalti.set_amount(payment.idx, 500)
    khalti.refund_in_dashboard(payment.idx, 1200)
    with pytest.raises(ValueError, match="below what Khalti refunded"):
        khalti.set_amount(payment.idx, 1100)
    assert payment.amount == 1500
