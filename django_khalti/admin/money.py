"""What the admin's money figures count: the payments where money moved, the day each
counts on, and what it brought in. The overview's money per period (:mod:`.overview`)
and the accountants' CSV (:mod:`.export`) count the same payments the same way.

Money moved when Khalti confirmed the payment here (``verified_at`` set, whatever
became of it since: refunded, or held for review after a walk of Khalti's ledger),
or when Khalti completed it and the payment is held for review or was refunded
before it was verified here, with its Khalti transaction id known. A payment counts
on the day Khalti confirmed it (``verified_at``), else the day it was created.

"Money in" is what the buyer paid at Khalti (Khalti's amount when it told us, else
the order's); "fee" is Khalti's fee (``fee_amount``, unknown until Khalti's records
say it); "refunded" is what went back of the payment so far, whenever it went back;
"net" is money in less the fee (an unknown fee counts as 0) less the refunded amount.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time

from django.db.models import F, Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from ..models import Payment, rupees

#: When a payment counts: when Khalti confirmed it, else when it was created.
DATED = Coalesce(F("verified_at"), F("created_at"))
#: What the buyer paid at Khalti, in paisa.
MONEY_IN = Coalesce(F("received_amount"), F("amount"))
#: Statuses of a payment not verified here in which money moved all the same (with an idx).
MOVED_UNVERIFIED = (Payment.Status.NEEDS_REVIEW, Payment.Status.REFUNDED)


@dataclass(frozen=True)
class Money:
    """The payments where money moved (:mod:`.money`): how many, what they brought in,
    Khalti's fees and what went back of them, in paisa.
    """

    count: int = 0
    money_in: int = 0
    #: Khalti's fees that are known.
    fees: int = 0
    refunded: int = 0
    #: How many of the payments have a fee Khalti has not told (counted as 0).
    unknown_fees: int = 0

    def __add__(self, other: Money) -> Money:
        return Money(
            self.count + other.count,
            self.money_in + other.money_in,
            self.fees + other.fees,
            self.refunded + other.refunded,
            self.unknown_fees + other.unknown_fees,
        )

    @property
    def net(self) -> int:
        """Money in, less the fees, less what was refunded."""
        return net(self.money_in, self.fees, self.refunded)


def midnight(day: date) -> datetime:
    """The first instant of ``day`` on the current time zone."""
    return timezone.make_aware(datetime.combine(day, time.min))


def moved_between(start: datetime, end: datetime | None = None) -> Q:
    """Payments where money moved, counted from ``start`` (included) to ``end``
    (excluded; no end: up to now). Each half of the condition reads an index
    (``verified_at``, ``created_at``), never the whole table.
    """
    verified = Q(verified_at__gte=start)
    unverified = Q(
        verified_at__isnull=True,
        created_at__gte=start,
        status__in=MOVED_UNVERIFIED,
        idx__isnull=False,
    )
    if end is not None:
        verified &= Q(verified_at__lt=end)
        unverified &= Q(created_at__lt=end)
    return verified | unverified


def net(money_in: int, fee: int | None, refunded: int) -> int:
    """Money in, less the fee (unknown: 0), less what was refunded, in paisa."""
    return money_in - (fee or 0) - refunded


def plain_rupees(paisa: int) -> str:
    """Paisa as rupees with two decimals and no thousands separator: ``-123456`` →
    ``"-1234.56"`` (for files read by programs; pages use ``models.rupees``).
    """
    sign = "-" if paisa < 0 else ""
    whole, rest = divmod(abs(paisa), 100)
    return f"{sign}{whole}.{rest:02d}"


def signed_rupees(paisa: int) -> str:
    """Paisa as rupees for display, a loss with its minus: ``-150`` → ``"-1.50"``."""
    return f"-{rupees(-paisa)}" if paisa < 0 else rupees(paisa)
