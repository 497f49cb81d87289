"""Signals delivered at least once: the outbox (:class:`~django_khalti.models.SignalDelivery`).

A status change writes its signal here atomically with the change; it is
delivered after the commit, and again (by a resubmission, ``khalti_reconcile``
or the admin) when a receiver raised or a worker died, once the grace period
is over.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.db import DatabaseError
from django.db.models import Exists, F, OuterRef, Q, QuerySet
from django.dispatch import Signal

from ..conf import khalti_settings
from ..models import DbNow, Payment, SignalDelivery
from ..signals import payment_failed, payment_needs_review, payment_refunded, payment_verified

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
    """Send ``delivery``'s signal to the shop's receivers; True when they all ran
    without raising (the delivery is then marked delivered), False when one
    raised, None when this call did not take it.

    Delivery is at least once: each attempt is counted, and the next one
    scheduled (see :func:`_retry_wait`), *before* the receivers run, so a
    worker killed mid-delivery leaves it to be delivered again. ``first`` is
    the status change's own worker, after the commit (its attempt was counted
    with the outbox row); otherwise the delivery runs only when due, or when a
    person asks (``now``: at once, unless an attempt is still running), and of
    concurrent deliverers only one runs it (None for the others). A receiver
    that raises is logged at ERROR with the payment's id; the error is stored
    on the delivery.
    Receivers get :attr:`~django_khalti.models.SignalDelivery.payment_as_it_was`.
    """
    if not first and not _take(delivery, due=not now):
        return None
    payment = delivery.payment_as_it_was
    errors = []
    signal = _RECEIVERS[delivery.signal]
    for receiver, result in signal.send_robust(
        sender=Payment, payment=payment, **delivery.arguments
    ):
        if isinstance(result, Exception):
            name = getattr(receiver, "__qualname__", repr(receiver))
            logger.error(
                "A receiver of %s, %s, raised for payment %s; it is delivered again later.",
                delivery.signal,
                name,
                payment.pk,
                exc_info=result,
            )
            errors.append(f"{name}: {type(result).__name__}: {result}"[:1000])
    outcome: dict[str, Any] = (
        {"last_error": "\n".join(errors)}
        if errors
        else {"delivered_at": DbNow(), "next_attempt_at": None, "last_error": ""}
    )
    outcome["attempts_finished"] = delivery.attempts
    try:
        SignalDelivery.objects.filter(pk=delivery.pk, attempts=delivery.attempts).update(**outcome)
    except DatabaseError:
        # Not marked delivered: it is delivered again, which receivers allow for.
        logger.exception(
            "Could not record the delivery of %s for payment %s.", delivery.signal, payment.pk
        )
    return not errors


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
    """Undelivered signals whose next attempt is due, oldest first (of ``payments``:
    a payment or a queryset of them; None: of every payment).
    """
    rows = SignalDelivery.objects.filter(next_attempt_at__lte=DbNow())
    if isinstance(payments, Payment):
        rows = rows.filter(payment=payments)
    elif payments is not None:
        rows = rows.filter(payment__in=payments)
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
        deliver(delivery)
