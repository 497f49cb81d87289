"""The shop's side of the integration: how much it expects for an order."""

from .models import Order


def order_amount(request, product_identity):
    """KHALTI['AMOUNT_RESOLVER']: the order's total in paisa, or None if unknown or paid."""
    order = Order.objects.filter(reference=product_identity, paid=False).first()
    return order.total if order else None
