from django.core.exceptions import ValidationError
from django.shortcuts import get_object_or_404, render

from django_khalti.decorators import allow_khalti_popups
from django_khalti.models import Payment

from .models import Order


@allow_khalti_popups  # the widget's bank tabs open popups that must reach this page
def order(request, reference):
    """The order, with Khalti's two checkouts: the ePayment button and the widget."""
    order = get_object_or_404(Order, reference=reference)
    return render(request, "shop/order.html", {"order": order})


def _payment(request):
    """The Payment named by ``?payment=<id>``, which dj-khalti appends, or None."""
    try:
        return Payment.objects.filter(pk=request.GET.get("payment", "")).first()
    except ValidationError:  # not a payment id at all
        return None


def thanks(request):
    """KHALTI["SUCCESS_URL"]: where the buyer lands once Khalti confirmed the payment."""
    payment = _payment(request)
    if payment is not None and payment.status not in Payment.PAID_STATUSES:
        payment = None
    return render(request, "shop/thanks.html", {"payment": payment})


def payment_failed(request):
    """KHALTI["FAILURE_URL"]: an ePayment that failed, expired or was cancelled."""
    return render(request, "shop/payment_failed.html", {"payment": _payment(request)})
