"""Attacks on the ledger walk (issue 28): a Khalti that repeats itself, lags, misspells,
contradicts itself and changes its list while it is walked; workers killed and walks
resumed late; the shop's side (what its receivers hear, money counted once).

Each test says what a shop or its accountant would see. Tests that fail expose a defect
(see the report of the branch ``ledger-attack``); the passing ones guard what held."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import threading
import time
from datetime import datetime, timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse
from django.utils import timezone

from django_khalti import services
from django_khalti.models import LedgerEntry, LedgerWalk, Payment, Refund
from django_khalti.rules import answers as rules
from django_khalti.rules.shapes import NPT
from django_khalti.signals import payment_refunded
from django_khalti.testing.endpoints import _KitLedger

from ..conftest import SECRET, fixture, race
from .conftest import told

pytestmark = pytest.mark.django_db

Status = Payment.Status
Kind = LedgerEntry.Kind
VERIFY_URL = reverse("django_khalti:verify")


# --- helpers ---------------------------------------------------------------------------


def page_body(khalti, number, *, size=None, url="https://khalti.test/api/v2/merchant-transaction/"):
    """The page ``number`` of the kit's list as Khalti would answer it now (its body)."""
    answer = rules.transaction_list(
        {"page": number}, _KitLedger(khalti), url, size or khalti.ledger_page_size
    )
    return answer.status, answer.body


def documented(body):
    """A page as Khalti's documentation shows its records: no ``refunded_amount``."""
    for record in body.get("records", []):
        record.pop("refunded_amount", None)
    return body


def verified_long_ago(*payments, minutes=30):
    """The payments were verified ``minutes`` ago: the walk looks for them at Khalti."""
    for payment in payments:
        Payment.objects.filter(pk=payment.pk).update(
            verified_at=timezone.now() - timedelta(minutes=minutes)
        )


class Killed(BaseException):
    """The worker dies (SIGKILL): nothing after it runs, no clean-up."""


def killed_after_page_1(monkeypatch, walk):
    """Run ``walk`` with its worker killed once page 1's entries and changes are
    written but before its counts are; then let its claim age, as a dead worker's does.
    """
    from django_khalti.services import ledger

    real_held = ledger._held

    def held(walk_row, **fields):
        if "next_page" in fields:
            raise Killed
        return real_held(walk_row, **fields)

    monkeypatch.setattr(ledger, "_held", held)
    monkeypatch.setattr(ledger, "_stop", lambda walk_row, why: None)  # no clean-up
    with pytest.raises(Killed):
        walk()
    monkeypatch.undo()
    LedgerWalk.objects.update(claimed_at=timezone.now() - timedelta(minutes=10))


def runs_crashing(walk, runs):
    """Run the walk ``runs`` times, as cron would; the exceptions that were not a
    :class:`CommandError` (a walk that stopped cleanly, to be resumed)."""
    crashes = []
    for _ in range(runs):
        try:
            walk()
        except CommandError:
            pass
        except Exception as exc:
            crashes.append(type(exc).__name__)
    return crashes


# === defects ===========================================================================


def test_a_list_whose_next_link_never_ends_is_not_walked_forever(pay, walk, khalti):
    """Khalti answers every page number with page 1 and a ``next`` link (a proxy that
    drops the query string, a pagination bug): the walk must stop by itself."""
    pay("ORD-1")
    pay("ORD-2")
    asked = []

    def same_page_forever(request):
        asked.append(request.params.get("page"))
        if len(asked) > 60:  # the test's own brake, so that a failure ends
            return 404, {"detail": "Invalid page."}
        _status, body = page_body(khalti, 1)
        return 200, {**body, "next": "https://khalti.test/api/v2/merchant-transaction/?page=2"}

    khalti.on_next("transactions", same_page_forever, times=None)
    walk()

    # total_pages is 1 and no page after the first brought a new record.
    assert len(asked) <= 3, f"the walk asked {len(asked)} pages of a one-page list"


@pytest.mark.django_db(transaction=True)
def test_a_record_twice_on_a_page_once_misspelt_does_not_wedge_the_walk(pay, walk, khalti):
    """The same idx twice on one page, once readable and once of an unknown state: the
    walk must report it, not crash on its own unique constraint on every run."""
    _held, _payment = pay("ORD-1")

    def twice(request):
        _status, body = page_body(khalti, 1)
        (record,) = body["records"]
        body["records"] = [record, {**record, "state": "Reversed?"}]
        return 200, body

    khalti.on_next("transactions", twice, times=None)
    crashes = runs_crashing(walk, 2)  # IntegrityError (khalti_ledger_entry_once), each run

    assert crashes == []
    assert set(LedgerWalk.objects.values_list("status", flat=True)) == {"finished"}


def test_a_khalti_with_only_the_older_list_path_is_walked_to_its_end(pay, walk, khalti):
    """Khalti answers the list only at ``api/merchant-transaction/`` (the v2 path: 404).
    Page 1 falls back to the older path; pages 2 and 3 must too, not end the walk."""
    khalti.ledger_page_size = 2
    paid = [pay(f"ORD-{n}") for n in range(5)]
    verified_long_ago(*(payment for _held, payment in paid))
    oldest_held, oldest = paid[0]  # newest first: on page 3
    khalti.refund_in_dashboard(oldest_held.token)

    def no_v2(request):
        return (404, {"detail": "Not found."}) if "/v2/" in request.url else None

    khalti.on_next("transactions", no_v2, times=None)
    walk()

    oldest.refresh_from_db()
    # Today: the walk ends after page 1 ("finished"); the payment is looked up alone,
    # and goes to review as "partly refunded without saying how much".
    assert (oldest.status, oldest.refunded_amount) == (Status.REFUNDED, 1000)
    assert LedgerWalk.objects.get().pages_read == 3


def test_a_second_partial_refund_in_the_dashboard_is_no_match_when_the_list_omits_its_amount(
    pay, walk, khalti, admin_user
):
    """Khalti's documented list record has no ``refunded_amount`` (the kit's has one).
    Rs 2 refunded from the admin, then Rs 3 more in Khalti's dashboard: the list says
    "Partially refunded", and the walk must not call that a match of Rs 2."""
    held, payment = pay("ORD-1")
    services.refund_payment(payment, amount=200, by=admin_user)
    khalti.refund_in_dashboard(held.token, amount=300)
    khalti.on_next("transactions", lambda request: (200, documented(page_body(khalti, 1)[1])))

    walk()

    entry = LedgerEntry.objects.get(idx=held.idx)
    assert entry.kind != Kind.MATCHED, "Rs 3 went back at Khalti; the ledger says it matches"


def test_an_app_refund_the_list_does_not_show_yet_sends_no_payment_to_review(
    pay, walk, khalti, signals, admin_user, django_capture_on_commit_callbacks
):
    """The admin refunds Rs 3 (Khalti says success, recorded); the list, read a moment
    before or lagging behind, still shows the transaction completed and not refunded.
    A stale page is no proof against a refund Khalti confirmed: no review."""
    _held, payment = pay("ORD-1")
    _status, stale = page_body(khalti, 1)  # the list as it was before the refund
    with django_capture_on_commit_callbacks(execute=True):
        services.refund_payment(payment, amount=300, by=admin_user)
    khalti.on_next("transactions", lambda request: (200, stale))

    walk()

    payment.refresh_from_db()
    assert (payment.status, payment.refunded_amount) == (Status.PARTIALLY_REFUNDED, 300)
    assert "needs_review" not in [name for name, *_ in told(signals)]


def test_a_walk_resumed_days_later_still_reads_the_newest_records(pay, walk, khalti):
    """A walk for ``--since D`` stopped at page 2 (Khalti down); the accountant runs the
    same command three days later. New payments came in meanwhile (at the head of the
    list, newest first) and one was refunded in Khalti's dashboard: a walk that says it
    finished must have seen it."""
    khalti.ledger_page_size = 2
    start = timezone.now().astimezone(NPT) - timedelta(days=3)
    for n in range(4):
        pay(f"ORD-{n}", created_on=start + timedelta(minutes=n))
    since = (start - timedelta(days=1)).date().isoformat()
    khalti.on_next("transactions", lambda request: None)  # page 1 read
    khalti.fail_next("transactions", "server_error")  # page 2: down
    with pytest.raises(CommandError):
        walk(since=since)
    LedgerWalk.objects.update(started_at=timezone.now() - timedelta(days=3))

    # Three days later: two new payments, one refunded in the dashboard.
    new_held, new = pay("ORD-NEW", created_on=timezone.now().astimezone(NPT))
    pay("ORD-NEW-2", created_on=timezone.now().astimezone(NPT))
    khalti.refund_in_dashboard(new_held.token)
    walk(since=since)

    walked = LedgerWalk.objects.order_by("-started_at").first()
    assert walked.status == LedgerWalk.Status.FINISHED
    new.refresh_from_db()
    assert (new.status, new.refunded_amount) == (Status.REFUNDED, 1000)


def test_a_page_a_killed_worker_entered_is_counted_when_the_walk_resumes(
    pay, walk, khalti, monkeypatch
):
    """A worker is killed (SIGKILL: no clean-up) after page 1's changes were committed
    and before the walk's counters were written. The resumed walk must still say how
    many records it read and how many differ: the accountant reads those numbers."""

    khalti.ledger_page_size = 2
    paid = [pay(f"ORD-{n}") for n in range(4)]
    newest_held, newest = paid[-1]  # page 1
    khalti.refund_in_dashboard(newest_held.token, amount=100)

    killed_after_page_1(monkeypatch, walk)

    walk()

    walk_row = LedgerWalk.objects.get()
    assert walk_row.status == LedgerWalk.Status.FINISHED
    newest.refresh_from_db()
    assert newest.refunds.count() == 1
    entries = walk_row.entries
    assert walk_row.records_read == entries.count() == 4
    assert walk_row.differences == entries.exclude(kind=Kind.MATCHED).count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_transaction_answer_naming_another_transaction_does_not_wedge_the_walk(pay, walk, khalti):
    """A payment the list lacks is looked up; Khalti answers with another transaction's
    record (a misrouted answer). It is no answer about this payment, and the walk must
    not crash on it on every run."""
    gone_held, gone = pay("ORD-GONE")
    other_held, other = pay("ORD-OTHER")
    verified_long_ago(gone, other)

    def without_gone(request):
        _status, body = page_body(khalti, 1)
        body["records"] = [r for r in body["records"] if r["idx"] != gone_held.idx]
        return 200, body

    khalti.on_next("transactions", without_gone, times=None)
    khalti.answer_next("transaction", key=gone_held.idx, json=other_held.record(), times=None)
    crashes = runs_crashing(walk, 2)  # IntegrityError (the other's idx entered), each run

    assert crashes == []
    assert set(LedgerWalk.objects.values_list("status", flat=True)) == {"finished"}
    gone.refresh_from_db()
    assert gone.khalti_response.get("idx") != other_held.idx


@pytest.mark.django_db(transaction=True)
def test_a_huge_page_count_does_not_wedge_the_walk(pay, walk, khalti):
    """``total_pages`` of 5,000,000,000 (a 64-bit number, which the parser accepts) does
    not fit the walk's columns on PostgreSQL or MariaDB: the walk must not crash on
    every run for a number it only reports."""
    pay("ORD-1")

    def huge(request):
        _status, body = page_body(khalti, 1)
        return 200, {**body, "total_pages": 5_000_000_000, "total_records": 5_000_000_000}

    khalti.on_next("transactions", huge, times=None)
    crashes = runs_crashing(walk, 2)  # DataError: integer out of range, each run

    assert crashes == []
    assert set(LedgerWalk.objects.values_list("status", flat=True)) == {"finished"}


@pytest.mark.parametrize("since", ["2999-01-01", "0001-01-01"])
def test_a_since_no_walk_can_mean_is_refused_on_the_command_line(khalti, since):
    """A day in the future walks nothing and says "finished"; year 1 overflows."""
    with pytest.raises(CommandError, match="--since"):
        call_command(
            "khalti_reconcile",
            "--ledger",
            "--since",
            since,
            stdout=io.StringIO(),
            stderr=io.StringIO(),
        )


def test_a_dashboard_refund_during_an_unknown_app_refund_is_not_taken_for_the_app_s(
    pay, walk, khalti, signals, admin_user, django_capture_on_commit_callbacks
):
    """The admin's refund of Rs 3 times out before Khalti did anything (pending,
    unknown); staff then refund Rs 2 in Khalti's dashboard. The walk leaves it (in
    flight); ``khalti_reconcile`` then settles the pending refund. Khalti gave back
    Rs 2, not Rs 3: the shop must not be told Rs 3 went back."""
    from django_khalti.exceptions import KhaltiUnavailable

    held, payment = pay("ORD-1")
    khalti.fail_next("refund", "timeout")
    with pytest.raises(KhaltiUnavailable):
        services.refund_payment(payment, amount=300, by=admin_user)
    khalti.refund_in_dashboard(held.token, amount=200)
    walk()
    assert LedgerEntry.objects.get(idx=held.idx).kind == Kind.REFUND_IN_FLIGHT
    Refund.objects.update(created_at=timezone.now() - timedelta(hours=1))
    with django_capture_on_commit_callbacks(execute=True):
        with contextlib.suppress(CommandError):
            call_command("khalti_reconcile", stdout=io.StringIO(), stderr=io.StringIO())

    payment.refresh_from_db()
    assert ("refunded", "ORD-1", 300) not in told(signals)
    assert payment.refunded_amount in (0, 200)


# === what held (regression guards) =====================================================


@pytest.fixture
def grace_zero(settings):
    settings.KHALTI = {**settings.KHALTI, "SIGNAL_GRACE_PERIOD": 0}


def test_a_dashboard_refund_is_heard_after_a_verified_signal_a_receiver_raised_on(
    pay, walk, khalti, grace_zero, warehouse_down_once, django_capture_on_commit_callbacks
):
    """The shop's verified receiver raised (its warehouse was down); the walk then finds
    a dashboard refund. The shop hears "refunded" only after "verified" got through."""
    story = warehouse_down_once
    held, _payment = pay("ORD-1")
    khalti.refund_in_dashboard(held.token, amount=400)
    walk()
    assert story == []  # refunded waits for verified
    with django_capture_on_commit_callbacks(execute=True):
        call_command("khalti_reconcile", stdout=io.StringIO(), stderr=io.StringIO())
    assert story == [("verified", "ORD-1"), ("refunded", "ORD-1", 400)]


def test_a_refunded_receiver_that_raises_neither_stops_the_walk_nor_counts_twice(
    pay, walk, khalti, grace_zero, django_capture_on_commit_callbacks
):
    heard = []

    def on_refunded(sender, payment, amount, **kwargs):
        heard.append((payment.order_reference, amount))
        if len(heard) == 1:
            raise RuntimeError("the shop's ledger service is down")

    payment_refunded.connect(on_refunded, weak=False)
    try:
        paid = [pay(f"ORD-{n}") for n in range(3)]
        for held, _payment in paid:
            khalti.refund_in_dashboard(held.token, amount=100)
        walk()
        walk()
        with django_capture_on_commit_callbacks(execute=True):
            call_command("khalti_reconcile", stdout=io.StringIO(), stderr=io.StringIO())
    finally:
        payment_refunded.disconnect(on_refunded)
    assert LedgerWalk.objects.filter(status=LedgerWalk.Status.FINISHED).count() == 2
    assert Refund.objects.count() == 3
    assert sorted(set(heard)) == [(f"ORD-{n}", 100) for n in range(3)]
    assert len(heard) == 4  # the one that raised, heard again once


def test_records_khalti_misspells_or_contradicts_are_reported_and_change_nothing(
    pay, walk, khalti, signals
):
    """On one page: a record saying Refunded whose refunded_amount says Rs 3 of Rs 10,
    negative, float, boolean and 2**70 amounts, an idx of 300 characters, an idx with
    a NUL, an idx that is another payment's token. Nothing changes here; the walk ends."""
    held, payment = pay("ORD-1")
    other_held, other = pay("ORD-2")
    signals.clear()

    def odd(request):
        _status, body = page_body(khalti, 1)
        mine = next(r for r in body["records"] if r["idx"] == held.idx)
        theirs = next(r for r in body["records"] if r["idx"] == other_held.idx)
        body["records"] = [
            {**mine, "state": "Refunded", "refunded_amount": 300},
            {**theirs, "idx": "neg", "amount": -1000},
            {**theirs, "idx": "float", "amount": 1000.0},
            {**theirs, "idx": "bool", "amount": True},
            {**theirs, "idx": "huge", "amount": 2**70},
            {**theirs, "idx": "x" * 300},
            {**theirs, "idx": "nul\x00idx"},
            {**theirs, "idx": other_held.token},
            theirs,
        ]
        return 200, body

    khalti.on_next("transactions", odd, times=None)
    walk()

    walk_row = LedgerWalk.objects.get()
    assert walk_row.status == LedgerWalk.Status.FINISHED
    for one in (payment, other):
        one.refresh_from_db()
        assert (one.status, one.refunded_amount) == (Status.VERIFIED, 0)
    assert not Refund.objects.exists()
    assert signals == []
    assert LedgerEntry.objects.get(idx=held.idx).kind == Kind.UNREADABLE
    assert LedgerEntry.objects.get(idx=other_held.token).kind == Kind.FOREIGN
    assert LedgerEntry.objects.get(idx=other_held.token).payment is None
    assert LedgerEntry.objects.get(idx=other_held.idx).kind == Kind.MATCHED


@pytest.mark.parametrize("outcome", ["unauthorized", "not_json", "server_error", "rejected"])
def test_khalti_refusing_or_garbling_page_1_stops_the_walk_and_changes_nothing(
    pay, walk, khalti, signals, caplog, outcome
):
    _held, payment = pay("ORD-1")
    verified_long_ago(payment)
    signals.clear()
    khalti.fail_next("transactions", outcome, times=None)
    caplog.set_level(logging.DEBUG)

    with pytest.raises(CommandError, match="resume") as raised:
        walk()

    payment.refresh_from_db()
    assert payment.status == Status.VERIFIED
    assert signals == []
    walk_row = LedgerWalk.objects.get()
    assert walk_row.status == LedgerWalk.Status.INTERRUPTED
    assert not walk_row.read_to_end
    assert not khalti.transaction_calls  # nobody looked for "missing" payments
    for text in (str(raised.value), walk_row.last_error, caplog.text):
        assert SECRET not in text


def test_the_json_report_and_the_logs_carry_no_key_and_no_payer(pay, khalti, caplog):
    held, _payment = pay("ORD-1")
    khalti.refund_in_dashboard(held.token, amount=100)
    khalti.add_foreign(2500, mobile="9811112222")
    caplog.set_level(logging.DEBUG)
    out = io.StringIO()
    call_command("khalti_reconcile", "--ledger", "--json", stdout=out, stderr=io.StringIO())
    report = json.loads(out.getvalue())
    text = out.getvalue() + caplog.text
    assert report["differences"] == 2
    for secret in (SECRET, "Test User", "9811112222", "981XXXX222"):
        assert secret not in text


def test_a_list_that_shrinks_mid_walk_sends_nobody_to_review(pay, walk, khalti, signals):
    """Page 2 is suddenly "Invalid page." (the list shrank): the payments the walk did
    not read are asked about one by one, and found."""
    khalti.ledger_page_size = 2
    paid = [pay(f"ORD-{n}") for n in range(5)]
    verified_long_ago(*(payment for _held, payment in paid))
    khalti.on_next("transactions", lambda request: None)
    # Page 2 is not there, at either path Khalti's list has.
    khalti.on_next("transactions", lambda request: (404, {"detail": "Invalid page."}), times=2)

    walk()

    assert set(Payment.objects.values_list("status", flat=True)) == {Status.VERIFIED}
    assert "needs_review" not in [name for name, *_ in told(signals)]
    assert len(khalti.transaction_calls) == 3


def test_since_is_midnight_on_the_shop_s_day(pay, walk, khalti):
    """Khalti's times are Nepal's: a record at 00:00:30 on the day walked is in it, one
    at 23:59:30 the day before is not."""
    today = timezone.localdate()
    midnight = datetime(today.year, today.month, today.day, tzinfo=NPT)
    before_held, before = pay("ORD-BEFORE", created_on=midnight - timedelta(seconds=30))
    after_held, after = pay("ORD-AFTER", created_on=midnight + timedelta(seconds=30))
    khalti.refund_in_dashboard(before_held.token)
    khalti.refund_in_dashboard(after_held.token)

    walk(since=today.isoformat())

    before.refresh_from_db()
    after.refresh_from_db()
    assert after.status == Status.REFUNDED
    assert before.status == Status.VERIFIED  # made before the day walked: passed over
    assert not LedgerEntry.objects.filter(idx=before_held.idx).exists()


def test_a_huge_foreign_amount_is_entered(pay, walk, khalti):
    """An amount just under 2**63 paisa fits the entry's column on every database."""
    pay("ORD-1")

    def huge(request):
        _status, body = page_body(khalti, 1)
        body["records"].append({**body["records"][0], "idx": "huge", "amount": 2**63 - 1})
        return 200, body

    khalti.on_next("transactions", huge)
    walk()
    assert LedgerEntry.objects.get(idx="huge").kind == Kind.FOREIGN


@pytest.mark.django_db(transaction=True)
@pytest.mark.concurrency
def test_an_admin_refund_racing_the_walk_is_counted_once(pay, khalti, signals, admin_user):
    """Khalti has applied the admin's refund of Rs 3 and the walk reads the list before
    Khalti's answer reaches the admin: the walk leaves it (in flight), the admin's
    refund records it. Rs 3 once, one refund, "refunded" once."""
    from django_khalti.services.ledger import walk_ledger

    held, payment = pay("ORD-1")
    applied, judged = threading.Event(), threading.Event()

    def khalti_applies_then_answers_late(request):
        khalti.refund_in_dashboard(held.token, amount=300)  # Khalti's side of the refund
        applied.set()
        judged.wait(10)
        return 200, fixture("refund_success")

    khalti.on_next("refund", khalti_applies_then_answers_late)
    khalti.on_next("transactions", lambda request: applied.wait(10) and None)
    since = timezone.now() - timedelta(days=1)

    def walk_it():
        return walk_ledger(since, on_page=lambda report, page: judged.set())

    def refund_it():
        return services.refund_payment(
            Payment.objects.get(pk=payment.pk), amount=300, by=admin_user
        )

    report, _refund = race(walk_it, refund_it)

    assert report.finished
    # Whichever came first, Khalti's total (Rs 3) proves the admin's refund, once.
    assert LedgerEntry.objects.get(idx=held.idx).kind in (Kind.REFUND_IN_FLIGHT, Kind.MATCHED)
    payment.refresh_from_db()
    assert (payment.status, payment.refunded_amount) == (Status.PARTIALLY_REFUNDED, 300)
    assert list(Refund.objects.values_list("origin", "amount", "status")) == [
        ("app", 300, Refund.Status.SUCCEEDED)
    ]
    assert [s for s in told(signals) if s[0] == "refunded"] == [("refunded", "ORD-1", 300)]
    # The next walk finds it matching.
    again = walk_ledger(since, restart=True)
    assert again.walk.entries.get(idx=held.idx).kind == Kind.MATCHED


@pytest.mark.django_db(transaction=True)
@pytest.mark.concurrency
def test_two_workers_resuming_one_stopped_walk_take_it_once(pay, khalti, signals):
    """Two cron hosts resume the same interrupted walk at once: one takes it, the other
    walks afresh; each payment changes once, each dashboard refund is recorded once."""
    from django_khalti.services.ledger import walk_ledger

    khalti.ledger_page_size = 2
    paid = [pay(f"ORD-{n}") for n in range(6)]
    for held, _payment in paid:
        khalti.refund_in_dashboard(held.token, amount=100)
    since = timezone.now() - timedelta(days=1)
    khalti.on_next("transactions", lambda request: None)
    khalti.fail_next("transactions", "server_error")
    stopped = walk_ledger(since)
    assert stopped.error
    khalti.on_next("transactions", lambda request: time.sleep(0.1), times=None)

    reports = race(lambda: walk_ledger(since), lambda: walk_ledger(since))

    assert sorted(r.resumed for r in reports) == [False, True]
    assert all(r.finished for r in reports)
    assert Refund.objects.count() == 6
    for payment in Payment.objects.all():
        assert (payment.status, payment.refunded_amount) == (Status.PARTIALLY_REFUNDED, 100)
    assert len([s for s in told(signals) if s[0] == "refunded"]) == 6
    assert LedgerWalk.objects.count() == 2
