"""Signals delivered at least once: the outbox (:class:`~django_khalti.models.SignalDelivery`).

A status change writes its signal here atomically with the change; it is
delivered after the commit, and again (by a resubmission, ``khalti_reconcile``
or the admin) when a receiver raised or a worker died, once the grace period
is over.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

from asgiref.sync import async_to_sync
from django.db import DatabaseError, connections, router
from django.db.models import Exists, F, OuterRef, Q, QuerySet
from django.dispatch import Signal

from ..conf import khalti_settings
from ..models import DbNow, Payment, SignalDelivery
from ..signals import payment_failed, payment_needs_review, payment_refunded, payment_verified
from . import marks
from .marks import FIRST_UNDELIVERED_BUT, IN_ORDER
from .marks import undelivered_but as _undelivered_but
from .marks import unflushed as _unflushed

logger = logging.getLogger(__name__)

Status = Payment.Status


_RECEIVERS: dict[str, Signal] = {
    SignalDelivery.Signal.VERIFIED: payment_verified,
    SignalDelivery.Signal.FAILED: payment_failed,
    SignalDelivery.Signal.REFUNDED: payment_refunded,
    SignalDelivery.Signal.NEEDS_REVIEW: payment_needs_review,
}


#: The longest wait between two deliveries of a signal whose receivers keep raising.
MAX_RETRY_INTERVAL = timedelta(hours=1)


def _retry_wait(attempt: int) -> timedelta:
    """How long after attempt number ``attempt`` begins the next may: the grace
    period, doubled for each attempt after the first, at most
    :data:`MAX_RETRY_INTERVAL` (or the grace period, if longer).
    """
    grace = timedelta(seconds=float(khalti_settings.SIGNAL_GRACE_PERIOD))
    wait: timedelta = grace * 2 ** min(attempt - 1, 20)
    return min(wait, max(grace, MAX_RETRY_INTERVAL))


def deliver(delivery: SignalDelivery, *, first: bool = False, now: bool = False) -> bool | None:
    """Send ``delivery``'s signal to the shop's receivers, then its payment's later
    signals that were waiting for it (:func:`deliver_in_order`); True when
    ``delivery``'s receivers all ran without raising (it is then marked
    delivered), False when one raised, None when this call did not run it:
    another deliverer has it, or an earlier signal of its payment is still
    undelivered (it is sent once that one is).
    """
    run = deliver_in_order(delivery, first=first, now=now)
    return run[0][1] if run else None


def deliver_in_order(
    delivery: SignalDelivery, *, first: bool = False, now: bool = False
) -> list[tuple[SignalDelivery, bool]]:
    """Deliver ``delivery`` and, while they succeed, its payment's later signals:
    each delivery run and whether it was delivered, in order (empty: not run).

    A payment's signals reach the shop in the order its status changed
    (:attr:`~django_khalti.models.SignalDelivery.sequence`): none is run while
    an earlier one of the same payment is undelivered, and once that one is
    delivered its deliverer goes on with the next. Delivery is at least once:
    each attempt is counted, and the next one scheduled (see
    :func:`_retry_wait`), *before* the receivers run, so a worker killed
    mid-delivery leaves it to be delivered again. ``first`` is the status
    change's own worker, after the commit (its attempt was counted with the
    outbox row); otherwise the delivery runs only when due, or when a person
    asks (``now``: at once, unless an attempt is still running), and of
    concurrent deliverers only one runs it. A receiver that raises is logged at
    ERROR with the payment's id; the error is stored on the delivery. Each
    receiver gets its own copy of
    :attr:`~django_khalti.models.SignalDelivery.payment_as_it_was`.
    """
    if not (_taken_first(delivery) if first else _taken(delivery, due=not now)):
        return []
    run: list[tuple[SignalDelivery, bool]] = []
    sending: SignalDelivery | None = delivery
    while sending is not None:
        delivered, following = _send(sending)
        run.append((sending, delivered))
        sending = following if following is not None and _take(following, due=False) else None
    return run


def _next_undelivered(delivery: SignalDelivery) -> SignalDelivery | None:
    """The first undelivered signal of ``delivery``'s payment, now that ``delivery``
    is delivered; None if there is none, or it could not be read (it is then due
    at the next run: the one just delivered stays delivered, and its caller, a
    buyer's request or a run of reconcile, goes on).

    Read where the mark was written (:func:`earlier_undelivered`): a later signal's
    worker that found ``delivery`` undelivered left its signal waiting there a
    moment ago, which a replica may not have replayed yet.
    """
    try:
        return earlier_undelivered(delivery, later=True)
    except DatabaseError:
        logger.exception("Could not read what payment %s is told next.", delivery.payment_id)
        return None


def earlier_undelivered(delivery: SignalDelivery, *, later: bool = False) -> SignalDelivery | None:
    """The first undelivered signal of ``delivery``'s payment that comes before it
    (``later``: the first of all its undelivered ones), or None.

    Read where the outbox is written, never on a replica: a delivered mark it has
    not replayed yet would leave a later signal waiting for a deliverer who is gone.
    """
    using = router.db_for_write(SignalDelivery)
    if later:
        first = FIRST_UNDELIVERED_BUT.rows(using, payment=delivery.payment_id, delivery=delivery.pk)
        return first[0] if first else None
    return (
        _undelivered_but(delivery.payment_id, delivery.pk)
        .using(using)
        .filter(_before(delivery.sequence, delivery.__dict__.get("created_at")))
        .order_by(*IN_ORDER)
        .first()
    )


def _before(sequence: Any, created_at: Any) -> Q:
    """The signals of a payment that come before the one at ``sequence`` (written
    at ``created_at``: signals written before they were numbered are all 0,
    and in the order they were written).
    """
    if sequence == 0 and created_at is not None:
        return Q(sequence=0, created_at__lt=created_at)
    return Q(sequence__lt=sequence)


def _taken(delivery: SignalDelivery, *, due: bool) -> bool:
    """Whether this deliverer runs ``delivery``: none of its payment's earlier
    signals is undelivered, and :func:`_take` counts its attempt.
    """
    try:
        waiting = earlier_undelivered(delivery) is not None
    except DatabaseError:
        logger.exception("Could not read what payment %s was told before.", delivery.payment_id)
        return False
    return not waiting and _take(delivery, due=due)


def _taken_first(delivery: SignalDelivery) -> bool:
    """Whether the status change's own worker runs ``delivery`` (its attempt was
    counted with the row): the payment's first signal always; a later one if
    every earlier one is delivered. Otherwise it waits, due at once, uncounted,
    for the deliverer of the earlier one to go on with it, unless that one was
    delivered meanwhile: then whoever takes it first runs it.

    The first signal is the one of the payment's first change (``sequence`` 1)
    out of pending (``left_pending``, set by :mod:`.writes`). A ``sequence`` 1
    from another status follows changes the count never saw: a worker of the
    release before signals were numbered (a rolling deploy) wrote their signals
    with ``sequence`` 0, which may be undelivered yet.
    """
    if delivery.sequence == 1 and delivery.left_pending:
        return True  # nothing was announced of the payment before
    try:
        if earlier_undelivered(delivery) is None:
            return _earlier_marks_on_disk(delivery)
        uncounted = delivery.attempts - 1
        waits = SignalDelivery.objects.filter(pk=delivery.pk, attempts=delivery.attempts).update(
            attempts=uncounted,
            attempts_finished=uncounted,
            next_attempt_at=DbNow(),
            last_error=_WAITING,
        )
        if not waits:
            return False
        delivery.attempts = delivery.attempts_finished = uncounted
        # The earlier one's deliverer goes on with this one if it sees it waiting:
        # if it was delivered before this row said so, nobody did.
        return earlier_undelivered(delivery) is None and _take(delivery, due=False)
    except DatabaseError:
        logger.exception("Could not order the signals of payment %s.", delivery.payment_id)
        return False


def _earlier_marks_on_disk(delivery: SignalDelivery) -> bool:
    """Whether ``delivery``'s attempt is still this worker's, asked by a write whose
    commit waits for the disk, before its receivers run: on PostgreSQL the delivered
    marks of its payment's earlier signals may not be on disk yet (:func:`_unflushed`),
    and a crash of the database that lost one would have that earlier signal heard
    again after this later one. A commit that waits for the disk writes every commit
    before it. Elsewhere every mark waits, and a taker's :func:`_take` waits too.
    """
    using = router.db_for_write(SignalDelivery)
    if connections[using].vendor != "postgresql":
        return True
    rows = SignalDelivery.objects.using(using).filter(pk=delivery.pk, attempts=delivery.attempts)
    return bool(rows.update(attempts=F("attempts")))


_WAITING = "Waits for an earlier signal of this payment to be delivered first."


def _send(delivery: SignalDelivery) -> tuple[bool, SignalDelivery | None]:
    """Run the receivers of ``delivery``'s signal, each with its own copy of the
    payment as it was; record the attempt's end (:func:`_ended`): whether it is
    marked delivered, and then the payment's next undelivered signal.
    """
    errors = []
    responses = _send_each_a_copy(delivery)
    if responses is None:
        logger.warning(
            "A receiver of %s for payment %s ran longer than the delivery's wait, and "
            "another deliverer took it over: the remaining receivers are left to that one.",
            delivery.signal,
            delivery.payment_id,
        )
        return False, None
    for receiver, result in responses:
        if isinstance(result, Exception):
            name = getattr(receiver, "__qualname__", repr(receiver))
            logger.error(
                "A receiver of %s, %s, raised for payment %s; it is delivered again later.",
                delivery.signal,
                name,
                delivery.payment_id,
                exc_info=result,
            )
            errors.append(f"{name}: {type(result).__name__}: {result}"[:1000])
    return _ended(delivery, errors)


def _ended(delivery: SignalDelivery, errors: list[str]) -> tuple[bool, SignalDelivery | None]:
    """Record how the attempt at ``delivery`` ended (:func:`_record_attempt`): whether
    it is marked delivered; if so, the payment's first undelivered signal, to go
    on with (:func:`_next_undelivered`). On PostgreSQL in autocommit, a delivered
    mark and that read are one statement (:func:`_marked_then_next`).
    """
    using = router.db_for_write(SignalDelivery)
    if not errors and _unflushed(using):
        return _marked_then_next(delivery, using)
    delivered = _record_attempt(delivery, errors) and not errors
    return delivered, (_next_undelivered(delivery) if delivered else None)


def _marked_then_next(delivery: SignalDelivery, using: str) -> tuple[bool, SignalDelivery | None]:
    """:func:`~.marks.marked_then_next`: ``delivery`` marked delivered (False: its
    attempt was taken over), then its payment's next signal, read again on its own
    if a status change of the payment committed meanwhile.

    The mark and the read are one statement: if it fails, the mark was not made
    either. The statement waits for the payment's row, which the mark alone never
    needed: a settlement holding it past the shop's ``lock_timeout`` (or a
    ``statement_timeout``, a deadlock) must not cost a delivery its mark, nor leave
    a later signal that waits for it to the next reconcile. So the mark and the
    read are then made as elsewhere, two statements; if those fail too,
    ``delivery`` is delivered again later, which receivers allow for (at least
    once), and its payment's later signals wait for it. Read where the mark is
    written (the database the router writes to), not a replica.
    """
    try:
        marked, following, read_again = marks.marked_then_next(delivery, using)
    except DatabaseError:
        logger.warning(
            "Could not mark %s of payment %s delivered in one statement: in two.",
            delivery.signal,
            delivery.payment_id,
            exc_info=True,
        )
        marked = _record_attempt(delivery, [])
        return marked, (_next_undelivered(delivery) if marked else None)
    return marked, (_next_undelivered(delivery) if read_again else following)


def _record_attempt(delivery: SignalDelivery, errors: list[str]) -> bool:
    """Record how the attempt at ``delivery`` ended: delivered, or the receivers'
    errors. False if it could not be recorded, or the attempt was no longer
    this one's (another deliverer took it over).

    Not flushed to disk on PostgreSQL (:func:`~.marks.unflushed`): a delivered
    mark lost in a crash of the database only means one more delivery, which
    receivers allow for. Compiled once (:func:`~.marks.mark`).
    """
    try:
        # Where the router writes, as every other write of the outbox: not where the
        # delivery was read (a replica, for a router with no opinion on writes).
        return marks.mark(delivery, errors, router.db_for_write(SignalDelivery))
    except DatabaseError:
        # Not marked delivered: it is delivered again, which receivers allow for.
        logger.exception(
            "Could not record the delivery of %s for payment %s.",
            delivery.signal,
            delivery.payment_id,
        )
        return False


def _send_each_a_copy(delivery: SignalDelivery) -> list[tuple[Any, Any]] | None:
    """Django's ``send_robust``, but each receiver is handed a fresh copy of the
    payment as it was: what one receiver does to its ``payment`` (a refund and
    ``refresh_from_db()``) the next does not see.

    Before each receiver after the first, this attempt is renewed for another
    wait (:class:`_Renewal`): None, and no receiver more, if it was taken over
    meanwhile (a receiver ran longer than the wait, and another deliverer may
    have delivered it and the payment's later signals since).
    """
    signal = _RECEIVERS[delivery.signal]
    if not signal.receivers:
        return []
    # Signal's own list of the live receivers of ``sender`` (sync, async), as send_robust reads it.
    sync_receivers, async_receivers = signal._live_receivers(Payment)
    calls = [(r, r) for r in sync_receivers] + [(r, async_to_sync(r)) for r in async_receivers]
    responses: list[tuple[Any, Any]] = []
    renewal = _Renewal(delivery)
    for receiver, call in calls:
        if responses and not renewal.renewed():
            return None
        try:
            payment = delivery.payment_as_it_was
            result = call(signal=signal, sender=Payment, payment=payment, **delivery.arguments)
        except Exception as exc:
            result = exc
        responses.append((receiver, result))
    return responses


class _Renewal:
    """An attempt at a delivery, kept its own while its receivers run."""

    def __init__(self, delivery: SignalDelivery) -> None:
        self.delivery = delivery
        self.wait = _retry_wait(max(delivery.attempts, 1)).total_seconds()
        self.since = time.monotonic()

    def renewed(self) -> bool:
        """Whether this attempt is still the one running the delivery: then, once
        half its wait is gone, it is given another wait before it is due again.
        Within the first half nobody can have taken it over, so the database is
        not asked (only how much time went by is measured here, never when).
        """
        if time.monotonic() - self.since < self.wait / 2:
            return True
        delivery = self.delivery
        rows = SignalDelivery.objects.filter(
            pk=delivery.pk, attempts=delivery.attempts, delivered_at__isnull=True
        )
        try:
            renewed = rows.update(next_attempt_at=DbNow() + _retry_wait(delivery.attempts))
        except DatabaseError:
            # Counted and due after its wait: delivered again then, which receivers allow for.
            logger.exception(
                "Could not go on delivering %s for payment %s.",
                delivery.signal,
                delivery.payment_id,
            )
            return False
        self.since = time.monotonic()
        return bool(renewed)


def _take(delivery: SignalDelivery, *, due: bool) -> bool:
    """Count an attempt at ``delivery`` and schedule the next; True for the one taker.

    Due, or (``due`` False: a person asking) no attempt running: the last one
    finished. An attempt that never finished (its worker died) is due once its
    wait is over.
    """
    rows = SignalDelivery.objects.filter(
        pk=delivery.pk, attempts=delivery.attempts, next_attempt_at__isnull=False
    )
    ended = Q(next_attempt_at__lte=DbNow())
    rows = rows.filter(ended if due else ended | Q(attempts_finished=F("attempts")))
    attempt = delivery.attempts + 1
    try:
        won = rows.update(attempts=attempt, next_attempt_at=DbNow() + _retry_wait(attempt))
    except DatabaseError:
        logger.exception(
            "Could not take %s of payment %s to deliver.", delivery.signal, delivery.payment_id
        )
        return False
    if won:
        delivery.attempts = attempt
    return bool(won)


def due_deliveries(
    limit: int = 1000, payments: Payment | QuerySet[Payment] | None = None
) -> list[SignalDelivery]:
    """Undelivered signals whose next attempt is due and that no earlier signal of
    their payment waits before, oldest first (of ``payments``: a payment or a
    queryset of them; None: of every payment): where each payment's delivery
    goes on from (:func:`deliver_in_order`).
    """
    rows = SignalDelivery.objects.filter(next_attempt_at__lte=DbNow())
    if isinstance(payments, Payment):
        rows = rows.filter(payment=payments)
    elif payments is not None:
        rows = rows.filter(payment__in=payments)
    earlier = SignalDelivery.objects.filter(
        payment=OuterRef("payment"), delivered_at__isnull=True
    ).filter(
        Q(sequence__lt=OuterRef("sequence")) | Q(sequence=0, created_at__lt=OuterRef("created_at"))
    )
    rows = rows.exclude(Exists(earlier))
    return list(rows.order_by("created_at", "pk")[:limit])


def _due_exists() -> Exists:
    """Annotation ``undelivered``: the payment has a signal due to be delivered again."""
    return Exists(
        SignalDelivery.objects.filter(payment=OuterRef("pk"), next_attempt_at__lte=DbNow())
    )


def deliver_due(payment: Payment) -> None:
    """Deliver again what is due of ``payment``'s signals (a resubmission of it).

    Nothing is read when ``payment`` was read with :func:`_due_exists` as
    ``undelivered`` and has none.
    """
    if getattr(payment, "undelivered", True) is False:
        return
    try:
        due = due_deliveries(payments=payment)
    except DatabaseError:
        logger.exception("Could not read the undelivered signals of payment %s.", payment.pk)
        return
    for delivery in due:
        deliver_in_order(delivery)
