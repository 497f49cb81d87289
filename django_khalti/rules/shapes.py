"""Khalti's words and shapes: its constants, records and bodies, and what a payment may be.

Part of :mod:`django_khalti.rules` (see there); plain Python on Django's utilities.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple

from django.utils import timezone as django_timezone

#: Nepal's time zone, in which Khalti writes its timestamps.
NPT = timezone(timedelta(hours=5, minutes=45))
#: Khalti's smallest payment, in paisa (Rs 10).
MIN_AMOUNT = 1000
#: What Khalti says of an amount below :data:`MIN_AMOUNT`.
TOO_SMALL = "Amount should be greater than Rs. 10, that is 1000 paisa."
#: The largest amount Khalti's records hold, in paisa: a 64-bit integer (DRF bounds a
#: ``BigIntegerField`` so; Khalti's real limit per payment is undocumented and lower).
MAX_AMOUNT = 2**63 - 1
#: What Khalti says of an amount above :data:`MAX_AMOUNT` (DRF's words).
TOO_LARGE = f"Ensure this value is less than or equal to {MAX_AMOUNT}."
#: The smallest payment from a bank (e-banking, mobile banking), in paisa (Rs 100).
BANK_MIN_AMOUNT = 10000
#: What the sandbox says of a bank payment below :data:`BANK_MIN_AMOUNT` (Khalti's words unknown).
BANK_TOO_SMALL = "Amount should be greater than Rs. 100, that is 10000 paisa, for a bank payment."
#: How long an ePayment link is good for (Khalti's sandbox answers 1800).
LINK_SECONDS = 1800
#: Khalti's fee in the sandbox: 3 % (Rs 0.30 of Rs 10, as in Khalti's example).
FEE_PERCENT = 3
#: Longest purchase order id and name the sandbox keeps.
MAX_LENGTH = 255

#: Where a payment's money came from: the buyer's Khalti wallet, or a bank.
WALLET, BANK = "wallet", "bank"
FUNDED_BY = (WALLET, BANK)
#: A transaction's flow: a widget payment, an ePayment, or one made through another
#: channel of the same merchant (Khalti's dashboard, a POS, another site on the key).
WIDGET, EPAYMENT, FOREIGN = "widget", "epayment", "foreign"

#: A transaction's state, in the status endpoint's words.
INITIATED, CONFIRMED, COMPLETE = "Initiated", "Confirmed", "Complete"
FAILED, REFUNDED, PARTIALLY_REFUNDED = "Failed", "Refunded", "Partially refunded"
#: The states of a transaction the merchant has (verified and) received.
SETTLED = (COMPLETE, REFUNDED, PARTIALLY_REFUNDED)
#: The states a refund may start from.
REFUNDABLE = (COMPLETE, PARTIALLY_REFUNDED)
#: A settled transaction's state, as the merchant's transaction list spells it.
LIST_STATES = {
    COMPLETE: "Completed",
    REFUNDED: "Refunded",
    PARTIALLY_REFUNDED: "Partially refunded",
}
#: The transaction list's page size, unless ``?page_size=`` asks another, and the most
#: it gives (DRF's ``PageNumberPagination`` with ``max_page_size``).
PAGE_SIZE, MAX_PAGE_SIZE = 20, 100
#: What the list answers for a page it has not (DRF's words).
INVALID_PAGE = {"detail": "Invalid page."}

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
#: The statuses in which the buyer can still pay (or cancel) on the hosted page.
PAYABLE = ("Initiated", "Pending")

REQUIRED = "This field is required."
INVALID_TOKEN = {"token": ["Invalid token."]}
NOT_FOUND = {"detail": "Not found."}
STATUS_DETAILS = {
    INITIATED: (True, "Transaction is initiated"),
    CONFIRMED: (True, "User has confirmed the transaction"),
    COMPLETE: (True, "Transaction is complete"),
    FAILED: (False, "Payment failed"),
    REFUNDED: (True, "Transaction is refunded"),
    PARTIALLY_REFUNDED: (True, "Transaction is partially refunded"),
    "Error": (False, "Transaction not found"),
}
NOT_REFUNDABLE = "This transaction cannot be refunded."
OVER_REFUND = "Refund amount is more than the refundable amount."
BANK_NEEDS_MOBILE = "Mobile is required to refund a payment made from a bank."
REFUNDED_OK = "Transaction refund successful."
BREAKDOWN_MISMATCH = "Amount Breakdown's total doesn't match with the amount."


@dataclass(frozen=True)
class Held:
    """A transaction as Khalti holds it: a widget payment, or a paid ePayment's."""

    idx: str
    amount: int
    #: In the status endpoint's words: Initiated, Confirmed, Complete, Failed,
    #: Refunded, Partially refunded.
    state: str
    mobile: str
    created_on: datetime
    kind: str = WIDGET
    token: str | None = None
    fee_amount: int | None = None
    refunded_amount: int = 0
    funded_by: str = WALLET


@dataclass(frozen=True)
class HeldEpayment:
    """An ePayment as Khalti holds it."""

    pidx: str
    amount: int
    #: One of :data:`EPAYMENT_STATUSES` (as stored: :func:`lookup_status` adds expiry).
    status: str
    expires_at: datetime | None
    transaction_id: str | None = None
    fee: int = 0
    refunded_amount: int = 0


# --- reading a request, as Khalti's DRF fields do ---------------------------------------

_DECIMAL_TAIL = re.compile(r"\.0*\s*$")


def integer(value: object) -> int | None:
    """``value`` as an int as Khalti (DRF's ``IntegerField``) reads it: ``1000``,
    ``"1000"``, ``1000.0``; ``None`` for anything else (``True``, ``10.5``, ``"10 rs"``).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        return int(_DECIMAL_TAIL.sub("", str(value)))
    except ValueError:
        return None


def text_field(params: Mapping[str, Any], name: str, errors: dict[str, list[str]]) -> str:
    """``params[name]`` read as DRF's ``CharField`` reads it (stripped); its error goes
    to ``errors`` (and ``""`` is returned) when it is missing, blank or no string.
    """
    value = params.get(name)
    if value is None:
        errors[name] = [REQUIRED]
    elif isinstance(value, bool) or not isinstance(value, (str, int, float)):
        errors[name] = ["Not a valid string."]
    elif not str(value).strip():
        errors[name] = ["This field may not be blank."]
    else:
        return str(value).strip()
    return ""


def integer_field(params: Mapping[str, Any], name: str, errors: dict[str, list[str]]) -> int:
    """``params[name]`` read as DRF's ``IntegerField`` reads it; its error goes to
    ``errors`` (and ``0`` is returned) when it is missing or no integer.
    """
    if params.get(name) is None:
        errors[name] = [REQUIRED]
        return 0
    value = integer(params[name])
    if value is None:
        errors[name] = ["A valid integer is required."]
        return 0
    return value


# --- shapes ------------------------------------------------------------------------------


def fee(amount: int) -> int:
    """Khalti's fee on ``amount`` paisa in the sandbox."""
    return amount * FEE_PERCENT // 100


def mask_mobile(mobile: str) -> str:
    """The payer's Khalti id as Khalti shows it to merchants: ``98XXXXXXX1``."""
    if len(mobile) < 4:
        return mobile
    return mobile[:2] + "X" * (len(mobile) - 3) + mobile[-1]


def timestamp(when: datetime) -> str:
    """A time as Khalti writes it: ISO 8601 in Nepal's time zone."""
    return when.astimezone(NPT).isoformat()


_TYPES = {
    WALLET: {"idx": "e476BL6jt9kgagEmsakyTL", "name": "Wallet payment"},
    BANK: {"idx": "LqnbhDCg6dfr5bxW5BEnGw", "name": "Ebanking payment"},
}


def record(held: Held, amount: int | None = None) -> dict[str, Any]:
    """Khalti's transaction record, as verify and the transaction endpoint give it
    (``amount``: another amount than the one held, for the kit's ``wrong_amount``).
    """
    return {
        "idx": held.idx,
        "type": dict(_TYPES[held.funded_by]),
        "state": {"idx": "DhvMj9hdRufLqkP8ZY4d8g", "name": "Completed", "template": "is complete"},
        "amount": held.amount if amount is None else amount,
        "fee_amount": fee(held.amount) if held.fee_amount is None else held.fee_amount,
        "refunded": held.refunded_amount > 0,
        "created_on": timestamp(held.created_on),
        "ebanker": {"name": "Sandbox Bank Ltd."} if held.funded_by == BANK else None,
        "user": {
            "idx": "cCaPkRPQGn5D8StkiqqMJg",
            "name": "Test User",
            "mobile": mask_mobile(held.mobile),
        },
        "merchant": {
            "idx": "UM75Gm2gWmZvA4TPwkwZye",
            "name": "Test Merchant",
            "mobile": "merchant@example.com",
        },
    }


def list_record(held: Held) -> dict[str, Any]:
    """A settled transaction as the merchant's transaction list gives it: flat, ``type``
    and ``state`` by name, ``refunded_amount`` in paisa.
    """
    return {
        "idx": held.idx,
        "type": _TYPES[held.funded_by]["name"],
        "state": LIST_STATES[held.state],
        "amount": held.amount,
        "fee_amount": fee(held.amount) if held.fee_amount is None else held.fee_amount,
        "refunded_amount": held.refunded_amount,
        "created_on": timestamp(held.created_on),
        "source": {
            "idx": "cCaPkRPQGn5D8StkiqqMJg",
            "name": "Test User",
            "mobile": mask_mobile(held.mobile),
        },
    }


def status_body(state: str) -> dict[str, Any]:
    """The status endpoint's body for a transaction in ``state`` (or ``"Error"``)."""
    ok, detail = STATUS_DETAILS[state]
    return {"status": ok, "state": state, "detail": detail}


def after_refund(amount: int, refunded_amount: int) -> str:
    """A transaction's state once ``refunded_amount`` of its ``amount`` went back."""
    return REFUNDED if refunded_amount >= amount else PARTIALLY_REFUNDED


def epayment_status(state: str) -> str:
    """A paid ePayment's lookup status for its transaction's ``state``."""
    return {REFUNDED: "Refunded", PARTIALLY_REFUNDED: "Partially Refunded"}.get(state, "Completed")


def lookup_status(epayment: HeldEpayment, now: datetime) -> str:
    """What lookup says of ``epayment`` at ``now``: an initiated link past its time is Expired."""
    if epayment.status == "Initiated" and link_expired(epayment.expires_at, now):
        return "Expired"
    return epayment.status


def aware(when: datetime) -> datetime:
    """``when`` with its offset: a naive time (a project without ``USE_TZ``) is read
    in Django's current time zone, as Django reads it.
    """
    return when if django_timezone.is_aware(when) else django_timezone.make_aware(when)


def link_expired(expires_at: datetime | None, now: datetime) -> bool:
    """Whether a link good until ``expires_at`` has run out at ``now``."""
    return expires_at is not None and aware(expires_at) <= aware(now)


def lookup_body(epayment: HeldEpayment, now: datetime) -> dict[str, Any]:
    """What lookup answers for ``epayment``."""
    return {
        "pidx": epayment.pidx,
        "total_amount": epayment.amount,
        "status": lookup_status(epayment, now),
        "transaction_id": epayment.transaction_id,
        "fee": epayment.fee,
        "refunded": epayment.refunded_amount > 0,
    }


def return_params(
    epayment: HeldEpayment,
    *,
    mobile: str,
    purchase_order_id: str,
    purchase_order_name: str,
    now: datetime,
) -> dict[str, str]:
    """The query string Khalti appends to ``return_url`` when it sends the buyer back
    (the browser's word, which the merchant must not trust): the transaction and the
    payer's masked Khalti id only for a paid ePayment.
    """
    status = lookup_status(epayment, now)
    paid = epayment.transaction_id is not None and status != "User canceled"
    transaction_id = (epayment.transaction_id or "") if paid else ""
    return {
        "pidx": epayment.pidx,
        "transaction_id": transaction_id,
        "tidx": transaction_id,
        "amount": str(epayment.amount),
        "total_amount": str(epayment.amount),
        "mobile": mask_mobile(mobile) if paid and mobile else "",
        "status": status,
        "purchase_order_id": purchase_order_id,
        "purchase_order_name": purchase_order_name,
    }


# --- what a payment may be ---------------------------------------------------------------


class Refusal(NamedTuple):
    """Why Khalti would not let something happen: the rule (:data:`RULES`) and its words."""

    rule: str
    message: str


def payment_refusal(amount: object, funded_by: str = WALLET) -> Refusal | None:
    """Why no payment of ``amount`` paisa from ``funded_by`` can exist at Khalti, or None."""
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        return Refusal("payment.minimum", "amount must be a positive int (paisa).")
    if funded_by not in FUNDED_BY:
        return Refusal(
            "payment.funded-by",
            f"funded_by must be one of {', '.join(FUNDED_BY)}, not {funded_by!r}.",
        )
    if amount < MIN_AMOUNT:
        return Refusal("payment.minimum", TOO_SMALL)
    if amount > MAX_AMOUNT:
        return Refusal("payment.maximum", TOO_LARGE)
    if funded_by == BANK and amount < BANK_MIN_AMOUNT:
        return Refusal("payment.bank-minimum", BANK_TOO_SMALL)
    return None


def pay_refusal(epayment: HeldEpayment, now: datetime) -> Refusal | None:
    """Why the buyer cannot pay or cancel ``epayment`` on Khalti's page now, or None."""
    status = lookup_status(epayment, now)
    if status == "Expired":
        return Refusal(
            "pay.expired",
            f"ePayment {epayment.pidx}'s link expired at {timestamp(epayment.expires_at or now)}: "
            "it cannot be paid or cancelled.",
        )
    if status not in PAYABLE:
        return Refusal(
            "pay.settled", f"ePayment {epayment.pidx} is {status}: it cannot be paid or cancelled."
        )
    return None
