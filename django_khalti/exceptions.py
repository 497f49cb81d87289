"""Errors raised by dj-khalti.

Every :class:`KhaltiError` carries a stable machine ``code`` and a human,
translatable ``detail``. None of them ever holds the secret key or the payer's
details.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.utils.translation import gettext_lazy as _


class KhaltiConfigurationError(ImproperlyConfigured):
    """The ``KHALTI`` settings are missing or wrong (a bug in the shop, not the buyer)."""


class KhaltiError(Exception):
    code = "khalti_error"
    default_detail: Any = _("The Khalti payment could not be processed.")

    def __init__(self, detail: Any = None) -> None:
        self.detail = detail if detail is not None else self.default_detail
        super().__init__(str(self.detail))

    def extra(self) -> dict[str, Any]:
        """More of the refusal for the API's answer, beside ``code`` and ``detail``."""
        return {}


# --- Refusals decided by the shop's rules, before or instead of calling Khalti ---


class KhaltiUnknownOrder(KhaltiError):
    code = "unknown_order"
    default_detail = _("No order with this product identity is awaiting payment.")


class KhaltiUnknownPayment(KhaltiError):
    code = "unknown_payment"
    default_detail = _("No payment of ours has this Khalti payment id.")


class KhaltiAmountMismatch(KhaltiError):
    code = "amount_mismatch"
    default_detail = _("The amount does not match the order's amount.")


class KhaltiTokenUsed(KhaltiError):
    code = "token_used"
    default_detail = _("This payment token was already used for another order or amount.")


class KhaltiAlreadyPaid(KhaltiError):
    code = "already_paid"
    default_detail = _("This order has already been paid.")


class KhaltiInProgress(KhaltiError):
    code = "in_progress"
    default_detail = _("This payment is being confirmed right now. Try again in a moment.")


class KhaltiAmountTooSmall(KhaltiError):
    code = "amount_too_small"
    default_detail = _("Khalti takes online payments of Rs 10 or more.")


class KhaltiInitiationRejected(KhaltiError):
    """Khalti refused to start an ePayment; ``errors`` holds its field messages."""

    code = "initiation_rejected"
    default_detail = _("Khalti refused to start the payment.")

    def __init__(self, detail: Any = None, errors: dict[str, Any] | None = None) -> None:
        self.errors = errors or {}
        super().__init__(detail)

    def extra(self) -> dict[str, Any]:
        return {"errors": self.errors}


class KhaltiVerificationFailed(KhaltiError):
    """Khalti answered, and the answer is that the payment is not good."""

    code = "verification_failed"
    default_detail = _("Khalti did not confirm this payment.")


# --- Khalti itself: what the client raises ---


class KhaltiRejected(KhaltiError):
    """Khalti answered HTTP 4xx with a readable error body: a definitive refusal."""

    code = "khalti_rejected"

    def __init__(self, detail: Any, status_code: int, body: Any = None) -> None:
        self.status_code = status_code
        self.body = body
        super().__init__(detail)


class KhaltiUnavailable(KhaltiError):
    """Khalti could not be reached or gave no usable answer: the outcome is unknown."""

    code = "khalti_unavailable"
    default_detail = _("Khalti could not be reached. The payment is pending; try again shortly.")
    http_status = 502


class KhaltiTimeout(KhaltiUnavailable):
    default_detail = _("Khalti did not answer in time. The payment is pending; try again shortly.")
    http_status = 504


class KhaltiConnectionError(KhaltiUnavailable):
    http_status = 503


class KhaltiBadResponse(KhaltiUnavailable):
    """Khalti answered, but not with anything we can trust (5xx, non-JSON, wrong shape, 401)."""

    http_status = 502


# --- Refunds ---


class KhaltiNotRefundable(KhaltiError):
    code = "not_refundable"
    default_detail = _("Only a payment Khalti confirmed can be refunded.")


class KhaltiInvalidRefundAmount(KhaltiError):
    code = "invalid_refund_amount"
    default_detail = _("A refund must be more than nothing and no more than what remains.")


class KhaltiRefundInProgress(KhaltiError):
    code = "refund_in_progress"
    default_detail = _(
        "Another refund of this payment awaits Khalti's answer. Re-check it before refunding again."
    )


class KhaltiRefundFailed(KhaltiError):
    code = "refund_failed"
    default_detail = _("Khalti refused the refund.")


class KhaltiRefundUnknown(KhaltiUnavailable):
    """The refund's outcome is unknown: the money may have gone back."""

    default_detail = _(
        "Khalti did not answer the refund: it may have gone through. It stays pending until "
        "a re-check (or khalti_reconcile) settles it; do not refund it again by hand meanwhile."
    )
