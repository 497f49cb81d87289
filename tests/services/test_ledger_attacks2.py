"""Second attack on the ledger walk (issue 28), after the first attack's fixes: Khalti
throttling or refusing the key mid-walk, a worker killed over a record without an id,
a slow worker taken over, and the "settle" verdict and the asked-again review beside
the shop's receivers.

Tests that fail expose a defect (see the report of the branch ``ledger-attack2``); the
passing ones guard what held."""

from __future__ import annotations

import contextlib
import io
import threading
import time
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from django_khalti import services
from django_khalti.exceptions import KhaltiUnavailable
from django_khalti.models import LedgerEntry, LedgerWalk, Payment, Refund

from ..conftest import race
from .conftest import told
from .test_ledger_attacks import killed_after_page_1, page_body, verified_long_ago

pytestmark = pytest.mark.django_db

#: The first attack's fixtures: a buyer paying, and cron walking the ledger.

Status = Payment.Status
Kind = LedgerEntry.Kind

#: How Django REST framework (which Khalti's API is built on) answers a throttled call.
THROTTLED = (429, {"detail": "Request was throttled. Expected available in 60 seconds."})
#: A key revoked or rotated while the walk runs.
FORBIDDEN = (403, {"detail": "You do not have permission to perform this action."})
UNAUTHORIZED = (401, {"detail": "Invalid token."})
REFUSALS = pytest.mark.parametrize(
    "refusal", [THROTTLED, FORBIDDEN, UNAUTHORIZED], ids=["429", "403", "401"]
)


# === defects ===========================================================================


@REFUSALS
def test_a_page_khalti_refuses_mid_walk_is_not_the_end_of_the_list(pay, walk, khalti, refusal):
    """Khalti throttles (or refuses the key) at page 2 of a 3-page list. That is no
    "past the list's end": the walk must stop to be resumed, not say it finished
    having read one page, with a dashboard refund on page 3 unseen."""
    khalti.ledger_page_size = 2
    paid = [pay(f"ORD-{n}") for n in range(5)]
    oldest_held, _oldest = paid[0]  # newest first: on page 3
    khalti.refund_in_dashboard(oldest_held.token, amount=100)
    khalti.on_next("transactions", lambda request: None)  # page 1
    khalti.on_next("transactions", lambda request: refusal, times=None)  # then refused

    with pytest.raises(CommandError, match="resume"):
        walk()

    walk_row = LedgerWalk.objects.get()
    assert walk_row.status == LedgerWalk.Status.INTERRUPTED
    assert not walk_row.read_to_end


@REFUSALS
def test_khalti_refusing_a_look_up_sends_no_payment_to_review(pay, walk, khalti, signals, refusal):
    """A payment the list lacks (it moved while the list was read) is looked up alone,
    and Khalti throttles that call (or refuses the key). A 429/401/403 is not Khalti
    knowing no such transaction: the payment was verified and stays verified, and the
    shop is not told it needs review."""
    gone_held, gone = pay("ORD-GONE")
    _kept_held, kept = pay("ORD-KEPT")
    verified_long_ago(gone, kept)

    def without_gone(request):
        _status, body = page_body(khalti, 1)
        body["records"] = [r for r in body["records"] if r["idx"] != gone_held.idx]
        return 200, body

    khalti.on_next("transactions", without_gone, times=None)
    khalti.on_next("transaction", lambda request: refusal, times=None)
    signals.clear()

    with contextlib.suppress(CommandError):  # stopping to resume later is right
        walk()

    gone.refresh_from_db()
    assert gone.status == Status.VERIFIED, gone.failure_reason
    assert [name for name, *_ in told(signals)] == []
    assert not LedgerEntry.objects.filter(kind=Kind.MISSING).exists()


def test_a_record_without_an_idx_is_counted_once_when_a_killed_worker_s_page_is_read_again(
    pay, walk, khalti, monkeypatch
):
    """Page 1 has a record Khalti sent without an idx. The worker is killed after the
    page's entries were written, before its counters (the first attack's scenario).
    The resumed walk reads page 1 again: the record is still one record, one difference
    (the counters are recomputed from the entries, so an entry twice is counted twice)."""

    pay("ORD-1")

    def with_a_nameless_record(request):
        _status, body = page_body(khalti, 1)
        body["records"].append({"state": "Completed", "amount": 500, "type": "Wallet payment"})
        return 200, body

    khalti.on_next("transactions", with_a_nameless_record, times=None)

    killed_after_page_1(monkeypatch, walk)

    walk()

    walk_row = LedgerWalk.objects.get()
    assert walk_row.status == LedgerWalk.Status.FINISHED
    assert walk_row.entries.filter(kind=Kind.UNREADABLE).count() == 1
    assert walk_row.differences == 1
    assert walk_row.records_read == 2


@pytest.mark.django_db(transaction=True)
@pytest.mark.concurrency
def test_a_slow_worker_taken_over_does_not_crash_the_worker_that_took_it(pay, khalti):
    """Worker A is slow on page 1 (Khalti's transaction endpoint takes long to confirm
    an amount that differs); after 5 silent minutes worker B takes the walk over and
    reads page 1 too. A, still alive, enters the record first. B must see the record
    entered (a match, or nothing to do), not crash on the walk's unique entry and leave
    the walk "stopped by an error"."""
    from django_khalti.services import ledger

    held, payment = pay("ORD-1")
    khalti.set_amount(held.token, 2000)  # Khalti's record: another amount -> review
    since = timezone.now() - timedelta(days=1)
    a_asking, b_asking = threading.Event(), threading.Event()

    def slow_confirmation(request):
        if not a_asking.is_set():
            a_asking.set()  # A: answers once B is asking too, and before B's answer
            b_asking.wait(10)
            return None
        b_asking.set()
        time.sleep(1.0)  # B: answered after A entered the record
        return None

    khalti.on_next("transaction", slow_confirmation, times=None)

    def worker_a():
        try:
            return ledger.walk_ledger(since)
        except BaseException as exc:  # what the worker died of
            return exc

    def worker_b():
        a_asking.wait(10)
        LedgerWalk.objects.update(claimed_at=timezone.now() - timedelta(minutes=10))
        try:
            return ledger.walk_ledger(since)
        except BaseException as exc:
            return exc

    _report_a, report_b = race(worker_a, worker_b)

    assert not isinstance(report_b, BaseException), repr(report_b)
    assert report_b.resumed
    assert report_b.finished, report_b.error
    payment.refresh_from_db()
    assert payment.status == Status.NEEDS_REVIEW
    assert LedgerEntry.objects.filter(idx=held.idx).count() == 1


def test_a_fee_above_what_was_paid_is_not_kept_as_khalti_s_fee(pay, walk, khalti):
    """Khalti's list says a fee of Rs 50 on a payment of Rs 10 (a misplaced field, a
    fee in rupees taken for paisa the other way round). It cannot be Khalti's fee of
    this payment: reported, and not kept, where the overview and the CSV would show
    a loss of Rs 40 on a sale."""
    held, payment = pay("ORD-1", amount=1000)

    def absurd_fee(request):
        _status, body = page_body(khalti, 1)
        body["records"][0]["fee_amount"] = 5000
        return 200, body

    khalti.on_next("transactions", absurd_fee)
    walk()

    payment.refresh_from_db()
    assert payment.fee_amount is None or payment.fee_amount <= payment.paid_amount
    assert LedgerEntry.objects.get(idx=held.idx).kind != Kind.MATCHED


# === what held (regression guards) =====================================================


@pytest.fixture
def grace_zero(settings):
    settings.KHALTI = {**settings.KHALTI, "SIGNAL_GRACE_PERIOD": 0}


def test_a_pending_refund_the_walk_settles_is_heard_after_a_verified_signal_that_failed(
    pay, walk, khalti, admin_user, grace_zero, warehouse_down_once,
    django_capture_on_commit_callbacks,
):  # fmt: skip
    """The verified receiver raised; the admin's refund of Rs 3 timed out after Khalti
    applied it (pending). The walk settles it by Khalti's total: the shop hears
    "refunded" Rs 3 once, and only after "verified"."""
    story = warehouse_down_once
    _held, payment = pay("ORD-1")
    khalti.fail_next("refund", "timeout_after_processing")
    with pytest.raises(KhaltiUnavailable):
        services.refund_payment(payment, amount=300, by=admin_user)
    walk()
    assert LedgerEntry.objects.get().detail.startswith("The refund of Rs 3")
    assert story == []  # refunded waits for verified
    with django_capture_on_commit_callbacks(execute=True):
        call_command("khalti_reconcile", stdout=io.StringIO(), stderr=io.StringIO())
    walk()
    assert story == [("verified", "ORD-1"), ("refunded", "ORD-1", 300)]
    payment.refresh_from_db()
    assert (payment.status, payment.refunded_amount) == (Status.PARTIALLY_REFUNDED, 300)
    assert list(Refund.objects.values_list("origin", "status")) == [("app", "succeeded")]


def test_a_dashboard_refund_of_the_same_amount_as_an_unknown_app_refund_is_counted_once(
    pay, walk, khalti, signals, admin_user, django_capture_on_commit_callbacks
):
    """Two support staff answer one complaint: the admin's refund of Rs 3 times out
    before Khalti did anything, and a colleague refunds Rs 3 in Khalti's dashboard.
    Khalti gave back Rs 3 once: the books say Rs 3, however the walk and reconcile
    take it, and nothing is counted twice over the following days."""
    held, payment = pay("ORD-1")
    khalti.fail_next("refund", "timeout")
    with pytest.raises(KhaltiUnavailable):
        services.refund_payment(payment, amount=300, by=admin_user)
    khalti.refund_in_dashboard(held.token, amount=300)
    walk()
    Refund.objects.update(created_at=timezone.now() - timedelta(hours=1))
    for _ in range(2):
        with django_capture_on_commit_callbacks(execute=True):
            with contextlib.suppress(CommandError):
                call_command("khalti_reconcile", stdout=io.StringIO(), stderr=io.StringIO())
        walk()

    payment.refresh_from_db()
    assert payment.refunded_amount == 300
    assert sum(Refund.objects.filter(status="succeeded").values_list("amount", flat=True)) == 300
    assert [s for s in told(signals) if s[0] == "refunded"] == [("refunded", "ORD-1", 300)]


def test_an_unreadable_confirmation_stops_the_walk_and_sends_nobody_to_review(
    pay, walk, khalti, signals
):
    """Khalti's list shows another amount; asked again, its transaction endpoint answers
    an HTML page (a proxy's). No proof either way: the walk stops, to be resumed; the
    payment stays verified. Resumed with Khalti answering, it goes to review once."""
    held, payment = pay("ORD-1")
    khalti.set_amount(held.token, 2000)
    khalti.fail_next("transaction", "not_json")
    signals.clear()

    with pytest.raises(CommandError, match="resume"):
        walk()
    payment.refresh_from_db()
    assert payment.status == Status.VERIFIED

    walk()
    walk()
    payment.refresh_from_db()
    assert payment.status == Status.NEEDS_REVIEW
    assert [name for name, *_ in told(signals)].count("needs_review") == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.concurrency
def test_two_walks_and_the_admin_settling_one_refund_at_once_count_it_once(
    pay, khalti, signals, admin_user
):
    """A refund of unknown outcome that Khalti applied; two walks and the admin's
    "Resolve unknown refund" (succeeded) race. Rs 3 once, "refunded" once."""
    from django_khalti.services.ledger import walk_ledger

    _held, payment = pay("ORD-1")
    khalti.fail_next("refund", "timeout_after_processing")
    with pytest.raises(KhaltiUnavailable):
        services.refund_payment(payment, amount=300, by=admin_user)
    refund = Refund.objects.get()
    Refund.objects.update(created_at=timezone.now() - timedelta(hours=1))
    since = timezone.now() - timedelta(days=1)

    def resolve():
        try:
            return services.resolve_refund(
                Refund.objects.get(pk=refund.pk), succeeded=True, by=admin_user, note="seen"
            )
        except Exception as exc:  # lost the race: refused
            return exc

    race(lambda: walk_ledger(since), lambda: walk_ledger(since, restart=True), resolve)

    payment.refresh_from_db()
    assert (payment.status, payment.refunded_amount) == (Status.PARTIALLY_REFUNDED, 300)
    assert Refund.objects.get().status == Refund.Status.SUCCEEDED
    assert [s for s in told(signals) if s[0] == "refunded"] == [("refunded", "ORD-1", 300)]
