"""The payments' overview page: who may see it, its figures against a known set of
payments (days on the shop's time zone, Asia/Kathmandu), its chart, what it costs, and
its Nepali.
"""

import html
import re
from datetime import datetime, timedelta
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from pytest_django.asserts import assertContains, assertNotContains

from django_khalti.admin import OverviewView
from django_khalti.admin.overview import Day, Figure
from django_khalti.models import Payment, order_key

from .conftest import CHANGELIST, change_url, staff_client, unknown_refund

pytestmark = pytest.mark.django_db

OVERVIEW = reverse("admin:django_khalti_payment_overview")
TEMPLATE = "admin/django_khalti/payment/overview.html"
KATHMANDU = ZoneInfo("Asia/Kathmandu")  # the testproject's TIME_ZONE (UTC+5:45)
#: The instant the page describes: noon in Kathmandu, 06:15 UTC.
NOW = datetime(2025, 6, 15, 12, 0, tzinfo=KATHMANDU)
NE = {"Accept-Language": "ne"}


@pytest.fixture
def now(monkeypatch):
    """The page is drawn at :data:`NOW`."""
    monkeypatch.setattr(OverviewView, "now", lambda self: NOW)
    return NOW


def local(day, hour, minute=0):
    """``hour:minute`` in Kathmandu, ``day`` days before :data:`NOW`'s day."""
    return datetime(2025, 6, 15, hour, minute, tzinfo=KATHMANDU) - timedelta(days=day)


def make(reference, status, amount, created, verified=None, **fields):
    live = status not in (Payment.Status.FAILED, Payment.Status.NEEDS_REVIEW)
    fields.setdefault("idx", f"idx-{reference}" if verified else None)
    return Payment.objects.create(
        token=f"tok-{reference}",
        product_identity=reference,
        amount=amount,
        status=status,
        order_claim=order_key(reference) if live else None,
        created_at=created,
        verified_at=verified,
        **fields,
    )


@pytest.fixture
def known(now):
    """Payments created and verified at known instants around :data:`NOW`."""
    S = Payment.Status
    made = {
        # today (15 June in Kathmandu)
        "T-V1": make(
            "T-V1", S.VERIFIED, 150000, NOW - timedelta(hours=2), NOW - timedelta(hours=2)
        ),
        # 05:00 in Kathmandu is still 14 June in UTC: today only on the shop's clock.
        "T-V2": make("T-V2", S.VERIFIED, 25050, local(0, 5), local(0, 5, 1)),
        "T-F1": make("T-F1", S.FAILED, 5000, NOW - timedelta(minutes=30)),
        "T-P1": make("T-P1", S.PENDING, 1000, NOW - timedelta(minutes=2)),
        "T-P2": make("T-P2", S.PENDING, 2000, NOW - timedelta(minutes=20)),
        "T-P3": make("T-P3", S.PENDING, 6000, NOW - timedelta(hours=5)),
        "T-R1": make(
            "T-R1",
            S.NEEDS_REVIEW,
            70000,
            NOW - timedelta(hours=3),
            failure_reason="Khalti completed it for another amount.",
        ),
        # created yesterday, a minute before midnight; verified today
        "W-V1": make("W-V1", S.VERIFIED, 40000, local(1, 23, 59), local(0, 0, 10)),
        # in the last 7 days
        "W-P1": make("W-P1", S.PENDING, 3000, NOW - timedelta(days=3)),
        "W-PR": make(
            "W-PR",
            S.PARTIALLY_REFUNDED,
            60000,
            NOW - timedelta(days=5),
            NOW - timedelta(days=5),
            refunded_amount=10000,
        ),
        # in the last 30 days; M-P1 at the first instant of the 30 days
        "M-V1": make(
            "M-V1", S.VERIFIED, 100000, NOW - timedelta(days=20), NOW - timedelta(days=20)
        ),
        "M-RF": make(
            "M-RF",
            S.REFUNDED,
            8000,
            NOW - timedelta(days=10),
            NOW - timedelta(days=10),
            refunded_amount=8000,
        ),
        "M-P1": make("M-P1", S.PENDING, 4000, local(29, 0)),
        # before the 30 days: only in the pending figures
        "O-V1": make("O-V1", S.VERIFIED, 999900, local(30, 23, 59), local(30, 23, 59)),
        "O-P1": make("O-P1", S.PENDING, 5000, NOW - timedelta(days=40)),
    }
    refunds = SimpleNamespace(
        unknown=unknown_refund(made["M-V1"], stale=True),  # Khalti never said: a person decides
        in_flight=unknown_refund(made["W-PR"], amount=5000),  # still being asked
    )
    return SimpleNamespace(payments=made, refunds=refunds)


def figures(period):
    """{status: (count, rupees)} of a period, zeros left out."""
    return {
        status: (figure.count, figure.rupees)
        for status, figure in period.by_status.items()
        if figure.count
    }


def text_of(response):
    """The page's text with tags and runs of white space collapsed."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", response.content.decode()))


# --- who may see it ---------------------------------------------------------------------


@pytest.mark.parametrize("who", ["superuser_client", "viewer_client", "clerk_client"])
def test_users_who_may_view_payments_see_the_overview(request, who, now):
    response = request.getfixturevalue(who).get(OVERVIEW)
    assert response.status_code == 200
    assert TEMPLATE in [t.name for t in response.templates]
    assert response.context["title"] == "Payments overview"
    assert response.context["site_header"]  # the admin's own context (each_context)
    assertContains(response, f'<a href="{CHANGELIST}">Khalti payments</a>', html=True)


def test_staff_without_the_view_permission_are_refused(django_user_model, now):
    client = staff_client(django_user_model, "deliveries", "view_signaldelivery")
    assert client.get(OVERVIEW).status_code == 403


@pytest.mark.parametrize("logged_in", ["anonymous", "not staff"])
def test_anonymous_visitors_and_non_staff_log_in_first(client, django_user_model, logged_in):
    if logged_in == "not staff":
        client.force_login(django_user_model.objects.create_user("buyer"))
    response = client.get(OVERVIEW)
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('admin:login')}?next={OVERVIEW}"


def test_the_changelist_and_the_app_index_link_to_the_overview(viewer_client):
    link = f'<a href="{OVERVIEW}" class="khalti-overview-link">'
    assertContains(viewer_client.get(CHANGELIST), link)
    assertContains(viewer_client.get(reverse("admin:app_list", args=["django_khalti"])), link)


# --- the figures ------------------------------------------------------------------------


def test_figures_by_status_for_today_7_and_30_days_on_the_shops_days(superuser_client, known):
    overview = superuser_client.get(OVERVIEW).context["overview"]
    today, week, month = overview.periods
    assert [p.name for p in overview.periods] == ["today", "7_days", "30_days"]
    assert today.since == datetime(2025, 6, 15, tzinfo=KATHMANDU)
    assert week.since == datetime(2025, 6, 9, tzinfo=KATHMANDU)
    assert month.since == datetime(2025, 5, 17, tzinfo=KATHMANDU)
    assert figures(today) == {
        "verified": (2, "1,750.50"),  # T-V1, T-V2 (not W-V1, created yesterday)
        "failed": (1, "50.00"),
        "pending": (3, "90.00"),
        "needs_review": (1, "700.00"),
    }
    assert figures(week) == {
        "verified": (3, "2,150.50"),
        "failed": (1, "50.00"),
        "pending": (4, "120.00"),
        "needs_review": (1, "700.00"),
        "partially_refunded": (1, "600.00"),
    }
    assert figures(month) == {
        "verified": (4, "3,150.50"),
        "failed": (1, "50.00"),
        "pending": (5, "160.00"),
        "needs_review": (1, "700.00"),
        "partially_refunded": (1, "600.00"),
        "refunded": (1, "80.00"),
    }
    assert month.total == Figure(13, 474050)
    # Verified in the period, by when Khalti confirmed it: W-V1 is today's.
    assert [p.verified for p in overview.periods] == [
        Figure(3, 215050),
        Figure(4, 275050),
        Figure(6, 383050),
    ]


def test_the_figures_are_on_the_page(superuser_client, known):
    response = superuser_client.get(OVERVIEW)
    page = text_of(response)
    assert "As of June 15, 2025, noon; days start at midnight (Asia/Kathmandu)," in page
    # The status rows: count and rupees for today, 7 days, 30 days.
    assert " Verified 2 1,750.50 3 2,150.50 4 3,150.50 " in page
    assert " Pending 3 90.00 4 120.00 5 160.00 " in page
    assert " Refunded 0 0.00 0 0.00 1 80.00 " in page
    assert " Verified in the period 3 2,150.50 4 2,750.50 6 3,830.50 " in page
    assert " Over a day 3 120.00 " in page


def test_pending_payments_by_age_and_the_oldest_first(superuser_client, known):
    response = superuser_client.get(OVERVIEW)
    overview = response.context["overview"]
    assert [(str(label), f.count, f.rupees) for label, f in overview.pending_by_age] == [
        ("Over a day", 3, "120.00"),
        ("1 to 24 hours", 1, "60.00"),
        ("5 to 60 minutes", 1, "20.00"),
        ("Under 5 minutes", 1, "10.00"),
    ]
    assert overview.pending == Figure(6, 21000)
    oldest = [(w.item.order_reference, w.age) for w in overview.oldest_pending]
    assert oldest == [
        ("O-P1", "40 days"),
        ("M-P1", "29 days"),
        ("W-P1", "3 days"),
        ("T-P3", "5 hours"),
        ("T-P2", "20 minutes"),
        ("T-P1", "2 minutes"),
    ]
    first = known.payments["O-P1"]
    assertContains(response, f'<a href="{change_url(first)}">O-P1</a>', html=True)
    assert " O-P1 Widget (KPG-1) 50.00 May 6, 2025, noon 40 days " in text_of(response)


def test_what_needs_a_person(superuser_client, known):
    response = superuser_client.get(OVERVIEW)
    overview = response.context["overview"]
    review = known.payments["T-R1"]
    assert [w.item for w in overview.needs_review] == [review]
    assert overview.needs_review_count == 1
    assertContains(response, f'<a href="{change_url(review)}">T-R1</a>', html=True)
    assertContains(response, "Khalti completed it for another amount.")
    # The refund Khalti never answered; not the one still being asked.
    assert [w.item for w in overview.unresolved_refunds] == [known.refunds.unknown]
    assert overview.unresolved_refund_count == 1
    resolve = reverse("admin:django_khalti_payment_resolve_refund")
    payment = known.payments["M-V1"]
    assertContains(
        response,
        f'<a href="{resolve}?_selected_action={payment.pk}">Resolve by hand…</a>',
        html=True,
    )


def test_the_resolve_link_is_only_for_users_who_may_refund(clerk_client, known):
    response = clerk_client.get(OVERVIEW)
    assert response.context["overview"].unresolved_refund_count == 1
    assertNotContains(response, "Resolve by hand")


def test_an_empty_shop_shows_zeros(superuser_client, now):
    response = superuser_client.get(OVERVIEW)
    overview = response.context["overview"]
    assert all(not figures(period) for period in overview.periods)
    assert overview.pending == Figure()
    assert overview.days[-1] == Day(NOW.date(), 0, 0)
    assert text_of(response).count("None.") == 2


# --- the money ------------------------------------------------------------------------


@pytest.fixture
def money(now):
    """Payments where money moved (and some where none did), with Khalti's fees."""
    S = Payment.Status
    # Verified today (created yesterday: counted by when Khalti confirmed it).
    make("A", S.VERIFIED, 100000, local(1, 23, 50), local(0, 0, 10), fee_amount=3000)
    make("C", S.VERIFIED, 20000, local(0, 9), local(0, 9, 1))  # Khalti's fee unknown
    # Completed at Khalti for another amount, held for review; created at 05:00 in
    # Kathmandu (14 June in UTC): money in is Khalti's amount.
    make("D", S.NEEDS_REVIEW, 25000, local(0, 5), idx="idx-D", fee_amount=800)
    Payment.objects.filter(product_identity="D").update(received_amount=30000)
    make("E", S.NEEDS_REVIEW, 25000, local(0, 6))  # no Khalti id: nothing tied to it
    make("B", S.PARTIALLY_REFUNDED, 50000, local(3, 8), local(3, 8), fee_amount=1500,
         refunded_amount=20000)  # fmt: skip
    make(
        "I", S.VERIFIED, 10000, local(6, 0), local(6, 0), fee_amount=200
    )  # the week's first instant
    make("J", S.VERIFIED, 5000, local(7, 23, 59), local(7, 23, 59), fee_amount=100)
    # Refunded at Khalti before it was verified here.
    make("F", S.REFUNDED, 8000, local(10, 8), idx="idx-F", refunded_amount=8000)
    make("G", S.FAILED, 7000, local(0, 7))
    make("P", S.PENDING, 6000, local(0, 7))
    make("H", S.VERIFIED, 90000, local(40, 8), local(40, 8), fee_amount=2000)  # too old


def test_money_in_fees_refunded_and_net_for_each_period(superuser_client, money):
    overview = superuser_client.get(OVERVIEW).context["overview"]
    today, week, month = (period.money for period in overview.periods)
    # Today: A, C (fee unknown) and D (Khalti's 300.00, not the order's 250.00).
    assert (today.count, today.money_in, today.fees, today.refunded) == (3, 150000, 3800, 0)
    assert (today.net, today.unknown_fees) == (146200, 1)
    # 7 days: and B (refunded 200.00 of it) and I; not J, a minute before the week.
    assert (week.count, week.money_in, week.fees, week.refunded) == (5, 210000, 5500, 20000)
    assert (week.net, week.unknown_fees) == (184500, 1)
    # 30 days: and J, and F (refunded at Khalti before it was verified here).
    assert (month.count, month.money_in, month.fees, month.refunded) == (7, 223000, 5600, 28000)
    assert (month.net, month.unknown_fees) == (189400, 2)


def test_the_money_is_on_the_page_and_says_what_it_counts(superuser_client, money):
    page = html.unescape(text_of(superuser_client.get(OVERVIEW)))
    assert " Money in 1,500.00 2,100.00 2,230.00 " in page
    assert " Khalti's fees 38.00 55.00 56.00 " in page
    assert " Refunded 0.00 200.00 280.00 " in page
    assert " Net 1,462.00 1,845.00 1,894.00 " in page
    assert " Payments whose fee is unknown 1 1 2 " in page
    assert "Each counts on the day Khalti confirmed it (else the day it was created)." in page
    assert "a fee not known yet counts as 0." in page
    assert "Net: money in, less the fees, less what was refunded." in page


def test_a_net_loss_shows_its_minus(superuser_client, now):
    # Refunded whole, and Khalti kept its fee.
    make("L", Payment.Status.REFUNDED, 10000, local(0, 8), local(0, 8), fee_amount=300,
         refunded_amount=10000)  # fmt: skip
    page = text_of(superuser_client.get(OVERVIEW))
    assert " Net -3.00 -3.00 -3.00 " in page


def test_the_overview_links_to_the_ledger_and_the_export(viewer_client, now):
    response = viewer_client.get(OVERVIEW)
    assertContains(response, f'<a href="{reverse("admin:django_khalti_payment_export")}"', 1)
    assertContains(response, f'<a href="{reverse("admin:django_khalti_payment_ledger")}"', 1)


# --- the chart --------------------------------------------------------------------------


def bars(response):
    """The chart's bars: {day: (height, title)}."""
    svg = str(response.context["chart"])
    found = re.findall(
        r'<rect class="khalti-bar" x="\d+" y="\d+" width="\d+" height="(\d+)" '
        r'data-day="([\d-]+)"[^>]*><title>([^<]*)</title></rect>',
        svg,
    )
    return {day: (int(height), title) for height, day, title in found}


def test_the_chart_has_a_bar_for_each_of_the_last_30_days(superuser_client, known):
    response = superuser_client.get(OVERVIEW)
    chart = bars(response)
    assert len(chart) == 30
    assert min(chart) == "2025-05-17"
    assert max(chart) == "2025-06-15"
    # T-V1, T-V2 (verified at 05:01 in Kathmandu, 14 June in UTC) and W-V1: the highest day.
    assert chart["2025-06-15"] == (120, "15 Jun 2025: Rs 2,150.50 verified, 3 payments")
    assert chart["2025-06-14"] == (0, "14 Jun 2025: Rs 0.00 verified, 0 payments")
    assert chart["2025-06-10"] == (33, "10 Jun 2025: Rs 600.00 verified, 1 payment")
    assert chart["2025-05-26"][0] == 55  # M-V1: Rs 1,000.00
    svg = str(response.context["chart"])
    assert svg.startswith('<svg class="khalti-volume-chart"')
    assert 'role="img"' in svg
    assert '<title id="khalti-volume-title">Amount verified per day, last 30 days</title>' in svg
    assert (
        "17 May 2025 to 15 Jun 2025: Rs 3,830.50 verified in 6 payments; "
        "the highest day Rs 2,150.50." in svg
    )
    assert "<script" not in svg
    assert 'src="http' not in response.content.decode()  # nothing from elsewhere
    assertContains(response, svg)  # inline on the page


# --- what it costs ------------------------------------------------------------------------


def test_the_overview_costs_the_same_queries_for_10_or_200_payments_of_each_kind(
    superuser_client, now
):
    statuses = list(Payment.Status.values)

    def add(count, start):
        made = Payment.objects.bulk_create(
            Payment(
                token=f"tok-q{n}",
                product_identity=f"ORD-Q{n}",
                amount=1000 + n,
                status=statuses[n % len(statuses)],
                created_at=NOW - timedelta(minutes=n),
                verified_at=NOW - timedelta(minutes=n)
                if statuses[n % len(statuses)] in Payment.PAID_STATUSES
                else None,
                idx=f"idx-q{n}",
            )
            for n in range(start, start + count)
        )
        for payment in made:
            if payment.status == Payment.Status.VERIFIED:
                unknown_refund(payment, amount=100, stale=True)

    def page_queries():
        with CaptureQueriesContext(connection) as queries:
            response = superuser_client.get(OVERVIEW)
        assert response.status_code == 200
        return response.context["overview"], [q["sql"] for q in queries.captured_queries]

    add(10 * len(statuses), 0)
    page_queries()  # warm caches (content types, sessions) before counting
    few, few_queries = page_queries()
    add(190 * len(statuses), 10 * len(statuses))
    many, many_queries = page_queries()
    assert (few.periods[2].total.count, many.periods[2].total.count) == (60, 1200)
    assert (len(few.oldest_pending), len(many.oldest_pending)) == (10, 20)
    assert len(many_queries) == len(few_queries), "\n".join(many_queries)
    # The session and the user, then the overview's seven.
    assert len(many_queries) == 9, "\n".join(many_queries)


# --- in Nepali ----------------------------------------------------------------------------


def test_the_overview_in_nepali(superuser_client, known):
    response = superuser_client.get(OVERVIEW, headers=NE)
    assert response["Content-Language"] == "ne"
    page = response.content.decode()
    for label in [
        "<title>भुक्तानीहरूको सारांश",  # the title
        "स्थिति अनुसार भुक्तानीहरू",  # the table of figures
        "आज",  # today
        "पछिल्ला 7 दिन",
        "पछिल्ला 30 दिन",
        "प्रक्रियामा: 6 वटा भुक्तानी",  # pending: 6 payments
        "जाँच आवश्यक: 1 भुक्तानी",  # needs review: 1 payment
        "नतिजा थाहा नभएका फिर्ताहरू: 1",  # refunds of unknown outcome
        "दिनैपिच्छे प्रमाणित रकम, पछिल्ला 30 दिन",  # the chart's title
        "प्रमाणित",  # a status
        "40 दिन",  # the oldest pending payment's age
        "दिन मध्यरातबाट सुरु हुन्छ (Asia/Kathmandu)",
    ]:
        assert label in page, label
    for english in ["Payments by status", "Last 30 days", "Needs review:", "Verified per day"]:
        assert english not in page, english
    # Figures stay figures: rupees as the admin shows them elsewhere.
    assert "2,150.50" in page
