"""The sandbox's transaction list, paged in SQL, and Khalti's dashboard in its admin (issue 28).

The list is read over HTTP as a shop's server would; the dashboard is driven through
the admin's pages as a person would: open the page, submit, read the list again.
"""

import html
import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from django_khalti.sandbox import books
from django_khalti.sandbox.models import SandboxTransaction

pytestmark = pytest.mark.django_db

SECRET = "test_secret_key_testproject"
LIST = "/sandbox/api/v2/merchant-transaction/"
OLDER = "/sandbox/api/merchant-transaction/"
CHANGELIST = reverse("admin:khalti_sandbox_sandboxtransaction_changelist")
ADD_FOREIGN = reverse("admin:khalti_sandbox_sandboxtransaction_add_foreign")


@pytest.fixture(autouse=True)
def serving(settings):
    settings.DEBUG = True  # the sandbox serves a developer's runserver


def listing(client, path=LIST, **query):
    answer = client.get(path, query, HTTP_AUTHORIZATION=f"Key {SECRET}")
    return answer.status_code, answer.json()


def records(client, **query):
    status, body = listing(client, **query)
    assert status == 200, body
    return {r["idx"]: (r["state"], r["amount"], r["refunded_amount"]) for r in body["records"]}


def settled(amount, *, minutes_ago=0, kind=SandboxTransaction.Kind.WIDGET, **fields):
    """A verified widget payment (or another settled row) made ``minutes_ago``."""
    row = SandboxTransaction.objects.create(
        kind=kind,
        state=SandboxTransaction.State.COMPLETED,
        amount=amount,
        mobile="9800000001",
        product_identity="ORD-1",
        product_name="Dragon",
        token=None if kind != SandboxTransaction.Kind.WIDGET else f"token-{amount}-{minutes_ago}",
        **fields,
    )
    SandboxTransaction.objects.filter(pk=row.pk).update(
        created_at=timezone.now() - timedelta(minutes=minutes_ago)
    )
    return row


# --- the list --------------------------------------------------------------------------


def test_three_pages_newest_first(client):
    rows = [settled(1000 + n, minutes_ago=10 - n) for n in range(5)]  # rows[4]: newest
    SandboxTransaction.objects.create(  # confirmed, never verified: not listed
        kind="widget", state="Confirmed", amount=1000, mobile="9800000001", token="waiting"
    )

    pages = [listing(client, page=page, page_size=2)[1] for page in (1, 2, 3)]

    assert [[r["idx"] for r in page["records"]] for page in pages] == [
        [rows[4].idx, rows[3].idx],
        [rows[2].idx, rows[1].idx],
        [rows[0].idx],
    ]
    assert [(p["total_pages"], p["total_records"], p["record_range"]) for p in pages] == [
        (3, 5, [1, 2]),
        (3, 5, [3, 4]),
        (3, 5, [5, 5]),
    ]
    assert pages[0]["next"] == f"http://testserver{LIST}?page=2&page_size=2"
    assert pages[2]["previous"] == f"http://testserver{LIST}?page=2&page_size=2"
    assert listing(client, page=4, page_size=2) == (404, {"detail": "Invalid page."})


def test_the_older_path_and_the_key(client):
    row = settled(1000)
    assert records(client) == {row.idx: ("Completed", 1000, 0)}
    assert listing(client, OLDER)[1]["records"] == listing(client)[1]["records"]
    answer = client.get(LIST, HTTP_AUTHORIZATION="Key test_secret_key_someone_else")
    assert (answer.status_code, answer.json()) == (401, {"detail": "Invalid token."})
    assert client.get(OLDER).status_code == 401


def test_ten_thousand_rows_are_counted_and_sliced_in_sql(client):
    now = timezone.now()
    SandboxTransaction.objects.bulk_create(  # in a shuffled order of idx
        SandboxTransaction(
            idx=f"Row{(n * 7919) % 10_000:019d}",
            kind="foreign",
            state="Completed",
            amount=1000 + n,
            fee_amount=30,
            mobile="9800000002",
        )
        for n in range(10_000)
    )
    # One time for all (bulk_create stamps its own): the list orders them by idx then.
    SandboxTransaction.objects.update(created_at=now)

    with CaptureQueriesContext(connection) as queries:
        status, body = listing(client, page=3)

    assert status == 200
    assert (body["total_records"], body["total_pages"], body["record_range"]) == (
        10_000,
        500,
        [41, 60],
    )
    assert [r["idx"] for r in body["records"]] == [f"Row{n:019d}" for n in range(40, 60)]
    sql = [q["sql"] for q in queries.captured_queries if "khalti_sandbox" in q["sql"]]
    assert len(sql) == 2, sql
    assert re.search(r"SELECT COUNT\(\*\)", sql[0])
    assert re.search(r"LIMIT 20 OFFSET 40\b", sql[1]), sql[1]


# --- Khalti's dashboard, in the admin ----------------------------------------------------


def messages_on(page):
    return [html.unescape(m) for m in re.findall(r'<li class="(?:success|error)">(.*?)</li>', page)]


def test_the_action_refunds_the_selected_in_full_and_says_what_it_refused(admin_client, client):
    wallet = settled(1000)
    bank = settled(10000, funded_by="bank", minutes_ago=1)
    page = admin_client.get(CHANGELIST).content.decode()
    assert "Refund in Khalti&#x27;s dashboard: all that remains" in page

    answer = admin_client.post(
        CHANGELIST,
        {"action": "refund_in_full", "_selected_action": [wallet.pk, bank.pk]},
        follow=True,
    )

    said = messages_on(answer.content.decode())
    assert (
        f"Khalti refuses to refund {bank.idx}: Mobile is required to refund a payment made from a bank."
        in said
    )
    assert "Refunded in full: 1 transaction(s)." in said
    assert records(client) == {
        wallet.idx: ("Refunded", 1000, 1000),
        bank.idx: ("Completed", 10000, 0),
    }


def test_the_refund_page_refunds_an_amount_and_refuses_more_than_remains(admin_client, client):
    row = settled(1000)
    page = admin_client.get(CHANGELIST).content.decode()
    url = reverse("admin:khalti_sandbox_sandboxtransaction_dashboard_refund", args=[row.pk])
    assert f'href="{url}"' in page

    form = admin_client.get(url)
    assert form.status_code == 200
    assert "Rs 10.00 remains" in html.unescape(form.content.decode())
    done = admin_client.post(url, {"amount": "300", "mobile": ""}, follow=True)
    assert f"Refunded in Khalti's dashboard: {row.idx}." in messages_on(done.content.decode())
    assert records(client) == {row.idx: ("Partially refunded", 1000, 300)}

    over = admin_client.post(url, {"amount": "701"})
    assert over.status_code == 400
    assert "Refund amount is more than the refundable amount." in over.content.decode()
    assert "Rs 7.00 remains" in html.unescape(over.content.decode())

    admin_client.post(url, {"amount": ""})  # all that remains
    assert records(client) == {row.idx: ("Refunded", 1000, 1000)}
    assert f'href="{url}"' not in admin_client.get(CHANGELIST).content.decode()


def test_a_bank_payment_is_refunded_to_a_mobile(admin_client, client):
    row = settled(10000, funded_by="bank")
    url = reverse("admin:khalti_sandbox_sandboxtransaction_dashboard_refund", args=[row.pk])

    assert admin_client.post(url, {"amount": "2500"}).status_code == 400
    assert admin_client.post(url, {"amount": "2500", "mobile": "9800000003"}).status_code == 302

    assert records(client) == {row.idx: ("Partially refunded", 10000, 2500)}


def test_a_foreign_transaction_is_added_from_the_list_and_listed(admin_client, client):
    assert f'href="{ADD_FOREIGN}"' in admin_client.get(CHANGELIST).content.decode()
    assert admin_client.get(ADD_FOREIGN).status_code == 200

    answer = admin_client.post(
        ADD_FOREIGN,
        {
            "amount": "5000",
            "funded_by": "wallet",
            "refunded_amount": "1000",
            "fee_amount": "",
            "created_on": "2026-01-02 10:00:00",
        },
        follow=True,
    )

    row = SandboxTransaction.objects.get()
    assert f"Added a transaction of another channel: {row.idx}." in messages_on(
        answer.content.decode()
    )
    (record,) = listing(client)[1]["records"]
    assert (record["idx"], record["state"], record["amount"], record["refunded_amount"]) == (
        row.idx,
        "Partially refunded",
        5000,
        1000,
    )
    assert (record["fee_amount"], record["created_on"][:10]) == (150, "2026-01-02")


def test_a_foreign_transaction_khalti_would_not_hold_is_refused(admin_client):
    answer = admin_client.post(
        ADD_FOREIGN, {"amount": "5000", "funded_by": "bank", "refunded_amount": "0"}
    )
    assert answer.status_code == 400
    assert "Rs. 100" in answer.content.decode()
    assert (
        admin_client.post(
            ADD_FOREIGN, {"amount": "5000", "funded_by": "wallet", "refunded_amount": "6000"}
        ).status_code
        == 400
    )
    assert not SandboxTransaction.objects.exists()


def test_with_debug_off_the_dashboard_refuses_and_changes_nothing(admin_client, settings):
    row = settled(1000)
    settings.DEBUG = False
    url = reverse("admin:khalti_sandbox_sandboxtransaction_dashboard_refund", args=[row.pk])

    for page in (url, ADD_FOREIGN):
        for answer in (admin_client.get(page), admin_client.post(page, {"amount": "5000"})):
            assert answer.status_code == 403
            assert "The Khalti sandbox is not served here" in answer.content.decode()
    acted = admin_client.post(
        CHANGELIST, {"action": "refund_in_full", "_selected_action": [row.pk]}, follow=True
    )
    assert any("only while DEBUG is on" in m for m in messages_on(acted.content.decode()))
    assert SandboxTransaction.objects.get().refunded_amount == 0
    assert SandboxTransaction.objects.count() == 1


def test_someone_who_may_not_view_the_sandbox_gets_nothing(client, django_user_model):
    row = settled(1000)
    staff = django_user_model.objects.create_user("clerk", password="x", is_staff=True)
    client.force_login(staff)
    url = reverse("admin:khalti_sandbox_sandboxtransaction_dashboard_refund", args=[row.pk])

    assert client.post(url, {"amount": ""}).status_code == 404
    assert client.post(ADD_FOREIGN, {"amount": "5000", "funded_by": "wallet"}).status_code == 404
    assert SandboxTransaction.objects.get().refunded_amount == 0


def test_the_books_refuse_what_khalti_would():
    row = settled(1000)
    assert books.refund_in_dashboard(row.idx, 2000).rule == "refund.over"
    assert books.refund_in_dashboard("nobody").rule == "refund.not-found"
    with pytest.raises(ValueError, match=r"Rs\. 10"):
        books.add_foreign(amount=999)
