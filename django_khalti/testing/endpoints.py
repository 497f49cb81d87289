"""Khalti's endpoints, answering by Khalti's state as Khalti does.

Verify, status, transaction, refund, ePayment initiate and lookup, and the
merchant's transaction list: each reads
the request's parameters and the outcome chosen for it (``None``: Khalti's
state decides) and returns the HTTP answer. What Khalti answers is decided by
Khalti's rules (:mod:`django_khalti.rules`), the same the sandbox follows: here
the fake's records are shown to them as a ledger, and the outcomes a test
chose ahead are played around them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.utils import timezone as django_timezone

from ..rules import answers as rules
from ..rules.shapes import (
    CONFIRMED,
    EPAYMENT,
    INVALID_PAGE,
    INVALID_TOKEN,
    LIST_STATES,
    NOT_FOUND,
    Held,
    HeldEpayment,
    after_refund,
    epayment_status,
    status_body,
)
from .calls import _Answer, _json
from .records import KhaltiFakeEpayment, KhaltiFakeForeign, KhaltiFakePayment, khalti_id

#: A paid ePayment's transaction state, by its lookup status.
_EPAYMENT_STATES = {
    "Completed": "Complete",
    "Refunded": "Refunded",
    "Partially Refunded": "Partially refunded",
    "Pending": CONFIRMED,
}


def _answer(answer: rules.Answer) -> _Answer:
    return _json(answer.status, answer.body)


class _Endpoints:
    """Khalti's endpoints and its records' lookups (part of :class:`KhaltiFake`)."""

    payments: dict[str, KhaltiFakePayment]
    epayments: dict[str, KhaltiFakeEpayment]
    foreign: dict[str, KhaltiFakeForeign]
    ledger_page_size: int
    EPAYMENT_LINK_SECONDS: int

    if TYPE_CHECKING:  # pragma: no cover

        def add_epayment(
            self,
            *,
            amount: int,
            purchase_order_id: str = "",
            purchase_order_name: str = "",
            return_url: str = "",
        ) -> KhaltiFakeEpayment: ...

    def _payment(self, token_or_idx: str) -> KhaltiFakePayment | None:
        if token_or_idx in self.payments:
            return self.payments[token_or_idx]
        return next((p for p in self.payments.values() if p.idx == token_or_idx), None)

    def _epayment_by_transaction(self, transaction_id: str) -> KhaltiFakeEpayment | None:
        return next(
            (e for e in self.epayments.values() if e.transaction_id == transaction_id), None
        )

    def _listed(self) -> list[Held]:
        """Every transaction in the merchant's list, newest first (then by idx)."""
        ledger = _KitLedger(self)
        held: list[Held | None] = [p.held() for p in self.payments.values()]
        held += [ledger.epayment_transaction(e) for e in self.epayments.values()]
        held += [f.held() for f in self.foreign.values()]
        listed = [h for h in held if h is not None and h.state in LIST_STATES]
        listed.sort(key=lambda h: h.idx)
        listed.sort(key=lambda h: h.created_on, reverse=True)
        return listed

    # --- the endpoints ---------------------------------------------------------------------

    def _verify(self, params: dict[str, Any], outcome: str | None) -> _Answer:
        if outcome == "rejected":
            return _json(400, INVALID_TOKEN)
        if outcome == "wrong_amount":
            answer = rules.verify(params, _Unchanged(self))
            if answer.status == 200:
                return _json(200, {**answer.body, "amount": answer.body["amount"] + 100})
            return _answer(answer)
        return _answer(rules.verify(params, _KitLedger(self)))

    def _status(self, params: dict[str, Any], outcome: str | None) -> _Answer:
        answer = rules.status(params, _KitLedger(self))
        if outcome in ("rejected", "wrong_amount") and answer.status == 200:
            return _json(200, status_body("Error"))
        return _answer(answer)

    def _transaction(self, params: dict[str, Any], outcome: str | None) -> _Answer:
        if outcome == "rejected":
            return _json(404, NOT_FOUND)
        answer = rules.transaction(params["idx"], _KitLedger(self))
        if outcome == "wrong_amount" and answer.status == 200:
            return _json(200, {**answer.body, "amount": answer.body["amount"] + 100})
        return _answer(answer)

    def _refund(self, params: dict[str, Any], outcome: str | None) -> _Answer:
        if outcome == "rejected":
            return _json(400, {"detail": "Refund period expired."})
        return _answer(rules.refund(params["idx"], params, _KitLedger(self)))

    def _transactions(self, params: dict[str, Any], outcome: str | None, url: str) -> _Answer:
        if outcome == "rejected":
            return _json(404, INVALID_PAGE)
        return _answer(rules.transaction_list(params, _KitLedger(self), url, self.ledger_page_size))

    def _initiate(self, params: dict[str, Any], outcome: str | None) -> _Answer:
        if outcome == "rejected":
            return _json(
                400,
                {
                    "detail": "The merchant cannot start this payment.",
                    "error_key": "validation_error",
                },
            )
        return _answer(rules.initiate(params, _KitLedger(self), django_timezone.now()))

    def _lookup(self, params: dict[str, Any], outcome: str | None) -> _Answer:
        if outcome == "rejected":
            return _json(404, {**NOT_FOUND, "error_key": "validation_error"})
        answer = rules.lookup(params, _KitLedger(self), django_timezone.now())
        if outcome == "wrong_amount" and answer.rule in ("lookup.status", "lookup.failed"):
            epayment = self.epayments[answer.body["pidx"]]
            body = {
                **answer.body,
                "total_amount": epayment.amount + 100,
                "status": "Completed",
                "transaction_id": epayment.transaction_id or khalti_id(),
            }
            return _json(200, body)
        return _answer(answer)


@dataclass
class _KitLedger:
    """The fake's records, as Khalti's rules read and change them (a ``KhaltiLedger``)."""

    fake: _Endpoints

    def find_transaction(self, key: str) -> Held | None:
        """The payment whose token or idx, or the ePayment whose transaction id, is ``key``."""
        payment = self.fake._payment(key)
        if payment is not None:
            return payment.held()
        if key in self.fake.foreign:
            return self.fake.foreign[key].held()
        epayment = self.fake._epayment_by_transaction(key)
        return None if epayment is None else self.epayment_transaction(epayment)

    @staticmethod
    def epayment_transaction(epayment: KhaltiFakeEpayment) -> Held | None:
        """The transaction of a paid (or pending) ePayment; None before the buyer paid."""
        if epayment.transaction_id is None or epayment.status not in _EPAYMENT_STATES:
            return None
        return Held(
            idx=epayment.transaction_id,
            amount=epayment.amount,
            state=_EPAYMENT_STATES[epayment.status],
            mobile=epayment.mobile,
            created_on=epayment.created_on,
            kind=EPAYMENT,
            fee_amount=epayment.fee,
            refunded_amount=epayment.refunded_amount,
            funded_by=epayment.funded_by,
        )

    def count_transactions(self) -> int:
        """How many transactions the merchant's list holds."""
        return len(self.fake._listed())

    def transactions_page(self, offset: int, limit: int) -> list[Held]:
        """A slice of the merchant's list (the fake's records are in memory anyway)."""
        return self.fake._listed()[offset : offset + limit]

    def find_epayment(self, pidx: str) -> HeldEpayment | None:
        """The ePayment of ``pidx``."""
        epayment = self.fake.epayments.get(pidx)
        return None if epayment is None else epayment.held()

    def complete(self, held: Held) -> bool:
        """The merchant verified this payment."""
        self.fake.payments[held.token or ""].verified = True
        return True

    def refund(self, held: Held, amount: int, mobile: str | None) -> None:
        """Khalti refunds ``amount`` of this transaction."""
        holder: KhaltiFakePayment | KhaltiFakeEpayment | KhaltiFakeForeign | None
        holder = self.fake._payment(held.idx) or self.fake.foreign.get(held.idx)
        if holder is None:
            holder = self.fake._epayment_by_transaction(held.idx)
        assert holder is not None
        holder.refunded_amount += amount
        holder.refunds.append((amount, mobile))
        state = after_refund(holder.amount, holder.refunded_amount)
        if isinstance(holder, (KhaltiFakePayment, KhaltiFakeForeign)):
            holder.state = state
        else:
            holder.status = epayment_status(state)

    def start(self, data: dict[str, Any]) -> tuple[HeldEpayment, str]:
        """Khalti keeps a new ePayment the app initiated."""
        epayment = self.fake.add_epayment(
            amount=data["amount"],
            purchase_order_id=data["purchase_order_id"],
            purchase_order_name=data["purchase_order_name"],
            return_url=data["return_url"],
        )
        epayment.website_url = data["website_url"]
        epayment.request = data
        return epayment.held(), epayment.payment_url

    def expire(self, epayment: HeldEpayment) -> None:
        """The link of this ePayment ran out unpaid."""
        self.fake.epayments[epayment.pidx].status = "Expired"


@dataclass
class _Unchanged(_KitLedger):
    """The fake's records, read but left unchanged (an answer for another amount)."""

    def complete(self, held: Held) -> bool:
        """Nothing changes at Khalti."""
        return True
