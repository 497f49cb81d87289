"""Khalti's bodies read and checked: each answer parsed into its dataclass, or refused.

A body of the wrong shape is :class:`~django_khalti.exceptions.KhaltiBadResponse`
(or ``None``, where the caller decides what an unreadable answer means); the
minor fields of an answer never keep it from being read.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime, timezone
from typing import Any, TypeGuard
from urllib.parse import urlsplit

from django.utils.dateparse import parse_datetime

from ..exceptions import KhaltiBadResponse
from .answers import (
    KhaltiInitiation,
    KhaltiLedgerPage,
    KhaltiLedgerRecord,
    KhaltiLookup,
    KhaltiOutcome,
    KhaltiStatus,
    KhaltiTransaction,
    KhaltiUnreadableRecord,
    outcome_of,
)

# The client's one logger, "django_khalti.client", whichever of its modules logs.
logger = logging.getLogger(__package__)
UTC = timezone.utc

MOBILE_MAX_LENGTH = 32  # Payment.mobile


def _aware(value: object) -> datetime | None:
    """An ISO 8601 timestamp from Khalti as an aware datetime, or None."""
    try:
        parsed = parse_datetime(value) if isinstance(value, str) else None
    except ValueError:
        return None
    if parsed is not None and parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def _is_int(value: object) -> TypeGuard[int]:
    """Whether a JSON value is an integer a payment can hold (``true`` is not, nor
    one beyond a 64-bit column).
    """
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**63


def error_message(body: object) -> str | None:
    """The human message of a Khalti error body, or None for an unknown shape.

    Khalti answers errors as ``{"detail": "..."}`` or as DRF field errors
    ``{"token": ["Invalid token."]}``, nested for nested fields
    (``{"customer_info": {"phone": ["..."]}}``).
    """
    if not isinstance(body, dict) or not body:
        return None
    detail = body.get("detail")
    if isinstance(detail, str):
        return detail
    messages = _field_messages(body, "")
    return "; ".join(messages) if messages else None


def _field_messages(errors: object, prefix: str) -> list[str] | None:
    """``["field: message", ...]`` from DRF-style errors, or None for another shape."""
    if isinstance(errors, str):
        return [f"{prefix}: {errors}" if prefix else errors]
    if isinstance(errors, list) and errors and all(isinstance(e, str) for e in errors):
        return [f"{prefix}: {' '.join(errors)}" if prefix else " ".join(errors)]
    if isinstance(errors, (dict, list)) and errors:
        items = errors.items() if isinstance(errors, dict) else enumerate(errors)
        messages: list[str] = []
        for key, value in items:
            if key == "error_key" or (isinstance(errors, list) and not value):
                continue
            found = _field_messages(value, f"{prefix}.{key}" if prefix else str(key))
            if found is None:
                return None
            messages.extend(found)
        return messages or None
    return None


def parse_transaction(body: Any, *, plain_state: bool = False) -> KhaltiTransaction:
    """Khalti's transaction record, as verify (and, with ``plain_state``, the
    transaction endpoint) answers it; :class:`KhaltiBadResponse` without an
    ``idx``, a state or an amount.
    """
    state = body.get("state") if isinstance(body, dict) else None
    # Verify's answer nests the state ({"name": "Completed"}), as documented;
    # transaction records have also been seen with a plain string.
    state_name = state.get("name") if isinstance(state, dict) else None
    if plain_state and isinstance(state, str):
        state_name = state
    if not (
        isinstance(body, dict)
        and isinstance(body.get("idx"), str)
        and 0 < len(body["idx"]) <= 255
        and isinstance(state_name, str)
        and _is_int(body.get("amount"))
    ):
        logger.warning("Khalti's transaction record lacks idx, state or amount.")
        raise KhaltiBadResponse()
    fee = _fee(body.get("fee_amount"), body["amount"])
    user = body.get("user") or body.get("source") or {}
    mobile = user.get("mobile") if isinstance(user, dict) else None
    return KhaltiTransaction(
        idx=body["idx"],
        state=state_name,
        amount=body["amount"],
        # Minor fields must never keep a paid transaction from being recorded.
        fee_amount=fee,
        mobile=mobile[:MOBILE_MAX_LENGTH] if isinstance(mobile, str) else "",
        refunded=body.get("refunded") is True,
        raw=body,
    )


def parse_status(body: Any) -> KhaltiStatus | None:
    """The status endpoint's answer, or None for a body without a ``state``."""
    if isinstance(body, dict) and isinstance(body.get("state"), str):
        detail = body.get("detail")
        return KhaltiStatus(
            state=body["state"],
            detail=detail if isinstance(detail, str) else "",
            raw=body,
        )
    return None


def parse_lookup(body: Any, pidx: str) -> KhaltiLookup | None:
    """Lookup's answer for the ePayment ``pidx``, or None for a body without a ``status``."""
    if not (isinstance(body, dict) and isinstance(body.get("status"), str)):
        return None
    given, total, fee, transaction_id = (
        body.get(k) for k in ("pidx", "total_amount", "fee", "transaction_id")
    )
    return KhaltiLookup(
        pidx=given if isinstance(given, str) else pidx,
        status=body["status"],
        total_amount=total if _is_int(total) else None,
        transaction_id=transaction_id
        if isinstance(transaction_id, str) and 0 < len(transaction_id) <= 255
        else None,
        fee=_fee(fee, total if _is_int(total) else None),
        refunded=body.get("refunded") is True,
        raw=body,
    )


def parse_initiation(answer: Any, base_url: str) -> KhaltiInitiation:
    """A started ePayment; :class:`KhaltiBadResponse` without a ``pidx``, or with a
    ``payment_url`` off Khalti's hosts (and ``base_url``'s).
    """
    if not (
        isinstance(answer, dict)
        and isinstance(answer.get("pidx"), str)
        and 0 < len(answer["pidx"]) <= 255
        and isinstance(answer.get("payment_url"), str)
    ):
        logger.warning("Khalti's initiate answer lacks pidx or payment_url.")
        raise KhaltiBadResponse()
    if not is_khaltis(answer["payment_url"], base_url):
        # The buyer is sent there: only to Khalti (or where BASE_URL points).
        logger.warning("Khalti's initiate answer names a payment_url off Khalti's hosts.")
        raise KhaltiBadResponse()
    expires_in = answer.get("expires_in")
    return KhaltiInitiation(
        pidx=answer["pidx"],
        payment_url=answer["payment_url"],
        expires_at=_aware(answer.get("expires_at")),
        raw=answer,
        # A duration, not a time: no host's clock is read here.
        expires_in=expires_in if _is_int(expires_in) and 0 < expires_in < 10**8 else None,
    )


def is_khaltis(url: str, base_url: str) -> bool:
    """Whether ``url`` is on Khalti's hosts (``khalti.com`` and its subdomains,
    over https) or on ``base_url``'s host (a sandbox, a local fake).
    """
    try:
        if not _plain_url(url):
            return False
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
    except ValueError:
        return False
    if parts.scheme == "https" and (host == "khalti.com" or host.endswith(".khalti.com")):
        return True
    ours = urlsplit(base_url)
    return parts.scheme == ours.scheme and host == (ours.hostname or "").lower()


def _plain_url(url: str) -> bool:
    """Printable ASCII with no backslash (browsers read it as ``/``), and a
    netloc that is a plain host and port (no userinfo).
    """
    return (
        re.fullmatch(r"[\x21-\x7e]+", url) is not None
        and "\\" not in url
        and re.fullmatch(r"[A-Za-z0-9.-]+(:\d+)?", urlsplit(url).netloc) is not None
    )


def parse_ledger_page(body: Any, number: int) -> KhaltiLedgerPage:
    """Page ``number`` of Khalti's merchant transaction list; :class:`KhaltiBadResponse`
    for a body without its ``records`` list. Each record is read on its own: one of
    an unknown shape is kept as :class:`KhaltiUnreadableRecord`, never guessed.
    """
    records = body.get("records") if isinstance(body, dict) else None
    if not isinstance(records, list):
        logger.warning("Khalti's transaction list page %s has no list of records.", number)
        raise KhaltiBadResponse()
    read = [_ledger_record(record) for record in records]
    total_pages, total_records = (
        _count(body.get(name)) for name in ("total_pages", "total_records")
    )
    has_next = body.get("next") not in (None, "") if "next" in body else None
    if has_next is None:  # no ``next`` link: the page count tells
        has_next = total_pages is not None and number < total_pages
    return KhaltiLedgerPage(
        number=number,
        total_pages=total_pages,
        total_records=total_records,
        has_next=has_next,
        records=tuple(r for r in read if isinstance(r, KhaltiLedgerRecord)),
        unreadable=tuple(r for r in read if isinstance(r, KhaltiUnreadableRecord)),
    )


def _fee(value: object, amount: int | None) -> int | None:
    """Khalti's fee on ``amount``, or None: not a whole number of paisa from 0 to the
    amount (a fee above what was paid is none of this payment's).
    """
    if not _is_int(value) or value < 0:
        return None
    return value if amount is None or value <= amount else None


def _count(value: object) -> int | None:
    """A count of the list's envelope, or None: not an integer, or past what a count
    can sensibly be (a 32-bit column holds it).
    """
    return value if _is_int(value) and 0 <= value < 2**31 else None


def _name(value: object) -> str | None:
    """A state's or type's word: a plain string, or the ``name`` of an object."""
    if isinstance(value, dict):
        value = value.get("name")
    return value if isinstance(value, str) and len(value) <= 64 else None


def _ledger_record(record: Any) -> KhaltiLedgerRecord | KhaltiUnreadableRecord:
    """One record of the list, or why it cannot be read."""
    idx = record.get("idx") if isinstance(record, dict) else None
    idx = idx if isinstance(idx, str) and 0 < len(idx) <= 255 else None
    if not isinstance(record, dict) or idx is None:
        return KhaltiUnreadableRecord("no transaction id (idx)", record)
    state, amount = _name(record.get("state")), record.get("amount")
    if state is None or outcome_of(state) is KhaltiOutcome.UNKNOWN:
        return KhaltiUnreadableRecord("no state it can be read by", record, idx)
    if not (_is_int(amount) and amount >= 0):
        return KhaltiUnreadableRecord("no amount in paisa", record, idx)
    refunded = _refunded_amount(record, outcome_of(state), amount)
    if refunded is False:
        return KhaltiUnreadableRecord("a refunded amount it cannot hold", record, idx)
    fee = _fee(record.get("fee_amount"), amount)
    if fee is None and record.get("fee_amount") is not None:
        return KhaltiUnreadableRecord("a fee that is no fee of its amount", record, idx)
    return KhaltiLedgerRecord(
        idx=idx,
        state=state,
        type=_name(record.get("type")) or "",
        amount=amount,
        fee_amount=fee,
        refunded_amount=refunded,
        created_on=_aware(record.get("created_on")),
        raw=record,
    )


def _refunded_amount(
    record: dict[str, Any], outcome: KhaltiOutcome, amount: int
) -> int | bool | None:
    """What the record says went back (see :class:`KhaltiLedgerRecord`); False when
    its ``refunded_amount`` contradicts its state or amount.
    """
    given = record.get("refunded_amount")
    if given is None:
        known = {KhaltiOutcome.REFUNDED: amount, KhaltiOutcome.PAID: 0}
        if outcome is KhaltiOutcome.PAID and record.get("refunded") is True:
            return None  # completed, yet marked refunded: by how much is unknown
        return known.get(outcome)
    if not _is_int(given) or not 0 <= given <= amount:
        return False
    agrees = {
        KhaltiOutcome.PAID: given == 0,
        KhaltiOutcome.REFUNDED: given == amount,
        KhaltiOutcome.PARTIALLY_REFUNDED: 0 < given < amount,
    }
    return given if agrees.get(outcome, True) else False
