from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    # The quick start's step 3: POST /khalti/verifypayment/ (token, amount; form-encoded).
    path("khalti/", include("khalti.urls")),
]
