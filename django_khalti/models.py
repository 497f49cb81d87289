"""The ``Payment`` record: one row per Khalti payment attempt.

Status changes happen only in :mod:`django_khalti.services`. Nothing here
calls Khalti.
"""

from __future__ import annotations

import uuid

from django.db import models
from django.utils.translation import gettext_lazy as _


class PaymentQuerySet(models.QuerySet["Payment"]):
    def pending(self) -> PaymentQuerySet:
        return self.filter(status=Payment.Status.PENDING)

    def verified(self) -> PaymentQuerySet:
        return self.filter(status=Payment.Status.VERIFIED)

    def for_order(self, product_identity: str) -> PaymentQuerySet:
        return self.filter(product_identity=product_identity)


class Payment(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", _("Pending")
        VERIFIED = "verified", _("Verified")
        FAILED = "failed", _("Failed")

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    token = models.CharField(_("token"), max_length=255, unique=True)
    product_identity = models.CharField(_("product identity"), max_length=255, db_index=True)
    amount = models.PositiveBigIntegerField(_("amount (paisa)"))
    status = models.CharField(
        _("status"), max_length=32, choices=Status.choices, default=Status.PENDING, db_index=True
    )

    # What Khalti told us.
    idx = models.CharField(_("Khalti transaction id"), max_length=255, unique=True, null=True, blank=True)
    fee_amount = models.PositiveBigIntegerField(_("fee (paisa)"), null=True, blank=True)
    mobile = models.CharField(_("payer mobile (masked by Khalti)"), max_length=32, blank=True)
    khalti_response = models.JSONField(_("Khalti's last answer"), null=True, blank=True)
    failure_reason = models.TextField(_("failure reason"), blank=True)

    created_at = models.DateTimeField(_("created"), auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)
    verified_at = models.DateTimeField(_("verified"), null=True, blank=True)

    # Bookkeeping for exactly-once (see services.py).
    #: Holds ``product_identity`` while this payment is pending or paid, NULL once
    #: it failed: a unique column, so one order has at most one live payment on
    #: every database (NULLs never collide).
    order_claim = models.CharField(max_length=255, unique=True, null=True, editable=False)
    #: When a worker took this payment to call Khalti; NULL when nobody holds it.
    claimed_at = models.DateTimeField(null=True, blank=True, editable=False)
    #: How many times a worker has taken this payment to call Khalti.
    attempts = models.PositiveIntegerField(default=0, editable=False)

    objects = PaymentQuerySet.as_manager()

    class Meta:
        verbose_name = _("Khalti payment")
        verbose_name_plural = _("Khalti payments")
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.product_identity} · Rs {self.amount_rupees} · {self.get_status_display()}"

    @property
    def amount_rupees(self) -> str:
        """The amount for display: paisa as rupees with two decimals."""
        rupees, paisa = divmod(self.amount, 100)
        return f"{rupees:,}.{paisa:02d}"
