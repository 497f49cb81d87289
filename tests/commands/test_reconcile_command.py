"""``manage.py khalti_reconcile``: what an operator running it from cron sees."""

import io
from datetime import timedelta

import pytest
import requests
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse
from django.utils import timezone

from django_khalti.models import Payment, Refund, order_key
from shop.models import Order, OrderEvent

pytestmark = pytest.mark.django_db


def pending(token, age=timedelta(minutes=10), amount=1000, reference=None):
    reference = reference or f"ORD-{token}"
    Order.objects.get_or_create(reference=reference, defaults={"total": amount})
    payment = Payment.objects.create(
        token=token,
        product_identity=reference,
        amount=amount,
        order_claim=order_key(reference),
        claimed_idx=f"idx-{token}",  # the idx the widget handed the page
    )
    Payment.objects.filter(pk=payment.pk).update(created_at=timezone.now() - age)
    payment.refresh_from_db()
    return payment


def reconcile(*args):
    out = io.StringIO()
    call_command("khalti_reconcile", *args, stdout=out)
    return out.getvalue()


def test_settles_every_old_pending_payment_and_prints_a_summary(
    expect_khalti, signals, django_capture_on_commit_callbacks
):
    paid, _refused, _waiting = pending("paid"), pending("refused"), pending("waiting")
    expect_khalti.complete("paid", 1000)
    expect_khalti.status("refused", 1000, "status_error")
    expect_khalti.status("waiting", 1000, "status_initiated")
    with django_capture_on_commit_callbacks(execute=True):
        out = reconcile()
    assert "checked 3: 1 verified, 1 failed, 1 still pending" in out
    assert "batch 1: 3 pending payment(s)" in out
    statuses = dict(Payment.objects.values_list("token", "status"))
    assert statuses == {"paid": "verified", "refused": "failed", "waiting": "pending"}
    assert sorted(name for name, _, _ in signals) == ["failed", "verified"]
    assert Order.objects.get(reference=paid.product_identity).paid


def test_confirmed_payment_is_verified_with_the_expected_amount(expect_khalti):
    pending("tok", amount=2500)
    expect_khalti.status("tok", 2500, "status_confirmed")
    expect_khalti.verify("tok", 2500)
    assert "1 verified" in reconcile()
    assert Payment.objects.get().idx == "8xmeJnNXfoVjCvGcZiiGe7"


def test_fresh_payments_are_left_alone_until_older_than(expect_khalti):
    pending("fresh", age=timedelta(seconds=30))
    assert "checked 0" in reconcile()
    assert not expect_khalti.calls
    expect_khalti.complete("fresh", 1000)
    assert "checked 1: 1 verified" in reconcile("--older-than", "10")


def test_a_payment_held_by_a_live_worker_is_skipped(expect_khalti):
    payment = pending("held")
    Payment.objects.filter(pk=payment.pk).update(claimed_at=timezone.now())
    assert "checked 0" in reconcile()
    assert not expect_khalti.calls


def test_limit_and_batches(expect_khalti):
    for i in range(5):
        pending(f"t{i}", age=timedelta(minutes=10 - i))
    for i in range(3):
        expect_khalti.complete(f"t{i}", 1000)
    out = reconcile("--limit", "3", "--batch-size", "2")
    assert "batch 1: 2 pending payment(s)" in out
    assert "batch 2: 1 pending payment(s)" in out
    assert "checked 3: 3 verified" in out
    # Oldest first: t0, t1, t2 settled; t3, t4 untouched.
    assert set(Payment.objects.verified().values_list("token", flat=True)) == {"t0", "t1", "t2"}


def test_batches_walk_past_payments_that_stay_pending(expect_khalti):
    for i in range(5):
        pending(f"w{i}", age=timedelta(minutes=10 - i))
        expect_khalti.status(f"w{i}", 1000, "status_initiated")
    out = reconcile("--batch-size", "2")
    assert "checked 5: 0 verified, 0 failed, 5 still pending" in out
    assert len(expect_khalti.calls) == 5  # each asked once, no endless loop


def test_dry_run_asks_khalti_nothing_and_changes_nothing(expect_khalti):
    payment = pending("tok")
    out = reconcile("--dry-run")
    assert f"would check {payment.pk} ORD-tok Rs 10.00 pending" in out
    assert "dry run: 1 payment(s) would be checked, nothing changed" in out
    assert not expect_khalti.calls
    payment.refresh_from_db()
    assert payment.status == Payment.Status.PENDING
    assert payment.attempts == 0


def test_one_payment_by_id_whatever_its_age(expect_khalti):
    target = pending("target", age=timedelta(seconds=1))
    pending("other")
    expect_khalti.complete("target", 1000)
    assert "checked 1: 1 verified" in reconcile("--payment", str(target.pk))
    assert Payment.objects.get(token="other").status == Payment.Status.PENDING


@pytest.mark.parametrize("bad", ["not-a-uuid", "00000000-0000-0000-0000-000000000000"])
def test_unknown_payment_id_is_an_error(expect_khalti, bad):
    with pytest.raises(CommandError, match="No Khalti payment"):
        reconcile("--payment", bad)


def test_exits_non_zero_when_khalti_is_unreachable_after_settling_what_it_could(expect_khalti):
    pending("ok", age=timedelta(minutes=20))
    pending("down", age=timedelta(minutes=10))
    expect_khalti.complete("ok", 1000)
    expect_khalti.status("down", 1000, body=requests.exceptions.ConnectTimeout())
    out = io.StringIO()
    with pytest.raises(CommandError, match="could not be reached for 1"):
        call_command("khalti_reconcile", stdout=out)
    assert "checked 2: 1 verified, 0 failed, 1 still pending" in out.getvalue()
    assert Payment.objects.get(token="down").status == Payment.Status.PENDING
    assert Payment.objects.get(token="ok").status == Payment.Status.VERIFIED


def test_a_timed_out_verification_is_settled_with_exactly_one_signal(
    client, expect_khalti, signals, django_capture_on_commit_callbacks
):
    Order.objects.create(reference="ORD-T", total=1000)
    expect_khalti.verify("tok-t", 1000, body=requests.exceptions.ReadTimeout())
    response = client.post(
        "/khalti/verify/",
        {"token": "tok-t", "amount": 1000, "product_identity": "ORD-T", "idx": "IDX-T"},
        content_type="application/json",
    )
    assert response.status_code == 504
    assert Payment.objects.get().status == Payment.Status.PENDING

    expect_khalti.status("tok-t", 1000, "status_complete")
    expect_khalti.not_a_transaction("tok-t")
    expect_khalti.transaction("IDX-T")
    with django_capture_on_commit_callbacks(execute=True):
        reconcile("--older-than", "0")
        reconcile("--older-than", "0")  # a second run finds nothing to do
    assert Payment.objects.get().status == Payment.Status.VERIFIED
    assert [name for name, _, _ in signals] == ["verified"]
    assert OrderEvent.objects.filter(kind="paid").count() == 1
    assert len(expect_khalti.calls_to("https://khalti.test/api/v2/payment/verify/")) == 1


def test_settles_a_refund_of_unknown_outcome(
    expect_khalti, signals, django_capture_on_commit_callbacks
):
    payment = Payment.objects.create(
        token="tok-r",
        product_identity="ORD-R",
        amount=1000,
        order_claim=order_key("ORD-R"),
        status=Payment.Status.VERIFIED,
        idx="IDX-R",
    )
    refund = Refund.objects.create(payment=payment, amount=1000, claim=payment.pk)
    Refund.objects.filter(pk=refund.pk).update(created_at=timezone.now() - timedelta(hours=1))
    expect_khalti.status("tok-r", 1000, "status_refunded")
    with django_capture_on_commit_callbacks(execute=True):
        out = reconcile()
    assert "refunds checked 1: 1 succeeded" in out
    payment.refresh_from_db()
    assert payment.status == Payment.Status.REFUNDED
    assert [(n, kw["amount"]) for n, _, kw in signals] == [("refunded", 1000)]


@pytest.mark.django_db(transaction=True)
@pytest.mark.concurrency
def test_two_reconcilers_at_once_settle_each_payment_once():
    """Two processes run the command over the same pending payments at the same moment."""
    import multiprocessing
    import time
    from concurrent.futures import ProcessPoolExecutor

    from django.db import connection

    from .. import procs
    from ..fake_khalti import FakeKhalti

    tokens = [f"c{i}" for i in range(12)]
    for token in tokens:
        pending(token)
    with FakeKhalti(delay=0.1) as fake:
        for token in tokens:
            fake.verified[token] = 1000  # Khalti completed them; the answers were lost
        with ProcessPoolExecutor(
            2,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=procs.setup,
            initargs=(connection.settings_dict["NAME"], fake.url),
        ) as pool:
            list(pool.map(time.sleep, [0.5, 0.5]))
            start = time.time() + 1.0
            outputs = list(
                pool.map(
                    procs.reconcile_at, [start, start], ["--batch-size", "--batch-size"], ["3", "3"]
                )
            )
        per_token = {t: fake.count("status", t) for t in tokens}
    assert per_token == dict.fromkeys(tokens, 1), outputs
    assert Payment.objects.verified().count() == 12
    assert OrderEvent.objects.filter(kind="paid").count() == 12
    checked = sum(int(out.split("checked ")[1].split(":")[0]) for out in outputs)
    assert checked == 12, outputs


@pytest.mark.parametrize(
    "args", [["--batch-size", "0"], ["--limit", "0"], ["--older-than", "-1"], ["--limit", "many"]]
)
def test_nonsense_options_are_refused(args):
    with pytest.raises(CommandError):
        reconcile(*args)


def test_gives_up_after_three_unanswered_calls_in_a_row(expect_khalti):
    for i in range(6):
        pending(f"d{i}", age=timedelta(minutes=10 - i))
    expect_khalti.expect("status", body=requests.exceptions.ConnectTimeout(), times=3)
    out = io.StringIO()
    with pytest.raises(CommandError, match="3 times in a row"):
        call_command("khalti_reconcile", stdout=out)
    assert len(expect_khalti.calls) == 3
    assert "checked 3: 0 verified, 0 failed, 3 still pending" in out.getvalue()
    assert Payment.objects.pending().count() == 6


def test_progress_line_per_batch_counts_what_was_settled(expect_khalti):
    for i in range(3):
        pending(f"p{i}", age=timedelta(minutes=10 - i))
        if i < 2:
            expect_khalti.complete(f"p{i}", 1000)
        else:
            expect_khalti.status(f"p{i}", 1000, "status_error")
    out = reconcile("--batch-size", "2")
    assert "batch 1: 2 pending payment(s) read; so far 2 verified, 0 failed, 0 still pending" in out
    assert "batch 2: 1 pending payment(s) read; so far 2 verified, 1 failed, 0 still pending" in out


def test_one_payment_that_is_not_pending_says_so(expect_khalti):
    payment = pending("done")
    Payment.objects.filter(pk=payment.pk).update(status=Payment.Status.VERIFIED)
    out = reconcile("--payment", str(payment.pk))
    assert f"payment {payment.pk} is verified: nothing to settle" in out
    assert "checked 0" in out
    assert not expect_khalti.calls


def test_done_when_timed_out_verify_reconciled_then_refunded_with_documented_answers(
    client, expect_khalti, signals, django_capture_on_commit_callbacks
):
    """The issue's "done when", with Khalti's status answer as documented (no idx):
    the transaction is found by the idx the widget reported, once Khalti's record
    for it matches, and the payment can then be refunded."""
    from django_khalti.services import refund_payment

    Order.objects.create(reference="ORD-D", total=1000)
    expect_khalti.verify("tok-d", 1000, body=requests.exceptions.ReadTimeout())
    payload = {"token": "tok-d", "amount": 1000, "product_identity": "ORD-D", "idx": "IDX-D"}
    assert (
        client.post("/khalti/verify/", payload, content_type="application/json").status_code == 504
    )

    expect_khalti.status("tok-d", 1000, "status_complete")  # {"status", "state", "detail"} only
    expect_khalti.not_a_transaction("tok-d")
    expect_khalti.transaction("IDX-D")
    with django_capture_on_commit_callbacks(execute=True):
        assert "1 verified" in reconcile("--older-than", "0")
    payment = Payment.objects.get()
    assert (payment.status, payment.idx, payment.fee_amount) == ("verified", "IDX-D", 30)
    assert [name for name, _, _ in signals] == ["verified"]

    expect_khalti.refund("IDX-D", {"amount": 400})
    with django_capture_on_commit_callbacks(execute=True):
        refund_payment(payment, amount=400)
    payment.refresh_from_db()
    assert payment.status == Payment.Status.PARTIALLY_REFUNDED


@pytest.mark.parametrize(
    ("record_changes", "held_elsewhere", "why"),
    [
        ({"amount": 99900}, False, "for 99900 paisa"),
        ({"state": {"name": "Pending"}}, False, "is Pending"),
        ({}, True, "another payment's"),
    ],
)
def test_a_paid_status_whose_reported_idx_does_not_match_pays_with_its_idx_unknown(
    expect_khalti,
    record_changes,
    held_elsewhere,
    why,
    signals,
    django_capture_on_commit_callbacks,
    caplog,
):
    from ..conftest import transaction_record

    payment = pending("tok-h")
    Payment.objects.filter(pk=payment.pk).update(claimed_idx="IDX-H")
    if held_elsewhere:
        Payment.objects.create(
            token="other",
            product_identity="OTHER",
            amount=1000,
            idx="IDX-H",
            status=Payment.Status.VERIFIED,
        )
    expect_khalti.status("tok-h", 1000, "status_complete")
    expect_khalti.not_a_transaction("tok-h")
    expect_khalti.transaction("IDX-H", json={**transaction_record(idx="IDX-H"), **record_changes})
    with django_capture_on_commit_callbacks(execute=True):
        out = reconcile()
    # The page's idx is the browser's word: not recorded; status's proof stands.
    assert "1 verified" in out
    payment.refresh_from_db()
    assert payment.status == Payment.Status.VERIFIED
    assert payment.idx is None
    assert [name for name, _, _ in signals] == ["verified"]
    assert any(why in r.message for r in caplog.records)


@pytest.mark.django_db(transaction=True)
@pytest.mark.concurrency
def test_a_row_locked_elsewhere_does_not_hide_the_others(expect_khalti):
    """Another transaction holds a pending payment's row (a reconciler selecting its
    batch, the shop's own code): the run still settles every payment, that one
    included once the lock is let go. (Rows read with ``FOR UPDATE SKIP LOCKED``
    were passed over, and on MariaDB a locked sort hid every row after it.)"""
    import threading

    from django.db import connections, transaction

    payments = [pending(f"lk{i}") for i in range(6)]
    for payment in payments:
        expect_khalti.complete(payment.token, 1000)
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        try:
            with transaction.atomic():
                list(Payment.objects.select_for_update().filter(pk=payments[0].pk))
                locked.set()
                release.wait(10)
        finally:
            connections.close_all()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(10)
        threading.Timer(1.0, release.set).start()
        out = reconcile("--batch-size", "2")
    finally:
        release.set()
        holder.join()
    assert "checked 6: 6 verified" in out, out
    assert Payment.objects.verified().count() == 6


def test_an_answer_between_unanswered_calls_starts_the_count_again(khalti_fake, client):
    """Khalti answers every other call: never three unanswered in a row, so every
    payment is asked about (three verified, three still pending)."""
    Order.objects.create(reference="ORD-ALT", total=1000)
    tokens = []
    for i in range(6):
        Order.objects.create(reference=f"ORD-ALT-{i}", total=1000)
        paid = khalti_fake.add_payment(amount=1000, outcome="timeout")
        answer = client.post(
            reverse("django_khalti:verify"),
            paid.payload(f"ORD-ALT-{i}"),
            content_type="application/json",
        )
        assert answer.status_code == 504
        tokens.append(paid.token)
    for token in tokens[::2]:
        khalti_fake.fail_next("status", "timeout", key=token)
    out = io.StringIO()
    with pytest.raises(CommandError, match=r"could not be reached for 3 payment"):
        call_command("khalti_reconcile", "--older-than", "0", stdout=out)
    statuses = [Payment.objects.get(token=token).status for token in tokens]
    assert statuses == ["pending", "verified"] * 3
    assert "3 verified" in out.getvalue()
