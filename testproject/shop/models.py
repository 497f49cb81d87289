from django.db import models


class Order(models.Model):
    """A shop's order: what the buyer owes, in paisa."""

    reference = models.CharField(max_length=64, unique=True)
    total = models.PositiveBigIntegerField(help_text="paisa")
    paid = models.BooleanField(default=False)
    paid_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return self.reference
