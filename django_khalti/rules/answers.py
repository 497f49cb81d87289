"""Khalti's merchant API: each endpoint's answer, decided from the request and the ledger.

Part of :mod:`django_khalti.rules` (see there).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from django.core.exceptions import ValidationError
from django.core.validators import validate_email

from ..keys import looks_public
from .catalogue import RULES
from .shapes import (
    BANK,
    BANK_NEEDS_MOBILE,
    BREAKDOWN_MISMATCH,
    COMPLETE,
    CONFIRMED,
    EPAYMENT_400,
    INVALID_PAGE,
    INVALID_TOKEN,
    LINK_SECONDS,
    MAX_AMOUNT,
    MAX_LENGTH,
    MAX_PAGE_SIZE,
    MIN_AMOUNT,
    NOT_FOUND,
    NOT_REFUNDABLE,
    OVER_REFUND,
    REFUNDABLE,
    REFUNDED_OK,
    SETTLED,
    TOO_LARGE,
    TOO_SMALL,
    WIDGET,
    Held,
    HeldEpayment,
    aware,
    integer,
    integer_field,
    list_record,
    lookup_body,
    record,
    status_body,
    text_field,
    timestamp,
)


@dataclass(frozen=True)
class Answer:
    """Khalti's answer: HTTP status, JSON body, and the rule (:data:`RULES`) that decided."""

    status: int
    body: dict[str, Any]
    rule: str

    def __post_init__(self) -> None:
        if self.rule not in RULES:  # pragma: no cover - a typo in this module
            raise ValueError(f"Unknown rule {self.rule!r}.")


class KhaltiLedger(Protocol):
    """What a stand-in for Khalti keeps, as the rules read and change it."""

    def find_transaction(self, key: str) -> Held | None:
        """The transaction whose token or idx (or ePayment transaction id) is ``key``."""

    def find_epayment(self, pidx: str) -> HeldEpayment | None:
        """The ePayment of ``pidx``."""

    def complete(self, held: Held) -> bool:
        """Mark a confirmed widget payment verified; False if another request did first."""

    def refund(self, held: Held, amount: int, mobile: str | None) -> None:
        """Record a refund of ``amount`` paisa of ``held`` (to ``mobile``, if given)."""

    def start(self, data: dict[str, Any]) -> tuple[HeldEpayment, str]:
        """Keep a new ePayment of the validated initiate ``data``: it and its payment URL."""

    def expire(self, epayment: HeldEpayment) -> None:
        """Note that an ePayment's link ran out unpaid (a ledger may derive it instead)."""

    def count_transactions(self) -> int:
        """How many transactions the merchant's list holds: every one whose money reached
        the merchant (a verified widget payment, a paid ePayment, a foreign one), refunded
        or not; never an unverified, unconfirmed, pending or failed one.
        """

    def transactions_page(self, offset: int, limit: int) -> list[Held]:
        """``limit`` of those transactions from ``offset``, newest first (``created_on``
        descending, then ``idx``): a slice, so that a ledger need not load them all.
        """


# --- the merchant API --------------------------------------------------------------------


def authorize(authorization: str | None, secret_key: str | None) -> Answer | None:
    """Khalti's 401 for a request whose ``Authorization`` header is not ``Key <secret key>``;
    None when it is. A key shaped like a public key is never a secret key.
    """
    if not authorization:
        return Answer(401, {"detail": "Authentication credentials were not provided."}, "auth.key")
    keyword, _, key = authorization.partition(" ")
    if looks_public(key):
        return Answer(401, {"detail": "Invalid token."}, "auth.public-key")
    if (
        keyword != "Key"
        or not secret_key
        or not hmac.compare_digest(key.encode(), secret_key.encode())
    ):
        return Answer(401, {"detail": "Invalid token."}, "auth.wrong-key")
    return None


def verify(params: Mapping[str, Any], ledger: KhaltiLedger) -> Answer:
    """``POST api/v2/payment/verify/``: complete a confirmed widget payment, once."""
    errors: dict[str, list[str]] = {}
    token, amount = text_field(params, "token", errors), integer_field(params, "amount", errors)
    if errors:
        return Answer(400, errors, "verify.fields")
    if amount < MIN_AMOUNT:
        return Answer(400, INVALID_TOKEN, "verify.minimum")
    held = ledger.find_transaction(token)
    if held is None or held.kind != WIDGET or held.token != token:
        return Answer(400, INVALID_TOKEN, "verify.unknown")
    if amount != held.amount:
        return Answer(400, INVALID_TOKEN, "verify.amount")
    if held.state in SETTLED:
        return Answer(400, INVALID_TOKEN, "verify.repeat")
    if held.state != CONFIRMED:
        return Answer(400, INVALID_TOKEN, "verify.unconfirmed")
    if not ledger.complete(held):
        return Answer(400, INVALID_TOKEN, "verify.repeat")
    return Answer(200, record(replace(held, state=COMPLETE)), "verify.complete")


def status(params: Mapping[str, Any], ledger: KhaltiLedger) -> Answer:
    """``GET api/v2/payment/status/?token=&amount=``: a widget payment's state."""
    errors: dict[str, list[str]] = {}
    token, amount = text_field(params, "token", errors), integer_field(params, "amount", errors)
    if errors:
        return Answer(400, errors, "status.fields")
    held = ledger.find_transaction(token)
    if held is None or held.kind != WIDGET or held.amount != amount:
        return Answer(200, status_body("Error"), "status.not-found")
    return Answer(200, status_body(held.state), "status.state")


def transaction(idx: str, ledger: KhaltiLedger) -> Answer:
    """``GET api/v2/merchant-transaction/<idx>/``: the record of a settled transaction."""
    held = ledger.find_transaction(idx)
    if held is None or held.idx != idx or held.state not in SETTLED:
        return Answer(404, NOT_FOUND, "transaction.not-found")
    return Answer(200, record(held), "transaction.record")


def refund(idx: str, params: Mapping[str, Any], ledger: KhaltiLedger) -> Answer:
    """``POST api/merchant-transaction/<idx>/refund/``: all that remains, or ``amount``."""
    held = ledger.find_transaction(idx)
    if held is None or held.idx != idx:
        return Answer(404, NOT_FOUND, "refund.not-found")
    wanted: int | None = None
    if params.get("amount") not in (None, ""):
        wanted = integer(params["amount"])
        if wanted is None:
            return Answer(400, {"amount": ["A valid integer is required."]}, "refund.amount")
        if wanted < 1:
            message = "Ensure this value is greater than or equal to 1."
            return Answer(400, {"amount": [message]}, "refund.amount")
    if held.state not in REFUNDABLE:
        return Answer(400, {"detail": NOT_REFUNDABLE}, "refund.state")
    remaining = held.amount - held.refunded_amount
    if wanted is not None and wanted > remaining:
        return Answer(400, {"detail": OVER_REFUND}, "refund.over")
    mobile = params.get("mobile")
    mobile = str(mobile).strip() if isinstance(mobile, (str, int)) and str(mobile).strip() else None
    if held.funded_by == BANK and mobile is None:
        return Answer(400, {"detail": BANK_NEEDS_MOBILE}, "refund.bank-mobile")
    ledger.refund(held, remaining if wanted is None else wanted, mobile)
    return Answer(200, {"detail": REFUNDED_OK}, "refund.made")


def transaction_list(
    params: Mapping[str, Any], ledger: KhaltiLedger, url: str, page_size: int
) -> Answer:
    """``GET api/v2/merchant-transaction/?page=N`` (also ``api/merchant-transaction/``):
    a page of the merchant's transactions, newest first; ``url`` is the request's
    absolute URL (for ``next`` and ``previous``), ``page_size`` the door's own, which
    ``?page_size=`` overrides from 1 to :data:`MAX_PAGE_SIZE`.
    """
    size, rule = _page_size(params.get("page_size"), page_size)
    total = ledger.count_transactions()
    pages = max(1, -(-total // size))
    page = integer(params.get("page", 1))
    if page is None or not 1 <= page <= pages:
        return Answer(404, INVALID_PAGE, "transactions.invalid-page")
    offset = (page - 1) * size
    records = [list_record(held) for held in ledger.transactions_page(offset, size)]
    body = {
        "total_pages": pages,
        "total_records": total,
        "next": _page_url(url, page + 1) if page < pages else None,
        "previous": _page_url(url, page - 1) if page > 1 else None,
        "record_range": [offset + 1, offset + len(records)] if records else [0, 0],
        "current_page": page,
        "records": records,
    }
    return Answer(200, body, "transactions.empty" if not total else rule)


def _page_size(asked: object, default: int) -> tuple[int, str]:
    """The page size ``?page_size=`` asks (at most :data:`MAX_PAGE_SIZE`), as DRF's
    pagination reads it: anything but a positive integer leaves ``default``.
    """
    if asked is None:
        return default, "transactions.page"
    try:
        size = int(str(asked))
    except ValueError:
        return default, "transactions.page-size"
    return (min(size, MAX_PAGE_SIZE) if size > 0 else default), "transactions.page-size"


def _page_url(url: str, page: int) -> str:
    """``url`` with ``?page=`` set to ``page`` (DRF's: page 1 without it), other
    parameters kept in their order.
    """
    parts = urlsplit(url)
    query = [(name, value) for name, value in parse_qsl(parts.query, True) if name != "page"]
    if page > 1:
        given = [name for name, _ in parse_qsl(parts.query, True)]
        at = given.index("page") if "page" in given else len(query)
        query.insert(at, ("page", str(page)))
    return urlunsplit(parts._replace(query=urlencode(query)))


def _url(value: str) -> bool:
    try:
        parts = urlsplit(value)
        return parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        return False


def _initiate_errors(params: Mapping[str, Any]) -> tuple[dict[str, list[str]], str]:
    """What Khalti finds wrong with an initiate body, and the rule that found it."""
    errors: dict[str, list[str]] = {}
    for name in ("return_url", "website_url", "purchase_order_id", "purchase_order_name"):
        text_field(params, name, errors)
    amount = integer_field(params, "amount", errors)
    if errors:
        return errors, "initiate.fields"
    for name in ("return_url", "website_url"):
        if not _url(str(params[name]).strip()):
            errors[name] = ["Enter a valid URL."]
    for name in ("purchase_order_id", "purchase_order_name"):
        if len(str(params[name]).strip()) > MAX_LENGTH:
            errors[name] = [f"Ensure this field has no more than {MAX_LENGTH} characters."]
    if errors:
        return errors, "initiate.fields"
    if amount < MIN_AMOUNT:
        return {"amount": [TOO_SMALL]}, "initiate.minimum"
    if amount > MAX_AMOUNT:
        return {"amount": [TOO_LARGE]}, "initiate.maximum"
    breakdown = params.get("amount_breakdown")
    if breakdown not in (None, []) and _breakdown_total(breakdown) != amount:
        return {"amount": [BREAKDOWN_MISMATCH]}, "initiate.breakdown"
    return _customer_errors(params.get("customer_info")), "initiate.customer"


def _breakdown_total(breakdown: object) -> int | None:
    if not isinstance(breakdown, list):
        return None
    amounts = [
        integer(part.get("amount")) if isinstance(part, dict) else None for part in breakdown
    ]
    if any(amount is None or amount < 0 for amount in amounts):
        return None
    return sum(amount for amount in amounts if amount is not None)


def _customer_errors(info: object) -> dict[str, list[str]]:
    if info is None:
        return {}
    if not isinstance(info, dict):
        return {"customer_info": ["Expected a dictionary of items."]}
    email = info.get("email")
    if email in (None, ""):
        return {}
    try:
        validate_email(str(email))
    except ValidationError:
        return {"customer_info": {"email": ["Enter a valid email address."]}}  # type: ignore[dict-item]
    return {}


def initiate(params: Mapping[str, Any], ledger: KhaltiLedger, now: datetime) -> Answer:
    """``POST api/v2/epayment/initiate/``: a pidx and the hosted page to send the buyer to."""
    errors, rule = _initiate_errors(params)
    if errors:
        return Answer(400, {**errors, "error_key": "validation_error"}, rule)
    data = {
        **params,
        "amount": integer(params["amount"]),
        "purchase_order_id": str(params["purchase_order_id"]).strip(),
        "purchase_order_name": str(params["purchase_order_name"]).strip(),
        "return_url": str(params["return_url"]).strip(),
        "website_url": str(params["website_url"]).strip(),
    }
    epayment, payment_url = ledger.start(data)
    now = aware(now)
    expires_at = aware(epayment.expires_at or now + timedelta(seconds=LINK_SECONDS))
    body = {
        "pidx": epayment.pidx,
        "payment_url": payment_url,
        "expires_at": timestamp(expires_at),
        "expires_in": round((expires_at - now).total_seconds()),
    }
    return Answer(200, body, "initiate.started")


def lookup(params: Mapping[str, Any], ledger: KhaltiLedger, now: datetime) -> Answer:
    """``POST api/v2/epayment/lookup/``: HTTP 400 with the same body for Expired and User canceled."""
    errors: dict[str, list[str]] = {}
    pidx = text_field(params, "pidx", errors)
    if errors:
        return Answer(400, {**errors, "error_key": "validation_error"}, "lookup.fields")
    epayment = ledger.find_epayment(pidx)
    if epayment is None:
        return Answer(404, {**NOT_FOUND, "error_key": "validation_error"}, "lookup.not-found")
    body = lookup_body(epayment, now)
    if body["status"] == "Expired" and epayment.status != "Expired":
        ledger.expire(epayment)
        return Answer(400, body, "lookup.expires")
    if body["status"] in EPAYMENT_400:
        return Answer(400, body, "lookup.failed")
    return Answer(200, body, "lookup.status")
