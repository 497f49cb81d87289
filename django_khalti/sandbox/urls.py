"""Mount under a prefix and point ``KHALTI["BASE_URL"]`` at it:
``path("sandbox/", include("django_khalti.sandbox.urls"))`` → ``http://127.0.0.1:8000/sandbox/``.
The API paths are Khalti's own, so dj-khalti's client needs no change, and Khalti's
real widget runs against the sandbox when a browser sends ``https://khalti.com/*``
here (tests/system/test_real_widget.py).
"""

from django.urls import path

from .views import merchant, widget

app_name = "khalti_sandbox"

urlpatterns = [
    # Khalti's merchant API (Authorization: Key <secret key>).
    path("api/v2/payment/verify/", merchant.VerifyView.as_view(), name="verify"),
    path("api/v2/payment/status/", merchant.StatusView.as_view(), name="status"),
    path(
        "api/v2/merchant-transaction/<str:idx>/",
        merchant.TransactionView.as_view(),
        name="transaction",
    ),
    path(
        "api/merchant-transaction/<str:idx>/refund/", merchant.RefundView.as_view(), name="refund"
    ),
    path(
        "api/v2/epayment/initiate/",
        merchant.EpaymentInitiateView.as_view(),
        name="epayment-initiate",
    ),
    path("api/v2/epayment/lookup/", merchant.EpaymentLookupView.as_view(), name="epayment-lookup"),
    # What the buyer sees: the hosted ePayment page.
    path("pay/", merchant.pay, name="pay"),
    # Khalti's widget (KPG-1), called from the buyer's browser with the public key.
    path("api/v2/payment/initiate/", widget.InitiateView.as_view(), name="widget-initiate"),
    path("api/v2/payment/confirm/", widget.ConfirmView.as_view(), name="widget-confirm"),
    path("api/v2/bank/", widget.BankListView.as_view(), name="banks"),
    path("ebanking/initiate/", widget.bank_initiate, name="bank-initiate"),
    # The stand-in for Khalti's script, and its one-step wallet payment.
    path("khalti-checkout.js", widget.checkout_js, name="checkout-js"),
    path("widget/pay/", widget.WidgetPayView.as_view(), name="widget-pay"),
]
