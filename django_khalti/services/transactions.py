"""The Khalti transaction id of money that moved, when it is not known.

A payment can be paid while its ``idx`` is unknown: Khalti's status proved that
the token's money moved for the order's amount, but named no transaction that
Khalti's records tie to it (the verification's own answer, which names it, was
lost); or an ePayment's lookup said ``Completed`` without a ``transaction_id``.
Only a refund needs the id. :func:`_known_idx` looks for it in Khalti's records
first (the widget's status answer, the id the buyer's page reported, each
checked against Khalti's transaction record; the link's lookup), and else takes
the one a person found in Khalti's dashboard, checked the same way.

Khalti's transaction records do not name the token, so a person's id can be
checked only for what the records do say: a transaction of this merchant, paid
for this payment's amount, and no other payment's.
"""

from __future__ import annotations

import logging

from django.db import IntegrityError, transaction
from django.utils.translation import gettext as _

from ..client import KhaltiClient, KhaltiOutcome, KhaltiTransaction
from ..exceptions import KhaltiNotRefundable, KhaltiRejected, KhaltiTransactionUnknown
from ..models import DbNow, Payment
from .answers import _anothers, _record_or_none

logger = logging.getLogger(__name__)

Status = Payment.Status


def _idx_unknown(payment: Payment) -> bool:
    """Whether money moved for ``payment`` and Khalti's transaction id of it is not known:
    it paid its order, or it needs review and keeps its order (its own money moved).
    """
    return (
        payment.idx is None
        and payment.status in Payment.REFUNDABLE_STATUSES
        and (payment.verified_at is not None or payment.order_claim is not None)
    )


def _known_idx(client: KhaltiClient, payment: Payment, given: str | None = None) -> None:
    """Make sure a payment about to be refunded has its Khalti transaction id recorded.

    Nothing to do when it is known (``given``, if any, must be it) or the payment
    is not refundable anyway. Else Khalti's records are asked, or ``given`` (what a
    person found in Khalti's dashboard) is checked against them, and the id
    recorded. Raises :class:`KhaltiTransactionUnknown` when neither names it, and
    :class:`~django_khalti.exceptions.KhaltiUnavailable` when Khalti could not be asked.
    """
    row = Payment.objects.get(pk=payment.pk)
    if given and row.idx and given != row.idx:
        raise KhaltiNotRefundable(
            _("This payment's Khalti transaction id is %(idx)s, not the one given.")
            % {"idx": row.idx}
        )
    if not _idx_unknown(row):
        return
    record = _given(client, row, given) if given else _in_khaltis_records(client, row)
    if record is None:
        raise KhaltiTransactionUnknown()
    _record(row, record, "given by a person" if given else "found in Khalti's records")


def _record(payment: Payment, record: KhaltiTransaction, how: str) -> None:
    """Record ``record``'s id on a payment whose id is unknown; refused when another
    payment holds it, or another id was recorded meanwhile.
    """
    try:
        with transaction.atomic():
            recorded = Payment.objects.filter(pk=payment.pk, idx__isnull=True).update(
                idx=record.idx,
                fee_amount=record.fee_amount,
                mobile=record.mobile,
                updated_at=DbNow(),
            )
    except IntegrityError:  # recorded for another payment meanwhile
        raise KhaltiTransactionUnknown(_problem(payment, record.idx, record)) from None
    if recorded:
        logger.warning("Payment %s: Khalti transaction id %s %s.", payment.pk, record.idx, how)
        return
    now = Payment.objects.values_list("idx", flat=True).get(pk=payment.pk)
    if now != record.idx:
        raise KhaltiNotRefundable(
            _("Khalti transaction id %(idx)s was recorded for this payment meanwhile.")
            % {"idx": now}
        )


def _in_khaltis_records(client: KhaltiClient, payment: Payment) -> KhaltiTransaction | None:
    """The payment's transaction as Khalti's answers name it now, checked; or None."""
    if payment.flow == Payment.Flow.EPAYMENT:
        try:
            idx = client.lookup(payment.pidx or "").transaction_id
        except KhaltiRejected:
            return None
    else:
        try:
            idx = client.status(payment.token or "", payment.paid_amount).idx
        except KhaltiRejected:
            idx = None
    for candidate in dict.fromkeys(i for i in (idx, payment.claimed_idx) if i):
        record = _record_or_none(client, candidate)
        if record is not None and not _problem(payment, candidate, record):
            return record
    return None


def _given(client: KhaltiClient, payment: Payment, idx: str) -> KhaltiTransaction:
    """Khalti's record of the id a person gave, if it can be this payment's; else
    :class:`KhaltiTransactionUnknown` saying why not.
    """
    record = _record_or_none(client, idx)
    problem = _problem(payment, idx, record)
    if problem or record is None:
        raise KhaltiTransactionUnknown(problem)
    return record


def _problem(payment: Payment, idx: str, record: KhaltiTransaction | None) -> str:
    """Why Khalti's record of ``idx`` cannot be this payment's transaction; "" when it can."""
    if record is None or record.idx != idx:
        return _("Khalti has no transaction %(idx)s.") % {"idx": idx}
    if idx in (payment.token, payment.pidx):
        return _("%(idx)s is the payment's token, not its transaction id.") % {"idx": idx}
    paid = (KhaltiOutcome.PAID, KhaltiOutcome.PARTIALLY_REFUNDED)
    if record.outcome not in paid or record.amount != payment.paid_amount:
        return _(
            "Khalti's transaction %(idx)s is %(state)s for %(got)s paisa, not this payment "
            "of %(want)s paisa."
        ) % {"idx": idx, "state": record.state, "got": record.amount, "want": payment.paid_amount}
    if _anothers(payment, idx):
        return _("Khalti's transaction %(idx)s is another payment's.") % {"idx": idx}
    return ""
