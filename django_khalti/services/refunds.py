"""Refunds: ask Khalti for one, settle the ones whose outcome was unknown, record a person's word.

A refund row is written (pending) before Khalti is called; its outcome is
settled by :func:`_settle_refund`, which moves the payment's status through
:func:`~.writes._transition` like every other change.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.core.exceptions import PermissionDenied
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import QuerySet
from django.utils.translation import gettext as _

from ..client import KhaltiClient, KhaltiOutcome
from ..exceptions import (
    KhaltiConfigurationError,
    KhaltiInvalidRefundAmount,
    KhaltiNotRefundable,
    KhaltiRefundConflict,
    KhaltiRefundFailed,
    KhaltiRefundInProgress,
    KhaltiRefundUnknown,
    KhaltiRejected,
    KhaltiUnavailable,
)
from ..models import DbNow, Payment, Refund, rupees
from .state import stale_since, take_turn
from .transactions import _known_idx
from .writes import _transition

if TYPE_CHECKING:
    # The project's user model or AnonymousUser, as django-stubs resolves request.user.
    from django.contrib.auth.models import _AnyUser

logger = logging.getLogger(__name__)

Status = Payment.Status


def refund_payment(
    payment: Payment,
    amount: int | None = None,
    mobile: str | None = None,
    by: _AnyUser | None = None,
    refunded_before: int | None = None,
    status_before: str | None = None,
    idx: str | None = None,
) -> Refund:
    """Give ``amount`` paisa of a confirmed payment back to the buyer (all that remains
    without ``amount``); ``mobile`` is the Khalti id to refund to, which Khalti
    wants for bank-funded payments; ``by`` is the user asking, who needs the
    ``django_khalti.refund_payment`` permission. ``refunded_before`` and
    ``status_before``: what the person asking saw refunded already, and the
    status they saw; checked under the payment's row lock
    (:class:`KhaltiRefundConflict` if the payment changed meanwhile).
    ``idx``: Khalti's transaction id, for a payment whose id is unknown, as a
    person found it in Khalti's dashboard; without it Khalti's records are asked
    (:class:`~django_khalti.exceptions.KhaltiTransactionUnknown` when they
    do not name it).

    One refund of a payment is in flight at a time. Khalti refusing raises
    :class:`KhaltiRefundFailed` and nothing is refunded, unless Khalti's status
    shows the payment refunded after all ("already refunded": the refund is
    then recorded as succeeded). An unknown outcome raises
    :class:`KhaltiRefundUnknown` (a :class:`KhaltiUnavailable`) and leaves the
    refund pending: money may have moved, so no other refund of the payment
    starts until :func:`reconcile_refund` (or ``khalti_reconcile``, or a
    person in the admin) has settled it. A success that could not be recorded
    as such raises too: :class:`KhaltiRefundConflict` when the refund was
    recorded failed meanwhile (the payment then needs review),
    :class:`KhaltiRefundUnknown` when the database failed.

    ``payment`` is left as it is (it may be a receiver's copy, which other
    receivers share); the returned refund's ``payment`` is the payment as it
    stands afterwards.
    """
    if by is not None and not by.has_perm("django_khalti.refund_payment"):
        raise PermissionDenied
    client = KhaltiClient.from_settings()
    _known_idx(client, payment, idx)  # (a payment paid with its transaction id unknown)
    seen = (refunded_before, status_before)
    refund, locked = _claim_refund(payment, amount, mobile or "", by, seen)
    # Nothing refunded before, all of it now: Khalti's full refund (an empty body).
    whole = locked.refunded_amount == 0 and refund.amount == locked.paid_amount
    try:
        answer = client.refund(
            locked.idx or "", amount=None if whole else refund.amount, mobile=mobile or None
        )
    except KhaltiRejected as exc:
        return _refused_refund(client, refund, exc)
    except KhaltiUnavailable as exc:
        unknown = KhaltiRefundUnknown()
        Refund.objects.filter(pk=refund.pk).update(failure_reason=str(unknown.detail))
        raise unknown from exc
    except KhaltiConfigurationError:
        # Refused before anything was sent (the key cannot go into a header).
        _settle_refund(refund, succeeded=False, raw=None, reason=_("Not sent: misconfigured."))
        raise
    try:
        recorded = _settle_refund(refund, succeeded=True, raw=answer)
    except DatabaseError as exc:
        logger.exception("Khalti refunded %s, which could not be recorded.", refund.pk)
        raise KhaltiRefundUnknown(
            _(
                "Khalti refunded it, but that could not be recorded: the refund stays pending "
                "until khalti_reconcile settles it. Do not refund it again meanwhile."
            )
        ) from exc
    if not recorded:
        raise KhaltiRefundConflict(
            _(
                "Khalti refunded Rs %(amount)s, but the refund had been recorded failed "
                "meanwhile: the payment needs review."
            )
            % {"amount": rupees(refund.amount)}
        )
    return _refreshed(refund)


def _refused_refund(client: KhaltiClient, refund: Refund, exc: KhaltiRejected) -> Refund:
    """Khalti refused a refund: failed, unless its status shows the money back anyway
    ("already refunded": by the dashboard, or by an earlier call whose answer was lost).
    """
    try:
        # Only REFUNDED for all that remained proves it: PARTIALLY_REFUNDED
        # may be an earlier refund's doing, and Khalti just refused this one.
        proof = _refund_proof(client, refund, partial_proves=False)
    except KhaltiUnavailable:
        proof = None
    if proof is not None and proof[0] is True:
        logger.warning(
            "Khalti refused refund %s (%s) but shows the payment refunded: recorded succeeded.",
            refund.pk,
            exc.detail,
        )
        if not _settle_refund(refund, succeeded=True, raw=proof[1]):
            raise KhaltiRefundConflict() from exc
        return _refreshed(refund)
    if proof is None and "already" in str(exc.detail).lower():
        # "Already refunded", and the status cannot tell by what: a person decides.
        unknown = KhaltiRefundUnknown(
            _("Khalti says it is already refunded: %(detail)s") % {"detail": exc.detail}
        )
        Refund.objects.filter(pk=refund.pk).update(failure_reason=str(unknown.detail))
        raise unknown from exc
    if not _settle_refund(
        refund, succeeded=False, raw=exc.body, reason=str(exc.detail), refusal=True
    ):
        # Settled meanwhile (a person found it refunded): Khalti refusing this call
        # says nothing against that. The message says what is stored.
        raise KhaltiRefundConflict(
            _(
                "Khalti refused this call (%(detail)s), but the refund was recorded %(status)s meanwhile."
            )
            % {"detail": exc.detail, "status": Refund.Status(_recorded(refund)).label}
        ) from exc
    raise KhaltiRefundFailed(_("Khalti refused the refund: %s") % exc.detail) from exc


def _recorded(refund: Refund) -> str:
    return str(Refund.objects.values_list("status", flat=True).get(pk=refund.pk))


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


def _refund_proof(
    client: KhaltiClient, refund: Refund, *, partial_proves: bool = True
) -> tuple[bool, Any] | None:
    """What Khalti's state of the payment proves of ``refund``: ``(True, answer)``
    refunded, ``(False, answer)`` not, None when it cannot tell. With
    ``partial_proves`` False, :attr:`KhaltiOutcome.PARTIALLY_REFUNDED` proves nothing. Raises
    :class:`KhaltiUnavailable` when Khalti could not be asked.
    """
    payment = Payment.objects.get(pk=refund.payment_id)
    try:
        if payment.flow == Payment.Flow.EPAYMENT:
            looked_up = client.lookup(payment.pidx or "")
            state, outcome, raw = looked_up.status, looked_up.outcome, looked_up.raw
        else:
            # Khalti knows a payment by the amount paid (a payment that needs
            # review may have been paid for another amount than the order's).
            status = client.status(payment.token or "", payment.paid_amount)
            state, outcome, raw = status.state, status.outcome, status.raw
    except KhaltiRejected as exc:
        raise KhaltiUnavailable() from exc
    remaining = payment.paid_amount - payment.refunded_amount
    first = payment.refunded_amount == 0
    # Settle only on an answer that proves what became of *this* refund.
    if (outcome is KhaltiOutcome.REFUNDED and refund.amount == remaining) or (
        partial_proves
        and outcome is KhaltiOutcome.PARTIALLY_REFUNDED
        and first
        and refund.amount < remaining
    ):
        return True, raw
    if outcome is KhaltiOutcome.PAID and first:
        return False, raw
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


def resolve_refund(
    refund: Refund,
    *,
    succeeded: bool,
    by: _AnyUser,
    note: str = "",
    refunded_before: int | None = None,
    status_before: str | None = None,
) -> Refund:
    """Record what a person found in Khalti's dashboard about a refund of unknown outcome.

    For the cases Khalti's API cannot settle. ``by`` needs the
    ``django_khalti.refund_payment`` permission. The person's word is on the
    refund they saw: ``refund`` (its id and amount) still pending, and, when
    given, the payment's ``refunded_before`` and ``status_before`` as they saw
    them. All are checked under the payment's row lock, in the transaction that
    records the outcome; anything else raises :class:`KhaltiRefundConflict`
    and records nothing (a refund settled meanwhile, even the same way: Khalti's
    answer or a colleague's stands over a person's).
    """
    if not by.has_perm("django_khalti.refund_payment"):
        raise PermissionDenied
    reason = "" if succeeded else (note or _("Not refunded, as checked in Khalti's dashboard."))
    with transaction.atomic():
        _lock_as_seen(refund, refunded_before, status_before)
        _settle_refund(
            refund,
            succeeded=succeeded,
            raw={"resolved_by": str(by), "note": note},
            reason=reason,
            by_person=True,
        )
    refund.refresh_from_db()
    return refund


def _check_seen(locked: Payment, refunded_before: int | None, status_before: str | None) -> None:
    """Raise :class:`KhaltiRefundConflict` unless the locked payment is as it was seen
    (None: not said).
    """
    if refunded_before is not None and locked.refunded_amount != refunded_before:
        raise KhaltiRefundConflict(
            _("It was refunded meanwhile (Rs %(now)s so far): review it again.")
            % {"now": rupees(locked.refunded_amount)}
        )
    if status_before is not None and locked.status != status_before:
        raise KhaltiRefundConflict(
            _("It is %(status)s now, not %(seen)s: review it again.")
            % {
                "status": locked.get_status_display(),
                "seen": dict(Status.choices).get(status_before, status_before),
            }
        )


def _lock_as_seen(refund: Refund, refunded_before: int | None, status_before: str | None) -> None:
    """Under the payment's row lock (every settlement of its refunds takes it first):
    raise :class:`KhaltiRefundConflict` unless the payment is as it was seen and
    ``refund`` is still pending, for its amount.
    """
    locked = Payment.objects.select_for_update().get(pk=refund.payment_id)
    row = Refund.objects.select_for_update().filter(pk=refund.pk)
    status, amount = row.values_list("status", "amount").get()
    if status != Refund.Status.PENDING:
        raise KhaltiRefundConflict(
            _("This refund was already recorded %(status)s: review it again.")
            % {"status": Refund.Status(status).label}
        )
    if amount != refund.amount:
        raise KhaltiRefundConflict(
            _("This refund is of Rs %(amount)s, not of Rs %(seen)s: review it again.")
            % {"amount": rupees(amount), "seen": rupees(refund.amount)}
        )
    _check_seen(locked, refunded_before, status_before)


def _claim_refund(
    payment: Payment,
    amount: int | None,
    mobile: str,
    by: _AnyUser | None,
    seen: tuple[int | None, str | None] = (None, None),
) -> tuple[Refund, Payment]:
    """Record a pending refund under the payment's row lock, after checking it is due
    and as it was ``seen`` (refunded before, status before).

    Returns the refund and the payment row as it was under the lock.
    """
    with transaction.atomic(durable=True):
        locked = Payment.objects.select_for_update().get(pk=payment.pk)
        _check_seen(locked, *seen)
        remaining = locked.refundable_amount
        if locked.status not in Payment.REFUNDABLE_STATUSES or not locked.idx or not remaining:
            raise KhaltiNotRefundable()
        if amount is None:
            amount = remaining
        if locked.status == Status.NEEDS_REVIEW and amount != remaining:
            raise KhaltiInvalidRefundAmount(
                _("A payment that needs review is refunded whole: %(remaining)s paisa.")
                % {"remaining": remaining}
            )
        if isinstance(amount, bool) or not isinstance(amount, int) or not 0 < amount <= remaining:
            raise KhaltiInvalidRefundAmount(
                _("A refund must be between 1 and %(remaining)s paisa.") % {"remaining": remaining}
            )
        try:
            with transaction.atomic():
                refund = Refund.objects.create(
                    payment=locked,
                    amount=amount,
                    mobile=mobile,
                    # refund_payment checked that ``by`` may refund: a user, not AnonymousUser.
                    requested_by=by,  # type: ignore[misc]
                    claim=locked.pk,
                )
            return refund, locked
        except IntegrityError:
            raise KhaltiRefundInProgress() from None


def _settle_refund(
    refund: Refund,
    *,
    succeeded: bool,
    raw: Any,
    reason: str = "",
    by_person: bool = False,
    refusal: bool = False,
) -> bool:
    """Record a refund's outcome and, if money went back, the payment's new status.

    Returns whether the refund now stands as this answer says: True when this
    call settled it (or it was settled the same way before). When it was
    settled otherwise meanwhile, Khalti's answer outranks a person's: a person
    (``by_person``) gets :class:`KhaltiRefundConflict`. An answer from Khalti
    that contradicts what was recorded is logged at WARNING and stands: the
    refund takes it, the payment's refunded total follows it, and the payment
    moves to ``needs_review`` with Khalti's answer (False). Refunds do not
    un-happen: "not refunded" overturns only a person's "refunded", never one
    Khalti's own answer proved (an older answer arriving last), and a
    ``refusal`` of one call overturns nothing.
    """
    outcome = Refund.Status.SUCCEEDED if succeeded else Refund.Status.FAILED
    with transaction.atomic():
        payment = Payment.objects.select_for_update().get(pk=refund.payment_id)
        settled = Refund.objects.filter(pk=refund.pk, status=Refund.Status.PENDING).update(
            status=outcome,
            claim=None,
            settled_at=DbNow(),
            khalti_response=raw,
            failure_reason=reason,
        )
        if settled and succeeded:
            total = payment.refunded_amount + refund.amount
            # Never verified (it needed review): none of its money stays, the order goes.
            let_go: dict[str, Any] = {} if payment.verified_at else {"order_claim": None}
            _transition(
                payment,
                Status.REFUNDED if total >= payment.paid_amount else Status.PARTIALLY_REFUNDED,
                source=payment.status,
                refunded_amount=total,
                refund_amount=refund.amount,
                **let_go,
            )
        if settled:
            return True
        row = Refund.objects.get(pk=refund.pk)
        recorded = row.status
        if recorded == outcome:
            return True
        by_a_person = isinstance(row.khalti_response, dict) and "resolved_by" in row.khalti_response
        if not by_person and not succeeded and (refusal or not by_a_person):
            logger.warning(
                "Khalti's answer on refund %s of payment %s (%s) does not overturn what was "
                "recorded (%s): %s.",
                refund.pk,
                payment.pk,
                outcome,
                recorded,
                "a refusal of one call" if refusal else "Khalti's own proof of the refund",
            )
            return False
        if by_person:
            raise KhaltiRefundConflict(
                _("This refund was already recorded %(status)s, from Khalti's answer.")
                % {"status": Refund.Status(recorded).label}
            )
        logger.warning(
            "Khalti's answer on refund %s of payment %s (%s) contradicts what was recorded "
            "(%s): Khalti's stands, and the payment needs review.",
            refund.pk,
            payment.pk,
            outcome,
            recorded,
        )
        why = _(
            "Khalti's answer on a refund of Rs %(amount)s (%(khalti)s) contradicts what was "
            "recorded (%(recorded)s)."
        ) % {
            "amount": rupees(refund.amount),
            "khalti": Refund.Status(outcome).label,
            "recorded": Refund.Status(recorded).label,
        }
        Refund.objects.filter(pk=refund.pk, status=recorded).update(
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
        return False
