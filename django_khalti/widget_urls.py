"""The widget's URL only, namespace ``django_khalti``: for a shop that takes no
ePayment, ``include("django_khalti.widget_urls")`` serves ``verify`` alone
(no ePayment pages, so ``KHALTI["WEBSITE_URL"]`` is not needed).
"""

from django.urls import path

from . import views

app_name = "django_khalti"

urlpatterns = [
    path("verify/", views.VerifyView.as_view(), name="verify"),
]
