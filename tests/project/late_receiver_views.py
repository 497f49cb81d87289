"""A views module that connects a receiver of payment_verified when it is imported, as a
shop might: only processes that load the URLconf (tests/project/urls_late_receiver.py) have it.
"""

from django.dispatch import receiver
from django.http import HttpResponse

from django_khalti.models import Payment
from django_khalti.signals import payment_verified


@receiver(payment_verified, sender=Payment)
def mark_order_paid_from_views(sender, payment, **kwargs):
    pass


def thanks(request):
    return HttpResponse("Thanks")
