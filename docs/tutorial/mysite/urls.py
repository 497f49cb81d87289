from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("khalti/", include("django_khalti.urls")),  # namespace "django_khalti"
    path("", include("shop.urls")),  # namespace "shop"
]
