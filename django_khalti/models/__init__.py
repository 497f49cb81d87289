"""dj-khalti's models: the payments, their refunds and signals (:mod:`.payments`), and
the walks of Khalti's ledger (:mod:`.ledger`).

Status changes happen only in :mod:`django_khalti.services`. Nothing here calls Khalti.
"""

from .ledger import LedgerEntry, LedgerWalk, LedgerWalkQuerySet
from .payments import (
    LINK_EXPIRY_MARGIN,
    DbNow,
    Payment,
    PaymentQuerySet,
    Refund,
    RefundQuerySet,
    SignalDelivery,
    SignalDeliveryQuerySet,
    link_dead,
    order_key,
    rupees,
    snapshot_of,
)

__all__ = [
    "LINK_EXPIRY_MARGIN",
    "DbNow",
    "LedgerEntry",
    "LedgerWalk",
    "LedgerWalkQuerySet",
    "Payment",
    "PaymentQuerySet",
    "Refund",
    "RefundQuerySet",
    "SignalDelivery",
    "SignalDeliveryQuerySet",
    "link_dead",
    "order_key",
    "rupees",
    "snapshot_of",
]
