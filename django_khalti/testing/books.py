"""Khalti's books, as things happening at Khalti outside the app change them.

The merchant's transaction list (``GET api/v2/merchant-transaction/?page=N``) shows
every transaction whose money reached the merchant. A shop that reconciles its
payments against that list must notice what happened at Khalti without the app:
a refund made in Khalti's dashboard, a transaction of another channel on the same
merchant key, a record Khalti lost or holds for another amount. :class:`_Books`,
part of :class:`~django_khalti.testing.KhaltiFake`, makes each happen; none of it
is a call of the app's, so none is recorded in ``calls``.
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

from ..rules import answers as rules
from ..rules.shapes import FUNDED_BY, PAGE_SIZE, aware
from ..rules.shapes import fee as khalti_fee
from .endpoints import _KitLedger
from .records import (
    FOREIGN_STATES,
    KhaltiFakeEpayment,
    KhaltiFakeForeign,
    KhaltiFakePayment,
    _canonical,
    _now,
    _payable,
    _refunded,
    khalti_id,
)

_Holder = KhaltiFakePayment | KhaltiFakeEpayment | KhaltiFakeForeign


class _Books:
    """What happens to Khalti's books outside the app (part of :class:`KhaltiFake`)."""

    payments: dict[str, KhaltiFakePayment]
    epayments: dict[str, KhaltiFakeEpayment]
    #: Transactions made through another channel of the merchant, by idx
    #: (:meth:`add_foreign`).
    foreign: dict[str, KhaltiFakeForeign]
    _lock: threading.RLock

    #: How many transactions a page of Khalti's transaction list holds, unless the
    #: request asks another with ``?page_size=`` (1 to 100).
    ledger_page_size: int = PAGE_SIZE

    def add_foreign(
        self,
        amount: int,
        *,
        state: str = "Completed",
        fee_amount: int | None = None,
        created_on: datetime | None = None,
        funded_by: str = "wallet",
        refunded_amount: int | None = None,
        mobile: str = "9800000002",
        idx: str | None = None,
    ) -> KhaltiFakeForeign:
        """A transaction made through another channel of the same merchant (Khalti's
        dashboard, a point of sale, another site on the same key): it appears in the
        transaction list and matches no payment of the app's. ``state``: ``Completed``,
        ``Refunded`` or ``Partially refunded`` (``refunded_amount``: by default all of it,
        or half). ``created_on``: by default now. Refused (``ValueError``) as
        :meth:`add_payment` refuses an amount Khalti takes no payment of.
        """
        state = _canonical(state, FOREIGN_STATES, "transaction state")
        funded_by = _canonical(funded_by, FUNDED_BY, "funded_by")
        amount = _payable(amount, funded_by)
        refunded = _refunded(state, amount, refunded_amount)
        if not 0 <= refunded <= amount:
            raise ValueError(f"refunded_amount={refunded}: from 0 to the amount, {amount}.")
        record = KhaltiFakeForeign(
            idx=idx or khalti_id(),
            amount=amount,
            state=state,
            fee_amount=khalti_fee(amount) if fee_amount is None else fee_amount,
            created_on=_now() if created_on is None else aware(created_on),
            funded_by=funded_by,
            mobile=mobile,
            refunded_amount=refunded,
        )
        with self._lock:
            self.foreign[record.idx] = record
        return record

    def refund_in_dashboard(
        self, key: str | _Holder, amount: int | None = None, *, mobile: str | None = None
    ) -> None:
        """Somebody refunds a settled transaction in Khalti's dashboard: all that
        remains, or ``amount`` paisa of it. Khalti's state changes (status, lookup, the
        record and the transaction list say so); the app is not told, and no call is
        recorded. ``key``: a payment's token or idx, an ePayment's pidx or transaction
        id, a foreign transaction's idx, or the record itself. A bank-funded payment is
        refunded only to a ``mobile``, as through the API.

        Raises ``ValueError``, naming Khalti's rule, for what Khalti refuses: an
        unverified, unpaid or fully refunded payment, more than remains, an amount below 1.
        """
        with self._lock:
            idx = self._transaction_idx(self._holder(key))
            params: dict[str, Any] = {} if amount is None else {"amount": amount}
            if mobile is not None:
                params["mobile"] = mobile
            answer = rules.refund(idx, params, _KitLedger(self))  # type: ignore[arg-type]
        if answer.status != 200:
            raise ValueError(
                f"Khalti's dashboard refuses the refund ({answer.rule}): {answer.body}"
            )

    def remove_transaction(self, key: str | _Holder) -> None:
        """Khalti's books lose a transaction: the payment (token or idx), the ePayment
        (pidx or transaction id) or the foreign transaction is gone from the list, and
        every endpoint answers for it as for one Khalti never knew. For a test of a
        payment the app holds that Khalti's list lacks.
        """
        with self._lock:
            holder = self._holder(key)
            if isinstance(holder, KhaltiFakePayment):
                del self.payments[holder.token]
            elif isinstance(holder, KhaltiFakeEpayment):
                del self.epayments[holder.pidx]
            else:
                del self.foreign[holder.idx]

    def set_amount(self, key: str | _Holder, amount: int) -> None:
        """Khalti's books hold a transaction for ``amount`` paisa, another amount than
        the buyer paid: verify, status, the record, lookup and the transaction list all
        say it. ``key`` as for :meth:`remove_transaction`. Refused (``ValueError``) for
        an amount Khalti takes no payment of, or below what was refunded of it.
        """
        with self._lock:
            holder = self._holder(key)
            amount = _payable(amount, holder.funded_by)
            if amount < holder.refunded_amount:
                raise ValueError(
                    f"amount={amount} is below what Khalti refunded of it ({holder.refunded_amount})."
                )
            holder.amount = amount

    def _holder(self, key: str | _Holder) -> _Holder:
        """The record ``key`` names (any of its ids), or ``LookupError``."""
        if isinstance(key, (KhaltiFakePayment, KhaltiFakeEpayment, KhaltiFakeForeign)):
            return key
        found: _Holder | None = self.payments.get(key) or self.foreign.get(key)
        found = found or self.epayments.get(key)
        found = found or next((p for p in self.payments.values() if p.idx == key), None)
        found = found or next((e for e in self.epayments.values() if e.transaction_id == key), None)
        if found is None:
            raise LookupError(f"No transaction {key!r} at the fake Khalti.")
        return found

    @staticmethod
    def _transaction_idx(holder: _Holder) -> str:
        if isinstance(holder, KhaltiFakeEpayment):
            if holder.transaction_id is None:
                raise ValueError(f"ePayment {holder.pidx} is {holder.status}: nothing was paid.")
            return holder.transaction_id
        return holder.idx
