from django.db import models

from django_khalti.models import rupees


class Order(models.Model):
    """What a buyer owes the shop. Khalti counts in paisa: Rs 1 is 100 paisa."""

    reference = models.CharField(max_length=64, unique=True)
    name = models.CharField(max_length=255)
    total = models.PositiveIntegerField(help_text="In paisa: Rs 1,500 is 150000.")
    # Set by shop/receivers.py once Khalti confirmed a payment of this order.
    paid_at = models.DateTimeField(null=True, blank=True)

    def __str__(self):
        return self.reference

    @property
    def total_rupees(self):
        return rupees(self.total)  # 150000 -> "1,500.00"
