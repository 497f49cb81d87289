"""The app's URLs, namespace ``django_khalti``.

The API (``verify``, ``epayment-initiate``) and the buyer's ePayment pages
(``epayment-start``, ``epayment-return``). A widget-only shop may include
:mod:`django_khalti.widget_urls` instead.
"""

from django.urls import path

from . import pages, views, widget_urls

app_name = "django_khalti"

urlpatterns = [
    *widget_urls.urlpatterns,
    path("epayment/initiate/", views.EpaymentInitiateView.as_view(), name="epayment-initiate"),
    path("epayment/start/<str:product_identity>/", pages.epayment_start, name="epayment-start"),
    path("epayment/return/", pages.epayment_return, name="epayment-return"),
]
