"""Khalti's answers for widget payments (verify, status, transaction), settled on the client's outcomes.

Each function is called with the payment claimed, asks Khalti, and settles the
payment from the client's :class:`~django_khalti.client.KhaltiOutcome` (never
from Khalti's spelling). An outcome that proves nothing leaves the payment as
it is, its claim released. A refusal is never final by itself: only the status
endpoint's proof that nothing moved fails a payment.
"""

from __future__ import annotations

import logging
from typing import Any

from django.utils.translation import gettext as _

from ..client import KhaltiClient, KhaltiOutcome, KhaltiStatus, KhaltiTransaction
from ..exceptions import (
    KhaltiBadResponse,
    KhaltiRejected,
    KhaltiUnavailable,
)
from ..models import Payment
from .state import (
    _fail,
    _needs_review,
    _not_this_payments,
    _refunded_before_verified,
    _release,
    _verified,
)

logger = logging.getLogger(__name__)

Status = Payment.Status


def _verify(client: KhaltiClient, payment: Payment) -> None:
    """Verify at Khalti (this moves the buyer's money), then settle from the answer.

    A refusal (HTTP 400, or a record that is not completed) is never final by
    itself: it may be Khalti refusing to repeat what an earlier attempt, whose
    answer was lost, did (or one delivery of a request sent twice). The
    read-only status endpoint decides: only its proof that nothing moved fails
    the payment.
    """
    try:
        record = client.verify(payment.token or "", payment.amount)
    except KhaltiRejected as exc:
        logger.info(
            "Khalti refused to verify payment %s (%s); asking its status.", payment.pk, exc.detail
        )
        _ask_status(client, payment, refusal=str(exc.detail))
        return
    if record.outcome is KhaltiOutcome.FAILED:
        logger.info(
            "Khalti's record of payment %s is %r; asking its status.", payment.pk, record.state
        )
        _ask_status(client, payment, refusal=record.state)
        return
    _record_transaction(payment, record)


def _status_of(client: KhaltiClient, payment: Payment) -> KhaltiStatus:
    try:
        return client.status(payment.token or "", payment.amount)
    except KhaltiRejected as exc:
        # A readable refusal from the status endpoint (no state) says nothing
        # sure about the payment: it stays as it is.
        raise KhaltiUnavailable() from exc


def _ask_status(client: KhaltiClient, payment: Payment, *, refusal: str = "") -> None:
    """Settle from Khalti's status answer. After verify's ``refusal``, a payment
    awaiting verification is not verified again (it stays pending), and a failed
    status answer is the proof that fails it.
    """
    answer = _status_of(client, payment)
    outcome = answer.outcome
    if outcome is KhaltiOutcome.AWAITING_VERIFICATION and not refusal:
        # The buyer paid and Khalti waits for us: now verification is due.
        _verify(client, payment)
    elif outcome is KhaltiOutcome.PAID:
        fields = _tied_record(client, payment, answer)
        if fields is not None:
            _verified(payment, payment.amount, fields)
    elif outcome is KhaltiOutcome.FAILED:
        found = {"state": answer.state, "detail": answer.detail, "refusal": refusal}
        if refusal:
            reason = (
                _(
                    "Khalti refused the payment (%(refusal)s) and reports it as %(state)s: "
                    "%(detail)s"
                )
                % found
            )
        else:
            reason = _("Khalti reports the payment as %(state)s: %(detail)s") % found
        _fail(payment, reason, answer.raw)
    elif outcome in (KhaltiOutcome.REFUNDED, KhaltiOutcome.PARTIALLY_REFUNDED) and (
        _token_is_an_idx(client, payment)
    ):
        # The status of a (refunded) transaction, asked by its idx: nothing of this
        # payment's moved.
        _fail(
            payment,
            _("The token given is a Khalti transaction id, not a payment token."),
            answer.raw,
        )
    elif outcome is KhaltiOutcome.REFUNDED:
        _refunded_before_verified(payment, khalti_response=answer.raw)
    elif outcome is KhaltiOutcome.PARTIALLY_REFUNDED:
        _needs_review(
            payment,
            _(
                "Khalti reports the payment partially refunded before it was verified: part "
                "of it was paid."
            ),
            keep_order=True,  # the rest of this token's money is still the merchant's
            khalti_response=answer.raw,
        )
    else:
        # OPEN, awaiting a verification that was just refused, or a state we
        # do not know: not ours to decide yet.
        unusual = outcome in (KhaltiOutcome.UNKNOWN, KhaltiOutcome.AWAITING_VERIFICATION)
        log = logger.warning if unusual else logger.info
        log("Khalti reports payment %s as %r; it stays pending.", payment.pk, answer.state)
        _release(payment)


def _tied_record(
    client: KhaltiClient, payment: Payment, answer: KhaltiStatus
) -> dict[str, Any] | None:
    """What to record of a payment the status endpoint calls paid; None when the
    answer is not this payment's (it then needs review, and lets its order go).

    The status endpoint answers for a token *or an idx*, for one amount. So:

    1. Khalti's record of the token, asked as an idx: found under its own name,
       the "token" is a transaction's id, one payment's id presented as another's
       token, and nothing of this payment's moved. (Found under another name,
       Khalti resolved the token itself: that record must be this payment's.)
    2. Not found: the token is no transaction's idx, so "Complete" for this token
       and this amount proves that this token's money moved for this amount, and
       the token is this payment's alone (``token_claim``). It is paid. Its
       ``idx`` is recorded from Khalti's record of the idx the answer names, or
       else of the one the buyer's page reported (``claimed_idx``), if that
       record matches; otherwise it stays unknown (None), for a refund to find
       (:mod:`.transactions`). Only Khalti's own answer naming another payment's
       transaction makes it not this payment's money.

    Raises :class:`KhaltiUnavailable` when a record could not be fetched.
    """
    token = payment.token or ""
    fields: dict[str, Any] = {"khalti_response": answer.raw}
    as_idx = _record_or_none(client, token)
    if as_idx is not None:
        if as_idx.idx == token:
            problem = _("The token given is a Khalti transaction id, not a payment token.")
        else:
            problem = _record_problem(payment, as_idx.idx, as_idx)
        if problem:
            _needs_review(payment, problem, source=payment.status, **fields)
            return None
        return {**fields, **_record_fields(as_idx)}
    if answer.idx and _anothers(payment, answer.idx):
        _not_this_payments(payment, answer.idx, payment.amount, fields, source=payment.status)
        return None
    record = _named_record(client, payment, answer)
    if record is None:
        logger.warning(
            "Khalti reports payment %s paid for its token and amount; its transaction id "
            "is unknown (a refund will look for it, or ask for it).",
            payment.pk,
        )
        return fields
    return {**fields, **_record_fields(record)}


def _named_record(
    client: KhaltiClient, payment: Payment, answer: KhaltiStatus
) -> KhaltiTransaction | None:
    """Khalti's record of the idx the status answer names, else of the one the buyer's
    page reported, if it is this payment's transaction; None when neither is.
    """
    for idx in dict.fromkeys(i for i in (answer.idx, payment.claimed_idx) if i):
        record = _record_or_none(client, idx)
        problem = _record_problem(payment, idx, record)
        if not problem:
            return record
        logger.warning("Payment %s: transaction %s is not recorded: %s", payment.pk, idx, problem)
    return None


def _anothers(payment: Payment, idx: str) -> bool:
    """Whether ``idx`` is another payment's transaction."""
    return Payment.objects.filter(idx=idx).exclude(pk=payment.pk).exists()


def _record_fields(record: KhaltiTransaction) -> dict[str, Any]:
    """What a payment records of its transaction's record."""
    return {"idx": record.idx, "fee_amount": record.fee_amount, "mobile": record.mobile}


def _token_is_an_idx(client: KhaltiClient, payment: Payment) -> bool:
    """Whether Khalti knows a transaction whose idx is this payment's "token"."""
    record = _record_or_none(client, payment.token or "")
    return record is not None and record.idx == payment.token


def _record_or_none(client: KhaltiClient, idx: str) -> KhaltiTransaction | None:
    """Khalti's transaction record of ``idx``; None when Khalti knows no such transaction."""
    try:
        return client.transaction(idx)
    except KhaltiRejected:
        return None


def _record_problem(payment: Payment, idx: str, record: KhaltiTransaction | None) -> str:
    """Why a transaction record does not prove this payment paid; "" when it does."""
    if record is None or record.idx != idx:
        return _("Khalti has no transaction %(idx)s to tie this payment to.") % {"idx": idx}
    if record.idx == payment.token:
        return _("The token given is a Khalti transaction id, not a payment token.")
    if record.outcome is not KhaltiOutcome.PAID or record.amount != payment.amount:
        return _(
            "Khalti's transaction %(idx)s is %(state)s for %(got)s paisa, not this payment "
            "of %(want)s paisa."
        ) % {"idx": idx, "state": record.state, "got": record.amount, "want": payment.amount}
    if _anothers(payment, idx):
        return _("Khalti's transaction %(idx)s is another payment's.") % {"idx": idx}
    return ""


def _record_transaction(payment: Payment, record: KhaltiTransaction) -> None:
    """Settle a payment from the transaction record our own verify call returned."""
    fields: dict[str, Any] = {
        "idx": record.idx,
        "fee_amount": record.fee_amount,
        "mobile": record.mobile,
        "khalti_response": record.raw,
    }
    outcome = record.outcome
    if outcome in (KhaltiOutcome.PAID, KhaltiOutcome.REFUNDED) and record.idx == payment.token:
        _not_this_payments(payment, record.idx, record.amount, fields)
    elif outcome is KhaltiOutcome.REFUNDED:
        # Paid, then refunded before we verified it: not paid for the shop.
        _refunded_before_verified(payment, **fields)
    elif outcome is KhaltiOutcome.PAID and record.amount == payment.amount:
        _verified(payment, record.amount, fields)  # (needs review if the idx is another's)
    elif outcome is KhaltiOutcome.PAID and _anothers(payment, record.idx):
        _not_this_payments(payment, record.idx, record.amount, fields)
    elif outcome is KhaltiOutcome.PAID:
        _needs_review(
            payment,
            _("Khalti's record is for %(got)s paisa, the order is for %(want)s paisa.")
            % {"got": record.amount, "want": payment.amount},
            keep_order=True,  # this token's money moved: not charged again meanwhile
            received_amount=record.amount,
            **fields,
        )
    else:
        # A record not (yet) completed, or in a state we do not know: whether the
        # money moved is not known. Pending; a retry or reconcile asks status. (A
        # failed record never comes here: _verify asks status about it.)
        logger.warning(
            "Khalti answered the verification of payment %s with a record in state %r; "
            "it stays pending.",
            payment.pk,
            record.state,
        )
        raise KhaltiBadResponse()
