"""What a person does to the sandbox's books in Khalti's dashboard, outside the shop's app.

A refund made in the dashboard (all that remains, or an amount), and a transaction
made through another channel of the same merchant: both show in the merchant's
transaction list, and the shop's app is not told. The admin's actions and pages
(:mod:`django_khalti.sandbox.admin`) call these; Khalti's rules decide, as for the API.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import transaction

from ..rules import answers as rules
from ..rules.shapes import fee, payment_refusal
from .ledger import SandboxLedger
from .models import SandboxTransaction


def refund_in_dashboard(idx: str, amount: int | None = None, mobile: str = "") -> rules.Answer:
    """Refund the transaction ``idx``: all that remains, or ``amount`` paisa; to
    ``mobile`` (a bank-funded payment needs one). The answer says whether Khalti
    refused, and by which rule; the row is locked meanwhile, as for the API's refund.
    """
    params: dict[str, Any] = {} if amount is None else {"amount": amount}
    if mobile:
        params["mobile"] = mobile
    with transaction.atomic():
        return rules.refund(idx, params, SandboxLedger(for_update=True))


def add_foreign(
    *,
    amount: int,
    funded_by: str = SandboxTransaction.FundedBy.WALLET,
    refunded_amount: int = 0,
    fee_amount: int | None = None,
    created_on: datetime | None = None,
    mobile: str = "9800000002",
) -> SandboxTransaction:
    """Keep a transaction made through another channel of the merchant: settled,
    ``refunded_amount`` of it refunded already. ``ValueError`` for an amount Khalti
    takes no payment of, or a refund of more than the amount.
    """
    refusal = payment_refusal(amount, funded_by)
    if refusal is not None:
        raise ValueError(refusal.message)
    if not 0 <= refunded_amount <= amount:
        raise ValueError(f"The refunded amount must be from 0 to the amount, {amount}.")
    with transaction.atomic():
        row = SandboxTransaction.objects.create(
            kind=SandboxTransaction.Kind.FOREIGN,
            state=SandboxTransaction.State.COMPLETED,
            amount=amount,
            fee_amount=fee(amount) if fee_amount is None else fee_amount,
            refunded_amount=refunded_amount,
            mobile=mobile,
            funded_by=funded_by,
            product_identity="",
            product_name="Another channel",
        )
        if created_on is not None:  # created_at is set on insert: moved after it
            SandboxTransaction.objects.filter(pk=row.pk).update(created_at=created_on)
            row.created_at = created_on
    return row
