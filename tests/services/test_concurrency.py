"""Exactly once under real concurrency: real threads, each with its own database
connection, posting at the same moment to the real view, on whatever database
``DATABASE_URL`` names (SQLite, PostgreSQL or MariaDB in CI)."""

import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from functools import partial

import pytest
import requests
from django.core.management import call_command
from django.db import connection, connections
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from django_khalti import services
from django_khalti.conf import khalti_settings
from django_khalti.models import Payment, SignalDelivery, order_key
from django_khalti.services import state, writes
from shop.models import Order, OrderEvent

from ..conftest import race, transaction_record
from .conftest import CLAIM_INSERT, SETTLEMENT, deadlocking

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.concurrency]

N = 12


def post_all(payloads):
    """POST every payload from its own thread, released together by a barrier."""
    barrier = threading.Barrier(len(payloads))
    url = reverse("django_khalti:verify")

    def one(data):
        try:
            barrier.wait(timeout=10)
            response = Client().post(url, json.dumps(data), content_type="application/json")
            return response.status_code, response.json()
        finally:
            connections.close_all()

    with ThreadPoolExecutor(len(payloads)) as pool:
        return list(pool.map(one, payloads))


def slow_verify(expect_khalti, calls, amount=1000):
    """A verify endpoint that takes a while, so that the requests overlap: one call,
    for ``amount``, with whichever token (the fake checks the key)."""

    def callback(request):
        calls.append(request.params["token"])
        return 200, transaction_record(amount=amount, idx=f"idx-{len(calls)}")

    expect_khalti.expect(
        "verify", None, {"amount": amount}, subset=True, callback=callback, delay=0.3
    )


def test_simultaneous_identical_submissions_verify_once(expect_khalti, payload, signals):
    calls = []
    slow_verify(expect_khalti, calls)

    results = post_all([payload] * N)

    codes = sorted(code for code, _ in results)
    assert calls == [payload["token"]], "Khalti's verify must be called exactly once"
    assert Payment.objects.count() == 1
    assert Payment.objects.get().status == Payment.Status.VERIFIED
    assert [name for name, _, _ in signals] == ["verified"]
    assert set(codes) <= {200, 409}
    assert 200 in codes
    for code, body in results:
        if code == 409:
            assert body["code"] == "in_progress"
    assert Order.objects.get(reference=payload["product_identity"]).paid


def test_different_tokens_racing_for_one_order_reach_khalti_once(expect_khalti, payload, signals):
    calls = []
    slow_verify(expect_khalti, calls)

    results = post_all([{**payload, "token": f"token-{i}"} for i in range(N)])

    assert len(calls) == 1, "only one token of an order may reach Khalti's verify"
    assert Payment.objects.verified().get().token == calls[0]
    assert [name for name, _, _ in signals] == ["verified"]
    codes = [code for code, _ in results]
    assert codes.count(200) == 1
    assert all(
        body["code"] in ("in_progress", "already_paid") for code, body in results if code != 200
    )
    # No token is dropped: each one told to wait is stored, waiting for the order...
    waiting = Payment.objects.filter(status=Payment.Status.PENDING)
    told_to_wait = sum(1 for code, body in results if body.get("code") == "in_progress")
    assert waiting.count() == told_to_wait
    assert not waiting.exclude(order_claim=None).exists()
    # ...and reconciling them fails each (the order is paid) without verifying it.
    call_command("khalti_reconcile", "--older-than", "0", stdout=io.StringIO())
    assert len(calls) == 1
    assert not Payment.objects.filter(status=Payment.Status.PENDING).exists()
    assert Payment.objects.verified().count() == 1
    assert [name for name, _, _ in signals] == ["verified"]


def test_resubmissions_racing_after_unknown_outcome_settle_once(expect_khalti, payload, signals):
    # A pending payment whose first verify had an unknown outcome.
    Payment.objects.create(
        token=payload["token"],
        product_identity=payload["product_identity"],
        amount=1000,
        order_claim=order_key(payload["product_identity"]),
        attempts=1,
        claimed_idx=payload["idx"],
    )
    expect_khalti.status(
        payload["token"],
        1000,
        json={"status": True, "state": "Complete", "detail": "ok"},
        delay=0.3,
    )
    expect_khalti.not_a_transaction(payload["token"])
    expect_khalti.transaction(payload["idx"])

    results = post_all([payload] * N)

    assert len(expect_khalti.fake.status_calls) == 1
    assert Payment.objects.get().status == Payment.Status.VERIFIED
    assert [name for name, _, _ in signals] == ["verified"]
    assert sorted({code for code, _ in results}) in ([200], [200, 409])


def test_simultaneous_submissions_from_several_processes_verify_once(payload):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from django.db import connection

    from .. import procs
    from ..fake_khalti import FakeKhalti

    workers = 4
    with FakeKhalti(delay=0.3) as fake:
        with ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=procs.setup,
            initargs=(connection.settings_dict["NAME"], fake.url),
        ) as pool:
            # Warm every worker up (Django set-up) before the race starts.
            list(pool.map(time.sleep, [0.5] * workers))
            start = time.time() + 1.0
            results = list(
                pool.map(procs.post_at, [start] * (workers * 2), [payload] * (workers * 2))
            )

        assert fake.count("verify") == 1, "Khalti's verify must be called exactly once"
    codes = [code for code, _ in results]
    assert codes.count(200) >= 1
    assert set(codes) <= {200, 409}
    payment = Payment.objects.get()
    assert payment.status == Payment.Status.VERIFIED
    assert Order.objects.get(reference=payload["product_identity"]).paid
    # The shop's receiver ran once, in whichever process won.
    assert OrderEvent.objects.filter(kind="paid").count() == 1


def test_pending_row_is_committed_before_khalti_is_called(expect_khalti, payload):
    seen_by_another_connection = []

    def callback(request):
        # What any other worker would see while Khalti is being asked.
        def look():
            try:
                seen_by_another_connection.extend(
                    Payment.objects.values_list("status", "claimed_at")
                )
            finally:
                connections.close_all()

        thread = threading.Thread(target=look)
        thread.start()
        thread.join()
        return 200, transaction_record()

    expect_khalti.verify(payload["token"], 1000, callback=callback)
    ((code, _),) = post_all([payload])
    assert code == 200
    assert len(seen_by_another_connection) == 1
    status, claimed_at = seen_by_another_connection[0]
    assert status == Payment.Status.PENDING
    assert claimed_at is not None


def test_atomic_requests_project_still_commits_the_pending_row_first(
    expect_khalti, payload, monkeypatch
):
    from django.db import connection

    monkeypatch.setitem(connection.settings_dict, "ATOMIC_REQUESTS", True)
    seen = []

    def callback(request):
        def look():
            try:
                seen.extend(Payment.objects.values_list("status", flat=True))
            finally:
                connections.close_all()

        thread = threading.Thread(target=look)
        thread.start()
        thread.join()
        raise requests.exceptions.ReadTimeout()

    expect_khalti.verify(payload["token"], 1000, callback=callback)
    response = Client().post(
        reverse("django_khalti:verify"), json.dumps(payload), content_type="application/json"
    )
    assert response.status_code == 504
    assert seen == [Payment.Status.PENDING]
    assert Payment.objects.get().status == Payment.Status.PENDING


def test_services_refuse_to_run_inside_a_callers_transaction(expect_khalti, payload):
    from django.db import transaction

    with pytest.raises(RuntimeError, match="durable"), transaction.atomic():
        services.verify_payment(
            None,
            token=payload["token"],
            amount=1000,
            product_identity=payload["product_identity"],
        )
    assert not Payment.objects.exists()
    assert not expect_khalti.calls


def test_return_callbacks_racing_reconcile_settle_an_epayment_once(expect_khalti, order, signals):

    payment = Payment.objects.create(
        flow=Payment.Flow.EPAYMENT,
        pidx="pidx-race",
        product_identity=order.reference,
        amount=1000,
        order_claim=order_key(order.reference),
    )
    expect_khalti.lookup(
        "pidx-race",
        json={
            "pidx": "pidx-race",
            "total_amount": 1000,
            "status": "Completed",
            "transaction_id": "txn-race",
            "fee": 0,
            "refunded": False,
        },
        delay=0.3,
    )
    barrier = threading.Barrier(8)

    def come_back():
        try:
            barrier.wait(timeout=10)
            return (
                Client()
                .get(reverse("django_khalti:epayment-return"), {"pidx": "pidx-race"})
                .status_code
            )
        finally:
            connections.close_all()

    def reconcile():
        try:
            barrier.wait(timeout=10)
            return services.reconcile(Payment.objects.get(pk=payment.pk)).status
        finally:
            connections.close_all()

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(come_back) for _ in range(4)] + [
            pool.submit(reconcile) for _ in range(4)
        ]
        results = [f.result() for f in futures]

    assert len(expect_khalti.fake.lookup_calls) == 1, "lookup must be asked once"
    assert results[:4] == [200] * 4
    payment.refresh_from_db()
    assert payment.status == Payment.Status.VERIFIED
    assert payment.idx == "txn-race"
    assert [name for name, _, _ in signals] == ["verified"]
    assert OrderEvent.objects.filter(kind="paid").count() == 1


def verified_rs_10():
    """A verified payment of Rs 10 for ORD-R, its transaction IDX-R: one to refund."""
    return Payment.objects.create(
        token="tok-r",
        product_identity="ORD-R",
        amount=1000,
        status=Payment.Status.VERIFIED,
        idx="IDX-R",
        verified_at=timezone.now(),
        order_claim=order_key("ORD-R"),
    )


def test_two_reconcilers_settle_one_refund_of_unknown_outcome_once(
    expect_khalti, signals, settings
):
    from datetime import timedelta

    from django.utils import timezone

    from django_khalti.models import Refund

    payment = verified_rs_10()
    refund = Refund.objects.create(payment=payment, amount=1000, claim=payment.pk)
    Refund.objects.filter(pk=refund.pk).update(created_at=timezone.now() - timedelta(hours=1))

    # One reconciler takes the payment's turn to ask Khalti (the others leave the refund
    # as it is, pending, for their next run); the refund settles once.
    settings.KHALTI = {**settings.KHALTI, "ASK_SPACING": 10}
    expect_khalti.status(
        "tok-r",
        1000,
        json={"status": True, "state": "Refunded", "detail": "refunded"},
        delay=0.2,
        times=None,
    )

    def settle():
        return services.reconcile_refund(Refund.objects.get(pk=refund.pk)).status

    results = race(*[settle] * 4)
    assert Refund.Status.SUCCEEDED in results
    assert set(results) <= {Refund.Status.SUCCEEDED, Refund.Status.PENDING}
    assert len(expect_khalti.calls_to("https://khalti.test/api/v2/payment/status/")) == 1
    assert Refund.objects.get(pk=refund.pk).status == Refund.Status.SUCCEEDED
    payment.refresh_from_db()
    assert (payment.status, payment.refunded_amount) == (Payment.Status.REFUNDED, 1000)
    assert [(n, kw["amount"]) for n, _, kw in signals] == [("refunded", 1000)]


def test_reconcilers_re_checking_one_failed_refund_at_once_ask_once_and_tell_the_shop_once(
    expect_khalti, signals
):
    """A refund recorded failed that Khalti applied late, re-checked by four reconcilers at
    the same moment (the refund read by each before any of them wins it)."""
    from django_khalti.models import Refund

    payment = verified_rs_10()
    failed = Refund.objects.create(
        payment=payment, amount=1000, status=Refund.Status.FAILED, settled_at=timezone.now()
    )
    asked = expect_khalti.status(
        "tok-r",
        1000,
        json={"status": True, "state": "Refunded", "detail": "refunded"},
        delay=0.2,
        times=None,
    )
    barrier = threading.Barrier(4)

    def recheck():
        try:
            refund = Refund.objects.get(pk=failed.pk)
            barrier.wait(timeout=10)
            return services.recheck_failed_refund(refund).status
        finally:
            connections.close_all()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: recheck(), range(4)))
    assert len(asked.choice.calls) == 1  # one winner asked Khalti
    assert Refund.objects.get(pk=failed.pk).status == Refund.Status.SUCCEEDED
    payment.refresh_from_db()
    assert (payment.status, payment.refunded_amount) == (Payment.Status.REFUNDED, 1000)
    assert [(n, kw["amount"]) for n, _, kw in signals] == [("refunded", 1000)]


def test_a_batch_passes_over_rows_another_reconciler_holds(expect_khalti):
    """A payment another reconciler has claimed (fresh, on the database's clock) is
    left to it; once its claim is stale, the batch takes it again. (A row *locked*
    elsewhere is not passed over: tests/commands/test_reconcile_command.py.)"""
    from datetime import timedelta

    from django.utils import timezone

    from django_khalti.conf import khalti_settings

    for minutes, token in ((11, "held"), (10, "free")):
        p = Payment.objects.create(
            token=token,
            product_identity=f"ORD-{token}",
            amount=1000,
            order_claim=order_key(f"ORD-{token}"),
        )
        Payment.objects.filter(pk=p.pk).update(
            created_at=timezone.now() - timedelta(minutes=minutes)
        )
    assert state.claim(Payment.objects.get(token="held"))
    batch = services.reconcile_due(
        older_than=timedelta(0), failed_within=timedelta(0), dry_run=True
    ).would_check
    assert [p.token for p in batch] == ["free"]

    stale = timezone.now() - timedelta(seconds=khalti_settings.stale_after + 1)
    Payment.objects.filter(token="held").update(claimed_at=stale)
    batch = services.reconcile_due(
        older_than=timedelta(0), failed_within=timedelta(0), dry_run=True
    ).would_check
    assert [p.token for p in batch] == ["held", "free"]


def test_epayment_views_work_in_an_atomic_requests_project(expect_khalti, order, monkeypatch):
    from django.db import connection

    from ..conftest import epayment_started

    monkeypatch.setitem(connection.settings_dict, "ATOMIC_REQUESTS", True)
    expect_khalti.initiate(1000, order.reference, json=epayment_started())
    client = Client()
    start = client.post(reverse("django_khalti:epayment-start", args=[order.reference]))
    assert start.status_code == 302
    expect_khalti.lookup("bZQLD9wRVWo4CdESSfuSsB", "epayment_lookup_completed")
    back = client.get(reverse("django_khalti:epayment-return"), {"pidx": "bZQLD9wRVWo4CdESSfuSsB"})
    assert back.status_code == 200
    assert Payment.objects.get().status == Payment.Status.VERIFIED
    assert OrderEvent.objects.filter(kind="paid").count() == 1


def test_return_callbacks_racing_the_reconcile_command_settle_once(expect_khalti, order, signals):
    import io
    from datetime import timedelta

    from django.core.management import call_command
    from django.utils import timezone

    payment = Payment.objects.create(
        flow=Payment.Flow.EPAYMENT,
        pidx="pidx-cmd",
        product_identity=order.reference,
        amount=1000,
        order_claim=order_key(order.reference),
    )
    Payment.objects.filter(pk=payment.pk).update(created_at=timezone.now() - timedelta(minutes=10))
    expect_khalti.lookup(
        "pidx-cmd",
        json={
            "pidx": "pidx-cmd",
            "total_amount": 1000,
            "status": "Completed",
            "transaction_id": "txn-cmd",
            "fee": 0,
            "refunded": False,
        },
        delay=0.3,
    )
    barrier = threading.Barrier(4)

    def come_back():
        try:
            barrier.wait(timeout=10)
            return (
                Client()
                .get(reverse("django_khalti:epayment-return"), {"pidx": "pidx-cmd"})
                .status_code
            )
        finally:
            connections.close_all()

    def command():
        try:
            barrier.wait(timeout=10)
            call_command("khalti_reconcile", stdout=io.StringIO())
        finally:
            connections.close_all()

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(come_back) for _ in range(2)] + [
            pool.submit(command) for _ in range(2)
        ]
        [f.result() for f in futures]
    assert len(expect_khalti.fake.lookup_calls) == 1
    assert Payment.objects.get().status == Payment.Status.VERIFIED
    assert [name for name, _, _ in signals] == ["verified"]


def test_widget_payments_racing_past_an_open_link_supersede_it_and_verify_once(
    khalti_fake, signals
):
    order = Order.objects.create(reference="ORD-RACE", total=1000)
    start = Client().post(reverse("django_khalti:epayment-start", args=[order.reference]))
    assert start.status_code == 302
    link = Payment.objects.get()
    tokens = [khalti_fake.add_payment(amount=1000) for _ in range(N)]

    results = post_all([token.payload(order.reference) for token in tokens])

    link.refresh_from_db()
    assert link.status == Payment.Status.FAILED
    assert "Superseded" in link.failure_reason
    assert [code for code, _ in results].count(200) == 1
    refusals = [body.get("code") for code, body in results if code != 200]
    # (a latecomer finds the order paid: already_paid, or unknown_order once the
    # shop's receiver marked it paid and its resolver hides it)
    assert set(refusals) <= {"in_progress", "already_paid", "unknown_order"}, results
    # Every token told to wait is kept (one told the order is paid moved nothing);
    # Khalti moved the money of one.
    kept = Payment.objects.filter(flow=Payment.Flow.WIDGET).count()
    assert kept == 1 + refusals.count("in_progress")
    call_command("khalti_reconcile", "--older-than", "0", stdout=io.StringIO())
    assert Payment.objects.verified().count() == 1
    assert not Payment.objects.pending().exists()
    assert sum(khalti_fake.payments[token.token].verified for token in tokens) == 1
    assert [name for name, _, _ in signals] == ["verified"]


def pending_payment(reference, **fields):
    Order.objects.create(reference=reference, total=1000)
    return Payment.objects.create(
        token=f"tok-{reference}",
        product_identity=reference,
        amount=1000,
        order_claim=order_key(reference),
        **fields,
    )


def test_two_settlements_racing_on_one_payment_change_it_once(signals):
    # The guarded UPDATE ... WHERE status = 'pending' is what lets one of them win.
    for run in range(5):
        payment = pending_payment(f"ORD-SETTLE-{run}")
        verifier, failer = (Payment.objects.get(pk=payment.pk) for _ in range(2))
        won = race(
            partial(writes._transition, verifier, Payment.Status.VERIFIED, received_amount=1000),
            partial(
                writes._transition,
                failer,
                Payment.Status.FAILED,
                order_claim=None,
                failure_reason="refused",
            ),
        )
        assert sorted(won) == [False, True], run
        assert SignalDelivery.objects.filter(payment=payment).count() == 1, run
    assert len(signals) == 5


def test_a_worker_whose_claim_was_taken_over_never_fails_the_payment(signals):
    # Worker A's claim went stale and B took the payment over; A's refusal must not
    # fail it while B records what Khalti completed (the stale-claim guard on failing).
    for run in range(10):
        stale = timezone.now() - timedelta(seconds=khalti_settings.stale_after + 5)
        payment = pending_payment(f"ORD-STALE-{run}", claimed_at=stale, attempts=1)
        a = Payment.objects.get(pk=payment.pk)
        b = Payment.objects.get(pk=payment.pk)
        assert state.claim(b)
        race(
            partial(state._fail, a, "Khalti refused the repeat."),
            partial(state._verified, b, 1000, {"idx": f"TX-STALE-{run}"}),
        )
        payment.refresh_from_db()
        assert payment.status == Payment.Status.VERIFIED, (run, payment.failure_reason)
    assert [name for name, _, _ in signals] == ["verified"] * 10


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "victim",
    # Racing inserts of one order's claim; two settlements of one row at MariaDB's
    # REPEATABLE READ.
    [CLAIM_INSERT, SETTLEMENT],
    ids=["claim insert", "settlement"],
)
def test_a_write_that_loses_a_deadlock_is_run_again_and_announced_once(
    expect_khalti, payload, signals, victim
):
    """A deadlock's victim (MySQL/MariaDB error 1213, PostgreSQL's 40P01) wrote
    nothing: the claim's insert or the status change is run again, the buyer gets
    the verified answer, and the shop hears of it once."""
    expect_khalti.verify(payload["token"], 1000)
    deadlock_once, victims = deadlocking(victim)
    with connection.execute_wrapper(deadlock_once):
        response = Client().post(
            reverse("django_khalti:verify"), json.dumps(payload), content_type="application/json"
        )
    assert len(victims) == 1
    assert response.status_code == 200, response.content
    assert Payment.objects.get().status == Payment.Status.VERIFIED
    assert [name for name, _, _ in signals] == ["verified"]
    assert SignalDelivery.objects.count() == 1
