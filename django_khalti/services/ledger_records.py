"""One record of Khalti's ledger set beside its payment: what it says, and the change it makes.

Below the walk (:mod:`.ledger`), above :mod:`.refund_outcomes` and :mod:`.writes`.
:func:`judge` decides from the record and the payment as read; a record that
changes its payment (:func:`record_with_change`) is judged again under the
payment's row lock, so that of two walks reading one record at once, one
changes the payment and the other finds it matching.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from django.db import router, transaction
from django.utils.translation import gettext as _

from ..client import (
    KhaltiLedgerRecord,
    KhaltiOutcome,
    KhaltiTransaction,
    KhaltiUnreadableRecord,
    outcome_of,
)
from ..models import DbNow, LedgerEntry, LedgerWalk, Payment, Refund, rupees
from .refund_outcomes import _refunded, _settle_refund
from .writes import _transition

logger = logging.getLogger(__name__)

Kind = LedgerEntry.Kind
Status = Payment.Status

#: What Khalti's list holds: money that reached the merchant (and some went back).
MONEY_IN = (KhaltiOutcome.PAID, KhaltiOutcome.REFUNDED, KhaltiOutcome.PARTIALLY_REFUNDED)
#: A payment here whose money is with the shop: a record that contradicts it sends it to review.
HELD_BY_SHOP = (Status.VERIFIED, Status.PARTIALLY_REFUNDED)


@dataclass(frozen=True)
class Verdict:
    """What a record says beside its payment: the entry's kind, why, and the change
    to make (``"refund"`` of :attr:`refund` paisa made outside the app, ``"settle"``
    the refund awaiting Khalti's answer as succeeded, ``"review"``, or none).
    """

    kind: str
    detail: str = ""
    change: str = ""
    refund: int = 0


def judge(record: KhaltiLedgerRecord, payment: Payment | None, in_flight: int | None) -> Verdict:
    """What ``record`` says of ``payment`` (as read); ``in_flight`` is the amount of
    its refund that awaits Khalti's answer, if one does.
    """
    if payment is None:
        return Verdict(Kind.FOREIGN, _("No payment here has this transaction id."))
    if record.outcome not in MONEY_IN:
        return _another_state(payment, _("Khalti's record is %(state)s.") % _words(record))
    if payment.status in (Status.PENDING, Status.FAILED):
        return Verdict(
            Kind.NOT_SETTLED_HERE,
            _("Paid at Khalti, %(status)s here: khalti_reconcile re-checks it.")
            % {"status": payment.get_status_display()},
        )
    if record.amount != payment.paid_amount:
        why = _("Khalti's record is for Rs %(khalti)s; Rs %(here)s was paid here.") % {
            "khalti": rupees(record.amount),
            "here": rupees(payment.paid_amount),
        }
        return _differs(payment, Kind.AMOUNT_DIFFERS, why)
    return _refunds(record, payment, in_flight)


def _refunds(record: KhaltiLedgerRecord, payment: Payment, in_flight: int | None) -> Verdict:
    """What the record says went back, beside what was refunded here."""
    khalti, here = record.refunded_amount, payment.refunded_amount
    if in_flight is not None and khalti != here:
        if khalti is not None and khalti == here + in_flight:
            # Khalti's total is this refund's: it went through (proof by the amount).
            why = _("The refund of Rs %(amount)s that awaited Khalti's answer went through.")
            return Verdict(Kind.MATCHED, why % {"amount": rupees(in_flight)}, "settle")
        return Verdict(Kind.REFUND_IN_FLIGHT, _("A refund awaits Khalti's answer: next walk."))
    if khalti is None:
        if here:
            # Nothing to compare: reported, never taken for a match (nor a change).
            why = _(
                "Khalti shows it partly refunded without saying how much; Rs %(here)s is "
                "recorded refunded here."
            ) % {"here": rupees(here)}
            return Verdict(Kind.STATE_DIFFERS, why)
        why = _("Khalti shows it partly refunded without saying how much; nothing was here.")
        return _another_state(payment, why)
    if khalti > here:
        if payment.status not in Payment.REFUNDABLE_STATUSES:
            return _another_state(payment, _refund_words(khalti, here))
        if payment.status == Status.NEEDS_REVIEW and khalti < payment.paid_amount:
            # Part of a payment in review went back: a person's review decides what
            # stays; it is not cleared, nor the payment counted paid again, by a walk.
            why = _("Rs %(amount)s refunded at Khalti while the payment awaits review.") % {
                "amount": rupees(khalti - here)
            }
            return Verdict(Kind.STATE_DIFFERS, why)
        detail = _("Rs %(amount)s refunded at Khalti, outside the app.") % {
            "amount": rupees(khalti - here)
        }
        return Verdict(Kind.REFUNDED_AT_KHALTI, detail, "refund", khalti - here)
    if khalti < here:
        return _another_state(payment, _refund_words(khalti, here))
    return Verdict(Kind.MATCHED)


def _words(record: KhaltiLedgerRecord) -> dict[str, str]:
    return {"state": record.state}


def _refund_words(khalti: int, here: int) -> str:
    return _("Khalti shows Rs %(khalti)s refunded; Rs %(here)s is recorded refunded here.") % {
        "khalti": rupees(khalti),
        "here": rupees(here),
    }


def _another_state(payment: Payment, why: str) -> Verdict:
    return _differs(payment, Kind.STATE_DIFFERS, why)


def _differs(payment: Payment, kind: str, why: str) -> Verdict:
    """A contradiction: a payment whose money the shop holds goes to review."""
    return Verdict(kind, why, "review" if payment.status in HELD_BY_SHOP else "")


def as_listed(found: KhaltiTransaction) -> KhaltiLedgerRecord:
    """Khalti's record of one transaction (its transaction endpoint's), as a record of
    its list. What went back is all of it when its state says refunded, none when it
    says completed and not refunded; else unknown (the record says no amount).
    """
    outcome = outcome_of(found.state)
    refunded: int | None = None
    if outcome is KhaltiOutcome.REFUNDED:
        refunded = found.amount
    elif outcome is KhaltiOutcome.PAID and not found.refunded:
        refunded = 0
    return KhaltiLedgerRecord(
        idx=found.idx,
        state=found.state,
        type="",
        amount=found.amount,
        fee_amount=found.fee_amount,
        refunded_amount=refunded,
        created_on=None,
        raw=found.raw,
    )


def missing(payment: Payment) -> Verdict:
    """A payment verified here that Khalti's list and its record of the transaction lack."""
    why = _("Khalti's list has no record of transaction %(idx)s, nor does Khalti know it.") % {
        "idx": payment.idx
    }
    return _differs(payment, Kind.MISSING, why)


def misnamed(walk: LedgerWalk, payment: Payment, answer: Any) -> Verdict:
    """Khalti, asked for ``payment``'s transaction, answered with another's record: an
    answer that cannot be read as this payment's; entered, and nothing changed.
    """
    verdict = Verdict(Kind.UNREADABLE, _("Khalti answered with another transaction's record."))
    LedgerEntry.objects.create(
        walk=walk,
        idx=payment.idx,
        payment=payment,
        kind=verdict.kind,
        record=answer,
        detail=verdict.detail,
    )
    return verdict


def entry(
    walk: LedgerWalk,
    record: KhaltiLedgerRecord,
    payment: Payment | None,
    verdict: Verdict,
    page: int | None,
) -> LedgerEntry:
    """The entry of ``record`` as ``walk`` read it (unsaved)."""
    return LedgerEntry(
        walk=walk,
        idx=record.idx,
        payment=payment,
        kind=verdict.kind,
        page=page,
        state=record.state,
        type=record.type,
        amount=record.amount,
        fee_amount=record.fee_amount,
        refunded_amount=record.refunded_amount,
        created_on=record.created_on,
        record=record.raw,
        detail=verdict.detail,
    )


def unreadable(walk: LedgerWalk, record: KhaltiUnreadableRecord, page: int) -> LedgerEntry:
    """The entry of a record that could not be read (unsaved)."""
    raw = record.raw if isinstance(record.raw, (dict, list, str, int, float)) else None
    return LedgerEntry(
        walk=walk,
        idx=record.idx,
        kind=Kind.UNREADABLE,
        page=page,
        record=raw,
        detail=_("Not read: %(why)s.") % {"why": record.why},
    )


def refunds_in_flight(payments: Iterable[Payment]) -> dict[Any, int]:
    """The amount of the refund that awaits Khalti's answer, by payment pk, of
    ``payments`` (a payment has at most one such refund).
    """
    return dict(
        Refund.objects.filter(
            payment__in=[p.pk for p in payments], status=Refund.Status.PENDING
        ).values_list("payment_id", "amount")
    )


@contextmanager
def _locked(payment: Payment) -> Iterator[Payment]:
    """``payment`` read again under its row lock, in a transaction of its own."""
    using = router.db_for_write(Payment, instance=payment)
    with transaction.atomic(using=using):
        yield Payment.objects.using(using).select_for_update().get(pk=payment.pk)


def record_with_change(
    walk: LedgerWalk, record: KhaltiLedgerRecord, payment: Payment, page: int | None
) -> Verdict:
    """Judge ``record`` again under its payment's row lock, make the change it calls
    for, and write its entry, all in one transaction. Returns the verdict made.
    """
    with _locked(payment) as locked:
        verdict = judge(record, locked, refunds_in_flight([locked]).get(locked.pk))
        change(locked, verdict, record.raw)
        entry(walk, record, locked, verdict, page).save()
    return verdict


def missing_with_change(walk: LedgerWalk, payment: Payment, answer: Any) -> Verdict:
    """Record that Khalti lacks ``payment`` (``answer``: what its transaction endpoint
    said), and send the payment to review if its money is still with the shop.
    """
    with _locked(payment) as locked:
        verdict = missing(locked)
        change(locked, verdict, answer)
        LedgerEntry.objects.create(
            walk=walk,
            idx=locked.idx,
            payment=locked,
            kind=verdict.kind,
            amount=locked.paid_amount,
            record=answer,
            detail=verdict.detail,
        )
    return verdict


def change(payment: Payment, verdict: Verdict, raw: Any) -> None:
    """Make the change ``verdict`` calls for, on ``payment`` (locked by the caller)."""
    if verdict.change == "refund":
        _refunded_at_khalti(payment, verdict.refund, raw)
    elif verdict.change == "settle":
        pending = payment.refunds.get(status=Refund.Status.PENDING)
        _settle_refund(pending, succeeded=True, raw=raw)
    elif verdict.change == "review":
        _to_review(payment, verdict.detail, raw)


def _refunded_at_khalti(payment: Payment, amount: int, raw: Any) -> None:
    """``amount`` went back at Khalti that no refund here records: a refund of this
    app's recorded failed for just that amount went through late; otherwise somebody
    refunded it outside the app (Khalti's dashboard). Either way ``payment_refunded``.
    """
    failed = list(
        payment.refunds.filter(status=Refund.Status.FAILED, amount=amount).order_by("created_at")
    )
    if len(failed) == 1:
        _settle_refund(failed[0], succeeded=True, raw=raw)
        return
    Refund.objects.create(
        payment=payment,
        amount=amount,
        status=Refund.Status.SUCCEEDED,
        origin=Refund.Origin.KHALTI,
        khalti_response=raw,
        settled_at=DbNow(),
    )
    logger.warning(
        "Khalti shows Rs %s of payment %s refunded outside the app: recorded, and the "
        "payment refunded.",
        rupees(amount),
        payment.pk,
    )
    _refunded(payment, amount)


def _to_review(payment: Payment, why: str, raw: Any) -> None:
    """Khalti's books contradict the payment: held for a person, with Khalti's record.
    The payment keeps its order: its money moved, the buyer must not pay again.
    """
    if _transition(
        payment, Status.NEEDS_REVIEW, source=payment.status, failure_reason=why, khalti_response=raw
    ):
        logger.error(
            "Khalti payment %s (order %s) needs review: %s",
            payment.pk,
            payment.order_reference,
            why,
        )
