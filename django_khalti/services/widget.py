"""Widget payments (token + amount): verify one exactly once.

The row is inserted (pending, claimed) and committed before Khalti is called:
the unique ``token_claim`` makes one row a token, the unique ``order_claim`` one
live payment an order. A resubmission finds the row; a pending one nobody else
holds is taken over and Khalti is *asked* (status) before it may be verified again.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from django.db.models import Q
from django.http import HttpRequest
from django.utils.translation import gettext as _

from ..client import KhaltiClient
from ..exceptions import (
    KhaltiAmountMismatch,
    KhaltiInProgress,
    KhaltiNeedsReview,
    KhaltiTokenUsed,
    KhaltiVerificationFailed,
)
from ..models import Payment
from .answers import _record_or_none, _verify
from .compiled import Compiled
from .outbox import _due_exists, deliver_due
from .settle import _WAITING, _ask_khalti, _claim_order
from .shop import resolve_order
from .state import _fail, _settle, claim

if TYPE_CHECKING:
    from rest_framework.request import Request

logger = logging.getLogger(__name__)

Status = Payment.Status


def verify_payment(
    request: HttpRequest | Request | None,
    *,
    token: str,
    amount: int,
    product_identity: str,
    idx: str = "",
) -> Payment:
    """Verify a widget payment for ``product_identity`` exactly once.

    Returns the verified :class:`Payment` (also when it was verified before).
    Raises a :class:`~django_khalti.exceptions.KhaltiError` for every refusal,
    and :class:`~django_khalti.exceptions.KhaltiUnavailable` when Khalti's
    answer is unknown (the payment then stays pending). ``idx`` is the
    transaction id the widget reported: only a hint (see ``Payment.claimed_idx``).
    """
    client = KhaltiClient.from_settings()  # a broken configuration fails before any write
    payment, refused, reported = _bound_payment(token, amount, product_identity)
    if refused is not None:
        deliver_due(refused)  # what a dead worker or a raising receiver left undelivered
        return _verified_or_raise(refused)  # Khalti refused this very payload before
    created = False
    if payment is None:
        order = resolve_order(request, product_identity)  # a hidden order: 404, whatever its state
        if amount != order.amount:
            raise KhaltiAmountMismatch()
        payment, created = _claim_order(
            client, product_identity, order, token=token, token_claim=token, claimed_idx=idx
        )
        if not created and not _bound_to(payment, amount, product_identity):
            raise KhaltiTokenUsed()
    if created:
        ask = _verify_unless_an_idx if reported else _verify
        return _verified_or_raise(_settle(client, payment, ask))
    if payment.status == Status.PENDING:
        if claim(payment):
            # An earlier attempt may have reached Khalti: ask before verifying again.
            return _verified_or_raise(_settle(client, payment, _ask_khalti))
        payment.refresh_from_db()
    else:
        deliver_due(payment)  # a resubmission: what is still undelivered, if due
    return _verified_or_raise(payment)


def _bound_payment(
    token: str, amount: int, product_identity: str
) -> tuple[Payment | None, Payment | None, bool]:
    """The live payment this token is bound to, or what the token's history says;
    from our records only (Khalti is asked nothing here).

    Returns ``(live, None, _)`` when the token is bound to a live payment for this
    order and amount; ``(None, failed, _)`` when its payment for this order and
    amount failed (answered from the record); ``(None, None, _)`` when the token is
    new, or its only uses were refused by Khalti for another order or amount
    (it may be bound again: a replay of a stolen token cannot lock its buyer out).
    The third is whether a pending payment's page reported the token as its
    ``idx`` (the browser's word, which locks nobody out): a new payment for it
    is checked against Khalti's records before it is verified
    (:func:`_verify_unless_an_idx`).
    Raises :class:`KhaltiTokenUsed` for a token bound to another order or amount,
    and for a token that is any payment's Khalti id (``idx`` or ``pidx``): Khalti's
    status endpoint answers for an ``idx`` as for a token, so one payment's id must
    never stand in for another's token. Raises :class:`KhaltiInProgress` (the
    buyer's page retries it) while the token is held by a pending payment for
    another order or amount.
    """
    rows = _TOKEN_USES.rows(token=token)
    if any(token in (row.idx, row.pidx) for row in rows):
        raise KhaltiTokenUsed()
    live = next((row for row in rows if row.token_claim == token), None)
    reported = any(
        row.claimed_idx == token and row.token != token and row.status == Status.PENDING
        for row in rows
    )
    if live is not None:
        if _bound_to(live, amount, product_identity):
            return live, None, reported
        if live.status == Status.PENDING:
            # Perhaps a replay Khalti is about to refuse; then the token is free again.
            raise KhaltiInProgress()
        raise KhaltiTokenUsed()
    failed = [
        row for row in rows if row.token == token and _bound_to(row, amount, product_identity)
    ]
    return None, max(failed, key=lambda row: row.created_at, default=None), reported


#: Every payment a token is bound to, or is the Khalti id of, or was reported as the
#: idx of; each with ``undelivered`` (:func:`~.outbox._due_exists`). Compiled once.
_TOKEN_USES = Compiled(
    lambda token: Payment.objects.filter(
        Q(token=token) | Q(idx=token) | Q(pidx=token) | Q(claimed_idx=token)
    ).annotate(undelivered=_due_exists()),
    token=Payment._meta.get_field("token"),
)


def _verify_unless_an_idx(client: KhaltiClient, payment: Payment) -> None:
    """Verify a new payment whose token a pending payment's page reported as its
    ``idx``, unless Khalti knows the token as a transaction's id (a paid payment's
    idx, presented as a token): read-only, before any verify.

    Asked under the new payment's claim, after its insert bound the token, so
    that Khalti hears of the token once per claim (spaced like every question
    about a payment), however often it is posted: never for a request that
    binds nothing (an unknown order, another amount, an order paid already).
    A transaction's id fails the payment, without a signal (none of its money
    moved), and raises :class:`KhaltiTokenUsed`; the same payload is then
    answered from the record.
    """
    record = _record_or_none(client, payment.token or "")
    if record is None or record.idx != payment.token:
        _verify(client, payment)
        return
    _fail(
        payment,
        _("The token given is a Khalti transaction id, not a payment token."),
        notify=False,
    )
    raise KhaltiTokenUsed()


def _bound_to(payment: Payment, amount: int, product_identity: str) -> bool:
    """Whether a payment is for this amount and this order (as given, or canonical)."""
    return payment.amount == amount and product_identity in (
        payment.product_identity,
        payment.order_reference,
    )


def _verified_or_raise(payment: Payment) -> Payment:
    if payment.status in Payment.PAID_STATUSES and payment.verified_at is not None:
        return payment
    if payment.status in Payment.PAID_STATUSES:
        raise KhaltiVerificationFailed(_("Khalti reports this payment refunded."))
    if payment.status == Status.NEEDS_REVIEW:
        raise KhaltiNeedsReview()
    if payment.status == Status.FAILED:
        raise KhaltiVerificationFailed(payment.failure_reason or None)
    raise KhaltiInProgress(_WAITING if payment.order_claim is None else None)
