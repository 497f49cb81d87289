"""The app's URLs, namespace ``django_khalti``.

The API (``verify``, ``epayment-initiate``) and the buyer's ePayment pages
(``epayment-start``, ``epayment-return``).
"""

from django.urls import path

from . import views

app_name = "django_khalti"

urlpatterns = [
    path("verify/", views.VerifyView.as_view(), name="verify"),
    path("epayment/initiate/", views.EpaymentInitiateView.as_view(), name="epayment-initiate"),
    path("epayment/start/<str:product_identity>/", views.epayment_start, name="epayment-start"),
    path("epayment/return/", views.epayment_return, name="epayment-return"),
]
