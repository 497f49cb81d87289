"""Attacks on the one statement of a delivered mark and the look for the payment's next
signal (PostgreSQL, issue 27): what its wait for the payment's row, and its read again,
cost the shop. Each test says what it holds the statement to.

Another transaction is a raw connection of its own here (psycopg), so that it can be
committed from a thread while the statement waits for it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection
from django.test.utils import override_settings

from django_khalti.models import Payment, SignalDelivery
from django_khalti.services import marks, outbox

from .test_hot_queries import postgresql_only
from .test_hot_queries_attacks import ReadsFromTheReplica, a_replica, heard, two_status_changes

__all__ = ["heard"]  # a fixture of the tests below

# PostgreSQL's driver: not installed where the suite runs on SQLite alone.
psycopg = pytest.importorskip("psycopg")

pytestmark = [postgresql_only, pytest.mark.django_db(transaction=True)]


class Other:
    """Another session on the test database, in a transaction of its own."""

    def __init__(self) -> None:
        self.conn = psycopg.connect(**connection.get_connection_params(), autocommit=False)

    def hold_the_payment(self, payment: Payment) -> None:
        """Lock the payment's row, as a settlement or a refund does first."""
        table = connection.ops.quote_name(Payment._meta.db_table)
        self.conn.execute(f"SELECT 1 FROM {table} WHERE id = %s FOR UPDATE", [payment.pk])

    def refund(self, payment: Payment, template: SignalDelivery, *, waiting: bool) -> None:
        """The refund's status change: the payment's count of changes one more, and
        its signal written (``waiting``: its own worker already left it waiting for
        the payment's earlier signal), as a copy of ``template``."""
        quote = connection.ops.quote_name
        payments = quote(Payment._meta.db_table)
        self.conn.execute(
            f"UPDATE {payments} SET status_changes = status_changes + 1,"
            " status = 'refunded' WHERE id = %s",
            [payment.pk],
        )
        columns = [f.column for f in SignalDelivery._meta.concrete_fields if f.column]
        columns.remove("id")
        values = {column: (quote(column), []) for column in columns}
        values["payment_id"] = "%s", [payment.pk]
        values["sequence"] = f"(SELECT status_changes FROM {payments} WHERE id = %s)", [payment.pk]
        if waiting:
            values.update(
                attempts=("0", []),
                attempts_finished=("0", []),
                next_attempt_at=("NOW()", []),
                last_error=("%s", [outbox._WAITING]),
            )
        table = quote(SignalDelivery._meta.db_table)
        self.conn.execute(
            f"INSERT INTO {table} (id, {', '.join(quote(c) for c in columns)}) "
            f"SELECT gen_random_uuid(), {', '.join(values[c][0] for c in columns)} "
            f"FROM {table} WHERE id = %s",
            [*(p for c in columns for p in values[c][1]), template.pk],
        )
        self.conn.execute(f"DELETE FROM {table} WHERE id = %s", [template.pk])

    def commit_once_the_mark_waits(self) -> threading.Thread:
        """Commit from a thread once the delivered mark's statement waits for a lock."""

        def run() -> None:
            with psycopg.connect(**connection.get_connection_params(), autocommit=True) as look:
                for _ in range(200):
                    waiting = look.execute(
                        "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND wait_event_type = 'Lock' AND query LIKE 'WITH marked AS (UPDATE %'"
                    ).fetchone()
                    if waiting and waiting[0]:
                        break
                    time.sleep(0.02)
            self.conn.commit()

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    def close(self) -> None:
        self.conn.rollback()
        self.conn.close()


@pytest.fixture
def other() -> Iterator[Other]:
    session = Other()
    yield session
    session.close()


def _a_verified_payment_and_a_refund_to_come(token: str) -> tuple[Payment, SignalDelivery, Any]:
    payment = Payment.objects.create(
        token=token, amount=1000, product_identity="A", status="verified", status_changes=1
    )
    first, template = two_status_changes(payment)
    # The refund's signal is written by the other session: its template belongs elsewhere.
    elsewhere = Payment.objects.create(token=f"{token}-b", amount=1, product_identity="B")
    SignalDelivery.objects.filter(pk=template.pk).update(payment=elsewhere)
    return payment, first, template


# --- the wait for the payment's row, under the shop's lock_timeout -----------------------


@pytest.fixture
def shop_lock_timeout() -> Iterator[None]:
    """The shop's ``OPTIONS``: ``-c lock_timeout=200ms`` for its sessions."""
    with connection.cursor() as cursor:
        cursor.execute("SET lock_timeout = '200ms'")
    yield
    with connection.cursor() as cursor:
        cursor.execute("RESET lock_timeout")


def test_a_delivered_mark_is_not_lost_to_a_settlement_holding_the_payments_row(
    heard, other, shop_lock_timeout
):
    """The shop's sessions give up on a lock after 200 ms. payment_verified's receivers
    ran without raising while a refund's settlement held the payment's row (its
    transaction, as the ledger walk's or a refund outcome's); the mark itself never
    needed that row. It must be marked delivered, and the refund, written by that
    settlement, heard after it: not payment_verified heard again later, and the refund
    left waiting for the next reconcile."""
    payment, first, template = _a_verified_payment_and_a_refund_to_come("tok-lt")
    other.hold_the_payment(payment)
    run = outbox.deliver_in_order(first, first=True)
    other.refund(payment, template, waiting=False)
    other.conn.commit()
    second = SignalDelivery.objects.get(payment=payment, sequence=2)
    outbox.deliver(second, first=True)  # the refund's own worker, after its commit
    assert [(d.signal, ok) for d, ok in run] == [("payment_verified", True)]
    assert heard == ["verified", "refunded"]
    assert not SignalDelivery.objects.filter(payment=payment, delivered_at=None).exists()


# --- the read again, with a router that reads from a replica -----------------------------


@pytest.fixture
def lagging_replica(transactional_db) -> Iterator[Any]:
    """A ``replica`` alias behind the primary: a read-only session whose reads all see
    the database as it was at its first (one REPEATABLE READ transaction), as a hot
    standby that has not yet replayed what committed since."""
    repeatable = {"isolation_level": psycopg.IsolationLevel.REPEATABLE_READ}
    with a_replica(repeatable, AUTOCOMMIT=False) as replica:
        yield replica


def test_a_refund_committed_while_the_mark_waits_is_read_again_where_it_committed(
    heard, other, lagging_replica
):
    """The router reads from a replica. A refund's status change holds the payment's row
    as payment_verified's mark begins, and commits while the mark waits for it; its
    own worker left it waiting for payment_verified's deliverer. The statement says
    "read again": the refund committed a moment ago on the primary, so it is read
    there, not on the replica, which has not replayed it yet; else nobody goes on with
    it until the next reconcile."""
    payment, first, template = _a_verified_payment_and_a_refund_to_come("tok-rep")
    with lagging_replica.cursor() as cursor:
        cursor.execute("SELECT 1")  # the replica's point in time: before the refund
    other.refund(payment, template, waiting=True)
    committer = other.commit_once_the_mark_waits()
    with override_settings(DATABASE_ROUTERS=[ReadsFromTheReplica()]):
        run = outbox.deliver_in_order(first, first=True)
    committer.join(10)
    assert [(d.signal, ok) for d, ok in run] == [
        ("payment_verified", True),
        ("payment_refunded", True),
    ]
    assert heard == ["verified", "refunded"]
    assert not SignalDelivery.objects.filter(payment=payment, delivered_at=None).exists()


# --- a mark whose attempt was taken over --------------------------------------------------


def test_a_mark_whose_attempt_was_taken_over_locks_nothing_more(other, shop_lock_timeout):
    """payment_verified's receivers ran past its wait; another deliverer took it over,
    delivered it and is marking the refund after it: its statement holds the refund's
    row and then asks for the payment's. The first deliverer's mark, no longer its
    attempt's, marks nothing: it must then lock neither the payment's row nor the
    refund's, or the two statements lock them in opposite orders and deadlock (one in
    five runs of the two at once did), costing the refund's deliverer its mark. Here
    another session holds the payment's row: the stale mark must not wait for it."""
    payment, first, _ = _a_verified_payment_and_a_refund_to_come("tok-over")
    SignalDelivery.objects.filter(pk=first.pk).update(attempts=2)  # taken over
    other.hold_the_payment(payment)
    assert marks.marked_then_next(first, "default") == (False, None, False)


def test_a_later_signals_own_worker_reads_where_the_earlier_one_was_marked(heard, lagging_replica):
    """The router reads from a replica that has not yet replayed payment_verified's
    delivered mark. The refund, committed after that delivery ended, is run by its own
    worker, which asks whether an earlier signal is still undelivered: asked on the
    replica, payment_verified looks undelivered, the refund is left waiting for its
    deliverer, who has gone, and the shop hears of the refund only at the next
    reconcile. Asked where the marks are written, it is run at once."""
    payment = Payment.objects.create(
        token="tok-worker", amount=1000, product_identity="A", status="verified"
    )
    first, second = two_status_changes(payment)
    # The refund comes after payment_verified's delivery: written elsewhere until then.
    elsewhere = Payment.objects.create(token="tok-worker-b", amount=1, product_identity="B")
    SignalDelivery.objects.filter(pk=second.pk).update(payment=elsewhere)
    with lagging_replica.cursor() as cursor:
        cursor.execute("SELECT 1")  # the replica's point in time: before the mark
    assert outbox.deliver(first, first=True)
    SignalDelivery.objects.filter(pk=second.pk).update(payment=payment)
    second.refresh_from_db()
    with override_settings(DATABASE_ROUTERS=[ReadsFromTheReplica()]):
        assert outbox.deliver(second, first=True)
    assert heard == ["verified", "refunded"]
    assert not SignalDelivery.objects.filter(payment=payment, delivered_at=None).exists()
