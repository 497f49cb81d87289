"""What the fake Khalti holds: widget payments and ePayments, as Khalti keeps them.

The fake plays Khalti's part: its states and statuses are spelled here as
Khalti spells them.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlencode

from django.utils import timezone as django_timezone

#: Nepal's time zone, in which Khalti writes its timestamps.
NPT = timezone(timedelta(hours=5, minutes=45))

#: A widget payment's state at Khalti (the status endpoint then says Confirmed
#: for a Completed payment not yet verified, Complete once verified).
WIDGET_STATES = ("Initiated", "Completed", "Failed", "Refunded", "Partially refunded")
#: An ePayment's status, as lookup spells it.
EPAYMENT_STATUSES = (
    "Initiated",
    "Pending",
    "Completed",
    "Expired",
    "User canceled",
    "Refunded",
    "Partially Refunded",
)
#: Lookup answers these with HTTP 400 (and the same body).
EPAYMENT_400 = ("Expired", "User canceled")
#: Khalti's smallest payment, in paisa (Rs 10): ePayment initiate refuses less
#: (HTTP 400 on ``amount``), and so does the widget, in the buyer's browser, before
#: any token exists.
MIN_AMOUNT = 1000
#: What Khalti says of an amount below :data:`MIN_AMOUNT`.
TOO_SMALL = "Amount should be greater than Rs. 10, that is 1000 paisa."


def _payable(amount: object) -> int:
    """``amount`` if Khalti would take a payment of it: a positive int of paisa, at
    least :data:`MIN_AMOUNT`. Raises ``ValueError`` otherwise, as a fake payment of
    it could never exist at Khalti.
    """
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise ValueError("amount must be a positive int (paisa).")
    if amount < MIN_AMOUNT:
        raise ValueError(
            f"amount={amount}: Khalti refuses payments below Rs 10 ({MIN_AMOUNT} paisa): "
            f"{TOO_SMALL!r} A buyer cannot pay it, so the fake holds no such payment. "
            "(Amounts are in paisa: Rs 10 is 1000.)"
        )
    return amount


_ID_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def khalti_id() -> str:
    """A new id shaped like Khalti's (22 characters of base 57)."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(22))


def _canonical(value: str, allowed: tuple[str, ...], what: str) -> str:
    for name in allowed:
        if value.strip().lower() == name.lower():
            return name
    raise ValueError(f"Unknown {what} {value!r}; one of {', '.join(allowed)}.")


def _refunded(state: str, amount: int, given: int | None) -> int:
    """What a payment in Khalti's ``state`` had refunded, unless ``given``: all of
    it when refunded, half (at least a paisa) when partially refunded, else nothing.
    """
    if given is not None:
        return given
    return {"refunded": amount, "partially refunded": max(1, amount // 2)}.get(state.lower(), 0)


def _now() -> datetime:
    return django_timezone.now().astimezone(NPT)


@dataclass
class KhaltiFakePayment:
    """A widget payment at Khalti (see :meth:`KhaltiFake.add_payment`)."""

    token: str
    amount: int
    #: One of :data:`WIDGET_STATES`.
    state: str
    idx: str
    #: Whether the merchant has verified it (Khalti's status: Complete, not Confirmed).
    verified: bool = False
    mobile: str = "98XXXXXXX9"
    fee_amount: int = 0
    refunded_amount: int = 0
    #: Refunds Khalti made: ``(amount, mobile)``.
    refunds: list[tuple[int, str | None]] = field(default_factory=list)
    created_on: datetime = field(default_factory=_now)

    def payload(self, product_identity: str, **extra: Any) -> dict[str, Any]:
        """What the widget's ``onSuccess`` hands the page for this payment: the
        body to post to ``django_khalti:verify``.
        """
        return {
            "idx": self.idx,
            "token": self.token,
            "amount": self.amount,
            "mobile": self.mobile,
            "product_identity": product_identity,
            "product_name": product_identity,
            "product_url": "",
            "widget_id": "khalti-widget-1",
            **extra,
        }

    def record(self, amount: int | None = None) -> dict[str, Any]:
        """Khalti's transaction record, as verify and the transaction endpoint give it."""
        return _record(
            self.idx,
            self.amount if amount is None else amount,
            self.fee_amount,
            self.refunded_amount,
            self.mobile,
            self.created_on,
        )

    @property
    def status_state(self) -> str:
        """What the status endpoint says of it."""
        if self.state == "Completed":
            return "Complete" if self.verified else "Confirmed"
        return self.state


@dataclass
class KhaltiFakeEpayment:
    """An ePayment at Khalti (see :meth:`KhaltiFake.add_epayment`)."""

    pidx: str
    amount: int
    #: One of :data:`EPAYMENT_STATUSES`.
    status: str
    purchase_order_id: str = ""
    purchase_order_name: str = ""
    return_url: str = ""
    website_url: str = ""
    #: Khalti's transaction id, once the buyer has paid (what refunds need).
    transaction_id: str | None = None
    fee: int = 0
    mobile: str = ""
    refunded_amount: int = 0
    refunds: list[tuple[int, str | None]] = field(default_factory=list)
    expires_at: datetime | None = None
    payment_url: str = ""
    #: The body the app sent to initiate it (empty if registered with add_epayment).
    request: dict[str, Any] = field(default_factory=dict)
    created_on: datetime = field(default_factory=_now)

    def lookup_body(self, total_amount: int | None = None) -> dict[str, Any]:
        """What lookup answers for it."""
        return {
            "pidx": self.pidx,
            "total_amount": self.amount if total_amount is None else total_amount,
            "status": self.status,
            "transaction_id": self.transaction_id,
            "fee": self.fee,
            "refunded": self.refunded_amount > 0,
        }

    def return_params(self) -> dict[str, str]:
        """The query string Khalti appends to ``return_url`` when it sends the
        buyer back: the browser's word, which the app must not trust.
        """
        paid = self.transaction_id is not None and self.status != "User canceled"
        transaction_id = (self.transaction_id or "") if paid else ""
        return {
            "pidx": self.pidx,
            "transaction_id": transaction_id,
            "tidx": transaction_id,
            "amount": str(self.amount),
            "total_amount": str(self.amount),
            "mobile": self.mobile if paid else "",
            "status": self.status,
            "purchase_order_id": self.purchase_order_id,
            "purchase_order_name": self.purchase_order_name,
        }

    def return_url_with_params(self) -> str:
        """Where Khalti sends the buyer's browser back: ``return_url`` with
        :meth:`return_params`. Without a ``return_url`` (registered with
        ``add_epayment``), the app's ``django_khalti:epayment-return`` path.
        """
        base = self.return_url
        if not base:
            from django.urls import reverse

            base = reverse("django_khalti:epayment-return")
        return f"{base}{'&' if '?' in base else '?'}{urlencode(self.return_params())}"

    def record(self) -> dict[str, Any]:
        """Khalti's transaction record of the paid ePayment, as the transaction endpoint gives it."""
        return _record(
            self.transaction_id or "",
            self.amount,
            self.fee,
            self.refunded_amount,
            self.mobile,
            self.created_on,
        )


def _record(
    idx: str, amount: int, fee: int, refunded: int, mobile: str, created_on: datetime
) -> dict[str, Any]:
    return {
        "idx": idx,
        "type": {"idx": "e476BL6jt9kgagEmsakyTL", "name": "Wallet payment"},
        "state": {"idx": "DhvMj9hdRufLqkP8ZY4d8g", "name": "Completed", "template": "is complete"},
        "amount": amount,
        "fee_amount": fee,
        "refunded": refunded > 0,
        "created_on": created_on.isoformat(),
        "ebanker": None,
        "user": {"idx": "cCaPkRPQGn5D8StkiqqMJg", "name": "Test User", "mobile": mobile},
        "merchant": {
            "idx": "UM75Gm2gWmZvA4TPwkwZye",
            "name": "Test Merchant",
            "mobile": "merchant@example.com",
        },
    }
