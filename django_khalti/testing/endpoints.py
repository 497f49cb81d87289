"""Khalti's endpoints, answering by Khalti's state as Khalti does.

Verify, status, transaction, refund, ePayment initiate and lookup: each reads
the request's parameters and the outcome chosen for it (``None``: Khalti's
state decides) and returns the HTTP answer, changing Khalti's state where
Khalti would.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.utils import timezone as django_timezone

from .calls import _Answer, _as_int, _json
from .records import (
    EPAYMENT_400,
    MIN_AMOUNT,
    TOO_SMALL,
    KhaltiFakeEpayment,
    KhaltiFakePayment,
    khalti_id,
)

_STATUS_ANSWERS = {
    "Initiated": (True, "Transaction is initiated"),
    "Confirmed": (True, "User has confirmed the transaction"),
    "Complete": (True, "Transaction is complete"),
    "Failed": (False, "Payment failed"),
    "Refunded": (True, "Transaction is refunded"),
    "Partially refunded": (True, "Transaction is partially refunded"),
    "Error": (False, "Transaction not found"),
}

_INVALID_TOKEN = {"token": ["Invalid token."]}
_NOT_FOUND = {"detail": "Not found."}


class _Endpoints:
    """Khalti's six endpoints and its records' lookups (part of :class:`KhaltiFake`)."""

    payments: dict[str, KhaltiFakePayment]
    epayments: dict[str, KhaltiFakeEpayment]
    EPAYMENT_LINK_SECONDS: int

    if TYPE_CHECKING:  # pragma: no cover

        def add_epayment(
            self,
            *,
            amount: int,
            purchase_order_id: str = "",
            purchase_order_name: str = "",
            return_url: str = "",
        ) -> KhaltiFakeEpayment: ...

    def _payment(self, token_or_idx: str) -> KhaltiFakePayment | None:
        if token_or_idx in self.payments:
            return self.payments[token_or_idx]
        return next((p for p in self.payments.values() if p.idx == token_or_idx), None)

    def _epayment_by_transaction(self, transaction_id: str) -> KhaltiFakeEpayment | None:
        return next(
            (e for e in self.epayments.values() if e.transaction_id == transaction_id), None
        )

    def _verify(self, params: dict[str, Any], outcome: str | None) -> _Answer:
        token, amount = params.get("token"), _as_int(params.get("amount"))
        payment = self.payments.get(token) if isinstance(token, str) else None
        if outcome == "rejected":
            return _json(400, _INVALID_TOKEN)
        if (
            payment is None
            # No widget payment below Khalti's minimum can exist at Khalti.
            or (isinstance(amount, int) and amount < MIN_AMOUNT)
            or amount != payment.amount
            or payment.state != "Completed"
            or payment.verified
        ):
            return _json(400, _INVALID_TOKEN)
        if outcome == "wrong_amount":
            return _json(200, payment.record(amount=payment.amount + 100))
        payment.verified = True
        return _json(200, payment.record())

    def _status(self, params: dict[str, Any], outcome: str | None) -> _Answer:
        token = params.get("token")
        payment = self._payment(token) if isinstance(token, str) else None
        state = "Error"
        if (
            payment is not None
            and _as_int(params.get("amount")) == payment.amount
            and outcome not in ("rejected", "wrong_amount")
        ):
            state = payment.status_state
        ok, detail = _STATUS_ANSWERS[state]
        return _json(200, {"status": ok, "state": state, "detail": detail})

    def _transaction(self, params: dict[str, Any], outcome: str | None) -> _Answer:
        idx = params["idx"]
        payment = self._payment(idx)
        if (
            outcome != "rejected"
            and payment is not None
            and payment.idx == idx
            and payment.verified
        ):
            return _json(
                200,
                payment.record(amount=payment.amount + 100 if outcome == "wrong_amount" else None),
            )
        epayment = self._epayment_by_transaction(idx)
        if (
            outcome != "rejected"
            and epayment is not None
            and epayment.status in ("Completed", "Refunded", "Partially Refunded")
        ):
            return _json(200, epayment.record())
        return _json(404, _NOT_FOUND)

    def _refund(self, params: dict[str, Any], outcome: str | None) -> _Answer:
        if outcome == "rejected":
            return _json(400, {"detail": "Refund period expired."})
        idx = params["idx"]
        amount, mobile = params.get("amount"), params.get("mobile")
        payment = self._payment(idx)
        epayment = self._epayment_by_transaction(idx)
        holder: KhaltiFakePayment | KhaltiFakeEpayment
        if payment is not None and payment.idx == idx:
            holder, refundable = (
                payment,
                payment.verified and payment.state in ("Completed", "Partially refunded"),
            )
        elif epayment is not None:
            holder, refundable = epayment, epayment.status in ("Completed", "Partially Refunded")
        else:
            return _json(404, _NOT_FOUND)
        if not refundable:
            return _json(400, {"detail": "This transaction cannot be refunded."})
        remaining = holder.amount - holder.refunded_amount
        if amount is None:
            amount = remaining
        if isinstance(amount, bool) or not isinstance(amount, int) or not 0 < amount <= remaining:
            return _json(400, {"detail": "Refund amount is more than the refundable amount."})
        holder.refunded_amount += amount
        holder.refunds.append((amount, mobile))
        full = holder.refunded_amount >= holder.amount
        if isinstance(holder, KhaltiFakePayment):
            holder.state = "Refunded" if full else "Partially refunded"
        else:
            holder.status = "Refunded" if full else "Partially Refunded"
        return _json(200, {"detail": "Transaction refund successful."})

    def _initiate(self, params: dict[str, Any], outcome: str | None) -> _Answer:
        if outcome == "rejected":
            return _json(
                400,
                {
                    "detail": "The merchant cannot start this payment.",
                    "error_key": "validation_error",
                },
            )
        errors: dict[str, list[str]] = {}
        for name in (
            "return_url",
            "website_url",
            "amount",
            "purchase_order_id",
            "purchase_order_name",
        ):
            if params.get(name) in (None, ""):
                errors[name] = ["This field is required."]
        amount: Any = params.get("amount")  # the app's JSON, checked as Khalti would
        if "amount" not in errors and (isinstance(amount, bool) or not isinstance(amount, int)):
            errors["amount"] = ["A valid integer is required."]
        elif "amount" not in errors and amount < MIN_AMOUNT:
            errors["amount"] = [TOO_SMALL]
        for name in ("return_url", "website_url"):
            value = params.get(name)
            if name not in errors and not (
                isinstance(value, str) and value.startswith(("http://", "https://"))
            ):
                errors[name] = ["Enter a valid URL."]
        breakdown = params.get("amount_breakdown")
        if "amount" not in errors and breakdown:
            total = sum(part.get("amount", 0) for part in breakdown if isinstance(part, dict))
            if total != amount:
                errors["amount"] = ["Amount Breakdown's total doesn't match with the amount."]
        if errors:
            return _json(400, {**errors, "error_key": "validation_error"})
        epayment = self.add_epayment(
            amount=amount,
            purchase_order_id=str(params["purchase_order_id"]),
            purchase_order_name=str(params["purchase_order_name"]),
            return_url=params["return_url"],
        )
        epayment.website_url = params["website_url"]
        epayment.request = params
        return _json(
            200,
            {
                "pidx": epayment.pidx,
                "payment_url": epayment.payment_url,
                "expires_at": epayment.expires_at.isoformat() if epayment.expires_at else None,
                "expires_in": self.EPAYMENT_LINK_SECONDS,
            },
        )

    def _lookup(self, params: dict[str, Any], outcome: str | None) -> _Answer:
        # Any JSON value: one that is no pidx finds nothing (a list fails, as before).
        epayment = self.epayments.get(params.get("pidx"))  # type: ignore[arg-type]
        if epayment is None or outcome == "rejected":
            return _json(404, {**_NOT_FOUND, "error_key": "validation_error"})
        if (
            epayment.status == "Initiated"
            and epayment.expires_at is not None
            and epayment.expires_at <= django_timezone.now()
        ):
            epayment.status = "Expired"
        total = epayment.amount + 100 if outcome == "wrong_amount" else None
        body = epayment.lookup_body(total_amount=total)
        if outcome == "wrong_amount":
            body["status"] = "Completed"
            body["transaction_id"] = epayment.transaction_id or khalti_id()
        return _json(400 if body["status"] in EPAYMENT_400 else 200, body)
