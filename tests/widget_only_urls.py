"""A widget-only shop's URLconf: dj-khalti's verify alone, no ePayment pages."""

from django.urls import include, path

urlpatterns = [path("khalti/", include("django_khalti.widget_urls"))]
