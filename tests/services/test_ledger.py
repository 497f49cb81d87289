"""The ledger walk, from the shop's side: what Khalti's books say, what the shop's receivers
were told of it and in what order, what changed here, and what a walk that stops does.

Payments are made as a buyer makes them (the widget's payload posted to the verify view,
against the kit's Khalti); what happens at Khalti outside the app (a refund in its
dashboard, a payment through another channel) is done on the kit's books."""

from __future__ import annotations

import io
import json
import time
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse
from django.utils import timezone

from django_khalti.models import LedgerEntry, LedgerWalk, Payment, Refund
from shop.models import Order

from .conftest import told

pytestmark = pytest.mark.django_db

Status = Payment.Status
Kind = LedgerEntry.Kind
VERIFY_URL = reverse("django_khalti:verify")


def read_only(khalti):
    """Whether the walks only read at Khalti: no verify, refund, initiate or lookup."""
    return not (khalti.verify_calls[1:] or khalti.refund_calls or khalti.initiate_calls)


# --- refunds made in Khalti's dashboard ------------------------------------------------


def test_a_full_refund_in_khaltis_dashboard_is_recorded_and_the_shop_told_after_verified(
    pay, walk, khalti, signals
):
    held, payment = pay("ORD-1")
    khalti.refund_in_dashboard(held.token)
    khalti.reset_calls()

    walk()

    payment.refresh_from_db()
    assert (payment.status, payment.refunded_amount) == (Status.REFUNDED, 1000)
    (refund,) = payment.refunds.all()
    assert (refund.origin, refund.status, refund.amount) == (
        Refund.Origin.KHALTI,
        Refund.Status.SUCCEEDED,
        1000,
    )
    assert refund.requested_by is None
    assert told(signals) == [("verified", "ORD-1", None), ("refunded", "ORD-1", 1000)]
    assert not khalti.refund_calls
    assert not khalti.verify_calls
    (entry,) = LedgerEntry.objects.filter(kind=Kind.REFUNDED_AT_KHALTI)
    assert (entry.payment, entry.refunded_amount) == (payment, 1000)


def test_a_partial_refund_is_counted_once_however_often_the_books_are_walked(
    pay, walk, khalti, signals
):
    held, payment = pay("ORD-1")
    khalti.refund_in_dashboard(held.token, amount=300)
    walk()
    walk()  # the next day: the same refund, already recorded
    khalti.refund_in_dashboard(held.token, amount=200)
    walk()

    payment.refresh_from_db()
    assert (payment.status, payment.refunded_amount) == (Status.PARTIALLY_REFUNDED, 500)
    assert sorted(payment.refunds.values_list("origin", "amount")) == [
        ("khalti", 200),
        ("khalti", 300),
    ]
    assert told(signals) == [
        ("verified", "ORD-1", None),
        ("refunded", "ORD-1", 300),
        ("refunded", "ORD-1", 200),
    ]
    assert read_only(khalti)


def test_a_refund_recorded_failed_here_that_khalti_applied_is_not_counted_twice(
    pay, walk, khalti, signals, admin_user, django_capture_on_commit_callbacks
):
    """A refund from the admin that Khalti refused in words but applied after all: the
    walk finds the money back, and it is that refund, not a second one."""
    from django_khalti import services

    held, payment = pay("ORD-1")
    khalti.fail_next("refund", "rejected")
    with pytest.raises(Exception):  # noqa: B017 (the refusal, whatever its class)
        services.refund_payment(payment, amount=400, by=admin_user)
    khalti.refund_in_dashboard(held.token, amount=400)
    walk()

    payment.refresh_from_db()
    assert (payment.status, payment.refunded_amount) == (Status.PARTIALLY_REFUNDED, 400)
    (refund,) = payment.refunds.all()
    assert (refund.origin, refund.status) == (Refund.Origin.APP, Refund.Status.SUCCEEDED)
    assert told(signals)[-1] == ("refunded", "ORD-1", 400)


# --- what matches nothing, and what contradicts ----------------------------------------


def test_a_foreign_record_is_listed_and_attached_to_no_payment(pay, walk, khalti, signals):
    held, payment = pay("ORD-1")
    foreign = khalti.add_foreign(5000)
    signals.clear()

    output = walk()

    (entry,) = LedgerEntry.objects.filter(kind=Kind.FOREIGN)
    assert (entry.idx, entry.amount, entry.payment) == (foreign.idx, 5000, None)
    assert LedgerEntry.objects.get(idx=held.idx).kind == Kind.MATCHED
    payment.refresh_from_db()
    assert payment.status == Status.VERIFIED
    assert signals == []
    assert "1 foreign" in output.lower()


def test_a_record_of_another_amount_sends_the_payment_to_review_with_khaltis_record(
    pay, walk, khalti, signals
):
    held, payment = pay("ORD-1")
    khalti.set_amount(held.token, 2000)  # Khalti's books say Rs 20

    walk()

    payment.refresh_from_db()
    assert payment.status == Status.NEEDS_REVIEW
    assert payment.khalti_response["amount"] == 2000
    assert "Rs 20.00" in payment.failure_reason
    entry = LedgerEntry.objects.get(idx=held.idx)
    assert (entry.kind, entry.payment, entry.record["amount"]) == (
        Kind.AMOUNT_DIFFERS,
        payment,
        2000,
    )
    assert [name for name, *_ in told(signals)] == ["verified", "needs_review"]
    # The order stays claimed: its money moved; the buyer must not pay again.
    assert payment.order_claim is not None


def test_a_payment_khalti_lacks_goes_to_review_after_khalti_is_asked_about_it(
    pay, walk, khalti, signals
):
    held, payment = pay("ORD-1")
    _kept, other = pay("ORD-2")
    Payment.objects.update(verified_at=payment.verified_at - timedelta(minutes=30))
    khalti.remove_transaction(held.token)  # Khalti's books lack it

    walk()

    payment.refresh_from_db()
    assert payment.status == Status.NEEDS_REVIEW
    assert LedgerEntry.objects.get(payment=payment).kind == Kind.MISSING
    assert khalti.transaction_calls == [held.idx]  # asked once, read-only
    other.refresh_from_db()
    assert other.status == Status.VERIFIED
    assert told(signals)[-1][:2] == ("needs_review", "ORD-1")


def test_a_payment_verified_moments_ago_is_not_looked_for_yet(pay, walk, khalti):
    held, payment = pay("ORD-1")
    khalti.remove_transaction(held.token)
    walk()
    payment.refresh_from_db()
    assert payment.status == Status.VERIFIED
    assert not khalti.transaction_calls


def test_fees_are_kept_as_khaltis_records_say(pay, walk, khalti):
    held, payment = pay("ORD-1")
    khalti.payments[held.token].fee_amount = 45
    walk()
    payment.refresh_from_db()
    assert payment.fee_amount == 45


def test_an_unreadable_record_is_reported_and_the_walk_goes_on(pay, walk, khalti):
    held, _payment = pay("ORD-1")

    def misspelt(request):
        return 200, {
            "total_pages": 1,
            "total_records": 2,
            "next": None,
            "current_page": 1,
            "records": [
                {"idx": "odd-1", "state": {"nom": "?"}, "amount": "ten"},
                {
                    "idx": held.idx,
                    "state": "Completed",
                    "amount": 1000,
                    "fee_amount": 30,
                    "type": "Wallet payment",
                },
            ],
        }

    khalti.on_next("transactions", misspelt)
    walk()
    walk_row = LedgerWalk.objects.get()
    assert walk_row.status == LedgerWalk.Status.FINISHED
    kinds = dict(LedgerEntry.objects.values_list("idx", "kind"))
    assert kinds == {"odd-1": Kind.UNREADABLE, held.idx: Kind.MATCHED}


# --- pages, and a list that moves while it is read ---------------------------------------


def test_three_pages_with_a_record_moving_between_pages_enter_each_record_once(
    pay, walk, khalti, signals
):
    khalti.ledger_page_size = 2
    paid = [pay(f"ORD-{n}") for n in range(6)]  # 3 pages, newest first
    khalti.refund_in_dashboard(paid[2][0].token, amount=100)  # ORD-2, on page 2

    def shift(request):
        # After page 1 was read, a payment through another channel came in: every
        # record moves one place down, and page 2 starts with page 1's last record.
        khalti.add_foreign(1500)

    khalti.on_next("transactions", lambda request: None)  # page 1, as it was
    khalti.on_next("transactions", shift)  # page 2, after the shift

    output = walk()

    walk_row = LedgerWalk.objects.get()
    assert walk_row.status == LedgerWalk.Status.FINISHED
    entries = LedgerEntry.objects.all()
    assert sorted(e.idx for e in entries) == sorted({e.idx for e in entries})
    # Six records, one read twice; the newcomer is on page 1, read before it came.
    assert walk_row.records_read == entries.count() == 6
    refunded = Payment.objects.get(order_reference="ORD-2")
    assert (refunded.status, refunded.refunded_amount) == (Status.PARTIALLY_REFUNDED, 100)
    assert refunded.refunds.count() == 1
    assert [s for s in told(signals) if s[0] == "refunded"] == [("refunded", "ORD-2", 100)]
    assert "page 1/3" in output
    assert "page 4/4" in output


def test_khalti_down_at_page_2_stops_the_walk_and_the_next_run_resumes_there(
    pay, walk, khalti, signals
):
    khalti.ledger_page_size = 2
    paid = [pay(f"ORD-{n}") for n in range(5)]
    for held, _payment in paid:
        khalti.refund_in_dashboard(held.token, amount=100)
    khalti.reset_calls()

    def down_at_page_2(request):
        return "server_error" if request.params.get("page") == "2" else None

    khalti.on_next("transactions", down_at_page_2, times=2)
    with pytest.raises(CommandError, match=r"page 2.*resume"):
        walk()
    stopped = LedgerWalk.objects.get()
    assert (stopped.status, stopped.next_page, stopped.records_read) == (
        LedgerWalk.Status.INTERRUPTED,
        2,
        2,
    )
    assert Payment.objects.filter(status=Status.PARTIALLY_REFUNDED).count() == 2

    khalti.reset_calls()
    output = walk()

    resumed = LedgerWalk.objects.get()
    assert (resumed.status, resumed.resumed, resumed.records_read) == (
        LedgerWalk.Status.FINISHED,
        1,
        5,
    )
    assert (
        next(call.params["page"] for call in khalti.calls if call.endpoint == "transactions") == "2"
    )
    assert "resumed" in output
    assert Payment.objects.filter(status=Status.PARTIALLY_REFUNDED).count() == 5
    assert Refund.objects.count() == 5
    assert [s[0] for s in told(signals)].count("refunded") == 5


def test_json_output_for_machines(pay, walk, khalti):
    khalti.add_foreign(2500)
    out = io.StringIO()
    call_command(
        "khalti_reconcile", "--ledger", "--since", "1d", "--json", stdout=out, stderr=io.StringIO()
    )
    report = json.loads(out.getvalue())
    assert report["finished"] is True
    assert report["differences"] == 1
    assert [entry["kind"] for entry in report["entries"]] == ["foreign"]


@pytest.mark.parametrize("since", ["yesterday", "2026-13-01", "-3d"])
def test_a_since_that_is_no_day_is_refused(since):
    with pytest.raises(CommandError, match="--since"):
        call_command("khalti_reconcile", "--ledger", "--since", since, stdout=io.StringIO())


def test_the_ledger_walk_is_no_dry_run():
    with pytest.raises(CommandError, match="--ledger"):
        call_command("khalti_reconcile", "--ledger", "--dry-run", stdout=io.StringIO())


def test_an_epayment_refunded_in_part_in_khaltis_dashboard(
    client, khalti, walk, signals, django_capture_on_commit_callbacks
):
    Order.objects.create(reference="ORD-E", total=2000)
    started = client.post(
        reverse("django_khalti:epayment-initiate"),
        {"product_identity": "ORD-E", "product_name": "Order E"},
        content_type="application/json",
    )
    pidx = started.json()["pidx"]
    with django_capture_on_commit_callbacks(execute=True):
        client.get(khalti.pay(pidx))
    payment = Payment.objects.get(pidx=pidx)
    assert payment.status == Status.VERIFIED
    khalti.refund_in_dashboard(pidx, amount=500)

    walk()

    payment.refresh_from_db()
    assert (payment.status, payment.refunded_amount) == (Status.PARTIALLY_REFUNDED, 500)
    assert list(payment.refunds.values_list("origin", "amount")) == [("khalti", 500)]
    assert told(signals) == [("verified", "ORD-E", None), ("refunded", "ORD-E", 500)]
    assert not khalti.lookup_calls[1:]  # the walk asked lookup nothing


# --- two walks at once ---------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.concurrency
def test_two_walks_at_once_change_each_payment_once(pay, khalti, signals):
    from django_khalti.services.ledger import walk_ledger

    from ..conftest import race

    paid = [pay(f"ORD-{n}") for n in range(8)]
    for held, _payment in paid:
        khalti.refund_in_dashboard(held.token, amount=100)
    khalti.ledger_page_size = 3
    # Each page takes a while, so the two walks read the same records at the same time.
    khalti.on_next("transactions", lambda request: time.sleep(0.2), times=None)
    since = timezone.now() - timedelta(days=1)

    reports = race(lambda: walk_ledger(since), lambda: walk_ledger(since))

    assert all(report.finished for report in reports)
    assert sum(report.changed[Status.PARTIALLY_REFUNDED] for report in reports) == 8
    assert Refund.objects.count() == 8
    for payment in Payment.objects.all():
        assert (payment.status, payment.refunded_amount) == (Status.PARTIALLY_REFUNDED, 100)
    refunded = [s for s in told(signals) if s[0] == "refunded"]
    assert sorted(refunded) == sorted(("refunded", f"ORD-{n}", 100) for n in range(8))
    # Each walk entered every record once; what one changed, the other found matching.
    for walk_row in LedgerWalk.objects.all():
        assert walk_row.records_read == 8
    assert LedgerEntry.objects.filter(kind=Kind.REFUNDED_AT_KHALTI).count() == 8


def test_a_payment_in_review_is_not_cleared_by_a_partial_refund_only_by_a_whole_one(
    pay, walk, khalti, signals
):
    held, payment = pay("ORD-1")
    Payment.objects.filter(pk=payment.pk).update(
        status=Status.NEEDS_REVIEW, failure_reason="A person looks at it."
    )
    khalti.refund_in_dashboard(held.token, amount=300)
    walk()
    payment.refresh_from_db()
    assert (payment.status, payment.refunded_amount) == (Status.NEEDS_REVIEW, 0)
    assert not payment.refunds.exists()
    assert LedgerEntry.objects.get(idx=held.idx).kind == Kind.STATE_DIFFERS

    khalti.refund_in_dashboard(held.token)  # the rest: all of it went back
    walk()
    payment.refresh_from_db()
    assert (payment.status, payment.refunded_amount) == (Status.REFUNDED, 1000)
    assert list(payment.refunds.values_list("origin", "amount")) == [("khalti", 1000)]
    assert told(signals)[-1] == ("refunded", "ORD-1", 1000)


def test_the_summary_names_the_first_day_walked_on_the_shops_clock(walk, khalti, settings):
    settings.TIME_ZONE = "Asia/Kathmandu"
    output = walk(since="1d")
    day = timezone.localdate() - timedelta(days=1)
    assert f"since {day:%Y-%m-%d} 00:00" in output
