"""The demo shop: products and orders, an order page with both ways to pay Khalti,
and the pages dj-khalti's ePayment flow sends the buyer back to.

The order page is the reference integration: ``{% khalti_widget %}`` and
``{% khalti_epayment_button %}`` (``{% load khalti %}``), and the view decorated
with ``allow_khalti_popups`` so that the widget's bank tabs can report back.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from django_khalti.conf import khalti_settings
from django_khalti.decorators import allow_khalti_popups
from django_khalti.models import Payment

from .catalogue import PRODUCTS, PRODUCTS_BY_SLUG, new_order
from .models import Order


def _page(
    request: HttpRequest, template: str, context: dict[str, Any], status: int = 200
) -> HttpResponse:
    """Render with what every page shows: which Khalti the shop talks to."""
    context.setdefault("khalti_base_url", khalti_settings.BASE_URL)
    context.setdefault("real_khalti", bool(settings.SHOP_KHALTI_CHECKOUT_JS))
    return render(request, template, context, status=status)


@require_GET
def index(request: HttpRequest) -> HttpResponse:
    orders = Order.objects.order_by("paid", "pk")
    return _page(request, "shop/index.html", {"products": PRODUCTS, "orders": orders})


@require_POST
def order_create(request: HttpRequest) -> HttpResponse:
    product = PRODUCTS_BY_SLUG.get(request.POST.get("product", ""))
    if product is None:
        return HttpResponseBadRequest("Unknown product.")
    return redirect("shop:order", reference=new_order(product).reference)


@require_GET
@allow_khalti_popups
def pay_page(request: HttpRequest, reference: str) -> HttpResponse:
    """The README's pay page, as a shop writes it: the template is the tag alone."""
    order = get_object_or_404(Order, reference=reference)
    return render(request, "shop/pay.html", {"order": order})


@require_GET
@allow_khalti_popups
def order_detail(request: HttpRequest, reference: str) -> HttpResponse:
    order = get_object_or_404(Order, reference=reference)
    payments = Payment.objects.for_order(order.reference)
    # An ePayment link still out: the buyer may continue it, or pay another way
    # (dj-khalti then supersedes the link, unpaid).
    open_epayment = (
        payments.filter(
            flow=Payment.Flow.EPAYMENT, status=Payment.Status.PENDING, expires_at__gt=timezone.now()
        )
        .exclude(payment_url="")
        .first()
    )
    return _page(
        request,
        "shop/order.html",
        {
            "order": order,
            "payments": payments,
            "open_epayment": None if order.paid else open_epayment,
        },
    )


def _result(request: HttpRequest, *, success: bool) -> HttpResponse:
    """KHALTI's SUCCESS_URL / FAILURE_URL: ``?payment=<id>``. What is shown is the
    payment as the database has it; the URL only says which one."""
    payment = None
    with contextlib.suppress(ValueError):
        payment = Payment.objects.filter(pk=uuid.UUID(request.GET.get("payment", ""))).first()
    order = Order.objects.filter(reference=payment.order_reference).first() if payment else None
    return _page(
        request,
        "shop/result.html",
        {
            "success": success,
            "payment": payment,
            "order": order,
            "paid": payment is not None and payment.status in Payment.PAID_STATUSES,
        },
        status=200 if payment else 404,
    )


@require_GET
def payment_success(request: HttpRequest) -> HttpResponse:
    return _result(request, success=True)


@require_GET
def payment_failure(request: HttpRequest) -> HttpResponse:
    return _result(request, success=False)


def no_favicon(request: HttpRequest) -> HttpResponse:
    """No icon, and no 404 in the browser's console (the admin's pages ask for one)."""
    return HttpResponse(status=204)
