"""The demo shop's products, and new order references. Prices are paisa."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from django_khalti.models import rupees

from .models import Order


@dataclass(frozen=True)
class Product:
    slug: str
    name: str
    price: int  # paisa

    @property
    def price_rupees(self) -> str:
        return rupees(self.price)


PRODUCTS = [
    Product("momo", "Momo platter (10 pcs)", 25000),
    Product("tea", "Ilam tea, 250 g", 65000),
    Product("dhaka-topi", "Dhaka topi", 120000),
    Product("lokta-notebook", "Lokta paper notebook", 1500),
]
PRODUCTS_BY_SLUG = {product.slug: product for product in PRODUCTS}

#: The orders ``seed_demo`` makes: reference, product.
SEED_ORDERS = [
    ("DEMO-1001", "momo"),
    ("DEMO-1002", "tea"),
    ("DEMO-1003", "dhaka-topi"),
    ("DEMO-1004", "lokta-notebook"),
]


def new_order(product: Product) -> Order:
    """A new unpaid order for ``product``, under a fresh reference."""
    while True:
        reference = f"ORD-{secrets.token_hex(3).upper()}"
        order, created = Order.objects.get_or_create(
            reference=reference, defaults={"name": product.name, "total": product.price}
        )
        if created:
            return order
