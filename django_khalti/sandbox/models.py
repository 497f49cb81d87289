"""What the sandbox knows, as Khalti would: transactions and ePayments.

Amounts are paisa. Ids look like Khalti's (22 characters of base 57). What
Khalti answers about them is decided by Khalti's rules (:mod:`django_khalti.rules`),
which read each row as the rules' ``Held`` / ``HeldEpayment``.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from django.db import models
from django.utils import timezone

from ..rules import shapes as rules
from ..rules.shapes import mask_mobile as mask_mobile

#: The alphabet of Khalti's ids (no 0/O, 1/l/I).
ID_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
#: How long an ePayment link is good for (Khalti's sandbox answers 1800).
EPAYMENT_LIFETIME = timedelta(seconds=rules.LINK_SECONDS)
#: The sandbox's test Khalti ids and MPIN (those of Khalti's own sandbox).
TEST_MOBILES = [f"980000000{n}" for n in range(6)]
TEST_MPIN = "1111"
#: The widget's confirmation code (OTP) in the sandbox (Khalti's sandbox's).
TEST_OTP = "987654"

#: The sandbox's banks, as the bank list answers them, by ``payment_type``.
BANKS = {
    "sdkebanking": [
        {"idx": "SandboxEbankA7kqWmR3xTn2Y", "name": "Sandbox Bank Ltd.", "short_name": "SBL"},
        {"idx": "SandboxEbankB9pzHcV4uJs6Q", "name": "Test Bank Ltd.", "short_name": "TBL"},
    ],
    "mobilecheckout": [
        {"idx": "SandboxMobileC3mdKfX8wPr5", "name": "Sandbox Mobile Bank", "short_name": "SMB"},
    ],
}
#: The banks of connectIPS and SCT, which the widget names itself.
FIXED_BANKS = {"connectips": "connectIPS", "npay": "SCT card (NPay)"}


def new_id() -> str:
    """A new id shaped like Khalti's: 22 characters of :data:`ID_ALPHABET`."""
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(22))


def bank_name(idx: str) -> str | None:
    """The name of the sandbox's bank ``idx`` (of the bank list, connectIPS or SCT), or None."""
    for bank in (*BANKS["sdkebanking"], *BANKS["mobilecheckout"]):
        if bank["idx"] == idx:
            return bank["name"]
    return FIXED_BANKS.get(idx)


def rupees(paisa: int) -> str:
    """Paisa as rupees for display: ``123456`` → ``"1,234.56"``."""
    whole, rest = divmod(paisa, 100)
    return f"{whole:,}.{rest:02d}"


class SandboxTransaction(models.Model):
    """A payment the sandbox took: a widget payment (with its token) or an ePayment's."""

    class Kind(models.TextChoices):
        """Which flow took the payment."""

        WIDGET = rules.WIDGET, "Widget (KPG-1)"
        EPAYMENT = rules.EPAYMENT, "ePayment (KPG-2)"
        #: Made through another channel of the merchant (added in the admin): in the
        #: transaction list, matching no payment of the shop's.
        FOREIGN = rules.FOREIGN, "Another channel"

    class FundedBy(models.TextChoices):
        """Where the buyer's money came from: a Khalti wallet, or a bank (the widget's
        bank tabs), whose refunds Khalti makes only to a ``mobile``.
        """

        WALLET = rules.WALLET, "Khalti wallet"
        BANK = rules.BANK, "Bank"

    class State(models.TextChoices):
        """How far the payment went."""

        #: Widget: the buyer started paying (initiate), the OTP is not confirmed yet.
        INITIATED = "Initiated"
        #: Widget: the buyer paid, the merchant has not verified the token yet.
        CONFIRMED = "Confirmed"
        #: Verified by the merchant (widget), or paid (ePayment).
        COMPLETED = "Completed"

    idx = models.CharField(max_length=32, unique=True, default=new_id)
    token = models.CharField(max_length=32, unique=True, null=True, blank=True)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    state = models.CharField(max_length=16, choices=State.choices)
    amount = models.PositiveBigIntegerField(help_text="paisa")
    fee_amount = models.PositiveBigIntegerField(help_text="paisa")
    refunded_amount = models.PositiveBigIntegerField(default=0, help_text="paisa")
    mobile = models.CharField("payer's Khalti id", max_length=16)
    funded_by = models.CharField(max_length=8, choices=FundedBy.choices, default=FundedBy.WALLET)
    product_identity = models.CharField(max_length=255)
    product_name = models.CharField(max_length=255)
    product_url = models.CharField(max_length=1000, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "sandbox transaction"
        indexes = [
            # The merchant's transaction list: settled ones, newest first, a page at a time.
            models.Index(fields=["state", "-created_at", "idx"], name="khalti_sandbox_list"),
        ]

    def __str__(self) -> str:
        return f"{self.idx} · {self.amount} paisa · {self.khalti_state()}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Save, with Khalti's fee on the amount unless one is set."""
        if getattr(self, "fee_amount", None) is None:  # not given: Khalti's fee
            self.fee_amount = rules.fee(self.amount)
        super().save(*args, **kwargs)

    def khalti_state(self) -> str:
        """The state as the status endpoint names it."""
        if self.state != self.State.COMPLETED:
            return str(self.state)
        if self.refunded_amount:
            return rules.after_refund(self.amount, self.refunded_amount)
        return rules.COMPLETE

    def held(self) -> rules.Held:
        """The transaction as Khalti's rules read it."""
        return rules.Held(
            idx=self.idx,
            amount=self.amount,
            state=self.khalti_state(),
            mobile=self.mobile,
            created_on=self.created_at,
            kind=self.kind,
            token=self.token,
            fee_amount=self.fee_amount,
            refunded_amount=self.refunded_amount,
            funded_by=self.funded_by,
        )

    def confirm_answer(self) -> dict[str, Any]:
        """Khalti's answer to the widget's confirm (and the bank popup's report): what
        ``onSuccess`` gets, once the widget has added its ``widget_id``.
        """
        return {
            "idx": self.idx,
            "token": self.token,
            "amount": self.amount,
            "mobile": mask_mobile(self.mobile),
            "product_identity": self.product_identity,
            "product_name": self.product_name,
            "product_url": self.product_url,
        }


def _expiry() -> Any:
    """When a link made now runs out."""
    return timezone.now() + EPAYMENT_LIFETIME


class SandboxEpayment(models.Model):
    """An ePayment a merchant initiated, and what the buyer did with it."""

    class Status(models.TextChoices):
        """What the buyer did on the hosted page (lookup adds Expired and the refunds)."""

        INITIATED = "Initiated"
        COMPLETED = "Completed"
        USER_CANCELED = "User canceled"

    pidx = models.CharField(max_length=32, unique=True, default=new_id)
    amount = models.PositiveBigIntegerField(help_text="paisa")
    purchase_order_id = models.CharField(max_length=255)
    purchase_order_name = models.CharField(max_length=255)
    return_url = models.CharField(max_length=1000)
    website_url = models.CharField(max_length=1000)
    #: The merchant's whole initiate request (customer_info, amount_breakdown, ...).
    request = models.JSONField(default=dict)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.INITIATED)
    mobile = models.CharField("payer's Khalti id", max_length=16, blank=True)
    transaction = models.OneToOneField(
        SandboxTransaction, on_delete=models.PROTECT, null=True, blank=True, related_name="epayment"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(default=_expiry)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "sandbox ePayment"

    def __str__(self) -> str:
        return f"{self.pidx} · {self.purchase_order_id} · {self.lookup_status()}"

    @property
    def amount_rupees(self) -> str:
        """The amount in rupees, for display."""
        return rupees(self.amount)

    @property
    def expired(self) -> bool:
        """Whether the link ran out before the buyer paid or cancelled."""
        return self.lookup_status() == "Expired"

    def held(self) -> rules.HeldEpayment:
        """The ePayment as Khalti's rules read it."""
        transaction = self.transaction
        status = str(self.status)
        if transaction is not None and status == self.Status.COMPLETED:
            status = rules.epayment_status(transaction.khalti_state())
        return rules.HeldEpayment(
            pidx=self.pidx,
            amount=self.amount,
            status=status,
            expires_at=self.expires_at,
            transaction_id=transaction.idx if transaction else None,
            fee=transaction.fee_amount if transaction else 0,
            refunded_amount=transaction.refunded_amount if transaction else 0,
        )

    def lookup_status(self) -> str:
        """The status as lookup names it (Khalti capitalises ``Partially Refunded`` here)."""
        return rules.lookup_status(self.held(), timezone.now())

    def return_url_with_result(self) -> str:
        """The merchant's return URL with the query Khalti adds when it sends the buyer back."""
        query = urlencode(
            rules.return_params(
                self.held(),
                mobile=self.mobile,
                purchase_order_id=self.purchase_order_id,
                purchase_order_name=self.purchase_order_name,
                now=timezone.now(),
            )
        )
        return f"{self.return_url}{'&' if '?' in self.return_url else '?'}{query}"
