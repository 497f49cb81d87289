"""Hostile review of services/writes.py (_again_after_deadlock, the moved
_transition and insert_claiming): deadlocks at every statement and at COMMIT,
inside and outside a caller's transaction."""

from __future__ import annotations

import re
import threading

import pytest
from django.db import IntegrityError, OperationalError, connection, connections, transaction

from django_khalti.models import DbNow, Payment, SignalDelivery, order_key
from django_khalti.services import state, writes

from .conftest import CLAIM_INSERT, DEADLOCK, SETTLEMENT, deadlocking

Status = Payment.Status
one_statement = pytest.mark.skipif(
    "connection.vendor == 'postgresql'", reason="PostgreSQL: one statement, no COMMIT"
)


def pending(token="tok-w", reference="ORD-W"):
    payment = Payment.objects.create(
        token=token,
        token_claim=token,
        product_identity=reference,
        order_reference=reference,
        amount=1000,
        order_claim=order_key(reference),
        claimed_at=DbNow(),
        attempts=1,
    )
    return Payment.objects.get(pk=payment.pk)


def failing_commit(monkeypatch, times=1, error=DEADLOCK):
    """COMMIT refused ``times`` times (Galera's certification failure is 1213 at COMMIT;
    SQLite's 'database is locked' can come at COMMIT)."""
    real = connection._commit  # type: ignore[attr-defined]
    seen = []

    def commit():
        if connection.in_atomic_block is False and len(seen) < times:
            seen.append(1)
            raise OperationalError(*error)
        return real()

    monkeypatch.setattr(connection, "_commit", commit)
    return seen


@one_statement
@pytest.mark.django_db(transaction=True)
def test_deadlock_on_the_outbox_insert_is_run_again_and_announced_once(signals):
    payment = pending()
    wrapper, seen = deadlocking(r"INSERT INTO [\"`]django_khalti_signaldelivery[\"`]")
    with connection.execute_wrapper(wrapper):
        assert writes._transition(payment, Status.VERIFIED, idx="IDX-1", received_amount=1000)
    assert len(seen) == 1
    assert SignalDelivery.objects.count() == 1
    assert [name for name, _, _ in signals] == ["verified"]
    row = Payment.objects.get()
    assert (row.status, row.idx) == (payment.status, payment.idx) == (Status.VERIFIED, "IDX-1")
    assert payment.updated_at == row.updated_at


@one_statement
@pytest.mark.django_db(transaction=True)
def test_deadlock_at_commit_is_run_again_and_announced_once(signals, monkeypatch):
    payment = pending()
    seen = failing_commit(monkeypatch)
    assert writes._transition(payment, Status.VERIFIED, idx="IDX-2", received_amount=1000)
    assert len(seen) == 1
    assert SignalDelivery.objects.count() == 1
    assert [name for name, _, _ in signals] == ["verified"]
    assert Payment.objects.get().status == payment.status == Status.VERIFIED
    assert payment.updated_at == Payment.objects.get().updated_at


@one_statement
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("times", "error"),
    [(1, (5, "database is locked")), (writes.DEADLOCK_RETRIES, DEADLOCK)],
    ids=["commit refused", "commit deadlocked every time"],
)
def test_commit_refused_leaves_the_in_memory_payment_as_the_row(signals, monkeypatch, times, error):
    """The payment object must not claim a change the database never kept
    (cf. test_outbox_refused_leaves_the_in_memory_payment_as_the_row)."""
    payment = pending()
    seen = failing_commit(monkeypatch, times=times, error=error)
    with pytest.raises(OperationalError):
        writes._transition(payment, Status.VERIFIED, idx="IDX-3", received_amount=1000)
    assert len(seen) == times
    row = Payment.objects.get()
    assert row.status == Status.PENDING
    assert not SignalDelivery.objects.exists()
    assert not signals
    assert (payment.status, payment.idx, payment.received_amount) == (
        row.status,
        row.idx,
        row.received_amount,
    )
    assert payment.claimed_at is not None  # still this worker's claim


@pytest.mark.django_db(transaction=True)
def test_deadlock_inside_a_callers_transaction_is_raised_not_run_again(signals):
    payment = pending()
    wrapper, seen = deadlocking(SETTLEMENT, 9)
    with pytest.raises(OperationalError), transaction.atomic():
        with connection.execute_wrapper(wrapper):
            writes._transition(payment, Status.VERIFIED, idx="IDX-4")
    assert len(seen) == 1
    assert Payment.objects.get().status == payment.status == Status.PENDING
    assert not SignalDelivery.objects.exists()
    assert not signals


@pytest.mark.django_db(transaction=True)
def test_deadlock_every_time_gives_up_after_the_retries(signals):
    payment = pending()
    wrapper, seen = deadlocking(SETTLEMENT, 9)
    with pytest.raises(OperationalError), connection.execute_wrapper(wrapper):
        writes._transition(payment, Status.VERIFIED, idx="IDX-5")
    assert len(seen) == writes.DEADLOCK_RETRIES
    assert Payment.objects.get().status == payment.status == Status.PENDING
    assert not SignalDelivery.objects.exists()
    assert not signals


@pytest.mark.django_db(transaction=True)
def test_a_lock_wait_timeout_is_not_run_again():
    payment = pending()
    wrapper, seen = deadlocking(
        SETTLEMENT,
        9,
        error=(1205, "Lock wait timeout exceeded"),
    )
    with pytest.raises(OperationalError), connection.execute_wrapper(wrapper):
        writes._transition(payment, Status.VERIFIED)
    assert len(seen) == 1


@pytest.mark.django_db
def test_insert_claiming_inside_a_transaction_raises_its_deadlock():
    """In TestCase's transaction (committed_at_once lets it through) the insert
    is not run again: the transaction went with the deadlock."""
    wrapper, seen = deadlocking(CLAIM_INSERT, 9)
    with pytest.raises(OperationalError), connection.execute_wrapper(wrapper):
        writes.insert_claiming(
            product_identity="ORD-I", order_reference="ORD-I", amount=1000, token="t"
        )
    assert len(seen) == 1


@pytest.mark.django_db(transaction=True)
def test_insert_claiming_deadlock_every_time_gives_up():
    wrapper, seen = deadlocking(CLAIM_INSERT, 9)
    with pytest.raises(OperationalError), connection.execute_wrapper(wrapper):
        writes.insert_claiming(
            product_identity="ORD-I", order_reference="ORD-I", amount=1000, token="t"
        )
    assert len(seen) == writes.DEADLOCK_RETRIES
    assert not Payment.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_claim_that_loses_a_deadlock_is_lost_not_run_again():
    payment = Payment.objects.create(
        token="c", product_identity="ORD-C", order_reference="ORD-C", amount=1000, attempts=1
    )
    wrapper, seen = deadlocking(r"UPDATE [\"`]django_khalti_payment[\"`] SET [\"`]claimed_at", 9)
    with connection.execute_wrapper(wrapper):
        assert state.claim(payment) is False
    assert len(seen) == 1
    assert payment.attempts == 1
    assert Payment.objects.get().claimed_at is None


@one_statement
@pytest.mark.django_db(transaction=True)
def test_a_retry_after_a_refused_commit_announces_no_idx_or_verified_at_it_never_kept(
    signals, monkeypatch
):
    """COMMIT deadlocks (Galera: 1213 at COMMIT) after the payment object was
    already moved to verified; meanwhile another payment took Khalti's idx, so
    the run again meets the unique idx and the payment needs review instead.
    Its announcement must not carry the first attempt's idx and verified_at."""
    payment = pending()
    failing_commit(monkeypatch)
    updates = []

    def idx_taken_on_the_run_again(execute, sql, params, many, context):
        if re.match(SETTLEMENT, sql):
            updates.append(sql)
            if len(updates) == 2:
                raise IntegrityError("UNIQUE constraint failed: django_khalti_payment.idx")
        return execute(sql, params, many, context)

    with connection.execute_wrapper(idx_taken_on_the_run_again):
        state._verified(payment, 1000, {"idx": "IDX-TAKEN"})
    row = Payment.objects.get()
    assert row.status == Status.NEEDS_REVIEW
    assert (row.idx, row.verified_at) == (None, None)
    (delivery,) = SignalDelivery.objects.all()
    as_announced = delivery.payment_as_it_was
    assert (as_announced.idx, as_announced.verified_at) == (None, None)
    assert [name for name, _, _ in signals] == ["needs_review"]
    (_, _, kwargs) = signals[0]
    assert (kwargs["payment"].idx, kwargs["payment"].verified_at) == (None, None)
    assert (payment.idx, payment.verified_at) == (None, None)


@pytest.mark.django_db(transaction=True)
def test_a_real_deadlock_is_recognised_as_one():
    """Not a faked 1213: the database's own deadlock (PostgreSQL 40P01, MariaDB
    1213) between two transactions updating two rows in opposite orders."""
    if connection.vendor == "sqlite":
        pytest.skip("SQLite has no row locks")
    a, b = pending("tok-a", "ORD-A"), pending("tok-b", "ORD-B")
    barrier = threading.Barrier(2, timeout=20)
    errors = []

    def one(first, second):
        try:
            with transaction.atomic():
                Payment.objects.filter(pk=first.pk).update(amount=1001)
                barrier.wait()
                Payment.objects.filter(pk=second.pk).update(amount=1002)
        except OperationalError as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [
        threading.Thread(target=one, args=(a, b)),
        threading.Thread(target=one, args=(b, a)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(errors) == 1, errors
    assert writes._deadlocked(errors[0])
