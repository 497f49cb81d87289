"""Business rules: the shop's amount, exactly-once, every status change.

The views, the admin and ``khalti_reconcile`` call only what this package
exports; the layers underneath (see ``ARCHITECTURE.rst``) import downwards only:

- use cases: :mod:`.widget` (verify a widget payment), :mod:`.epayment` (start
  a link, settle its return), :mod:`.refunds` (over :mod:`.refund_checks`,
  what Khalti's state says became of a refund, and :mod:`.refund_outcomes`,
  that recorded), :mod:`.reconciliation` (the one reconciliation path, for the
  command and the admin), :mod:`.ledger` (the walk of Khalti's transaction
  list, over :mod:`.ledger_records`, what one record says and changes);
- settling with Khalti: :mod:`.settle` (ask Khalti about a claimed payment in
  its flow; one live payment an order) and :mod:`.transactions` (the
  transaction id of money that moved, when unknown), over :mod:`.answers`
  (the widget's verify and status) and :mod:`.lookup` (ePayment's lookup);
- state: :mod:`.state` (claims, and which change an answer makes) over
  :mod:`.writes` (:func:`~.writes._transition`, the only place a status
  changes, and the claims' own commits) and :mod:`.outbox` (signals, delivered
  at least once, over :mod:`.marks`: a delivery's mark, and the look for its
  payment's next signal);
- :mod:`.shop`: the shop's resolver, the only source of an order's amount.
"""

from .epayment import settle_epayment_return, start_epayment
from .ledger import LedgerReport, walk_ledger
from .outbox import deliver, deliver_due, deliver_in_order, due_deliveries, earlier_undelivered
from .reconciliation import (
    PERSON_SPACING,
    Reconciliation,
    recheck_failed,
    reconcile,
    reconcile_due,
)
from .refund_checks import recheck_failed_refund, reconcile_refund, refunds_awaiting_outcome
from .refunds import refund_payment, resolve_refund
from .shop import MAX_AMOUNT, MIN_EPAYMENT_AMOUNT, epayment_order, expected_amount, resolve_order
from .widget import verify_payment

__all__ = [
    "MAX_AMOUNT",
    "MIN_EPAYMENT_AMOUNT",
    "PERSON_SPACING",
    "LedgerReport",
    "Reconciliation",
    "deliver",
    "deliver_due",
    "deliver_in_order",
    "due_deliveries",
    "earlier_undelivered",
    "epayment_order",
    "expected_amount",
    "recheck_failed",
    "recheck_failed_refund",
    "reconcile",
    "reconcile_due",
    "reconcile_refund",
    "refund_payment",
    "refunds_awaiting_outcome",
    "resolve_order",
    "resolve_refund",
    "settle_epayment_return",
    "start_epayment",
    "verify_payment",
    "walk_ledger",
]
