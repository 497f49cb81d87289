"""Claims and status changes: the only place a payment's status changes.

- A pending payment is held by one worker at a time: :func:`claim` is a guarded
  ``UPDATE ... WHERE claimed_at IS NULL OR claimed_at < stale``, on the
  database's clock (never a host's). No transaction or row lock is held while
  Khalti is called.
- :func:`_transition` is the one choke point: a guarded ``UPDATE ... WHERE
  status = <source>`` (and, for a held payment, ``claimed_at = <ours>``) whose
  winner writes the signal to the outbox atomically with the change (one
  statement on PostgreSQL, a transaction elsewhere) and delivers it after the
  commit (:mod:`.outbox`). A claim is one statement, committed on its own.
- An unknown outcome (timeout, 5xx, garbage, our database failing) leaves the
  payment pending, for a resubmission or reconciliation to settle.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from datetime import timedelta
from functools import partial
from typing import Any, cast

from django.conf import settings
from django.db import (
    DatabaseError,
    IntegrityError,
    OperationalError,
    connections,
    router,
    transaction,
)
from django.db.models import F, Q, QuerySet
from django.db.models.expressions import CombinedExpression
from django.db.models.sql import UpdateQuery
from django.utils.translation import gettext as _

from ..client import KhaltiClient
from ..conf import khalti_settings
from ..exceptions import (
    KhaltiUnavailable,
)
from ..models import DbNow, Payment, SignalDelivery, snapshot_of
from .outbox import _retry_wait, deliver

logger = logging.getLogger(__name__)

Status = Payment.Status


def claim(payment: Payment, status: str = Status.PENDING) -> bool:
    """Take a payment in ``status`` to call Khalti about it; True for the one winner.

    ``payment`` must be as the database has it: a copy older than the last
    claim wins nothing. The claim's time is the database's, so hosts whose
    clocks differ agree on when a claim is stale.
    """
    try:
        with committed_at_once(payment):
            won = (
                Payment.objects.filter(pk=payment.pk, status=status, attempts=payment.attempts)
                .filter(_claimable())
                .update(claimed_at=DbNow(), attempts=F("attempts") + 1, updated_at=DbNow())
            )
    except OperationalError as exc:
        if not _deadlocked(exc):
            raise
        # Claims racing at MariaDB's REPEATABLE READ: the deadlock's victim lost
        # (the other claim goes on), as a guarded UPDATE that matched nothing.
        logger.info("Payment %s: a claim lost a deadlock to another.", payment.pk)
        won = 0
    if won:
        payment.attempts += 1
        _read_later(payment, "claimed_at", "updated_at")
    return bool(won)


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
    for attempt in range(1, DEADLOCK_RETRIES + 1):
        try:
            with committed_at_once():
                return Payment.objects.create(**fields)
        except OperationalError as exc:
            if attempt == DEADLOCK_RETRIES or not _deadlocked(exc):
                raise
            logger.info("A payment's insert lost a deadlock to a racing insert; trying again.")
    raise AssertionError("unreachable")


def stale_since() -> CombinedExpression:
    """On the database's clock, the time before which a claim (or a refund's call)
    can no longer be in flight: ``now - stale_after``.
    """
    return DbNow() - timedelta(seconds=khalti_settings.stale_after)


def _claimable() -> Q:
    """Nobody holds the payment, or its holder's claim is stale (the worker died)."""
    return Q(claimed_at__isnull=True) | Q(claimed_at__lt=stale_since())


def _held(payment: Payment) -> Q:
    """The row still carries this worker's claim: the claim it won (its generation,
    ``attempts``), not released, not taken over.
    """
    return Q(attempts=payment.attempts, claimed_at__isnull=False)


def _read_later(payment: Payment, *names: str) -> None:
    """Forget fields the database just set from its own clock: read on next access."""
    for name in names:
        payment.__dict__.pop(name, None)


def _release(payment: Payment, status: str = Status.PENDING) -> None:
    """Let go of a claim after an unknown outcome, so a retry need not wait."""
    try:
        Payment.objects.filter(_held(payment), pk=payment.pk, status=status).update(
            claimed_at=None, updated_at=DbNow()
        )
    except DatabaseError:
        logger.exception("Could not release the claim on payment %s.", payment.pk)


def _settle(
    client: KhaltiClient, payment: Payment, ask: Callable[[KhaltiClient, Payment], None]
) -> Payment:
    """Call Khalti through ``ask`` while holding the claim, then record its answer."""
    try:
        ask(client, payment)
    except KhaltiUnavailable:
        _release(payment, status=payment.status)
        raise
    except DatabaseError as exc:
        # Khalti answered but we could not record it: the claim goes stale and a
        # resubmission or reconciliation asks Khalti again.
        logger.exception("Could not record Khalti's answer for payment %s.", payment.pk)
        raise KhaltiUnavailable(
            _("The payment could not be recorded yet. It is pending; try again shortly.")
        ) from exc
    return payment


def _refunded_before_verified(payment: Payment, **fields: Any) -> None:
    """A pending payment Khalti reports paid and then all refunded, outside this app.

    The shop never fulfilled the order and no money stayed with it: the order
    is let go (a new payment may pay it) and ``payment_refunded`` tells the shop,
    with ``payment.verified_at`` None.
    """
    changed = _recording_idx_if_free(
        payment,
        Status.REFUNDED,
        held=True,
        refunded_amount=payment.amount,
        refund_amount=payment.amount,
        order_claim=None,
        **fields,
    )
    if changed:
        logger.warning(
            "Khalti reports payment %s refunded before it was verified; the order is free "
            "to be paid again.",
            payment.pk,
        )


def _verified(payment: Payment, received: int, fields: dict[str, Any]) -> None:
    """Verify a pending payment Khalti completed, unless its ``idx`` is another
    payment's (the unique column says so): then it needs review.
    """
    try:
        _transition(payment, Status.VERIFIED, received_amount=received, **fields)
    except IntegrityError:
        _not_this_payments(payment, fields.get("idx"), received, fields)


def _not_this_payments(
    payment: Payment,
    idx: str | None,
    received: int | None,
    fields: dict[str, Any],
    source: str = Status.PENDING,
) -> None:
    """Khalti answered with a transaction that is another payment's (or the token
    itself): the answer is not this payment's, so it needs review.
    """
    _needs_review(
        payment,
        _(
            "Khalti's answer names transaction %(idx)s, which is another payment's (or the "
            "token itself)."
        )
        % {"idx": idx},
        source=source,
        received_amount=received,
        **{name: value for name, value in fields.items() if name != "idx"},
    )


def _fail(
    payment: Payment, reason: str, raw: Any = None, notify: bool = True, **fields: Any
) -> bool:
    """Fail a payment this worker still holds: Khalti proved no money moved.

    A worker whose claim went stale and was taken over must not fail the
    payment: its successor may have seen Khalti complete it. (Verifying needs
    no such guard: Khalti's completed record is proof whoever brings it.) The
    order and the token are let go: a new payment may pay the order, and the
    token may be bound again (Khalti refused it).
    """
    if raw is not None:
        fields.setdefault("khalti_response", raw)
    fields.pop("idx", None)  # no money moved: no transaction of this payment's to hold
    return _transition(
        payment,
        Status.FAILED,
        held=True,
        notify=notify,
        failure_reason=reason,
        order_claim=None,
        token_claim=None,
        **fields,
    )


def _recording_idx_if_free(payment: Payment, to: str, **fields: Any) -> bool:
    """:func:`_transition`, with Khalti's ``idx`` recorded only if it is no other
    payment's (a unique column): a settlement that does not pay the order must not
    fail on an id that is not this payment's to hold.
    """
    try:
        return _transition(payment, to, **fields)
    except IntegrityError:
        if not fields.get("idx"):
            raise
        logger.warning(
            "Khalti named transaction %s, another payment's, for payment %s; not recorded.",
            fields.pop("idx"),
            payment.pk,
        )
        return _transition(payment, to, **fields)


def _needs_review(
    payment: Payment, reason: str, *, source: str = Status.PENDING, **fields: Any
) -> bool:
    """Money moved that the shop must not honour: hold the payment for a person.

    Like failing, only by the worker that holds the claim. The order is let go
    (this payment does not pay it); the token stays bound.
    """
    changed = _recording_idx_if_free(
        payment,
        Status.NEEDS_REVIEW,
        source=source,
        held=True,
        failure_reason=reason,
        order_claim=None,
        **fields,
    )
    if changed:
        logger.error(
            "Khalti payment %s (order %s) needs review: %s",
            payment.pk,
            payment.order_reference,
            reason,
        )
    return changed


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

    On PostgreSQL the change and its outbox row are one statement
    (:func:`_changed_in_one_statement`): one round trip, no transaction to open.
    Elsewhere they are a transaction of their own (:func:`_changed_in_transaction`).
    """
    stamps = {"updated_at": DbNow(), **({"verified_at": DbNow()} if to == Status.VERIFIED else {})}
    values: dict[str, Any] = {"status": to, "claimed_at": None, **fields}
    using = router.db_for_write(Payment, instance=payment)
    rows = Payment.objects.using(using).filter(pk=payment.pk, status=source)
    if held:
        rows = rows.filter(_held(payment))
    connection = connections[using]
    one_statement = connection.vendor == "postgresql"
    change = _changed_in_one_statement if one_statement else _changed_in_transaction
    announced = (to, refund_amount) if notify else None
    for attempt in range(1, DEADLOCK_RETRIES + 1):
        try:
            # In a caller's transaction, a savepoint: a unique ``idx`` refused then
            # leaves that transaction usable.
            with (
                transaction.atomic(using=using)
                if connection.in_atomic_block or not one_statement
                else nullcontext()
            ):
                changed, delivery = change(rows, payment, values, stamps, announced)
                if delivery is not None:
                    transaction.on_commit(partial(deliver, delivery, first=True), using=using)
            break
        except OperationalError as exc:
            # Two settlements of one row at MariaDB's REPEATABLE READ can deadlock;
            # the victim's transaction is gone, so (outside a caller's transaction)
            # it is simply run again: its guarded UPDATE then sees the winner's row.
            if attempt == DEADLOCK_RETRIES or connection.in_atomic_block:
                raise
            if not _deadlocked(exc):
                raise
            logger.info("Payment %s: a deadlock settling it; trying again.", payment.pk)
    if not changed:
        payment.refresh_from_db()
    if not changed and payment.status != to:
        logger.warning(
            "Payment %s was not moved from %s to %s: it is %s (settled meanwhile).",
            payment.pk,
            source,
            to,
            payment.status,
        )
    return changed


#: What a status change announces: the new status and, for a refund, its amount.
_Announced = tuple[str, "int | None"]


def _changed_in_transaction(
    rows: QuerySet[Payment],
    payment: Payment,
    values: dict[str, Any],
    stamps: dict[str, Any],
    announced: _Announced | None,
) -> tuple[bool, SignalDelivery | None]:
    """In the transaction :func:`_transition` opened: the guarded ``UPDATE``, then
    (if it changed the row) the times the database's clock gave it, read back for
    the signal's snapshot, and the signal written to the outbox. ``payment`` is
    changed only once all of it is written.
    """
    if not rows.update(**values, **stamps):
        return False, None
    after = copy.copy(payment)
    for name, value in values.items():
        setattr(after, name, value)
    _read_later(after, *stamps)  # the failed re-check spacing reads updated_at
    delivery = None
    if announced is not None:
        after.refresh_from_db(fields=list(stamps))
        delivery = _signal_of(after, *announced)
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


def _changed_in_one_statement(
    rows: QuerySet[Payment],
    payment: Payment,
    values: dict[str, Any],
    stamps: dict[str, Any],
    announced: _Announced | None,
) -> tuple[bool, SignalDelivery | None]:
    """PostgreSQL: the guarded ``UPDATE``, returning the times the database's clock
    gave it, and (a data-modifying ``WITH``) the signal's outbox row, inserted
    only if the update changed the row, its snapshot completed in SQL with those
    times. One statement, so atomic without a transaction: one round trip.
    """
    connection = connections[rows.db]
    quote = connection.ops.quote_name
    query = cast(UpdateQuery, rows.query.chain(UpdateQuery))
    query.add_update_values({**values, **stamps})
    update, update_params = query.get_compiler(rows.db).as_sql()
    stamped = [quote(name) for name in stamps]  # updated_at, verified_at: named as their columns
    sql, params = f"WITH changed AS ({update} RETURNING {', '.join(stamped)})", [*update_params]
    delivery = None
    if announced is not None:
        after = copy.copy(payment)  # as the statement leaves it, but for the stamps
        for name, value in {**values, **dict.fromkeys(stamps)}.items():
            setattr(after, name, value)
        delivery = _signal_of(after, *announced)
        # As Django would write them: aware (UTC), or without USE_TZ naive local times.
        cast_to = "" if settings.USE_TZ else "::timestamp"
        snapshot = "%s::jsonb"
        for name, column in zip(stamps, stamped, strict=True):
            stamp = f"to_jsonb(changed.{column}{cast_to})"
            snapshot = f"jsonb_set({snapshot}, '{{fields,{name}}}', {stamp})"
        columns, selected = [], []
        for field in SignalDelivery._meta.concrete_fields:
            if field.name == "created_at":
                continue  # the database's default
            columns.append(quote(field.column or field.name))
            if field.name == "snapshot":
                selected.append(snapshot)
                params.append(field.get_db_prep_save(snapshot_of(after), connection))
            elif field.name == "next_attempt_at":
                selected.append("STATEMENT_TIMESTAMP() + %s")
                params.append(_retry_wait(1))
            else:
                selected.append("%s")
                params.append(field.get_db_prep_save(field.pre_save(delivery, True), connection))
        sql += (
            f", announced AS (INSERT INTO {quote(SignalDelivery._meta.db_table)} "
            f"({', '.join(columns)}) SELECT {', '.join(selected)} FROM changed)"
        )
    with connection.cursor() as cursor:
        cursor.execute(f"{sql} SELECT {', '.join(stamped)} FROM changed", params)
        row = cursor.fetchone()
    if row is None:
        return False, None
    for name, value in [*values.items(), *zip(stamps, row, strict=True)]:
        setattr(payment, name, value)
    if delivery is not None:
        delivery.payment = payment
        delivery.snapshot = snapshot_of(payment)
    return True, delivery


#: How many times a status change that lost a deadlock is tried again.
DEADLOCK_RETRIES = 3


def _deadlocked(exc: OperationalError) -> bool:
    """Whether the database chose this transaction as a deadlock's victim (MySQL
    and MariaDB: error 1213; PostgreSQL: SQLSTATE 40P01).
    """
    cause = exc.__cause__
    sqlstate = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
    return sqlstate == "40P01" or (bool(exc.args) and exc.args[0] == 1213)


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
        signal=_SIGNALS[status],
        arguments=arguments,
        attempts=1,
        next_attempt_at=DbNow() + _retry_wait(1),
    )
