from django.db import models
from django.db.models.functions import Upper

from django_khalti.models import rupees


class Order(models.Model):
    """A shop's order: what the buyer owes, in paisa."""

    reference = models.CharField(max_length=64, unique=True)
    #: What was bought, for the demo's pages (Khalti's ``product_name``).
    name = models.CharField(max_length=255, blank=True, default="")
    total = models.PositiveBigIntegerField(help_text="paisa")
    paid = models.BooleanField(default=False)
    paid_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        # The resolver (shop/khalti.py) looks references up whatever their case.
        indexes = [models.Index(Upper("reference"), name="shop_order_reference_upper")]

    def __str__(self) -> str:
        return self.reference

    @property
    def total_rupees(self) -> str:
        return rupees(self.total)

    @property
    def title(self) -> str:
        return self.name or f"Order {self.reference}"


class OrderEvent(models.Model):
    """The order's history, one row a payment signal received (tests count them)."""

    order_reference = models.CharField(max_length=64, db_index=True)
    kind = models.CharField(max_length=32)
    payment_id = models.UUIDField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.kind} for {self.order_reference}"
