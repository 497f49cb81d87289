"""The shop's side of the integration: which order a reference names, and what it costs."""

from django_khalti.orders import KhaltiOrder

from .models import Order


def order_amount(request, product_identity):
    """KHALTI['AMOUNT_RESOLVER']: the unpaid order and its total in paisa, or None.

    References are looked up whatever their case ("ord-1" is ORD-1), so the order
    is named by its own reference: two spellings are one order to dj-khalti.
    """
    order = Order.objects.filter(reference__iexact=product_identity, paid=False).first()
    return KhaltiOrder(order.reference, order.total) if order else None
