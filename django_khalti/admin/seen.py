"""What a confirmation page showed of its payments, and what changed since.

A person's verdict ("refund these", "the money went back") is on what the page
showed them. So a page carries, signed in its form (:mod:`.forms`), the state of
each payment it shows: its status, what was refunded of it, its refunds not
settled yet (id and amount), and on the refund page whether ``payment_verified``
had reached the shop. Its submit acts only when every one of them is still in
that state, and is refused with what changed otherwise (:func:`changes`). The
services check it again where they write, under the payment's row lock
(``refunded_before``, ``status_before``, the refund's id and amount).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from django.utils.translation import gettext as _

from ..models import Payment, Refund, SignalDelivery, rupees

#: A payment's state as a page shows it (JSON: it travels in the page's form).
State = dict[str, Any]

#: What is compared of a state ("name" only names the payment in a message).
_COMPARED = ("status", "refunded", "refunds", "unheard")


def states_of(
    payments: Iterable[Payment], unheard: Mapping[Any, SignalDelivery] | None = None
) -> dict[str, State]:
    """The state of each of ``payments`` as it stands, by payment id, in their order;
    with ``unheard`` (see :func:`unheard_verified`), whether ``payment_verified``
    has reached the shop too.
    """
    payments = list(payments)
    pending: dict[str, dict[str, int]] = {str(p.pk): {} for p in payments}
    rows = Refund.objects.filter(payment__in=payments, status=Refund.Status.PENDING)
    for payment_id, refund_id, amount in rows.values_list("payment_id", "id", "amount"):
        pending[str(payment_id)][str(refund_id)] = amount
    states = {}
    for payment in payments:
        state: State = {
            "name": payment.product_identity,
            "status": payment.status,
            "refunded": payment.refunded_amount,
            "refunds": pending[str(payment.pk)],
        }
        if unheard is not None:
            state["unheard"] = payment.pk in unheard
        states[str(payment.pk)] = state
    return states


def unheard_verified(payments: Sequence[Payment]) -> dict[Any, SignalDelivery]:
    """By payment id: the payment's ``payment_verified`` the shop has not received yet
    (its delivery not delivered), for those of ``payments`` that have one.
    """
    rows = SignalDelivery.objects.filter(
        payment__in=payments,
        signal=SignalDelivery.Signal.VERIFIED,
        delivered_at__isnull=True,
    ).order_by("created_at", "pk")
    return {delivery.payment_id: delivery for delivery in rows}


def changes(shown: Mapping[str, State], now: Mapping[str, State]) -> list[str]:
    """What changed, one line per payment, between the states a page ``shown`` and the
    states of the payments it is about ``now``; empty when nothing did.
    """
    settled = _settled_refunds(shown, now)
    lines = []
    for pk in [*shown, *(pk for pk in now if pk not in shown)]:
        was, state = shown.get(pk), now.get(pk)
        if was is not None and state is not None:
            if all(was.get(key) == state.get(key) for key in _COMPARED):
                continue
            what = _differences(was, state, settled)
        elif state is None:
            what = [_("it is no longer selected")]
        else:
            what = [_("it was not on the page")]
        lines.append(
            _("%(payment)s changed since the page was shown: %(changes)s.")
            % {"payment": (state or was or {}).get("name", pk), "changes": "; ".join(what)}
        )
    return lines


def _differences(was: State, now: State, settled: Mapping[str, str]) -> list[str]:
    """What differs between two states of one payment, as clauses of a sentence."""
    what = []
    if was["status"] != now["status"]:
        labels = dict(Payment.Status.choices)
        what.append(
            _("it is %(now)s now, not %(was)s")
            % {
                "now": labels.get(now["status"], now["status"]),
                "was": labels.get(was["status"], was["status"]),
            }
        )
    if was["refunded"] != now["refunded"]:
        what.append(
            _("Rs %(now)s refunded now, not Rs %(was)s")
            % {"now": rupees(now["refunded"]), "was": rupees(was["refunded"])}
        )
    for refund_id, amount in was["refunds"].items():
        if refund_id not in now["refunds"]:
            what.append(
                _("its refund of Rs %(amount)s was recorded %(status)s")
                % {"amount": rupees(amount), "status": settled.get(refund_id, "?")}
            )
    for refund_id, amount in now["refunds"].items():
        if refund_id not in was["refunds"]:
            what.append(_("a refund of Rs %(amount)s was asked for") % {"amount": rupees(amount)})
    if was.get("unheard") != now.get("unheard"):
        what.append(
            _("payment_verified reached the shop")
            if was.get("unheard")
            else _("payment_verified has not reached the shop")
        )
    return what


def _settled_refunds(shown: Mapping[str, State], now: Mapping[str, State]) -> dict[str, str]:
    """The status (as shown to a person) of each refund shown unsettled that is not now."""
    gone = {
        refund_id
        for pk, was in shown.items()
        for refund_id in was["refunds"]
        if refund_id not in now.get(pk, {}).get("refunds", {})
    }
    if not gone:
        return {}
    rows = Refund.objects.filter(pk__in=gone).values_list("id", "status")
    labels = dict(Refund.Status.choices)
    return {str(refund_id): str(labels[status]) for refund_id, status in rows}
