"""Khalti's answers, in our words: the one translation of Khalti's states.

Khalti spells a payment's state differently per endpoint (``Completed`` and
``Complete``, ``User canceled``, ``Partially Refunded``, ...). :func:`outcome_of`
translates them, once, into :class:`KhaltiOutcome`; each answer below keeps
Khalti's word for people and decides on its ``outcome``. Nothing outside the
client sees Khalti's spelling.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any


class KhaltiOutcome(enum.Enum):
    """What an answer of Khalti's means, whatever the endpoint and its spelling.

    The client translates Khalti's states into these once (:func:`outcome_of`);
    the services decide on them alone.
    """

    #: The money moved to the merchant: ``Completed`` (verify, lookup, transaction),
    #: ``Complete`` (status).
    PAID = "paid"
    #: The buyer confirmed; Khalti waits for the merchant's verify (status: ``Confirmed``).
    AWAITING_VERIFICATION = "awaiting_verification"
    #: Started, not paid (yet): ``Initiated``.
    OPEN = "open"
    #: Khalti holds the payment, neither paid nor failed (lookup: ``Pending``).
    HELD = "held"
    #: No money moved and none will: ``Failed``, ``Error`` (status: not found for
    #: this token and amount), ``Expired``, ``User canceled``.
    FAILED = "failed"
    #: Paid, then all of it went back to the buyer.
    REFUNDED = "refunded"
    #: Paid, then part of it went back.
    PARTIALLY_REFUNDED = "partially_refunded"
    #: A state the client does not know: nothing can be decided on it.
    UNKNOWN = "unknown"


#: Khalti's states, as :func:`outcome_of` compares them (letters only, lower case).
_STATES = {
    "completed": KhaltiOutcome.PAID,
    "complete": KhaltiOutcome.PAID,
    "confirmed": KhaltiOutcome.AWAITING_VERIFICATION,
    "initiated": KhaltiOutcome.OPEN,
    "pending": KhaltiOutcome.HELD,
    "failed": KhaltiOutcome.FAILED,
    "error": KhaltiOutcome.FAILED,
    "expired": KhaltiOutcome.FAILED,
    "usercanceled": KhaltiOutcome.FAILED,
    "usercancelled": KhaltiOutcome.FAILED,
    "refunded": KhaltiOutcome.REFUNDED,
    "partiallyrefunded": KhaltiOutcome.PARTIALLY_REFUNDED,
}


def outcome_of(state: object) -> KhaltiOutcome:
    """Khalti's state as an outcome: case, spaces, hyphens and underscores do not
    matter (``"Partially Refunded"``, ``"partially_refunded"``); anything else is
    :attr:`KhaltiOutcome.UNKNOWN`.
    """
    if not isinstance(state, str):
        return KhaltiOutcome.UNKNOWN
    return _STATES.get(re.sub(r"[\s_-]", "", state).lower(), KhaltiOutcome.UNKNOWN)


@dataclass(frozen=True)
class KhaltiTransaction:
    """Khalti's transaction record, as the verify endpoint returns it."""

    idx: str
    #: Khalti's word, for people; decide on :attr:`outcome`.
    state: str
    amount: int
    fee_amount: int | None
    mobile: str
    refunded: bool
    raw: dict[str, Any]

    @property
    def outcome(self) -> KhaltiOutcome:
        """The record's state; a completed record marked ``refunded`` is refunded."""
        outcome = outcome_of(self.state)
        if outcome is KhaltiOutcome.PAID and self.refunded:
            return KhaltiOutcome.REFUNDED
        return outcome


@dataclass(frozen=True)
class KhaltiStatus:
    """The answer of the status endpoint: ``state`` decides, ``status`` does not."""

    #: Khalti's word, for people; decide on :attr:`outcome`.
    state: str
    detail: str
    raw: dict[str, Any]

    @property
    def outcome(self) -> KhaltiOutcome:
        """What the state means: ``Complete`` paid, ``Confirmed`` awaiting verification, ..."""
        return outcome_of(self.state)

    @property
    def idx(self) -> str | None:
        """The transaction's ``idx``, when the answer names one (it usually does not)."""
        idx = self.raw.get("idx")
        return idx if isinstance(idx, str) and 0 < len(idx) <= 255 else None


@dataclass(frozen=True)
class KhaltiInitiation:
    """An ePayment Khalti has started: where to send the buyer, and until when.

    ``expires_at`` is Khalti's time of expiry, when it gave one; ``expires_in``
    the link's life in seconds, when it gave that (a duration: whoever stores
    the link resolves it on the database's clock, never on a host's).
    """

    pidx: str
    payment_url: str
    expires_at: datetime | None
    raw: dict[str, Any]
    expires_in: int | None = None


@dataclass(frozen=True)
class KhaltiLookup:
    """What ePayment lookup says of a ``pidx``. ``status`` is as Khalti spells it."""

    pidx: str
    #: Khalti's word, for people; decide on :attr:`outcome`.
    status: str
    total_amount: int | None
    transaction_id: str | None
    fee: int | None
    refunded: bool
    raw: dict[str, Any]

    @property
    def outcome(self) -> KhaltiOutcome:
        """What the status means: ``Completed`` paid, ``Pending`` held, ``Expired`` failed, ...

        ``Completed`` with ``refunded`` true contradicts itself (lookup has states of
        its own for refunds): unknown.
        """
        outcome = outcome_of(self.status)
        if outcome is KhaltiOutcome.PAID and self.refunded:
            return KhaltiOutcome.UNKNOWN
        return outcome


@dataclass(frozen=True)
class KhaltiLedgerRecord:
    """One record of Khalti's merchant transaction list: money that reached the merchant.

    ``refunded_amount`` is what the record says went back, in paisa: its own
    ``refunded_amount`` when it gives one, all of it when it says refunded, none
    when it says completed; None when it says partly refunded and not by how much.
    """

    idx: str
    #: Khalti's words, for people; decide on :attr:`outcome`.
    state: str
    type: str
    amount: int
    fee_amount: int | None
    refunded_amount: int | None
    created_on: datetime | None
    raw: dict[str, Any]

    @property
    def outcome(self) -> KhaltiOutcome:
        """The record's state: paid, refunded, partly refunded (or what else Khalti says)."""
        return outcome_of(self.state)


@dataclass(frozen=True)
class KhaltiUnreadableRecord:
    """A record of Khalti's list that could not be read: reported, never guessed."""

    #: Why it could not be read, for people.
    why: str
    raw: Any
    #: Its ``idx``, when it names one.
    idx: str | None = None


@dataclass(frozen=True)
class KhaltiLedgerPage:
    """One page of Khalti's merchant transaction list."""

    number: int
    #: What the page says of the whole list (None when it does not say).
    total_pages: int | None
    total_records: int | None
    #: Whether Khalti says a page follows this one.
    has_next: bool
    records: tuple[KhaltiLedgerRecord, ...]
    unreadable: tuple[KhaltiUnreadableRecord, ...]
