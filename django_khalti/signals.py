"""Signals a shop connects to, to fulfil or cancel its orders.

Each is sent once per real transition of a :class:`~django_khalti.models.Payment`,
after the database transaction that made it has committed, with
``sender=Payment``. A receiver that raises is logged and changes nothing: the
payment stays as Khalti said. Receivers should still be idempotent (marking an
order paid twice must be harmless), because a shop's own code may retry them.
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
payment_refunded = Signal()
