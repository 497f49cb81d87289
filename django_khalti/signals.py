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

Connect receivers in an ``AppConfig.ready()`` (or a module the models import):
then every process has them. Each signal here remembers the receivers connected
later, once Django's apps were ready (e.g. by a views module the URLconf
imports): a process that loads no URLs (``manage.py shell``, ``khalti_reconcile``)
has none of those, and the system check ``django_khalti.W007`` names them.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable
from typing import Any

from django.apps import apps
from django.dispatch import Signal


def _make_id(target: object) -> Hashable:
    """The id :class:`~django.dispatch.Signal` keys a receiver or sender by (as Django's own)."""
    if hasattr(target, "__func__"):  # a bound method: its object and its function
        return (id(target.__self__), id(target.__func__))  # type: ignore[attr-defined]
    return id(target)


def _alive(entry: tuple[Any, ...]) -> bool:
    """Whether a receiver entry of a signal still has its receiver (a weak one may be gone)."""
    receiver = entry[1]
    return not isinstance(receiver, weakref.ReferenceType) or receiver() is not None


def _describe(receiver: Callable[..., Any]) -> tuple[str, str]:
    """``(module, dotted name)`` of ``receiver``: where it was written, for people."""
    function = getattr(receiver, "__func__", receiver)  # a bound method's function
    module = str(getattr(function, "__module__", None) or "?")
    name = getattr(function, "__qualname__", None) or type(receiver).__qualname__
    return module, f"{module}.{name}"


class KhaltiSignal(Signal):
    """A :class:`~django.dispatch.Signal` that remembers which receivers were connected
    late: after every ``AppConfig.ready()`` had run (``apps.ready``), so only in the
    processes that imported the module connecting them.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: ``{lookup key: (module, dotted name)}`` of the receivers connected late.
        self.late: dict[Hashable, tuple[str, str]] = {}

    def connect(
        self,
        receiver: Callable[..., Any],
        sender: object = None,
        weak: bool = True,
        dispatch_uid: Hashable | None = None,
    ) -> None:
        """Connect ``receiver`` as :meth:`Signal.connect` does, noting whether it is late."""
        key = (dispatch_uid or _make_id(receiver), _make_id(sender))  # as Signal.connect's
        with self.lock:
            connected = any(entry[0] == key for entry in self.receivers)
        super().connect(receiver, sender=sender, weak=weak, dispatch_uid=dispatch_uid)
        if connected:  # a second connect changes nothing, nor when it was connected
            return
        if apps.ready:
            self.late[key] = _describe(receiver)
        else:
            self.late.pop(key, None)

    def late_receivers(self) -> list[tuple[str, str]]:
        """``(module, dotted name)`` of each receiver still connected that was connected late."""
        with self.lock:
            connected = [entry[0] for entry in self.receivers if _alive(entry)]
        return [self.late[key] for key in connected if key in self.late]


#: Khalti confirmed the payment for the expected amount. Fulfil the order.
#: kwargs: ``payment`` (the verified :class:`Payment`).
payment_verified = KhaltiSignal()

#: Khalti said the payment did not (and will not) go through.
#: kwargs: ``payment`` (the failed :class:`Payment`), ``reason`` (str, for people).
payment_failed = KhaltiSignal()

#: Money went back to the buyer (all of it, or part: see ``payment.status`` and
#: ``payment.refunded_amount``). kwargs: ``payment``, ``amount`` (paisa, this refund).
#: With ``payment.verified_at`` None, the payment never paid its order (Khalti
#: refunded it before dj-khalti verified it, or it was a payment that needed
#: review, refunded): there is nothing to undo.
payment_refunded = KhaltiSignal()

#: Money moved at Khalti, but the shop must not honour it: Khalti completed the
#: payment for another amount, after it was recorded failed, for an order that
#: another payment already paid, or with nothing that ties its answer to this
#: payment. ``payment.status`` is ``needs_review``; a person decides (usually:
#: refund it, which the admin does in one step). kwargs: ``payment``, ``reason``
#: (str, for people).
payment_needs_review = KhaltiSignal()
