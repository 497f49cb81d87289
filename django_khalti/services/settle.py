"""Settle a claimed payment by asking Khalti in its flow, and keep one live payment an order.

:func:`_ask_khalti` asks read-only (status for a widget payment, lookup for an
ePayment link); :func:`_recheck` asks the same of a failed payment. An order is
held by one live payment (``order_claim``); another payment for it first asks
Khalti about the holder (:func:`_free_order`), and takes the order once the
holder lets go (:func:`_take_when_free`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from functools import partial
from typing import Any, NoReturn, TypeVar

from django.db import IntegrityError, transaction
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from ..client import KhaltiClient, KhaltiOutcome
from ..exceptions import (
    KhaltiAlreadyPaid,
    KhaltiBadResponse,
    KhaltiInProgress,
    KhaltiRejected,
    KhaltiUnavailable,
)
from ..models import DbNow, Payment, order_key
from ..orders import KhaltiOrder
from .answers import _ask_status, _status_of, _tied_record
from .lookup import _looked_up, _lookup, _lookup_fields, _supersede
from .state import (
    _fail,
    _needs_review,
    _not_this_payments,
    _release,
    _settle,
    claim,
    contender_spacing,
)
from .writes import _held, _read_later, _transition, insert_claiming

logger = logging.getLogger(__name__)

Status = Payment.Status
T = TypeVar("T")


def _claim_order(
    client: KhaltiClient,
    product_identity: str,
    order: KhaltiOrder,
    *,
    reuse: Callable[[Payment], bool] | None = None,
    **fields: Any,
) -> tuple[Payment, bool]:
    """Insert (and so claim) a new payment for the order; or the row that beat us to it.

    The insert claims the order (``order_claim``, on the order's canonical
    reference) and, for the widget, the token (``token_claim``). When the order
    is taken by a pending payment, that payment is settled with Khalti first (if
    no one else is at it), and an ePayment link the buyer has not paid is
    superseded: only once the holder let go does the new one go on. ``reuse``
    may accept the holder as the answer (the same buyer's link, still good). A
    widget payment that must wait is stored waiting for the order (its token is
    never dropped) and :class:`KhaltiInProgress` raised. Returns the payment and
    whether it was created.
    """
    token = fields.get("token_claim")
    insert = partial(_inserted, product_identity, order, fields)
    when_held = partial(_raced_or_reused, token, reuse)
    try:
        return _take_when_free(
            client, order.reference, insert, attempts=3, settle_widget=True, when_held=when_held
        )
    except _OrderHeld:
        pass
    if token:
        _wait_for_order(product_identity, order, **fields)
    raise KhaltiInProgress(
        _("Another payment for this order is being confirmed. Try again shortly.")
    )


def _inserted(
    product_identity: str, order: KhaltiOrder, fields: dict[str, Any]
) -> tuple[Payment, bool]:
    """A new payment for ``order``, inserted claimed (by this worker, and the order);
    :class:`IntegrityError` if the order or the token is taken.
    """
    payment = insert_claiming(
        product_identity=product_identity,
        order_reference=order.reference,
        amount=order.amount,
        order_claim=order_key(order.reference),
        claimed_at=DbNow(),
        attempts=1,
        **fields,
    )
    _read_later(payment, "claimed_at")
    return payment, True


def _raced_or_reused(
    token: str | None, reuse: Callable[[Payment], bool] | None, holder: Payment | None
) -> tuple[Payment, bool] | None:
    """The answer of an insert that found the order (or the token) taken: the row the
    same token was inserted as concurrently, or the holder if ``reuse`` accepts it;
    None to go on (the holder is asked about).
    """
    raced = Payment.objects.filter(token_claim=token).first() if token else None
    if raced is not None:
        return raced, False
    if holder is not None and reuse is not None and reuse(holder):
        return holder, False
    return None


class _OrderHeld(Exception):
    """The payment holding an order holds on to it: it cannot be settled yet."""


def _take_when_free(
    client: KhaltiClient,
    reference: str,
    take: Callable[[], T],
    *,
    attempts: int,
    settle_widget: bool = False,
    when_held: Callable[[Payment | None], T | None] = lambda holder: None,
) -> T:
    """``take()`` (a write that claims the order ``reference``, and raises
    :class:`IntegrityError` while another payment holds it), once the order is free.

    Each time the write finds the order held, ``when_held(holder)`` may give the
    answer instead; otherwise the holder is asked about (:func:`_free_order`)
    and the write tried again, at most ``attempts`` times. Raises
    :class:`_OrderHeld` when the holder holds on, and :class:`KhaltiAlreadyPaid`
    when it paid the order.
    """
    key = order_key(reference)
    for _attempt in range(attempts):
        try:
            return take()
        except IntegrityError:
            pass  # another payment holds the order (or the token) now
        holder = Payment.objects.filter(order_claim=key).first()
        answer = when_held(holder)
        if answer is not None:
            return answer
        if holder is not None and not _free_order(client, holder, settle_widget=settle_widget):
            break
        # (no holder: it let go of the order in between)
    raise _OrderHeld()


def _free_order(client: KhaltiClient, holder: Payment, *, settle_widget: bool) -> bool:
    """Whether ``holder`` let go of its order, once asked about.

    A pending holder nobody else is at is settled with Khalti (a widget one
    only with ``settle_widget``); an ePayment link that Khalti says is only
    started (nobody is paying it) is superseded: failed without a signal (should
    Khalti complete it after all, the failed re-check verifies it if the order
    is still unpaid, else makes it ``needs_review``). Raises :class:`KhaltiAlreadyPaid` when the holder paid the
    order (and holds it still: one refunded before it was verified let it go;
    one that paid it and then needed review, over a refund, holds it).
    """
    epayment = holder.flow == Payment.Flow.EPAYMENT
    asking = holder.status == Status.PENDING and (epayment or settle_widget)
    if asking and claim(holder, spacing=contender_spacing()):
        with contextlib.suppress(KhaltiUnavailable):
            _settle(client, holder, _supersede if epayment else _ask_khalti)
    else:
        holder.refresh_from_db()
    if holder.order_claim is not None and (
        holder.status in Payment.PAID_STATUSES or holder.verified_at is not None
    ):
        raise KhaltiAlreadyPaid()  # (verified_at: it paid the order, then needed review)
    return holder.order_claim is None


def _wait_for_order(product_identity: str, order: KhaltiOrder, **fields: Any) -> NoReturn:
    """Store a widget payment whose order another payment holds, and raise
    :class:`KhaltiInProgress`: the buyer's token is kept, and the payment takes
    the order (:func:`_take_order`) once that payment lets go of it.
    """
    with contextlib.suppress(IntegrityError):
        # order_claim NULL: pending, waiting for its order. (A concurrent insert
        # of the same token already stored it.)
        insert_claiming(
            product_identity=product_identity,
            order_reference=order.reference,
            amount=order.amount,
            **fields,
        )
    raise KhaltiInProgress(_WAITING)


#: What a buyer whose widget payment waits for its order is told.
_WAITING = gettext_lazy(
    "Your payment was received and waits while another payment for this order is "
    "confirmed. Try again in a moment."
)


def _take_order(client: KhaltiClient, payment: Payment) -> bool:
    """A claimed widget payment stored waiting for its order takes the order's
    claim, before Khalti may be asked to verify it; True when it holds it.

    The payment holding the order is asked about first (an unpaid ePayment link
    is superseded; a widget payment is left to its own settling, so this claim
    makes at most one call more). While it holds on, this payment's claim is
    released and it waits on. When it paid the order, this one fails without a
    signal: it was never verified, so Khalti moved none of its money.
    """
    key = order_key(payment.order_reference)

    def take() -> bool:
        with transaction.atomic():
            took = (
                Payment.objects.filter(
                    _held(payment.attempts), pk=payment.pk, status=Status.PENDING
                )
                .filter(order_claim__isnull=True)
                .update(order_claim=key, updated_at=DbNow())
            )
        if took:
            payment.order_claim = key
        return bool(took)  # else: no longer ours (taken over after going stale)

    try:
        return _take_when_free(client, payment.order_reference, take, attempts=2)
    except _OrderHeld:
        _release(payment)
    except KhaltiAlreadyPaid:
        _fail(
            payment,
            _(
                "Another payment paid this order first. This one was never verified, "
                "so Khalti moved none of its money."
            ),
            notify=False,
        )
    return False


def _ask_khalti(client: KhaltiClient, payment: Payment) -> None:
    """Settle a claimed pending payment from Khalti's read-only answer for its flow
    (a widget payment waiting for its order takes the order first).
    """
    if payment.order_claim is None and not _take_order(client, payment):
        return
    if payment.flow == Payment.Flow.EPAYMENT:
        _lookup(client, payment)
    else:
        _ask_status(client, payment)


def _recheck(client: KhaltiClient, payment: Payment) -> None:
    """Read-only: whether Khalti completed a payment we recorded failed."""
    if payment.flow == Payment.Flow.EPAYMENT:
        try:
            answer = _looked_up(client, payment)
        except KhaltiRejected:
            return  # Khalti no longer knows it: nothing completed, it stays failed
        outcome, fields = answer.outcome, _lookup_fields(answer)
        received = answer.total_amount
    else:
        status = _status_of(client, payment)
        outcome, fields, received = status.outcome, {"khalti_response": status.raw}, None
        if outcome is KhaltiOutcome.PAID:
            tied = _tied_record(client, payment, status)
            if tied is None:
                return
            fields, received = tied, payment.amount
    if outcome is KhaltiOutcome.PARTIALLY_REFUNDED:
        _review_late(
            client,
            payment,
            _(
                "Khalti reports a payment recorded failed as partially refunded: part of it "
                "was paid."
            ),
            fields,
        )
    elif outcome is not KhaltiOutcome.PAID:
        if outcome is KhaltiOutcome.AWAITING_VERIFICATION:
            logger.warning(
                "Khalti holds the buyer's confirmation of payment %s, recorded failed; "
                "it is not verified again. Check it in Khalti's dashboard.",
                payment.pk,
            )
        return
    elif received is None:
        logger.warning("Khalti's lookup for %s is paid without an amount.", payment.pidx)
        raise KhaltiBadResponse()
    else:
        _completed_late(client, payment, received, fields)


def _completed_late(
    client: KhaltiClient, payment: Payment, received: int, fields: dict[str, Any]
) -> None:
    """Khalti completed a payment we recorded failed: verified if the order is still
    free (an ePayment link holding it that nobody paid is superseded: money that
    moved wins over a link) and the amount is the order's, else needs review.
    """
    idx = fields.get("idx")
    if idx and Payment.objects.filter(idx=idx).exclude(pk=payment.pk).exists():
        _not_this_payments(payment, idx, received, fields, source=Status.FAILED)
        return
    if received != payment.amount:
        reason = _(
            "Khalti completed this payment after it was recorded failed, for %(got)s paisa; "
            "the order is for %(want)s paisa."
        ) % {"got": received, "want": payment.amount}
        _review_late(client, payment, reason, {**fields, "received_amount": received})
        return
    else:
        try:
            changed = _verify_late(client, payment, received, fields)
        except KhaltiAlreadyPaid:
            changed = False
        if changed:
            logger.warning(
                "Khalti completed payment %s after it was recorded failed; it is verified "
                "now (the order was still unpaid).",
                payment.pk,
            )
            return
        if payment.status != Status.FAILED:
            return  # another worker settled it meanwhile
        reason = _(
            "Khalti completed this payment after it was recorded failed, and another "
            "payment paid the order meanwhile."
        )
    _needs_review(payment, reason, source=Status.FAILED, received_amount=received, **fields)


def _review_late(
    client: KhaltiClient, payment: Payment, reason: str, fields: dict[str, Any]
) -> None:
    """A payment recorded failed whose own money Khalti shows moved after all (for
    another amount, or partly refunded): it needs review, and takes its order back
    while no other payment holds it (an unpaid link holding it is superseded), so
    that the buyer is not charged for the order again until a person refunds it.
    """
    key = order_key(payment.order_reference)

    def take() -> bool:
        return _needs_review(
            payment, reason, source=Status.FAILED, keep_order=True, order_claim=key, **fields
        )

    with contextlib.suppress(_OrderHeld, KhaltiAlreadyPaid):
        _take_when_free(client, payment.order_reference, take, attempts=3)
        return
    if payment.status == Status.FAILED:  # held by another payment: it stays let go
        _needs_review(payment, reason, source=Status.FAILED, **fields)


def _verify_late(
    client: KhaltiClient, payment: Payment, received: int, fields: dict[str, Any]
) -> bool:
    """Verify a failed payment Khalti completed, taking its order back: the order
    is free, or held by an ePayment link that, looked up, nobody paid (it is
    superseded). True when this call verified it, False when another worker
    settled it meanwhile.

    Raises :class:`KhaltiAlreadyPaid` when another payment paid the order (or
    holds the payment's token), and :class:`KhaltiUnavailable` while the
    payment holding the order cannot be settled yet (Khalti holds it, cannot be
    asked, or another worker is at it): the payment then stays failed, and the
    next re-check (a reload of the return page, ``khalti_reconcile``) tries again.
    """
    key = order_key(payment.order_reference)

    def take() -> bool:
        return _transition(
            payment,
            Status.VERIFIED,
            source=Status.FAILED,
            held=True,
            order_claim=key,
            token_claim=payment.token,
            received_amount=received,
            failure_reason="",
            **fields,
        )

    def when_held(holder: Payment | None) -> bool | None:
        if holder is None and (
            Payment.objects.filter(token_claim=payment.token).exclude(pk=payment.pk).exists()
        ):
            raise KhaltiAlreadyPaid()  # its token is bound to a live payment now
        return None

    try:
        return _take_when_free(
            client, payment.order_reference, take, attempts=3, when_held=when_held
        )
    except _OrderHeld:
        logger.warning(
            "Khalti completed payment %s after it was recorded failed; the payment holding "
            "its order cannot be settled yet, so it is re-checked later.",
            payment.pk,
        )
        raise KhaltiUnavailable() from None
