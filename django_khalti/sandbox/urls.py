"""The sandbox's URLs: Khalti's API, its hosted pay page and its widget, under a prefix.

Mount under a prefix and point ``KHALTI["BASE_URL"]`` at it:
``path("sandbox/", include("django_khalti.sandbox.urls"))`` → ``http://127.0.0.1:8000/sandbox/``
(``KHALTI["WIDGET_SCRIPT_URL"]``: ``/sandbox/khalti-checkout.js``). The API paths are
Khalti's own, so dj-khalti's client needs no change, and Khalti's real widget runs
against the sandbox when a browser sends ``https://khalti.com/*`` here
(tests/system/test_real_widget.py).

Every view is :func:`~django_khalti.sandbox.guard.guarded`: with ``DEBUG`` off or a
live key, each URL answers 403 and says why, and serves nothing. The API views run on
their own terms, whatever the site's ``REST_FRAMEWORK`` throttles or versioning.
"""

from collections.abc import Callable
from typing import Any

from django.http import HttpResponse
from django.urls import path

from .guard import guarded
from .views import merchant, widget

app_name = "khalti_sandbox"

#: A site's REST_FRAMEWORK defaults the sandbox must not take: it answers as Khalti.
OWN_TERMS: dict[str, Any] = {"throttle_classes": [], "versioning_class": None}


def api(view_class: Any) -> Callable[..., HttpResponse]:
    """One of Khalti's API endpoints: a DRF view on its own terms, refused as JSON."""
    return guarded("api", view_class.as_view(**OWN_TERMS))


def page(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """A page the buyer sees, refused with a page that says why."""
    return guarded("page", view)


urlpatterns = [
    # Khalti's merchant API (Authorization: Key <secret key>).
    path("api/v2/payment/verify/", api(merchant.VerifyView), name="verify"),
    path("api/v2/payment/status/", api(merchant.StatusView), name="status"),
    path(
        "api/v2/merchant-transaction/",
        api(merchant.TransactionListView),
        name="transactions",
    ),
    path(
        "api/merchant-transaction/",
        api(merchant.TransactionListView),
        name="transactions-older",
    ),
    path(
        "api/v2/merchant-transaction/<str:idx>/",
        api(merchant.TransactionView),
        name="transaction",
    ),
    path("api/merchant-transaction/<str:idx>/refund/", api(merchant.RefundView), name="refund"),
    path("api/v2/epayment/initiate/", api(merchant.EpaymentInitiateView), name="epayment-initiate"),
    path("api/v2/epayment/lookup/", api(merchant.EpaymentLookupView), name="epayment-lookup"),
    # What the buyer sees: the hosted ePayment page.
    path("pay/", page(merchant.pay), name="pay"),
    # Khalti's widget (KPG-1), called from the buyer's browser with the public key.
    path("api/v2/payment/initiate/", api(widget.InitiateView), name="widget-initiate"),
    path("api/v2/payment/confirm/", api(widget.ConfirmView), name="widget-confirm"),
    path("api/v2/bank/", api(widget.BankListView), name="banks"),
    path("ebanking/initiate/", page(widget.bank_initiate), name="bank-initiate"),
    # The stand-in for Khalti's script, and its one-step wallet payment.
    path("khalti-checkout.js", guarded("script", widget.checkout_js), name="checkout-js"),
    path("widget/pay/", api(widget.WidgetPayView), name="widget-pay"),
]
