"""Signals a shop connects to, to fulfil or cancel its orders.

Each announces one real status change of a :class:`~django_khalti.models.Payment`,
with ``sender=Payment``, and is delivered at least once through the outbox
(:mod:`django_khalti.services.outbox`): sent right after the database
transaction that made the change has committed, and sent again to every
receiver (by ``khalti_reconcile``, a resubmission, or the admin) once
``SIGNAL_GRACE_PERIOD`` is over, until all of them ran without raising. A
receiver that raises is logged and changes nothing else: the payment stays as
Khalti said. Receivers must therefore be idempotent (marking an order paid
twice must be harmless). ``payment`` is the payment as the change left it.
"""

from django.dispatch import Signal

#: Khalti confirmed the payment for the expected amount. Fulfil the order.
#: kwargs: ``payment`` (the verified :class:`Payment`).
payment_verified = Signal()

#: Khalti said the payment did not (and will not) go through.
#: kwargs: ``payment`` (the failed :class:`Payment`), ``reason`` (str, for people).
payment_failed = Signal()

#: Money went back to the buyer (all of it, or part: see ``payment.status`` and
#: ``payment.refunded_amount``). kwargs: ``payment``, ``amount`` (paisa, this refund).
#: With ``payment.verified_at`` None, the payment never paid its order (Khalti
#: refunded it before dj-khalti verified it, or it was a payment that needed
#: review, refunded): there is nothing to undo.
payment_refunded = Signal()

#: Money moved at Khalti, but the shop must not honour it: Khalti completed the
#: payment for another amount, after it was recorded failed, for an order that
#: another payment already paid, or with nothing that ties its answer to this
#: payment. ``payment.status`` is ``needs_review``; a person decides (usually:
#: refund it, which the admin does in one step). kwargs: ``payment``, ``reason``
#: (str, for people).
payment_needs_review = Signal()
