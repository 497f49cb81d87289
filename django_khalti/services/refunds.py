"""Refunds: ask Khalti for one, record a person's word.

A refund row is written (pending) before Khalti is called; its outcome is
recorded by :func:`~.refund_outcomes._settle_refund`, which moves the payment's
status through :func:`~.writes._transition` like every other change. What
Khalti's state says became of a refund, read-only, is :mod:`.refund_checks`'.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING

from django.core.exceptions import PermissionDenied
from django.db import DatabaseError, IntegrityError, transaction
from django.utils.translation import gettext as _

from ..client import KhaltiClient
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
from .refund_checks import _refreshed, _refund_proof, recheck_failed_refund
from .refund_outcomes import _drop_lost_connection, _settle_refund
from .transactions import _known_idx

if TYPE_CHECKING:
    # The project's user model or AnonymousUser, as django-stubs resolves request.user.
    from django.contrib.auth.models import _AnyUser

logger = logging.getLogger(__name__)

Status = Payment.Status

#: How long a refund recorded failed is re-checked, read-only, before another
#: refund of its payment starts (``khalti_reconcile``'s ``--failed-within`` also
#: re-checks it, hourly).
RECHECK_FAILED_REFUNDS_FOR = timedelta(days=7)


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
    person in the admin) has settled it. Our database failing once Khalti was
    asked makes the outcome unknown too (:class:`KhaltiRefundUnknown`): what
    was not recorded stays pending for ``khalti_reconcile``. A refund recorded
    failed meanwhile (its worker froze past the claim timeout, and
    ``khalti_reconcile`` found nothing refunded yet) that Khalti then refunds
    is recorded succeeded, logged at WARNING; :class:`KhaltiRefundConflict`
    when that cannot be (the payment then needs review).

    ``payment`` is left as it is (it may be a receiver's copy of the payment as
    it was); the returned refund's ``payment`` is the payment as it
    stands afterwards.
    """
    if by is not None and not by.has_perm("django_khalti.refund_payment"):
        raise PermissionDenied
    client = KhaltiClient.from_settings()
    _known_idx(client, payment, idx)  # (a payment paid with its transaction id unknown)
    _recheck_failed_before(payment)
    seen = (refunded_before, status_before)
    refund, locked = _claim_refund(payment, amount, mobile or "", by, seen)
    try:
        return _ask_for_refund(client, refund, locked, mobile or None)
    except DatabaseError as exc:
        # Whatever Khalti did, it was not (all) recorded: unknown, not a crash.
        raise _unrecorded(refund, exc) from exc


def _recheck_failed_before(payment: Payment) -> None:
    """Before another refund of ``payment``: whether one recorded failed in the last
    :data:`RECHECK_FAILED_REFUNDS_FOR` went through late (:func:`recheck_failed_refund`),
    so that the new one is checked against the money as it moved (a person who saw
    it failed would give it back twice). Khalti not answering changes nothing; the
    database failing stops the new refund before it starts (:class:`KhaltiUnavailable`).
    """
    failed = Refund.objects.filter(
        payment_id=payment.pk,
        status=Refund.Status.FAILED,
        created_at__gte=DbNow() - RECHECK_FAILED_REFUNDS_FOR,
    )
    try:
        for refund in failed.order_by("created_at", "pk"):
            recheck_failed_refund(refund)
    except KhaltiUnavailable:
        logger.warning("Could not re-check the failed refunds of payment %s.", payment.pk)
    except DatabaseError as exc:
        logger.exception("Could not re-check the failed refunds of payment %s.", payment.pk)
        _drop_lost_connection()
        raise KhaltiUnavailable(
            _("The database failed while an earlier refund was re-checked: nothing was refunded.")
        ) from exc


def _ask_for_refund(
    client: KhaltiClient, refund: Refund, locked: Payment, mobile: str | None
) -> Refund:
    """Ask Khalti for the claimed ``refund`` and record its answer (a database
    error is the caller's: Khalti was asked).
    """
    # Nothing refunded before, all of it now: Khalti's full refund (an empty body).
    whole = locked.refunded_amount == 0 and refund.amount == locked.paid_amount
    try:
        answer = client.refund(
            locked.idx or "", amount=None if whole else refund.amount, mobile=mobile
        )
    except KhaltiRejected as exc:
        return _refused_refund(client, refund, exc)
    except KhaltiUnavailable as exc:
        raise _noted(refund, KhaltiRefundUnknown()) from exc
    except KhaltiConfigurationError:
        # Refused before anything was sent (the key cannot go into a header).
        _not_sent(refund)
        raise
    if not _settle_refund(refund, succeeded=True, raw=answer):
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
        raise _noted(refund, unknown) from exc
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


def _noted(refund: Refund, unknown: KhaltiRefundUnknown) -> KhaltiRefundUnknown:
    """``unknown``, its detail noted on the pending refund as why (if the database
    lets it: it may be what failed, and the refund is pending either way).
    """
    try:
        Refund.objects.filter(pk=refund.pk, status=Refund.Status.PENDING).update(
            failure_reason=str(unknown.detail)
        )
    except DatabaseError:
        logger.exception("Could not note why refund %s is of unknown outcome.", refund.pk)
        _drop_lost_connection()
    return unknown


def _not_sent(refund: Refund) -> None:
    """Nothing was sent to Khalti for ``refund``: it failed (if the database lets it
    record that; else it stays pending, for a re-check or a person to settle).
    """
    try:
        _settle_refund(refund, succeeded=False, raw=None, reason=_("Not sent: misconfigured."))
    except DatabaseError:
        logger.exception("Could not record refund %s as not sent.", refund.pk)
        _drop_lost_connection()


def _unrecorded(refund: Refund, exc: DatabaseError) -> KhaltiRefundUnknown:
    """Khalti was asked for ``refund``, and the database failed before all of its
    answer was recorded: an unknown outcome, for the person asking as for Khalti.
    """
    logger.error(
        "Khalti was asked for refund %s, and the database failed before its answer was "
        "recorded: what was not recorded stays pending until khalti_reconcile settles it.",
        refund.pk,
        exc_info=exc,
    )
    _drop_lost_connection()
    return KhaltiRefundUnknown(
        _(
            "Khalti was asked for it, but the database failed while its answer was being "
            "recorded. If the refund still shows pending, a re-check (or khalti_reconcile) "
            "settles it; do not refund it again by hand meanwhile."
        )
    )


def _recorded(refund: Refund) -> str:
    return str(Refund.objects.values_list("status", flat=True).get(pk=refund.pk))


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
