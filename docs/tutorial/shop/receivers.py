import logging

from django.dispatch import receiver
from django.utils import timezone

from django_khalti.models import Payment
from django_khalti.signals import payment_verified

from .models import Order

logger = logging.getLogger(__name__)


@receiver(payment_verified, sender=Payment)
def mark_order_paid(sender, payment, **kwargs):
    """Khalti confirmed ``payment``: the order it paid is paid.

    Signals are delivered at least once, so this may run twice for one payment.
    Only an unpaid order changes: a second run changes nothing. Put side effects
    (an email, a shipment) behind the same test.
    """
    changed = Order.objects.filter(reference=payment.order_reference, paid_at=None).update(
        paid_at=timezone.now()
    )
    if changed:
        logger.info("Order %s paid (payment %s)", payment.order_reference, payment.pk)
