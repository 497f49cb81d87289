"""How an attempt at delivering a signal ends, written: its mark, and the payment's next signal.

After every delivery the outbox (:mod:`.outbox`) marks it delivered or failed, then
looks for the payment's first undelivered signal, to go on with it. The mark is an
``UPDATE`` of fixed shape, compiled once per database (building it each time cost more
Python than the rest of a delivery); on PostgreSQL, in autocommit, the delivered mark
and the look for the next signal are one statement (:func:`marked_then_next`), one
round trip instead of two (issue 27).
"""

from __future__ import annotations

from typing import Any

from django.db import connections
from django.db.models import BooleanField, QuerySet
from django.db.models.expressions import RawSQL

from ..models import DbNow, Payment, SignalDelivery
from .compiled import Compiled, CompiledStatement, CompiledUpdate, Statement

#: A payment's signals in the order they are delivered.
IN_ORDER = ("sequence", "created_at", "pk")


def undelivered_but(payment: Any, delivery: Any) -> QuerySet[SignalDelivery]:
    """The undelivered signals of ``payment``, but ``delivery``."""
    return SignalDelivery.objects.filter(payment_id=payment, delivered_at__isnull=True).exclude(
        pk=delivery
    )


#: The first of a payment's undelivered signals, but one: read after every delivery.
FIRST_UNDELIVERED_BUT = Compiled(
    lambda payment, delivery: undelivered_but(payment, delivery).order_by(*IN_ORDER)[:1],
    payment=SignalDelivery._meta.get_field("payment"),
    delivery=SignalDelivery._meta.pk,
)

_NO_WAIT_FOR_THE_DISK = RawSQL(
    "set_config('synchronous_commit', 'off', true) IS NOT NULL", (), output_field=BooleanField()
)


def unflushed(using: str) -> list[RawSQL]:
    """On PostgreSQL, in autocommit (no transaction of the caller's): a condition that
    makes the statement's own commit asynchronous (``synchronous_commit`` off
    for its transaction alone), so that it does not wait for the disk. Nothing
    elsewhere, and nothing inside a caller's transaction (its commit would not
    wait either, for writes that must).
    """
    connection = connections[using]
    # Not in autocommit: in an atomic block, or the caller's own transaction
    # (``set_autocommit(False)``), whose commit the setting would reach.
    if connection.vendor != "postgresql" or not connection.get_autocommit():
        return []
    return [_NO_WAIT_FOR_THE_DISK]


def _mark_of(*, delivered: bool, unflushed: bool) -> CompiledUpdate:
    """The mark of an attempt's end (delivered, or the receivers' errors), on the row
    whose attempt it still is; with :func:`unflushed`'s condition, or without.
    """
    fields = SignalDelivery._meta

    def build(
        pk: Any, attempts: Any, finished: Any, errors: Any = ""
    ) -> tuple[QuerySet[Any], dict[str, Any]]:
        condition = [_NO_WAIT_FOR_THE_DISK] if unflushed else []
        rows = SignalDelivery.objects.filter(*condition, pk=pk, attempts=attempts)
        outcome: dict[str, Any] = (
            {"delivered_at": DbNow(), "next_attempt_at": None, "last_error": ""}
            if delivered
            else {"last_error": errors}
        )
        return rows, {**outcome, "attempts_finished": finished}

    values = {"pk": fields.pk, "attempts": fields.get_field("attempts")}
    values["finished"] = fields.get_field("attempts_finished")
    if not delivered:
        values["errors"] = fields.get_field("last_error")
    return CompiledUpdate(build, **values)


_MARKS = {
    (delivered, off): _mark_of(delivered=delivered, unflushed=off)
    for delivered in (True, False)
    for off in (True, False)
}


def mark(delivery: SignalDelivery, errors: list[str], using: str) -> bool:
    """Write on ``using`` how the attempt at ``delivery`` ended: delivered, or the
    receivers' ``errors``. False if the attempt was no longer this one's (another
    deliverer took it over). Not waiting for the disk where :func:`unflushed` says so.
    """
    values: dict[str, Any] = {"pk": delivery.pk, "attempts": delivery.attempts}
    values["finished"] = delivery.attempts
    if errors:
        values["errors"] = "\n".join(errors)
    return bool(_MARKS[not errors, bool(unflushed(using))].run(using, **values))


#: A payment's count of status changes: read as the statement found it, and locked.
_STATUS_CHANGES = CompiledStatement(
    lambda payment: Payment.objects.filter(pk=payment).order_by().values("status_changes"),
    payment=Payment._meta.pk,
)

#: :func:`marked_then_next`'s condition on what it locks: the mark was made. A mark
#: whose attempt was taken over locks nothing more: the deliverer that took it over
#: may be marking the next signal, its row held, and asking for the payment's row.
_IF_MARKED = RawSQL("EXISTS (SELECT 1 FROM marked)", (), output_field=BooleanField())

_LOCKED_STATUS_CHANGES = CompiledStatement(
    lambda payment: (
        Payment.objects.filter(_IF_MARKED, pk=payment).order_by().values("status_changes")
    ),
    payment=Payment._meta.pk,
)

#: :data:`FIRST_UNDELIVERED_BUT`, locked if the mark was made: the same columns.
_NEXT_IF_MARKED = Compiled(
    lambda payment, delivery: (
        undelivered_but(payment, delivery).filter(_IF_MARKED).order_by(*IN_ORDER)[:1]
    ),
    payment=SignalDelivery._meta.get_field("payment"),
    delivery=SignalDelivery._meta.pk,
)


def marked_then_next(
    delivery: SignalDelivery, using: str
) -> tuple[bool, SignalDelivery | None, bool]:
    """PostgreSQL, in autocommit: ``delivery`` marked delivered (the attempt still
    this one's), and the first undelivered signal of its payment but ``delivery``,
    in one statement: whether it was marked; that signal (None: none, or not
    marked); and whether it must be read again (True: a status change of the
    payment committed while the statement ran, which may have written one).

    One statement has one snapshot, taken as it begins: a deliverer that reads
    after two statements sees what committed between them, this one would not.
    So that a later signal's own worker, which waits for this one to be marked
    (:func:`~.outbox._taken_first`), is never missed by both, the next signal
    is locked (a change to it that committed meanwhile is read, or its writer
    waits for this commit), and so is the payment's row, whose count of status
    changes is compared with the snapshot's (a status change writes its signal
    with it: one that committed meanwhile says read again; one that starts
    later waits for this commit, and its worker sees the mark).
    """
    sql, parts = _MARKED_THEN_NEXT.get(using) or _marked_then_next_sql(using)
    with connections[using].cursor() as cursor:
        cursor.execute(sql, _marked_then_next_params(delivery, using, *parts))
        marked, changed, *columns = cursor.fetchone()
    if not marked:
        return False, None, False
    if columns[0] is None:  # no undelivered signal: the LEFT JOIN's NULLs
        return True, None, bool(changed)
    plan = _NEXT_IF_MARKED.plan(using)
    return True, _NEXT_IF_MARKED.models(plan, using, [columns])[0], bool(changed)


_MARKED_THEN_NEXT: dict[str, tuple[str, tuple[Statement, ...]]] = {}


def _marked_then_next_sql(using: str) -> tuple[str, tuple[Statement, ...]]:
    """:func:`marked_then_next`'s statement for the database ``using``, made of the
    ORM's own SQL for its parts (each compiled once), and those parts.
    """
    marking = _MARKS[True, True].statement(using)
    changes = _STATUS_CHANGES.statement(using)
    locked = _LOCKED_STATUS_CHANGES.statement(using)
    following = _NEXT_IF_MARKED.plan(using).statement
    lock = connections[using].ops.for_update_sql(no_key=True)
    # In this order: the mark, the payment's row, then the next signal, so that nothing
    # else is locked while the mark waits for its row (the left side of a join with no
    # condition is read first; OFFSET 0 keeps it a side of its own). Both locks only if
    # the mark was made (a condition of no column: checked before either row is read).
    sql = (
        f"WITH marked AS ({marking.sql} RETURNING 1) "
        f"SELECT checked.*, next_signal.* FROM (SELECT (SELECT COUNT(*) FROM marked) AS is_marked, "
        f"({changes.sql}) IS DISTINCT FROM ({locked.sql} {lock}) AS changed OFFSET 0) AS checked "
        f"LEFT JOIN ({following.sql} {lock}) AS next_signal ON TRUE"
    )
    _MARKED_THEN_NEXT[using] = sql, (marking, changes, locked, following)
    return _MARKED_THEN_NEXT[using]


def _marked_then_next_params(
    delivery: SignalDelivery,
    using: str,
    marking: Statement,
    changes: Statement,
    locked: Statement,
    following: Statement,
) -> list[Any]:
    """The parameters of :func:`marked_then_next`'s statement, in its parts' order."""
    attempt = {"pk": delivery.pk, "attempts": delivery.attempts, "finished": delivery.attempts}
    payment = {"payment": delivery.payment_id}
    return [
        *_MARKS[True, True].params(marking, using, attempt),
        *_STATUS_CHANGES.params(changes, using, payment),
        *_LOCKED_STATUS_CHANGES.params(locked, using, payment),
        *_NEXT_IF_MARKED.params(following, using, {**payment, "delivery": delivery.pk}),
    ]
