from django.dispatch import receiver
from django.utils import timezone

from django_khalti.models import Payment
from django_khalti.signals import payment_verified

from .models import Order


@receiver(payment_verified, sender=Payment)
def mark_order_paid(sender, payment, **kwargs):
    # Idempotent: only an unpaid order is changed.
    Order.objects.filter(reference=payment.product_identity, paid=False).update(
        paid=True, paid_at=timezone.now()
    )
