"""The ledger page: the last walk of Khalti's transaction list and what it found that
differs from the payments here, as a person reads it (walks and entries made directly,
as the walk would write them); who may see it, and what it costs.
"""

import html
import re
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from pytest_django.asserts import assertContains, assertNotContains

from django_khalti.models import LedgerEntry, LedgerWalk

from .conftest import CHANGELIST, change_url, staff_client, verified_payment

pytestmark = pytest.mark.django_db

LEDGER = reverse("admin:django_khalti_payment_ledger")
KATHMANDU = ZoneInfo("Asia/Kathmandu")  # the testproject's TIME_ZONE
Kind = LedgerEntry.Kind


def page_text(response):
    """What a person reads of the page: tags dropped, white space collapsed."""
    assert response.status_code == 200
    content = re.sub(r"<(style|script)[^>]*>.*?</\1>", " ", response.content.decode(), flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", content)))


def differences(response):
    """The differences listed, top to bottom: (kind, [cell texts], [links])."""
    assert response.status_code == 200
    found = []
    for kind, row in re.findall(
        r'<tr class="khalti-difference khalti-difference-(\w+)">(.*?)</tr>',
        response.content.decode(),
        flags=re.S,
    ):
        cells = [
            re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", "", cell))).strip()
            for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, flags=re.S)
        ]
        found.append((kind, cells, re.findall(r'href="([^"]+)"', row)))
    return found


def walk(since=datetime(2026, 12, 1, tzinfo=KATHMANDU), **fields):
    fields.setdefault("status", LedgerWalk.Status.FINISHED)
    return LedgerWalk.objects.create(since=since, **fields)


def entry(walk, kind, idx, payment=None, **fields):
    return LedgerEntry.objects.create(walk=walk, kind=kind, idx=idx, payment=payment, **fields)


@pytest.fixture
def walked():
    """An older walk, then the last one: finished, with matches and differences."""
    old = walk(since=datetime(2026, 11, 1, tzinfo=KATHMANDU))
    entry(old, Kind.FOREIGN, "idx-old-foreign", detail="From the older walk.")
    paid = verified_payment("PAID", amount=100000)
    other = verified_payment("OTHER", amount=50000, fee_amount=1500)
    lost = verified_payment("LOST", amount=20000)
    last = walk(
        pages_read=3, total_pages=3, records_read=42, total_records=42, differences=4,
        finished_at=datetime(2026, 12, 8, 2, 5, tzinfo=KATHMANDU),
    )  # fmt: skip
    entry(last, Kind.MATCHED, "idx-PAID", paid, amount=100000, state="Completed")
    entry(
        last, Kind.AMOUNT_DIFFERS, "idx-OTHER", other, amount=60000, state="Completed",
        created_on=datetime(2026, 12, 3, 10, 0, tzinfo=KATHMANDU),
        detail="Khalti has Rs 600.00; the order Rs 500.00.",
    )  # fmt: skip
    entry(
        last, Kind.FOREIGN, "idx-elsewhere", amount=123456, state="Completed",
        created_on=datetime(2026, 12, 4, 9, 30, tzinfo=KATHMANDU),
        detail="No payment here has this transaction.",
    )  # fmt: skip
    entry(last, Kind.MISSING, "idx-LOST", lost, detail="Khalti's list lacks it.")
    entry(last, Kind.UNREADABLE, None, page=2, record={"odd": True}, detail="No idx.")
    return {"last": last, "paid": paid, "other": other, "lost": lost}


# --- who may see it, and where from --------------------------------------------------------


@pytest.mark.parametrize("who", ["superuser_client", "viewer_client", "clerk_client"])
def test_users_who_may_view_payments_see_the_ledger(request, who, walked):
    response = request.getfixturevalue(who).get(LEDGER)
    assert response.status_code == 200
    assert response.context["title"] == "Ledger: the books beside Khalti's"
    assertContains(response, f'<a href="{CHANGELIST}">Khalti payments</a>', html=True)


def test_staff_without_the_view_permission_are_refused(django_user_model, walked):
    client = staff_client(django_user_model, "deliveries", "view_signaldelivery")
    assert client.get(LEDGER).status_code == 403


def test_anonymous_visitors_log_in_first(client):
    response = client.get(LEDGER)
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('admin:login')}?next={LEDGER}"


def test_the_changelist_and_the_app_index_link_to_the_ledger(viewer_client):
    link = f'<a href="{LEDGER}" class="khalti-ledger-link">'
    assertContains(viewer_client.get(CHANGELIST), link)
    assertContains(viewer_client.get(reverse("admin:app_list", args=["django_khalti"])), link)


# --- what it shows ------------------------------------------------------------------------


def test_with_no_walk_yet_it_says_how_to_run_one(viewer_client):
    page = page_text(viewer_client.get(LEDGER))
    assert "No walk of Khalti's transaction list has run yet." in page
    assert "manage.py khalti_reconcile --ledger --since DATE" in page
    assert "The last walk" not in page


def test_the_last_walks_differences_each_with_its_payment(viewer_client, walked):
    response = viewer_client.get(LEDGER)
    listed = differences(response)
    # Grouped by kind; the matched record is not a difference; the older walk is not shown.
    assert [kind for kind, _cells, _links in listed] == [
        "foreign",
        "amount_differs",
        "missing",
        "unreadable",
    ]
    foreign, amount, missing, unreadable = listed
    # Khalti's record with no payment here: its id, amount, state, date and detail.
    assert foreign == (
        "foreign",
        ["-", "idx-elsewhere", "1,234.56", "-", "Completed", "Dec. 4, 2026, 9:30 a.m.",
         "No payment here has this transaction."],
        [],
    )  # fmt: skip
    assert amount[1][0] == "ORD-OTHER (Verified, Rs 500.00)"
    assert amount[1][1:3] == ["idx-OTHER", "600.00"]
    assert amount[2] == [change_url(walked["other"])]
    assert missing[2] == [change_url(walked["lost"])]
    assert unreadable[1][:3] == ["-", "-", "-"]
    assert unreadable[1][-1] == "No idx."
    assertNotContains(response, change_url(walked["paid"]))
    assertNotContains(response, "From the older walk.")


def test_the_walks_summary(viewer_client, walked):
    page = page_text(viewer_client.get(LEDGER))
    assert " Since Dec. 1, 2026, midnight (Asia/Kathmandu) " in page
    assert " Status Finished " in page
    assert " Finished at Dec. 8, 2026, 2:05 a.m. " in page
    assert " Pages read 3 of 3 " in page
    assert " Records read 42 of 42 " in page
    assert " Matched 1 " in page
    assert " Differences 4 " in page
    assert " 4 differences " in page
    assert "interrupted" not in page


def test_an_interrupted_walk_says_so_and_how_to_resume_it(viewer_client):
    # Midnight in Kathmandu is still 30 November in UTC: the command says the shop's day.
    stopped = walk(
        status=LedgerWalk.Status.INTERRUPTED, pages_read=2, total_pages=9, records_read=20,
        last_error="Khalti did not answer page 3.",
    )  # fmt: skip
    entry(stopped, Kind.NOT_SETTLED_HERE, "idx-x", detail="Paid at Khalti, pending here.")
    page = page_text(viewer_client.get(LEDGER))
    assert " Status Interrupted " in page
    assert " Pages read 2 of 9 " in page
    assert " Finished at - " in page
    assert "This walk was interrupted before the end of Khalti's list" in page
    assert "Why: Khalti did not answer page 3." in page
    assert "run: manage.py khalti_reconcile --ledger --since 2026-12-01 " in page


def test_a_walk_with_only_matches_says_the_books_match(viewer_client):
    finished = walk()
    entry(finished, Kind.MATCHED, "idx-1")
    response = viewer_client.get(LEDGER)
    assert differences(response) == []
    assert "None: the books match Khalti’s." in page_text(response)


def test_one_kind_of_difference_at_a_time(viewer_client, walked):
    response = viewer_client.get(LEDGER)
    assertContains(response, '<a href="?kind=foreign">Foreign: no payment here (1)</a>', html=True)
    assertNotContains(response, "?kind=matched")
    assertNotContains(response, "?kind=state_differs")  # none found
    listed = differences(viewer_client.get(LEDGER, {"kind": "missing"}))
    assert [(kind, links) for kind, _cells, links in listed] == [
        ("missing", [change_url(walked["lost"])])
    ]
    # Matches are never listed, nor an unknown kind.
    assert len(differences(viewer_client.get(LEDGER, {"kind": "matched"}))) == 4
    assert len(differences(viewer_client.get(LEDGER, {"kind": "nonsense"}))) == 4


def test_the_page_costs_the_same_queries_for_few_or_many_differences(superuser_client):
    last = walk()

    def add(start, count):
        for n in range(start, start + count):
            payment = verified_payment(f"N{n}")
            entry(last, Kind.MISSING if n % 2 else Kind.MATCHED, f"idx-N{n}", payment)

    def queries():
        with CaptureQueriesContext(connection) as captured:
            assert superuser_client.get(LEDGER).status_code == 200
        return len(captured.captured_queries)

    add(0, 4)
    queries()  # warm caches before counting
    few = queries()
    add(4, 60)
    assert len(differences(superuser_client.get(LEDGER))) == 32
    # The session and the user, then the walk, its counts by kind, its differences.
    assert queries() == few == 5


def test_the_last_walk_begun_is_shown_even_while_it_runs(viewer_client):
    newest = walk(status=LedgerWalk.Status.RUNNING)
    walk(
        started_at=timezone.now() - timedelta(days=1), since=datetime(2026, 11, 2, tzinfo=KATHMANDU)
    )
    response = viewer_client.get(LEDGER)
    assert response.context["ledger"].walk == newest
    assert "This walk is still running" in page_text(response)


def test_the_ledger_in_nepali(viewer_client, walked):
    page = page_text(viewer_client.get(LEDGER, headers={"Accept-Language": "ne"}))
    for label in ["पछिल्लो जाँच", "4 वटा फरक", "यहाँको भुक्तानी", "3 मध्ये 3"]:
        assert label in page, label
    assert "The last walk" not in page
