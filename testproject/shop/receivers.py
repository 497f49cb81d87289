from django.db import transaction
from django.dispatch import receiver
from django.utils import timezone

from django_khalti.models import Payment
from django_khalti.signals import payment_failed, payment_verified

from .models import Order, OrderEvent


@receiver(payment_verified, sender=Payment)
def mark_order_paid(sender, payment, **kwargs):
    # Signals are delivered at least once: this may run again for the same payment.
    # One transaction: the order and its history change together (and commit once).
    with transaction.atomic():
        # Idempotent: only an unpaid order is changed, and only a change is recorded.
        if Order.objects.filter(reference=payment.order_reference, paid=False).update(
            paid=True, paid_at=timezone.now()
        ):
            OrderEvent.objects.create(
                order_reference=payment.order_reference, kind="paid", payment_id=payment.pk
            )


@receiver(payment_failed, sender=Payment)
def note_failed_payment(sender, payment, reason, **kwargs):
    # Idempotent: a second delivery of the same failure records nothing new.
    OrderEvent.objects.get_or_create(
        order_reference=payment.order_reference, kind="payment_failed", payment_id=payment.pk
    )
