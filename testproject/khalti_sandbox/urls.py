"""Mount under a prefix and point ``KHALTI["BASE_URL"]`` at it:
``path("sandbox/", include("khalti_sandbox.urls"))`` → ``http://127.0.0.1:8000/sandbox/``.
The API paths are Khalti's own, so dj-khalti's client needs no change."""

from django.urls import path

from . import views

app_name = "khalti_sandbox"

urlpatterns = [
    # Khalti's merchant API (Authorization: Key <secret key>).
    path("api/v2/payment/verify/", views.VerifyView.as_view(), name="verify"),
    path("api/v2/payment/status/", views.StatusView.as_view(), name="status"),
    path(
        "api/v2/merchant-transaction/<str:idx>/",
        views.TransactionView.as_view(),
        name="transaction",
    ),
    path("api/merchant-transaction/<str:idx>/refund/", views.RefundView.as_view(), name="refund"),
    path(
        "api/v2/epayment/initiate/", views.EpaymentInitiateView.as_view(), name="epayment-initiate"
    ),
    path("api/v2/epayment/lookup/", views.EpaymentLookupView.as_view(), name="epayment-lookup"),
    # What the buyer sees: the hosted ePayment page and the widget.
    path("pay/", views.pay, name="pay"),
    path("khalti-checkout.js", views.checkout_js, name="checkout-js"),
    path("widget/pay/", views.WidgetPayView.as_view(), name="widget-pay"),
]
