"""How a payment's status changes and claims are written to the database.

- :func:`_transition` is the one choke point of every status change: a guarded
  ``UPDATE ... WHERE status = <source>`` (and, for a held payment, ``claimed_at``
  and ``attempts`` as the claim left them) whose winner writes the signal to the
  outbox atomically with the change, and delivers it after the commit
  (:mod:`.outbox`). On PostgreSQL that is one statement
  (:func:`_changed_in_one_statement`), elsewhere a transaction of its own
  (:func:`_changed_in_transaction`).
- A claim is one statement committed on its own (:func:`committed_at_once`,
  :func:`insert_claiming`), so other workers see it before Khalti is called.
- A write the database chose as a deadlock's victim wrote nothing and is run
  again (:func:`_again_after_deadlock`), never inside a caller's transaction.

:mod:`.state` decides *which* change to make; this module only makes it.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar, cast

from django.conf import settings
from django.db import OperationalError, connections, router, transaction
from django.db.models import DateTimeField, F, Q, QuerySet
from django.db.models.sql import UpdateQuery

from ..models import DbNow, Payment, SignalDelivery, snapshot_of
from .compiled import Slot
from .outbox import _retry_wait, deliver

logger = logging.getLogger(__name__)

Status = Payment.Status
T = TypeVar("T")


def committed_at_once(instance: Payment | None = None) -> AbstractContextManager[Any]:
    """For a single write of a payment that other workers must see before Khalti
    is called (a claim): committed by itself, so never inside a caller's
    transaction on the database payments are written to (Django then raises
    RuntimeError, as for ``atomic(durable=True)``). One statement needs no
    transaction of its own: no BEGIN and COMMIT around it.
    """
    using = router.db_for_write(Payment, instance=instance)
    if connections[using].in_atomic_block:
        return transaction.atomic(using=using, durable=True)  # raises, but in TestCase
    return nullcontext()


def insert_claiming(**fields: Any) -> Payment:
    """Insert a payment whose unique claims (order, token) other workers race for,
    committed on its own. A deadlock between racing inserts (InnoDB's
    duplicate-key locks, MySQL error 1213) wrote nothing: the insert is run
    again, and then meets the winner's row as :class:`IntegrityError`.
    """

    def insert() -> Payment:
        with committed_at_once():
            return Payment.objects.create(**fields)

    return _again_after_deadlock(insert, router.db_for_write(Payment), "A payment's insert")


#: How many times a write that lost a deadlock is run in all.
DEADLOCK_RETRIES = 3


def _deadlocked(exc: OperationalError) -> bool:
    """Whether the database chose this transaction as a deadlock's victim (MySQL
    and MariaDB: error 1213; PostgreSQL: SQLSTATE 40P01).
    """
    cause = exc.__cause__
    sqlstate = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
    return sqlstate == "40P01" or (bool(exc.args) and exc.args[0] == 1213)


def _again_after_deadlock(write: Callable[[], T], using: str, what: str) -> T:
    """Run ``write`` (a statement or a transaction of its own) and, when the
    database chose it as a deadlock's victim, run it again: the victim wrote
    nothing and its transaction is gone. Never inside a caller's transaction,
    which went with it: there the error is the caller's.
    """
    for attempt in range(1, DEADLOCK_RETRIES + 1):
        try:
            return write()
        except OperationalError as exc:
            if (
                attempt == DEADLOCK_RETRIES
                or connections[using].in_atomic_block
                or not _deadlocked(exc)
            ):
                raise
            logger.info("%s lost a deadlock to another write; trying again.", what)
    raise AssertionError("unreachable")


def _held(attempts: Any) -> Q:
    """The row still carries this worker's claim: the claim it won (its generation,
    ``attempts``, the payment's as the claim left it), not released, not taken over.
    """
    return Q(attempts=attempts, claimed_at__isnull=False)


def _guarded(rows: QuerySet[Payment], **guard: Any) -> QuerySet[Payment]:
    """The payment's row (``pk``) while in ``status`` and, given ``attempts``, still
    held by that claim (:func:`_held`).
    """
    rows = rows.filter(pk=guard["pk"], status=guard["status"])
    if "attempts" in guard:
        rows = rows.filter(_held(guard["attempts"]))
    return rows


def _read_later(payment: Payment, *names: str) -> None:
    """Forget fields the database just set from its own clock: read on next access."""
    for name in names:
        payment.__dict__.pop(name, None)


_SIGNALS: dict[str, SignalDelivery.Signal] = {
    Status.VERIFIED: SignalDelivery.Signal.VERIFIED,
    Status.FAILED: SignalDelivery.Signal.FAILED,
    Status.REFUNDED: SignalDelivery.Signal.REFUNDED,
    Status.PARTIALLY_REFUNDED: SignalDelivery.Signal.REFUNDED,
    Status.NEEDS_REVIEW: SignalDelivery.Signal.NEEDS_REVIEW,
}


def _transition(
    payment: Payment,
    to: str,
    *,
    source: str = Status.PENDING,
    notify: bool = True,
    held: bool = False,
    refund_amount: int | None = None,
    **fields: Any,
) -> bool:
    """Move ``payment`` from ``source`` to ``to``; True if this call made the change.

    Every status change goes through here. The ``UPDATE`` is guarded by the
    current status, so of any number of concurrent callers exactly one changes
    the row and, atomically with it, writes the signal to the outbox (unless
    ``notify`` is False), delivered after the commit. The others see the row as
    the winner left it, and a loser that wanted another status logs it at
    WARNING. With ``held``, the row must also still carry this worker's claim.
    ``fields`` are values to write as they are (the database computes only the
    stamps: its clock, the count of status changes).

    On PostgreSQL the change and its outbox row are one statement
    (:func:`_changed_in_one_statement`): one round trip, no transaction to open.
    Elsewhere they are a transaction of their own (:func:`_changed_in_transaction`).
    """
    guard = {"pk": payment.pk, "status": source, **({"attempts": payment.attempts} if held else {})}
    change = _Change(
        using=router.db_for_write(Payment, instance=payment),
        guard=guard,
        payment=payment,
        values={"status": to, "claimed_at": None, **fields},
        stamps=_stamps(to),
        announced=(to, refund_amount) if notify else None,
    )
    # Two settlements of one row at MariaDB's REPEATABLE READ can deadlock; run
    # again, the victim's guarded UPDATE then sees the winner's row.
    changed = _again_after_deadlock(
        partial(_written, change), change.using, f"Payment {payment.pk}'s settlement"
    )
    if not changed:
        _lost(payment, source, to)
    return changed


def _stamps(to: str) -> dict[str, Any]:
    """What the database computes for a change to ``to``: its clock's times and the
    count of status changes (read back).
    """
    return {
        "updated_at": DbNow(),
        "status_changes": F("status_changes") + 1,
        **({"verified_at": DbNow()} if to == Status.VERIFIED else {}),
    }


def _written(change: _Change) -> bool:
    """Write ``change`` once: whether it changed the row. Its signal, if any, is
    delivered after the commit.

    The caller's ``payment`` is changed before the COMMIT (or a savepoint's
    release): if that fails, it is put back as the row still is, for the caller
    and for the snapshot a run again announces.
    """
    payment, using = change.payment, change.using
    connection = connections[using]
    one_statement = connection.vendor == "postgresql"
    touched = (*change.values, *change.stamps)
    before = {name: payment.__dict__[name] for name in touched if name in payment.__dict__}
    try:
        # In a caller's transaction, a savepoint: a unique ``idx`` refused then
        # leaves that transaction usable.
        with (
            transaction.atomic(using=using)
            if connection.in_atomic_block or not one_statement
            else nullcontext()
        ):
            changing = _changed_in_one_statement if one_statement else _changed_in_transaction
            changed, delivery = changing(change)
            if delivery is not None:
                # Its payment's first signal only if this change left pending (see
                # outbox._taken_first): a row of the release before may come first.
                delivery.left_pending = change.guard["status"] == Status.PENDING
                transaction.on_commit(partial(deliver, delivery, first=True), using=using)
    except BaseException:
        for name in touched:
            payment.__dict__.pop(name, None)
        payment.__dict__.update(before)
        raise
    return changed


def _lost(payment: Payment, source: str, to: str) -> None:
    """A change another caller beat this one to: ``payment`` read as the winner left
    it, and logged if it is not what this one wanted.
    """
    payment.refresh_from_db()
    if payment.status != to:
        logger.warning(
            "Payment %s was not moved from %s to %s: it is %s (settled meanwhile).",
            payment.pk,
            source,
            to,
            payment.status,
        )


@dataclass(frozen=True)
class _Change:
    """One status change as :func:`_transition` asks for it."""

    #: The database the payment is written to.
    using: str
    #: Its row, guarded (:func:`_guarded`) by its ``pk``, ``status`` and, if held,
    #: the claim's ``attempts``.
    guard: dict[str, Any]
    #: The caller's object: changed only once everything is written.
    payment: Payment
    #: The fields to write, and those the database computes (its clock, the count
    #: of status changes).
    values: dict[str, Any]
    stamps: dict[str, Any]
    #: What the change announces (the new status and, for a refund, its
    #: amount), or None for no signal.
    announced: tuple[str, int | None] | None


def _changed_in_transaction(change: _Change) -> tuple[bool, SignalDelivery | None]:
    """In the transaction :func:`_transition` opened: the guarded ``UPDATE``, then
    (if it changed the row) the times the database's clock gave it, read back for
    the signal's snapshot, and the signal written to the outbox. ``payment`` is
    changed only once all of it is written.
    """
    payment, values, stamps = change.payment, change.values, change.stamps
    rows = _guarded(Payment.objects.using(change.using), **change.guard)
    if not rows.update(**values, **stamps):
        return False, None
    after = copy.copy(payment)
    for name, value in values.items():
        setattr(after, name, value)
    _read_later(after, *stamps)  # the failed re-check spacing reads updated_at
    delivery = None
    if change.announced is not None:
        after.refresh_from_db(fields=list(stamps))
        delivery = _signal_of(after, *change.announced)
        delivery.snapshot = snapshot_of(after)
        delivery.save(force_insert=True)
        delivery.payment = payment
    for name in values:
        setattr(payment, name, getattr(after, name))
    for name in stamps:  # read back, or to be read on next access
        if name in after.__dict__:
            setattr(payment, name, after.__dict__[name])
        else:
            payment.__dict__.pop(name, None)
    return True, delivery


def _changed_in_one_statement(change: _Change) -> tuple[bool, SignalDelivery | None]:
    """PostgreSQL: the guarded ``UPDATE``, returning the times the database's clock
    gave it, and (a data-modifying ``WITH``) the signal's outbox row, inserted
    only if the update changed the row, its snapshot completed in SQL with those
    times. One statement, so atomic without a transaction: one round trip. Its
    SQL is composed once per shape of change (:func:`_statement_for`), and run
    with this change's values.
    """
    payment, values, stamps = change.payment, change.values, change.stamps
    connection = connections[change.using]
    delivery, snapshot = None, None
    if change.announced is not None:
        after = copy.copy(payment)  # as the statement leaves it, but for the stamps
        for name, value in {**values, **dict.fromkeys(stamps)}.items():
            setattr(after, name, value)
        delivery = _signal_of(after, *change.announced)
        delivery.snapshot = snapshot = snapshot_of(after)
    statement = _statement_for(change, connection.alias)
    run = _Run(change, delivery, connection)
    with connection.cursor() as cursor:
        cursor.execute(statement.sql, [run.bind(param) for param in statement.params])
        row = cursor.fetchone()
    if row is None:
        return False, None
    stamped = dict(zip(stamps, row, strict=True))
    for name, value in {**values, **stamped}.items():
        setattr(payment, name, value)
    if delivery is not None and snapshot is not None:
        delivery.payment = payment
        delivery.sequence = payment.status_changes
        # What snapshot_of(payment) gives now: the stamps, as the database set them.
        delivery.snapshot = {**snapshot, "fields": {**snapshot["fields"], **stamped}}
    return True, delivery


@dataclass(frozen=True)
class _Statement:
    """A change's statement: its SQL, and its parameters (constants, and slots)."""

    sql: str
    params: list[Any]


@dataclass(frozen=True)
class _Run:
    """One run of a composed statement: where each :class:`~.compiled.Slot` takes its value."""

    change: _Change
    delivery: SignalDelivery | None
    connection: Any

    def bind(self, param: Any) -> Any:
        """``param``'s value in this run, in its database form (a constant as it is)."""
        if not isinstance(param, Slot):
            return param
        field = param.output_field
        if param.source == "set":
            return field.get_db_prep_save(self.change.values[param.name], self.connection)
        if param.source == "where":
            return field.get_db_prep_value(self.change.guard[param.name], self.connection)
        if param.source == "delivery":
            delivery = cast(SignalDelivery, self.delivery)
            return field.get_db_prep_save(field.pre_save(delivery, True), self.connection)
        return _retry_wait(1)


#: Each shape of change's composed statement (:func:`_statement_for`).
_STATEMENTS: dict[tuple[Any, ...], _Statement] = {}


def _statement_for(change: _Change, using: str) -> _Statement:
    """The statement for changes of this shape: the same database, fields written
    (those written None are in its SQL), guard and signal or none.
    """
    key = (
        using,
        tuple(change.values),
        frozenset(name for name, value in change.values.items() if value is None),
        tuple(change.stamps),
        tuple(change.guard),
        change.announced is not None,
        settings.USE_TZ,
    )
    statement = _STATEMENTS.get(key)
    if statement is None:
        statement = _STATEMENTS[key] = _composed(change, using)
    return statement


def _composed(change: _Change, using: str) -> _Statement:
    """Compose the statement of :func:`_changed_in_one_statement` by Django's
    compiler, with a :class:`~.compiled.Slot` for every value that changes from run to run.
    """
    connection = connections[using]
    quote = connection.ops.quote_name
    field = Payment._meta.get_field
    guard = {
        name: Slot(name, Payment._meta.pk if name == "pk" else field(name), "where")
        for name in change.guard
    }
    rows = _guarded(Payment.objects.using(using), **guard)
    query = cast(UpdateQuery, rows.query.chain(UpdateQuery))
    written = {
        name: None if value is None else Slot(name, field(name), "set")
        for name, value in change.values.items()
    }
    query.add_update_values({**written, **change.stamps})
    update, params = query.get_compiler(using).as_sql()
    stamped = [quote(name) for name in change.stamps]  # each named as its column
    sql, params = f"WITH changed AS ({update} RETURNING {', '.join(stamped)})", [*params]
    if change.announced is not None:
        announced, announced_params = _announced(change, quote)
        sql, params = sql + announced, params + announced_params
    return _Statement(f"{sql} SELECT {', '.join(stamped)} FROM changed", params)


def _announced(change: _Change, quote: Callable[[str], str]) -> tuple[str, list[Any]]:
    """The ``WITH``'s second part: the outbox row, inserted from what ``changed``
    returned, its snapshot completed in SQL with the times the database stamped.
    """
    # As Django would write them: aware (UTC), or without USE_TZ naive local times.
    cast_to = "" if settings.USE_TZ else "::timestamp"
    snapshot = "%s::jsonb"
    for name in change.stamps:
        is_time = isinstance(Payment._meta.get_field(name), DateTimeField)
        stamp = f"to_jsonb(changed.{quote(name)}{cast_to if is_time else ''})"
        snapshot = f"jsonb_set({snapshot}, '{{fields,{name}}}', {stamp})"
    columns, selected, params = [], [], []
    for field in SignalDelivery._meta.concrete_fields:
        if field.name == "created_at":
            continue  # the database's default
        columns.append(quote(field.column or field.name))
        if field.name == "sequence":
            selected.append(f"changed.{quote('status_changes')}")
            continue
        selected.append(
            snapshot
            if field.name == "snapshot"
            else "STATEMENT_TIMESTAMP() + %s"
            if field.name == "next_attempt_at"
            else "%s"
        )
        params.append(
            Slot(field.name, field, "wait" if field.name == "next_attempt_at" else "delivery")
        )
    return (
        f", announced AS (INSERT INTO {quote(SignalDelivery._meta.db_table)} "
        f"({', '.join(columns)}) SELECT {', '.join(selected)} FROM changed)",
        params,
    )


def _signal_of(payment: Payment, status: str, refund_amount: int | None) -> SignalDelivery:
    """The outbox row announcing ``payment``'s new ``status`` (its snapshot is the
    caller's to take, once the database's clock has stamped the change).

    The first attempt is the status change's own worker, after the commit:
    counted already, so that if the worker dies before it ends, it is delivered
    again after the grace period.
    """
    arguments: dict[str, Any] = {}
    if status in (Status.FAILED, Status.NEEDS_REVIEW):
        arguments["reason"] = payment.failure_reason
    if status in (Status.REFUNDED, Status.PARTIALLY_REFUNDED):
        arguments["amount"] = refund_amount
    return SignalDelivery(
        payment=payment,
        sequence=payment.status_changes,
        signal=_SIGNALS[status],
        arguments=arguments,
        attempts=1,
        next_attempt_at=DbNow() + _retry_wait(1),
    )
