"""Claims and status changes: the only place a payment's status changes.

- A pending payment is held by one worker at a time: :func:`claim` is a guarded
  ``UPDATE ... WHERE claimed_at IS NULL OR claimed_at < stale``, on the
  database's clock (never a host's). No transaction or row lock is held while
  Khalti is called.
- Every claim asks Khalti, so claims on one payment are spaced: the same
  ``UPDATE`` also wants ``last_asked_at`` at least ``ASK_SPACING`` ago. However
  many requests come, from however many addresses, Khalti is asked about a
  payment at most once per spacing.
- Which change an answer makes: verified, failed, needs review, refunded
  before it was verified; each through :func:`~.writes._transition`, the one
  choke point (:mod:`.writes` writes it: a guarded ``UPDATE ... WHERE status =
  <source>`` whose winner writes the signal to the outbox atomically with it).
- An unknown outcome (timeout, 5xx, garbage, our database failing) leaves the
  payment pending, for a resubmission or reconciliation to settle.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.db import DatabaseError, IntegrityError, OperationalError
from django.db.models import F, Q
from django.db.models.expressions import CombinedExpression
from django.utils.translation import gettext as _

from ..client import KhaltiClient
from ..conf import khalti_settings
from ..exceptions import KhaltiUnavailable
from ..models import DbNow, Payment
from .writes import _deadlocked, _held, _read_later, committed_at_once
from .writes import _transition as _transition  # what this module's changes call

logger = logging.getLogger(__name__)

Status = Payment.Status


def claim(
    payment: Payment, status: str = Status.PENDING, *, spacing: timedelta | None = None
) -> bool:
    """Take a payment in ``status`` to call Khalti about it; True for the one winner.

    Nobody may hold it, and Khalti must not have been asked about it within
    ``spacing`` (default ``KHALTI["ASK_SPACING"]``): a payment asked about
    moments ago is won by nobody, and stays as it is for the next asker.
    ``payment`` must be as the database has it: a copy older than the last
    claim wins nothing. The claim's time is the database's, so hosts whose
    clocks differ agree on when a claim is stale, and on the spacing.
    """
    try:
        with committed_at_once(payment):
            won = (
                Payment.objects.filter(pk=payment.pk, status=status, attempts=payment.attempts)
                .filter(_claimable(), _askable(spacing))
                .update(
                    claimed_at=DbNow(),
                    last_asked_at=DbNow(),
                    attempts=F("attempts") + 1,
                    updated_at=DbNow(),
                )
            )
    except OperationalError as exc:
        if not _deadlocked(exc):
            raise
        # Claims racing at MariaDB's REPEATABLE READ: the deadlock's victim lost
        # (the other claim goes on), as a guarded UPDATE that matched nothing.
        logger.info("Payment %s: a claim lost a deadlock to another.", payment.pk)
        won = 0
    if won:
        payment.attempts += 1
        # (``last_asked_at`` is left as it was in memory: nothing reads it there, and
        # reading it back would cost every settlement's snapshot a round trip.)
        _read_later(payment, "claimed_at", "updated_at")
    return bool(won)


def take_turn(payment_pk: Any, spacing: timedelta | None = None) -> bool:
    """Take the turn to ask Khalti about a payment outside a claim (the outcome of
    one of its refunds); True for the one winner.

    Spaced as :func:`claim` is, on the same ``last_asked_at``: Khalti must not have
    been asked about the payment within ``spacing`` (default
    ``KHALTI["ASK_SPACING"]``). Committed by itself, as a claim is.
    """
    try:
        with committed_at_once():
            won = Payment.objects.filter(_askable(spacing), pk=payment_pk).update(
                last_asked_at=DbNow()
            )
    except OperationalError as exc:
        if not _deadlocked(exc):
            raise
        won = 0  # another asker won (MariaDB chose this one as a deadlock's victim)
    return bool(won)


def stale_since() -> CombinedExpression:
    """On the database's clock, the time before which a claim (or a refund's call)
    can no longer be in flight: ``now - stale_after``.
    """
    return DbNow() - timedelta(seconds=khalti_settings.stale_after)


def _claimable() -> Q:
    """Nobody holds the payment, or its holder's claim is stale (the worker died)."""
    return Q(claimed_at__isnull=True) | Q(claimed_at__lt=stale_since())


def contender_spacing() -> timedelta:
    """How far apart another payment that needs a payment's order (a new buyer's
    Pay superseding an unpaid link, a waiting widget token) may have Khalti asked
    about that payment: half ``ASK_SPACING``, so that whoever reloads the holder's
    own return page at its spacing cannot take every turn and keep the order
    from being paid.
    """
    return khalti_settings.ask_spacing / 2


def _askable(spacing: timedelta | None = None) -> Q:
    """Khalti was not asked about the payment within ``spacing`` (default
    ``KHALTI["ASK_SPACING"]``), on the database's clock.
    """
    since = DbNow() - (khalti_settings.ask_spacing if spacing is None else spacing)
    return Q(last_asked_at__isnull=True) | Q(last_asked_at__lte=since)


def _release(payment: Payment, status: str = Status.PENDING) -> None:
    """Let go of a claim after an unknown outcome, so a retry need not wait."""
    try:
        Payment.objects.filter(_held(payment.attempts), pk=payment.pk, status=status).update(
            claimed_at=None, updated_at=DbNow()
        )
    except DatabaseError:
        logger.exception("Could not release the claim on payment %s.", payment.pk)


def _settle(
    client: KhaltiClient, payment: Payment, ask: Callable[[KhaltiClient, Payment], None]
) -> Payment:
    """Call Khalti through ``ask`` while holding the claim, then record its answer."""
    try:
        ask(client, payment)
    except KhaltiUnavailable:
        _release(payment, status=payment.status)
        raise
    except DatabaseError as exc:
        # Khalti answered but we could not record it: the claim goes stale and a
        # resubmission or reconciliation asks Khalti again.
        logger.exception("Could not record Khalti's answer for payment %s.", payment.pk)
        raise KhaltiUnavailable(
            _("The payment could not be recorded yet. It is pending; try again shortly.")
        ) from exc
    return payment


def _refunded_before_verified(payment: Payment, **fields: Any) -> None:
    """A pending payment Khalti reports paid and then all refunded, outside this app.

    The shop never fulfilled the order and no money stayed with it: the order
    is let go (a new payment may pay it) and ``payment_refunded`` tells the shop,
    with ``payment.verified_at`` None.
    """
    changed = _recording_idx_if_free(
        payment,
        Status.REFUNDED,
        held=True,
        refunded_amount=payment.amount,
        refund_amount=payment.amount,
        order_claim=None,
        **fields,
    )
    if changed:
        logger.warning(
            "Khalti reports payment %s refunded before it was verified; the order is free "
            "to be paid again.",
            payment.pk,
        )


def _verified(payment: Payment, received: int, fields: dict[str, Any]) -> None:
    """Verify a pending payment Khalti completed, unless its ``idx`` is another
    payment's (the unique column says so): then it needs review.
    """
    try:
        _transition(payment, Status.VERIFIED, received_amount=received, **fields)
    except IntegrityError:
        _not_this_payments(payment, fields.get("idx"), received, fields)


def _not_this_payments(
    payment: Payment,
    idx: str | None,
    received: int | None,
    fields: dict[str, Any],
    source: str = Status.PENDING,
) -> None:
    """Khalti answered with a transaction that is another payment's (or the token
    itself): the answer is not this payment's, so it needs review.
    """
    _needs_review(
        payment,
        _(
            "Khalti's answer names transaction %(idx)s, which is another payment's (or the "
            "token itself)."
        )
        % {"idx": idx},
        source=source,
        received_amount=received,
        **{name: value for name, value in fields.items() if name != "idx"},
    )


def _fail(
    payment: Payment, reason: str, raw: Any = None, notify: bool = True, **fields: Any
) -> bool:
    """Fail a payment this worker still holds: Khalti proved no money moved.

    A worker whose claim went stale and was taken over must not fail the
    payment: its successor may have seen Khalti complete it. (Verifying needs
    no such guard: Khalti's completed record is proof whoever brings it.) The
    order and the token are let go: a new payment may pay the order, and the
    token may be bound again (Khalti refused it).
    """
    if raw is not None:
        fields.setdefault("khalti_response", raw)
    fields.pop("idx", None)  # no money moved: no transaction of this payment's to hold
    return _transition(
        payment,
        Status.FAILED,
        held=True,
        notify=notify,
        failure_reason=reason,
        order_claim=None,
        token_claim=None,
        **fields,
    )


def _recording_idx_if_free(payment: Payment, to: str, **fields: Any) -> bool:
    """:func:`_transition`, with Khalti's ``idx`` recorded only if it is no other
    payment's (a unique column): a settlement that does not pay the order must not
    fail on an id that is not this payment's to hold.
    """
    try:
        return _transition(payment, to, **fields)
    except IntegrityError:
        if not fields.get("idx"):
            raise
        logger.warning(
            "Khalti named transaction %s, another payment's, for payment %s; not recorded.",
            fields.pop("idx"),
            payment.pk,
        )
        return _transition(payment, to, **fields)


def _needs_review(
    payment: Payment,
    reason: str,
    *,
    source: str = Status.PENDING,
    keep_order: bool = False,
    **fields: Any,
) -> bool:
    """Money moved that the shop must not honour: hold the payment for a person.

    Like failing, only by the worker that holds the claim. The token stays
    bound. With ``keep_order``, this payment's own money moved (for another
    amount, or partly refunded at Khalti already): it keeps its order, so that
    the buyer is not charged for it again, until a person refunds it (which
    lets the order go). Otherwise the money Khalti named is not this payment's,
    and the order is let go.
    """
    changed = _recording_idx_if_free(
        payment,
        Status.NEEDS_REVIEW,
        source=source,
        held=True,
        failure_reason=reason,
        **({} if keep_order else {"order_claim": None}),
        **fields,
    )
    if changed:
        logger.error(
            "Khalti payment %s (order %s) needs review: %s",
            payment.pk,
            payment.order_reference,
            reason,
        )
    return changed
