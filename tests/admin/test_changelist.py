"""The payments' list: its columns, the status badge, sorting, filters, the date
hierarchy, the search, and what it costs."""

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from pytest_django.asserts import assertContains

from django_khalti.admin import STATUS_COLOURS
from django_khalti.models import Payment, Refund, order_key

from .conftest import (
    CHANGELIST,
    STATUSES,
    cells,
    confirm_refund,
    filter_link,
    fresh,
    headers,
    hierarchy_links,
    messages_of,
    mock_refund,
    rows,
    shown,
    verified_payment,
)

pytestmark = pytest.mark.django_db


def test_changelist_shows_every_column(any_client, payments):
    response = any_client.get(CHANGELIST)
    assert headers(response) == [
        "Order reference",
        "Amount (Rs)",
        "Status",
        "Flow",
        "Khalti transaction id",
        "Payer mobile (masked by Khalti)",
        "Created",
        "Verified",
    ]
    by_identity = {row["order_reference"]: row for row in rows(response)}
    assert set(by_identity) == {
        "ORD-VERIFIED",
        "ORD-PENDING",
        "ORD-FAILED",
        "ORD-REFUNDED",
        "ORD-PARTIAL",
    }
    verified = by_identity["ORD-VERIFIED"]
    assert verified["amount_display"] == "1,234.56"
    assert verified["status_badge"] == "Verified"
    assert verified["idx"] == "idx-verified-1111"
    assert verified["mobile"] == "98XXXXXXX9"
    assert verified["created_at"] not in ("", "-")
    assert verified["verified_at"] not in ("", "-")
    pending = by_identity["ORD-PENDING"]
    assert pending["amount_display"] == "10.00"
    assert pending["status_badge"] == "Pending"
    assert pending["idx"] == "-"  # no Khalti id yet
    assert pending["mobile"] == "-"
    assert pending["verified_at"] == "-"
    assert by_identity["ORD-FAILED"]["amount_display"] == "500.05"
    assert by_identity["ORD-PARTIAL"]["status_badge"] == "Partially refunded"


def test_a_payment_that_needs_review_has_its_badge_filter_and_one_step_refund(
    refunder_client, expect_khalti, sent, django_capture_on_commit_callbacks
):
    review = Payment.objects.create(
        token="tok-review",
        product_identity="ORD-REVIEW",
        amount=1000,
        received_amount=1100,  # Khalti completed it for another amount
        idx="idx-review",
        status=Payment.Status.NEEDS_REVIEW,
        failure_reason="Khalti's record is for 1100 paisa, the order is for 1000 paisa.",
    )
    verified_payment()
    page = refunder_client.get(CHANGELIST)
    assertContains(page, "khalti-status-needs_review")
    assertContains(page, STATUS_COLOURS[Payment.Status.NEEDS_REVIEW])
    filtered = refunder_client.get(CHANGELIST, {"status__exact": "needs_review"})
    assert shown(filtered) == ["ORD-REVIEW"]
    assert filter_link(page, "status", "Needs review") == "?status__exact=needs_review"

    # One step: the action's confirmation, then Khalti's full refund of what it took.
    mock_refund(expect_khalti, "idx-review", {})
    with django_capture_on_commit_callbacks(execute=True):
        response = confirm_refund(refunder_client, [review])
    assert messages_of(response) == [("success", "Refunded Rs 11.00 of ORD-REVIEW.")]
    row = fresh(review)
    assert (row.status, row.refunded_amount) == (Payment.Status.REFUNDED, 1100)
    assert [(name, kw["amount"]) for name, kw in sent] == [("refunded", 1100)]


def test_changelist_never_shows_the_token(any_client, payments):
    assert "tok-verified-AAAA" not in any_client.get(CHANGELIST).content.decode()


def test_status_is_a_badge_of_its_own_colour(any_client, payments):
    badges = {}
    for row in cells(any_client.get(CHANGELIST)):
        payment = Payment.objects.get(product_identity=row["order_reference"])
        # The cell's HTML, as the page shows it.
        span = re.fullmatch(
            r'\s*<span class="([^"]+)" style="([^"]+)">(.*?)</span>\s*', row["status_badge"], re.S
        )
        assert span is not None, row["status_badge"]
        classes, style, label = span.groups()
        assert f"khalti-status-{payment.status}" in classes.split()
        assert label == payment.get_status_display()
        badges[payment.status] = re.search(r"background:\s*([^;]+)", style).group(1)
    assert set(badges) == set(STATUSES)
    assert len(set(badges.values())) == len(STATUSES)  # one colour per status


def test_amount_column_sorts_by_paisa(superuser_client, payments):
    ascending = rows(superuser_client.get(CHANGELIST, {"o": "2"}))
    assert [row["amount_display"] for row in ascending] == [
        "10.00",
        "20.00",
        "30.00",
        "500.05",
        "1,234.56",
    ]
    descending = rows(superuser_client.get(CHANGELIST, {"o": "-2"}))
    assert [row["amount_display"] for row in descending] == [
        "1,234.56",
        "500.05",
        "30.00",
        "20.00",
        "10.00",
    ]


@pytest.mark.parametrize(
    ("status", "identity"),
    [
        ("verified", "ORD-VERIFIED"),
        ("pending", "ORD-PENDING"),
        ("failed", "ORD-FAILED"),
        ("refunded", "ORD-REFUNDED"),
        ("partially_refunded", "ORD-PARTIAL"),
    ],
)
def test_filter_by_status_shows_only_matching_rows(any_client, payments, status, identity):
    page = any_client.get(CHANGELIST)
    assert filter_link(page, "status", str(Payment.Status(status).label)) == (
        f"?status__exact={status}"
    )
    assert shown(any_client.get(CHANGELIST, {"status__exact": status})) == [identity]


def test_filter_by_created_date(any_client, payments):
    Payment.objects.filter(pk=payments.failed.pk).update(
        created_at=timezone.now() - timedelta(days=40)
    )
    page = any_client.get(CHANGELIST)
    today = shown(any_client.get(CHANGELIST + filter_link(page, "created", "Today")))
    assert sorted(today) == ["ORD-PARTIAL", "ORD-PENDING", "ORD-REFUNDED", "ORD-VERIFIED"]
    week = shown(any_client.get(CHANGELIST + filter_link(page, "created", "Past 7 days")))
    assert "ORD-FAILED" not in week


def test_filter_by_verified_date(any_client, payments):
    page = any_client.get(CHANGELIST)
    never = shown(any_client.get(CHANGELIST + filter_link(page, "verified", "No date")))
    assert sorted(never) == ["ORD-FAILED", "ORD-PENDING"]
    today = shown(any_client.get(CHANGELIST + filter_link(page, "verified", "Today")))
    assert sorted(today) == ["ORD-PARTIAL", "ORD-REFUNDED", "ORD-VERIFIED"]


def test_date_hierarchy_drills_down_by_creation_date(any_client, payments):
    now = timezone.now()
    last_year = now - timedelta(days=400)
    Payment.objects.filter(pk=payments.failed.pk).update(created_at=last_year)
    links = hierarchy_links(any_client.get(CHANGELIST))
    old, this = timezone.localtime(last_year).year, timezone.localtime(now).year
    assert links[str(old)] == f"?created_at__year={old}"
    assert links[str(this)] == f"?created_at__year={this}"
    assert shown(any_client.get(CHANGELIST + links[str(old)])) == ["ORD-FAILED"]
    assert "ORD-FAILED" not in shown(any_client.get(CHANGELIST + links[str(this)]))


@pytest.mark.parametrize(
    ("query", "identity"),
    [
        ("tok-verified-AAAA", "ORD-VERIFIED"),
        ("tok-failed-CCCC", "ORD-FAILED"),
        ("idx-verified-1111", "ORD-VERIFIED"),
        ("idx-partial-3333", "ORD-PARTIAL"),
        ("ORD-PENDING", "ORD-PENDING"),
        ("ORD-FAIL", "ORD-FAILED"),
        ("98XXXXXXX9", "ORD-VERIFIED"),
        ("97XXXXXXX7", "ORD-REFUNDED"),
    ],
)
def test_search_by_token_idx_product_identity_or_mobile_finds_only_that_row(
    any_client, payments, query, identity
):
    assert shown(any_client.get(CHANGELIST, {"q": query})) == [identity]


def test_search_by_the_beginning_of_a_reference_finds_every_order_it_begins(
    superuser_client, payments
):
    assert sorted(shown(superuser_client.get(CHANGELIST, {"q": "ORD-P"}))) == [
        "ORD-PARTIAL",
        "ORD-PENDING",
    ]


@pytest.mark.parametrize(
    "query",
    [
        "tok-verified",
        "AAAA",
        "idx-verified",
        "1111",
        "FAILED",
        "RD-FAILED",
        "XXXXXXX7",
        "98XXXXXXX",
    ],
)
def test_search_matches_only_what_an_index_can_find(superuser_client, payments, query):
    # Khalti's ids and the masked mobile are looked up exactly, an order reference by
    # its beginning: a piece from the middle finds nothing, as it would need a scan of
    # every payment (see test_performance.py). Whether case matters is the database's
    # collation (PostgreSQL: it does).
    assert shown(superuser_client.get(CHANGELIST, {"q": query})) == []


@pytest.mark.parametrize("client_fixture", ["superuser_client", "refunder_client"])
def test_the_list_costs_the_same_queries_for_10_or_200_payments(request, client_fixture):
    client = request.getfixturevalue(client_fixture)
    user = client.user

    def add(count, start):
        made = Payment.objects.bulk_create(
            Payment(
                token=f"tok-{n}",
                product_identity=f"ORD-{n}",
                amount=1000 + n,
                status=Payment.Status.VERIFIED if n % 2 else Payment.Status.PENDING,
                idx=f"idx-{n}" if n % 2 else None,
                mobile="98XXXXXXX9" if n % 2 else "",
                verified_at=timezone.now() if n % 2 else None,
                order_claim=order_key(f"ORD-{n}"),
            )
            for n in range(start, start + count)
        )
        # Refund history must not be fetched row by row either.
        Refund.objects.bulk_create(
            Refund(payment=p, amount=100, status=Refund.Status.SUCCEEDED, requested_by=user)
            for p in made
            if p.status == Payment.Status.VERIFIED
        )

    def page_queries():
        with CaptureQueriesContext(connection) as queries:
            response = client.get(CHANGELIST)
        return len(shown(response)), [q["sql"] for q in queries.captured_queries]

    add(10, 0)
    page_queries()  # warm caches (content types, sessions) before counting
    ten_rows, ten = page_queries()
    add(190, 10)
    many_rows, many = page_queries()
    assert (ten_rows, many_rows) == (10, 100)  # list_per_page
    assert len(many) == len(ten), "\n".join(many)
