from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("khalti/", include("django_khalti.urls")),
    # The demo: Khalti played by this server, and a small shop.
    path("sandbox/", include("khalti_sandbox.urls")),
    path("", include("shop.urls")),
]
