"""What the fake Khalti holds: widget payments and ePayments, as Khalti keeps them.

The fake plays Khalti's part: its states and statuses are spelled here as
Khalti spells them.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from django.utils import timezone as django_timezone

from ..rules.shapes import (
    BANK_MIN_AMOUNT,
    EPAYMENT_400,
    EPAYMENT_STATUSES,
    FOREIGN,
    MIN_AMOUNT,
    NPT,
    TOO_SMALL,
    WALLET,
    WIDGET,
    Held,
    HeldEpayment,
    list_record,
    lookup_body,
    payment_refusal,
    record,
    return_params,
)

__all__ = [
    "EPAYMENT_400",
    "EPAYMENT_STATUSES",
    "MIN_AMOUNT",
    "NPT",
    "TOO_SMALL",
    "WIDGET_STATES",
    "KhaltiFakeEpayment",
    "KhaltiFakeForeign",
    "KhaltiFakePayment",
    "khalti_id",
]

#: A foreign transaction's state at Khalti (as the transaction list spells it).
FOREIGN_STATES = ("Completed", "Refunded", "Partially refunded")
#: A widget payment's state at Khalti (the status endpoint then says Confirmed
#: for a Completed payment not yet verified, Complete once verified).
WIDGET_STATES = ("Initiated", "Completed", "Failed", "Refunded", "Partially refunded")


def _payable(amount: object, funded_by: str = WALLET) -> int:
    """``amount`` if Khalti would take a payment of it from ``funded_by``: a positive
    int of paisa, at least :data:`MIN_AMOUNT` (:data:`BANK_MIN_AMOUNT` from a bank).
    Raises ``ValueError`` otherwise, as a fake payment of it could never exist at Khalti.
    """
    refusal = payment_refusal(amount, funded_by)
    if refusal is None:
        assert isinstance(amount, int)
        return amount
    if refusal.rule == "payment.minimum" and isinstance(amount, int) and amount > 0:
        raise ValueError(
            f"amount={amount}: Khalti refuses payments below Rs 10 ({MIN_AMOUNT} paisa): "
            f"{TOO_SMALL!r} A buyer cannot pay it, so the fake holds no such payment. "
            "(Amounts are in paisa: Rs 10 is 1000.)"
        )
    if refusal.rule == "payment.bank-minimum":
        raise ValueError(
            f"amount={amount}: Khalti takes no bank payment below Rs 100 ({BANK_MIN_AMOUNT} "
            "paisa), so the fake holds no such payment."
        )
    raise ValueError(refusal.message)


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
    #: Where the buyer's money came from: ``"wallet"`` or ``"bank"`` (whose refunds
    #: Khalti makes only to a ``mobile``).
    funded_by: str = WALLET

    def held(self) -> Held:
        """The payment as Khalti's rules read it."""
        return Held(
            idx=self.idx,
            amount=self.amount,
            state=self.status_state,
            mobile=self.mobile,
            created_on=self.created_on,
            kind=WIDGET,
            token=self.token,
            fee_amount=self.fee_amount,
            refunded_amount=self.refunded_amount,
            funded_by=self.funded_by,
        )

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
        return record(self.held(), amount)

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
    #: Khalti's fee, in paisa (lookup says 0 until the buyer has paid).
    fee: int = 0
    mobile: str = ""
    refunded_amount: int = 0
    refunds: list[tuple[int, str | None]] = field(default_factory=list)
    expires_at: datetime | None = None
    payment_url: str = ""
    #: The body the app sent to initiate it (empty if registered with add_epayment).
    request: dict[str, Any] = field(default_factory=dict)
    created_on: datetime = field(default_factory=_now)
    #: Where the buyer's money came from, once paid: ``"wallet"`` or ``"bank"``.
    funded_by: str = WALLET

    def held(self) -> HeldEpayment:
        """The ePayment as Khalti's rules read it."""
        return HeldEpayment(
            pidx=self.pidx,
            amount=self.amount,
            status=self.status,
            expires_at=self.expires_at,
            transaction_id=self.transaction_id,
            fee=self.fee if self.transaction_id else 0,
            refunded_amount=self.refunded_amount,
        )

    def lookup_body(self, total_amount: int | None = None) -> dict[str, Any]:
        """What lookup answers for it now."""
        body = lookup_body(self.held(), django_timezone.now())
        return body if total_amount is None else {**body, "total_amount": total_amount}

    def return_params(self) -> dict[str, str]:
        """The query string Khalti appends to ``return_url`` when it sends the
        buyer back: the browser's word, which the app must not trust.
        """
        return return_params(
            self.held(),
            mobile=self.mobile,
            purchase_order_id=self.purchase_order_id,
            purchase_order_name=self.purchase_order_name,
            now=django_timezone.now(),
        )

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
        return record(
            Held(
                idx=self.transaction_id or "",
                amount=self.amount,
                state="Complete",
                mobile=self.mobile,
                created_on=self.created_on,
                fee_amount=self.fee,
                refunded_amount=self.refunded_amount,
                funded_by=self.funded_by,
            )
        )


@dataclass
class KhaltiFakeForeign:
    """A transaction of the merchant's made through another channel (see
    :meth:`KhaltiFake.add_foreign`): in Khalti's list, matching no payment of the app's.
    """

    idx: str
    amount: int
    #: One of :data:`FOREIGN_STATES`.
    state: str
    fee_amount: int
    created_on: datetime
    funded_by: str = WALLET
    mobile: str = "9800000002"
    refunded_amount: int = 0
    #: Refunds Khalti made: ``(amount, mobile)``.
    refunds: list[tuple[int, str | None]] = field(default_factory=list)

    def held(self) -> Held:
        """The transaction as Khalti's rules read it."""
        return Held(
            idx=self.idx,
            amount=self.amount,
            state="Complete" if self.state == "Completed" else self.state,
            mobile=self.mobile,
            created_on=self.created_on,
            kind=FOREIGN,
            fee_amount=self.fee_amount,
            refunded_amount=self.refunded_amount,
            funded_by=self.funded_by,
        )

    def record(self) -> dict[str, Any]:
        """The transaction as Khalti's transaction list gives it."""
        return list_record(self.held())
