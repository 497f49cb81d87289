"""A shop's URLconf that forgot dj-khalti's URLs (system check W006)."""

from django.urls import include, path

urlpatterns = [path("", include("shop.urls"))]
