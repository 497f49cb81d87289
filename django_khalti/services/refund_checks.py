"""Asking Khalti, read-only, what became of a refund: one of unknown outcome
(:func:`reconcile_refund`), one recorded failed (:func:`recheck_failed_refund`).

Below the refund use case (:mod:`.refunds`, which asks the same after Khalti
refused a refund), above :mod:`.refund_outcomes`, which records the answer.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.db.models import QuerySet
from django.utils.translation import gettext as _

from ..client import KhaltiClient, KhaltiOutcome
from ..exceptions import KhaltiRejected, KhaltiUnavailable
from ..models import DbNow, LedgerEntry, Payment, Refund
from .refund_outcomes import _refund_history, _settle_refund
from .state import _askable, stale_since, take_turn

logger = logging.getLogger(__name__)


def _refreshed(refund: Refund) -> Refund:
    refund.refresh_from_db()
    refund.payment = Payment.objects.get(pk=refund.payment_id)
    return refund


def refunds_awaiting_outcome() -> QuerySet[Refund]:
    """Refunds of unknown outcome no longer in flight: older than the claim timeout
    (on the database's clock), so whoever asked Khalti for them has given up
    waiting. The ones to ask Khalti about again, or for a person to resolve.
    """
    return Refund.objects.filter(
        status=Refund.Status.PENDING, created_at__lt=stale_since()
    ).select_related("payment")


def reconcile_refund(refund: Refund, *, spacing: timedelta | None = None) -> Refund:
    """Settle a refund whose outcome was unknown, from the payment's state at Khalti.

    A refund still in flight (see :func:`refunds_awaiting_outcome`) is left
    alone, and so is one whose payment Khalti was asked about within
    ``spacing`` (default ``KHALTI["ASK_SPACING"]``: see
    :func:`~.state.take_turn`). Raises :class:`KhaltiUnavailable` when Khalti
    could not be asked.
    """
    if refund.status != Refund.Status.PENDING:
        return refund
    if not refunds_awaiting_outcome().filter(pk=refund.pk).exists():
        return _refreshed(refund)  # still in flight, or settled meanwhile
    if not take_turn(refund.payment_id, spacing):
        return _refreshed(refund)  # Khalti was asked about its payment moments ago
    proof = _refund_proof(KhaltiClient.from_settings(), refund)
    if proof is not None:
        _settle_refund(
            refund,
            succeeded=proof[0],
            raw=proof[1],
            reason="" if proof[0] else _("Khalti shows the payment complete and not refunded."),
        )
    refund.refresh_from_db()
    return refund


def recheck_failed_refund(refund: Refund, *, spacing: timedelta | None = None) -> Refund:
    """Ask Khalti, read-only, whether a refund recorded failed went through after all.

    Khalti may apply a refund after its answer came too late, and after
    ``khalti_reconcile`` (or a person) recorded it failed from what Khalti
    showed then. When Khalti's state now proves this refund went back, it is
    recorded succeeded, logged at WARNING, and the payment moves as the money
    did (``payment_refunded``). Nothing is asked while another refund of the
    payment awaits Khalti, while another worker re-checks this one, or when
    Khalti was asked about the payment within ``spacing`` (default
    ``KHALTI["ASK_SPACING"]``); nothing is recorded when the payment's refunds
    changed while Khalti was asked (its state may be of that change). Returns
    the refund as it stands; raises :class:`KhaltiUnavailable` when Khalti
    could not be asked.
    """
    if refund.status != Refund.Status.FAILED:
        return refund
    seen = _refund_history(Payment.objects.get(pk=refund.payment_id))
    if seen is not None and _recheck_won(refund, spacing):
        proof = _refund_proof(KhaltiClient.from_settings(), refund)
        if proof is not None and proof[0]:
            _settle_refund(refund, succeeded=True, raw=proof[1], seen=seen)
    refund.refresh_from_db()
    return refund


def _recheck_won(refund: Refund, spacing: timedelta | None) -> bool:
    """Whether this worker re-checks ``refund`` now: Khalti was not asked about its
    payment within ``spacing`` (now it is), and no other worker moved the refund's
    ``rechecked_at`` from what this one read.
    """
    asked = Payment.objects.filter(_askable(spacing), pk=refund.payment_id)
    if not asked.update(last_asked_at=DbNow()):
        return False
    return bool(
        Refund.objects.filter(
            pk=refund.pk, status=Refund.Status.FAILED, rechecked_at=refund.rechecked_at
        ).update(rechecked_at=DbNow())
    )


def _refund_proof(
    client: KhaltiClient, refund: Refund, *, partial_proves: bool = True
) -> tuple[bool, Any] | None:
    """What Khalti's state of the payment proves of ``refund``: ``(True, answer)``
    refunded, ``(False, answer)`` not, None when it cannot tell. With
    ``partial_proves`` False, :attr:`KhaltiOutcome.PARTIALLY_REFUNDED` proves nothing;
    else only for a payment's one refund (another one, even recorded failed, may
    be what Khalti applied), and only while no ledger walk since the refund was
    asked for read another refunded total at Khalti (:func:`_ledger_disagrees`).
    Raises :class:`KhaltiUnavailable` when Khalti could not be asked.
    """
    payment = Payment.objects.get(pk=refund.payment_id)
    state, outcome, raw = _khalti_state(client, payment)
    remaining = payment.paid_amount - payment.refunded_amount
    first = payment.refunded_amount == 0
    alone = first and not payment.refunds.exclude(pk=refund.pk).exists()
    # Settle only on an answer that proves what became of *this* refund.
    if (outcome is KhaltiOutcome.REFUNDED and refund.amount == remaining) or (
        partial_proves
        and outcome is KhaltiOutcome.PARTIALLY_REFUNDED
        and alone
        and refund.amount < remaining
        and not _ledger_disagrees(payment, refund)
    ):
        return True, raw
    if outcome is KhaltiOutcome.PAID and first:
        return False, raw
    if refund.status == Refund.Status.PENDING:
        # E.g. PARTIALLY_REFUNDED after an earlier partial refund: Khalti's state
        # cannot tell whether this one went through. A person decides (admin:
        # "Resolve unknown refund"), after a look at Khalti's dashboard.
        logger.warning(
            "Refund %s of payment %s stays pending: Khalti says %r, which does not tell "
            "whether this refund went through.",
            refund.pk,
            payment.pk,
            state,
        )
    return None


def _ledger_disagrees(payment: Payment, refund: Refund) -> bool:
    """Whether Khalti's transaction list, read since ``refund`` was asked for, showed
    another refunded total than this refund would make: then "partially refunded" is
    somebody else's doing (a refund in Khalti's dashboard), not proof of this one.
    """
    read = (
        LedgerEntry.objects.filter(
            payment=payment,
            refunded_amount__isnull=False,
            walk__started_at__gte=refund.created_at,
        )
        .order_by("-id")
        .values_list("refunded_amount", flat=True)
        .first()
    )
    return read is not None and read != payment.refunded_amount + refund.amount


def _khalti_state(client: KhaltiClient, payment: Payment) -> tuple[str, KhaltiOutcome, Any]:
    """Khalti's state of ``payment`` (read-only): its word, our outcome, its answer.
    Raises :class:`KhaltiUnavailable` when Khalti could not be asked.
    """
    try:
        if payment.flow == Payment.Flow.EPAYMENT:
            looked_up = client.lookup(payment.pidx or "")
            return looked_up.status, looked_up.outcome, looked_up.raw
        # Khalti knows a payment by the amount paid (a payment that needs
        # review may have been paid for another amount than the order's).
        status = client.status(payment.token or "", payment.paid_amount)
        return status.state, status.outcome, status.raw
    except KhaltiRejected as exc:
        raise KhaltiUnavailable() from exc
