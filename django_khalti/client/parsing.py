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
from .answers import KhaltiInitiation, KhaltiLookup, KhaltiStatus, KhaltiTransaction

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
    fee = body.get("fee_amount")
    user = body.get("user") or body.get("source") or {}
    mobile = user.get("mobile") if isinstance(user, dict) else None
    return KhaltiTransaction(
        idx=body["idx"],
        state=state_name,
        amount=body["amount"],
        # Minor fields must never keep a paid transaction from being recorded.
        fee_amount=fee if _is_int(fee) and fee >= 0 else None,
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
        fee=fee if _is_int(fee) and fee >= 0 else None,
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
