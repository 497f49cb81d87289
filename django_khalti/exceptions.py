"""Errors raised by dj-khalti.

Every :class:`KhaltiError` carries a stable machine ``code`` and a human,
translatable ``detail``. None of them ever holds the secret key or the payer's
details.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db.models import Model, ProtectedError
from django.utils.functional import Promise
from django.utils.translation import gettext_lazy as _


class KhaltiConfigurationError(ImproperlyConfigured):
    """The ``KHALTI`` settings are missing or wrong (a bug in the shop, not the buyer)."""


class KhaltiPaymentAsSent(TypeError):
    """``save()`` or ``delete()`` of a signal receiver's ``payment``: the payment as
    it was when the signal was sent, not the row as it stands now. Written back,
    it would rewind the row (a refunded payment saved as verified could be
    refunded twice).
    """

    def __init__(self, payment: Any, signal: str, action: str) -> None:
        self.payment_id = payment.pk
        super().__init__(
            f"This Payment is payment {payment.pk} as it was when {signal} was sent (a "
            f"receiver's own copy), so it cannot be {action}. Read the row as it stands now "
            f"with Payment.objects.get(pk=payment.pk), and change a payment's status only "
            f"through django_khalti.services (refund_payment, ...)."
        )


class KhaltiProtectedError(ProtectedError):
    """A delete that would erase the record of money, or a signal the shop has not had yet.

    Nothing was deleted. A :class:`~django.db.models.ProtectedError`, as Django raises for
    a ``PROTECT`` foreign key, so code that already handles a refused delete handles this
    one. ``kept`` lists each row refused with why; ``rule`` says what may be deleted;
    ``protected_objects`` holds the rows, as Django's does.
    """

    def __init__(self, kept: list[tuple[Model, str]], rule: str, purge: str = "") -> None:
        self.kept = kept
        self.rule = rule
        shown = "; ".join(f"{row} ({why})" for row, why in kept[:10])
        more = f"; and {len(kept) - 10} more" if len(kept) > 10 else ""
        self.message = f"Not deleted, {len(kept)} kept: {shown}{more}. {rule} {purge}".strip()
        super().__init__(self.message, {row for row, _ in kept})

    def __str__(self) -> str:
        return self.message


class KhaltiError(Exception):
    """The base of every refusal and Khalti failure dj-khalti raises.

    ``code`` is stable and machine-readable; ``detail`` (default: ``default_detail``)
    is for people and translatable. The API answers ``{"code", "detail", **extra()}``
    with the HTTP status ``status_code``, as DRF's ``APIException`` does.

    An error about one of Khalti's answers names the client's ``endpoint``
    (``"verify"``, ``"status"``, ...) and Khalti's HTTP status (``khalti_status``,
    None when Khalti never answered), never its body or our key.
    """

    code = "khalti_error"
    status_code = 400
    default_detail: str | Promise = _("The Khalti payment could not be processed.")
    #: The client's call this is about, when it is about one of Khalti's answers.
    endpoint = ""
    #: Khalti's HTTP status, when it answered.
    khalti_status: int | None = None

    def __init__(
        self, detail: str | Promise | None = None, *, khalti_status: int | None = None
    ) -> None:
        self.detail = detail if detail is not None else self.default_detail
        if khalti_status is not None:
            self.khalti_status = khalti_status
        super().__init__(str(self.detail))

    def extra(self) -> dict[str, Any]:
        """More of the refusal for the API's answer, beside ``code`` and ``detail``."""
        return {}


# --- Refusals decided by the shop's rules, before or instead of calling Khalti ---


class KhaltiUnknownOrder(KhaltiError):
    """The shop's resolver knows no order awaiting payment by this reference."""

    code = "unknown_order"
    status_code = 404
    default_detail = _("No order with this product identity is awaiting payment.")


class KhaltiUnknownPayment(KhaltiError):
    """A ``pidx`` that no payment of ours was started with."""

    code = "unknown_payment"
    status_code = 404
    default_detail = _("No payment of ours has this Khalti payment id.")


class KhaltiAmountMismatch(KhaltiError):
    """The amount sent is not the amount the shop's resolver expects."""

    code = "amount_mismatch"
    default_detail = _("The amount does not match the order's amount.")


class KhaltiTokenUsed(KhaltiError):
    """The widget token was first verified for another order or amount."""

    code = "token_used"
    status_code = 409
    default_detail = _("This payment token was already used for another order or amount.")


class KhaltiAlreadyPaid(KhaltiError):
    """The order already has a payment Khalti confirmed."""

    code = "already_paid"
    status_code = 409
    default_detail = _("This order has already been paid.")


class KhaltiInProgress(KhaltiError):
    """Another request is settling this payment or order right now: retry shortly."""

    code = "in_progress"
    status_code = 409
    default_detail = _("This payment is being confirmed right now. Try again in a moment.")


class KhaltiAmountTooSmall(KhaltiError):
    """The order is below Khalti's ePayment minimum of Rs 10."""

    code = "amount_too_small"
    default_detail = _("Khalti takes online payments of Rs 10 or more.")


class KhaltiInitiationRejected(KhaltiError):
    """Khalti refused to start an ePayment; ``errors`` holds its field messages."""

    code = "initiation_rejected"
    default_detail = _("Khalti refused to start the payment.")

    def __init__(
        self, detail: str | Promise | None = None, errors: dict[str, Any] | None = None
    ) -> None:
        self.errors = errors or {}
        super().__init__(detail)

    def extra(self) -> dict[str, Any]:
        """Khalti's field messages, as ``errors``."""
        return {"errors": self.errors}


class KhaltiVerificationFailed(KhaltiError):
    """Khalti answered, and the answer is that the payment is not good."""

    code = "verification_failed"
    default_detail = _("Khalti did not confirm this payment.")


class KhaltiNeedsReview(KhaltiVerificationFailed):
    """Khalti's answer moved money the shop must not honour without a person's look
    (another amount, a second payment of a paid order, an answer not tied to this
    payment). The order is not paid by it; the shop will refund or settle it.
    """

    code = "needs_review"
    default_detail = _(
        "Khalti's answer for this payment needs a check by the shop before the order "
        "counts as paid. The shop will contact you or refund it."
    )


# --- Khalti itself: what the client raises ---


class KhaltiRejected(KhaltiError):
    """Khalti answered HTTP 4xx with a readable error body: a definitive refusal."""

    code = "khalti_rejected"

    def __init__(self, detail: str | Promise, khalti_status: int, body: Any = None) -> None:
        #: Khalti's answer, for the payment's record (never in the message).
        self.body = body
        super().__init__(detail, khalti_status=khalti_status)


class KhaltiUnavailable(KhaltiError):
    """Khalti could not be reached or gave no usable answer: the outcome is unknown."""

    code = "khalti_unavailable"
    default_detail = _("Khalti could not be reached. The payment is pending; try again shortly.")
    status_code = 502


class KhaltiTimeout(KhaltiUnavailable):
    """Khalti did not answer within ``TIMEOUT``; the outcome is unknown."""

    default_detail = _("Khalti did not answer in time. The payment is pending; try again shortly.")
    status_code = 504


class KhaltiConnectionError(KhaltiUnavailable):
    """Khalti could not be connected to; it never saw the request."""

    status_code = 503


class KhaltiBadResponse(KhaltiUnavailable):
    """Khalti answered, but not with anything we can trust (5xx, non-JSON, wrong shape, 401)."""

    status_code = 502


# --- Refunds ---


class KhaltiNotRefundable(KhaltiError):
    """The payment is not one Khalti confirmed, or has no Khalti transaction id to refund."""

    code = "not_refundable"
    default_detail = _("Only a payment Khalti confirmed can be refunded.")


class KhaltiTransactionUnknown(KhaltiNotRefundable):
    """Money moved for the payment, but Khalti's transaction id of it, which a refund
    needs, is unknown: Khalti's records do not name it, and none was given (or the
    one given is not this payment's transaction).
    """

    code = "transaction_unknown"
    default_detail = _(
        "Khalti's transaction id of this payment is unknown, and Khalti's records do not "
        "name it. Find the transaction in Khalti's dashboard and give its id with the refund."
    )


class KhaltiInvalidRefundAmount(KhaltiError):
    """The refund's amount is not between 1 paisa and what remains refundable."""

    code = "invalid_refund_amount"
    default_detail = _("A refund must be more than nothing and no more than what remains.")


class KhaltiRefundInProgress(KhaltiError):
    """Another refund of the payment awaits Khalti's answer: one refund at a time."""

    code = "refund_in_progress"
    status_code = 409
    default_detail = _(
        "Another refund of this payment awaits Khalti's answer. Re-check it before refunding again."
    )


class KhaltiRefundFailed(KhaltiError):
    """Khalti refused the refund: nothing was refunded."""

    code = "refund_failed"
    default_detail = _("Khalti refused the refund.")


class KhaltiRefundConflict(KhaltiError):
    """A refund's outcome was recorded otherwise while this answer was on its way:
    a person's answer lost to Khalti's, or Khalti's answer contradicts what was
    recorded (the payment then needs review).
    """

    code = "refund_conflict"
    status_code = 409
    default_detail = _(
        "This refund was settled otherwise meanwhile; the payment needs review in the admin."
    )


class KhaltiRefundUnknown(KhaltiUnavailable):
    """The refund's outcome is unknown: the money may have gone back."""

    default_detail = _(
        "Khalti did not answer the refund: it may have gone through. It stays pending until "
        "a re-check (or khalti_reconcile) settles it; do not refund it again by hand meanwhile."
    )
