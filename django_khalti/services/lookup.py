"""Khalti's answers for ePayment links (lookup), settled on the client's outcomes."""

from __future__ import annotations

import logging
from typing import Any

from django.utils.translation import gettext as _

from ..client import KhaltiClient, KhaltiLookup, KhaltiOutcome
from ..exceptions import (
    KhaltiBadResponse,
    KhaltiRejected,
    KhaltiUnavailable,
)
from ..models import Payment, link_dead
from .state import _fail, _needs_review, _refunded_before_verified, _release, _verified

logger = logging.getLogger(__name__)

Status = Payment.Status


def _link_dead(payment: Payment) -> bool:
    """Whether the payment's link expired (past
    :data:`~django_khalti.models.LINK_EXPIRY_MARGIN`), on the database's clock: a
    Khalti answer of "not found" or OPEN then means the buyer can no longer pay.
    """
    return Payment.objects.filter(link_dead(), pk=payment.pk).exists()


def _looked_up(client: KhaltiClient, payment: Payment) -> KhaltiLookup:
    """Khalti's lookup of the payment's pidx; an answer about another pidx is unknown."""
    answer = client.lookup(payment.pidx or "")
    if answer.pidx != payment.pidx:
        logger.warning("Khalti's lookup for %s answered about another pidx.", payment.pidx)
        raise KhaltiBadResponse()
    return answer


def _lookup_fields(answer: KhaltiLookup) -> dict[str, Any]:
    fields: dict[str, Any] = {"khalti_response": answer.raw}
    if answer.transaction_id:
        fields["idx"] = answer.transaction_id  # what refunds need
    if answer.fee is not None:
        fields["fee_amount"] = answer.fee
    return fields


def _supersede(client: KhaltiClient, payment: Payment) -> None:
    """Settle an ePayment by lookup; a link Khalti says is only started is
    superseded (failed without a signal: the buyer paid nothing on it yet).
    """
    _lookup(client, payment, supersede=True)


def _lookup(client: KhaltiClient, payment: Payment, *, supersede: bool = False) -> None:
    if not payment.pidx:
        # Its initiation never finished: the buyer was never given a payment
        # link, so no money can have moved.
        _fail(payment, _("The payment was never started with Khalti."), notify=False)
        return
    try:
        answer = _looked_up(client, payment)
    except KhaltiRejected as exc:
        if _link_dead(payment):
            _fail(
                payment,
                _("Khalti does not know this payment (%(detail)s) and its link expired.")
                % {"detail": exc.detail},
                exc.body,
            )
            return
        # "Not found" for a live pidx Khalti gave us says nothing sure.
        raise KhaltiUnavailable() from exc
    outcome = answer.outcome
    fields = _lookup_fields(answer)
    if outcome is KhaltiOutcome.PAID and answer.total_amount is None:
        logger.warning("Khalti's lookup for %s is paid without an amount.", payment.pidx)
        raise KhaltiBadResponse()
    if outcome is KhaltiOutcome.PAID and answer.total_amount == payment.amount:
        _verified(payment, answer.total_amount, fields)
    elif outcome is KhaltiOutcome.PAID:
        reason = _("Khalti's payment is for %(got)s paisa, the order is for %(want)s paisa.") % {
            "got": answer.total_amount,
            "want": payment.amount,
        }
        # The link's money moved: it keeps the order until a person refunds it.
        _needs_review(
            payment, reason, keep_order=True, received_amount=answer.total_amount, **fields
        )
    elif outcome is KhaltiOutcome.FAILED or (outcome is KhaltiOutcome.OPEN and _link_dead(payment)):
        _fail(
            payment,
            _("Khalti reports the payment as %(status)s.") % {"status": answer.status},
            **fields,
        )
    elif outcome is KhaltiOutcome.REFUNDED:
        _refunded_before_verified(payment, **fields)
    elif outcome is KhaltiOutcome.PARTIALLY_REFUNDED:
        _needs_review(
            payment,
            _(
                "Khalti reports the payment partially refunded before it was verified: part "
                "of it was paid."
            ),
            keep_order=True,
            **fields,
        )
    elif supersede and outcome is KhaltiOutcome.OPEN and not answer.transaction_id:
        logger.info("ePayment %s was superseded by another payment for its order.", payment.pk)
        _fail(
            payment,
            _(
                "Superseded by another payment for this order before anything was paid on "
                "this link."
            ),
            notify=False,
            **fields,
        )
    else:
        # HELD (do not fulfil, do not fail), OPEN, or UNKNOWN.
        log = logger.warning if outcome is KhaltiOutcome.UNKNOWN else logger.info
        log("Khalti reports ePayment %s as %r; it stays pending.", payment.pk, answer.status)
        _release(payment)
