"""What became of a refund, recorded: :func:`_settle_refund` and its steps.

Below the refund use cases (:mod:`.refunds`), above :mod:`.writes`: a refund's
outcome is recorded under its payment's row lock, and the payment's status
changes in the same transaction, through :func:`~.writes._transition` (which
writes the signal to the outbox with it).
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import DatabaseError, connections, router, transaction
from django.utils.translation import gettext as _

from ..exceptions import KhaltiRefundConflict
from ..models import DbNow, Payment, Refund, rupees
from .writes import _transition

logger = logging.getLogger(__name__)

Status = Payment.Status

#: A payment's refunds as a re-check read them before asking Khalti: what was
#: refunded, and each refund's id and status (see :func:`_refund_history`).
History = tuple[int, tuple[tuple[Any, str], ...]]


def _refund_history(payment: Payment) -> History | None:
    """What ``payment`` (as read) had refunded, and each of its refunds' status;
    None while one of them awaits Khalti (Khalti's state may then show its doing).
    """
    rows = tuple(
        Refund.objects.filter(payment_id=payment.pk).order_by("pk").values_list("pk", "status")
    )
    if any(status == Refund.Status.PENDING for _pk, status in rows):
        return None
    return payment.refunded_amount, rows


def _settle_refund(
    refund: Refund,
    *,
    succeeded: bool,
    raw: Any,
    reason: str = "",
    by_person: bool = False,
    refusal: bool = False,
    seen: History | None = None,
) -> bool:
    """Record a refund's outcome and, if money went back, the payment's new status.

    Returns whether the refund now stands as this answer says: True when this
    call settled it (or it was settled the same way before). When it was
    settled otherwise meanwhile, Khalti's answer outranks a person's: a person
    (``by_person``) gets :class:`KhaltiRefundConflict`. Khalti's answer that the
    money went back, for a refund recorded failed, is a refund Khalti made late
    (:func:`_refunded_late`). Its answer that nothing went back overturns only a
    person's "refunded" (:func:`_overturned`), never one Khalti's own answer
    proved (an older answer arriving last); a ``refusal`` of one call overturns
    nothing. With ``seen`` (a re-check's :func:`_refund_history`), nothing is
    recorded if the payment's refunds changed meanwhile: Khalti's state may be
    of that change.
    """
    outcome = Refund.Status.SUCCEEDED if succeeded else Refund.Status.FAILED
    with transaction.atomic():
        payment = Payment.objects.select_for_update().get(pk=refund.payment_id)
        if seen is not None and _refund_history(payment) != seen:
            logger.info("Refunds of payment %s changed while Khalti was asked.", payment.pk)
            return False
        if _settled_pending(refund, payment, outcome, raw, reason):
            return True
        recorded = Refund.objects.get(pk=refund.pk)
        if recorded.status == outcome:
            return True
        if by_person:
            raise KhaltiRefundConflict(
                _("This refund was already recorded %(status)s, from Khalti's answer.")
                % {"status": Refund.Status(recorded.status).label}
            )
        if succeeded:
            return _refunded_late(refund, payment, raw, recorded)
        if refusal or not _by_a_person(recorded):
            _not_overturned(recorded, refusal=refusal)
        else:
            _overturned(refund, payment, raw, recorded, succeeded=False)
        return False


def _settled_pending(refund: Refund, payment: Payment, outcome: str, raw: Any, reason: str) -> bool:
    """Settle ``refund`` if it is still pending (and the payment, if money went back)."""
    settled = Refund.objects.filter(pk=refund.pk, status=Refund.Status.PENDING).update(
        status=outcome,
        claim=None,
        settled_at=DbNow(),
        khalti_response=raw,
        failure_reason=reason,
    )
    if settled and outcome == Refund.Status.SUCCEEDED:
        _refunded(payment, refund.amount)
    return bool(settled)


def _refunded(payment: Payment, amount: int) -> None:
    """``amount`` more went back: the payment is refunded, or partially (``payment_refunded``)."""
    total = payment.refunded_amount + amount
    # Never verified (it needed review): none of its money stays, the order goes.
    let_go: dict[str, Any] = {} if payment.verified_at else {"order_claim": None}
    _transition(
        payment,
        Status.REFUNDED if total >= payment.paid_amount else Status.PARTIALLY_REFUNDED,
        source=payment.status,
        refunded_amount=total,
        refund_amount=amount,
        **let_go,
    )


def _refunded_late(refund: Refund, payment: Payment, raw: Any, recorded: Refund) -> bool:
    """Khalti shows the money of a refund recorded failed back with the buyer: it
    applied the refund after its answer came too late, or after it was asked
    about (by ``khalti_reconcile``, or a person in its dashboard).

    The refund is recorded succeeded, logged at WARNING, and the payment moves as
    the money did (``payment_refunded``): True. False when that cannot be what
    happened (more than was paid would have gone back): the payment then needs
    review (:func:`_overturned`).
    """
    if payment.refunded_amount + refund.amount > payment.paid_amount:
        _overturned(refund, payment, raw, recorded, succeeded=True)
        return False
    logger.warning(
        "Khalti refunded Rs %s of payment %s (refund %s) after the refund was recorded "
        "failed: it is recorded succeeded now, and the payment refunded.",
        rupees(refund.amount),
        payment.pk,
        refund.pk,
    )
    why = _("Recorded failed (%(reason)s), then Khalti showed the money back.") % {
        "reason": recorded.failure_reason or Refund.Status.FAILED.label
    }
    Refund.objects.filter(pk=refund.pk, status=Refund.Status.FAILED).update(
        status=Refund.Status.SUCCEEDED, khalti_response=raw, failure_reason=why
    )
    _refunded(payment, refund.amount)
    return True


def _overturned(
    refund: Refund, payment: Payment, raw: Any, recorded: Refund, *, succeeded: bool
) -> None:
    """Khalti's answer on a refund contradicts what was recorded, and no refund
    explains it: logged at WARNING, Khalti's answer stands, the payment's
    refunded total follows it, and the payment needs review.
    """
    outcome = Refund.Status.SUCCEEDED if succeeded else Refund.Status.FAILED
    logger.warning(
        "Khalti's answer on refund %s of payment %s (%s) contradicts what was recorded "
        "(%s): Khalti's stands, and the payment needs review.",
        refund.pk,
        payment.pk,
        outcome,
        recorded.status,
    )
    why = _(
        "Khalti's answer on a refund of Rs %(amount)s (%(khalti)s) contradicts what was "
        "recorded (%(recorded)s)."
    ) % {
        "amount": rupees(refund.amount),
        "khalti": Refund.Status(outcome).label,
        "recorded": Refund.Status(recorded.status).label,
    }
    Refund.objects.filter(pk=refund.pk, status=recorded.status).update(
        status=outcome, khalti_response=raw, failure_reason=why
    )
    change = refund.amount if succeeded else -refund.amount
    _transition(
        payment,
        Status.NEEDS_REVIEW,
        source=payment.status,
        failure_reason=why,
        khalti_response=raw,
        refunded_amount=max(0, payment.refunded_amount + change),
    )


def _not_overturned(recorded: Refund, *, refusal: bool) -> None:
    """Khalti's "not refunded" stands against nothing but a person's "refunded": logged."""
    logger.warning(
        "Khalti's answer on refund %s of payment %s (failed) does not overturn what was "
        "recorded (%s): %s.",
        recorded.pk,
        recorded.payment_id,
        recorded.status,
        "a refusal of one call" if refusal else "Khalti's own proof of the refund",
    )


def _by_a_person(refund: Refund) -> bool:
    """Whether ``refund``'s outcome was recorded by a person ("Resolve unknown refund")."""
    return isinstance(refund.khalti_response, dict) and "resolved_by" in refund.khalti_response


def _drop_lost_connection() -> None:
    """After a database error outside any transaction: close the connection if the
    database lost it (as Django does between requests), so that what comes next
    (the next refund of an admin's selection) opens a new one.
    """
    connection = connections[router.db_for_write(Refund)]
    if connection.in_atomic_block:
        return
    try:
        connection.close_if_unusable_or_obsolete()
    except DatabaseError:
        logger.exception("Could not close the lost database connection.")
