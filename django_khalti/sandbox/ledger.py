"""The sandbox's rows as Khalti's rules read and change them: a ``KhaltiLedger``.

The merchant API's views and the admin's dashboard actions both hand it to
:mod:`django_khalti.rules`.
"""

from __future__ import annotations

from typing import Any

from django.db.models import F, Q
from django.urls import reverse
from django.utils import timezone
from rest_framework.request import Request

from ..rules.shapes import Held, HeldEpayment
from .models import SandboxEpayment, SandboxTransaction


class SandboxLedger:
    """The sandbox's rows, as Khalti's rules read and change them (a ``KhaltiLedger``).

    ``for_update``: rows are read locked (``select_for_update``), in the caller's
    transaction, so that two refunds of one payment are taken one after the other.
    """

    def __init__(self, request: Request | None = None, *, for_update: bool = False) -> None:
        self.request = request
        self.for_update = for_update

    def find_transaction(self, key: str) -> Held | None:
        """The transaction whose token or idx is ``key``."""
        rows = SandboxTransaction.objects.filter(Q(token=key) | Q(idx=key))
        row = (rows.select_for_update() if self.for_update else rows).first()
        return None if row is None else row.held()

    def find_epayment(self, pidx: str) -> HeldEpayment | None:
        """The ePayment of ``pidx``."""
        row = SandboxEpayment.objects.select_related("transaction").filter(pidx=pidx).first()
        return None if row is None else row.held()

    def complete(self, held: Held) -> bool:
        """The merchant verified this payment: one winner, from Confirmed only."""
        return bool(
            SandboxTransaction.objects.filter(
                idx=held.idx, state=SandboxTransaction.State.CONFIRMED
            ).update(state=SandboxTransaction.State.COMPLETED, completed_at=timezone.now())
        )

    def refund(self, held: Held, amount: int, mobile: str | None) -> None:
        """Khalti refunds ``amount`` of this transaction (to ``mobile``, not kept)."""
        SandboxTransaction.objects.filter(idx=held.idx).update(
            refunded_amount=F("refunded_amount") + amount
        )

    def start(self, data: dict[str, Any]) -> tuple[HeldEpayment, str]:
        """Keep a new ePayment; its payment URL is the sandbox's hosted page."""
        epayment = SandboxEpayment.objects.create(
            amount=data["amount"],
            purchase_order_id=data["purchase_order_id"],
            purchase_order_name=data["purchase_order_name"],
            return_url=data["return_url"],
            website_url=data["website_url"],
            request=data,
        )
        assert self.request is not None
        pay_url = self.request.build_absolute_uri(reverse("khalti_sandbox:pay"))
        return epayment.held(), f"{pay_url}?pidx={epayment.pidx}"

    def expire(self, epayment: HeldEpayment) -> None:
        """Nothing to write: a row's lookup status derives Expired from ``expires_at``."""

    @staticmethod
    def _listed() -> Any:
        """The merchant's transaction list: settled rows, newest first, then by idx."""
        return SandboxTransaction.objects.filter(state=SandboxTransaction.State.COMPLETED).order_by(
            "-created_at", "idx"
        )

    def count_transactions(self) -> int:
        """How many rows the list holds: one ``COUNT`` query."""
        return int(self._listed().count())

    def transactions_page(self, offset: int, limit: int) -> list[Held]:
        """One page of the list: a ``LIMIT``/``OFFSET`` query, never the whole table."""
        return [row.held() for row in self._listed()[offset : offset + limit]]
