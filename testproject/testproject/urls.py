from django.contrib import admin
from django.urls import include, path
from rest_framework.renderers import JSONOpenAPIRenderer
from rest_framework.schemas import get_schema_view

import django_khalti

khalti_urls = [path("khalti/", include("django_khalti.urls"))]

urlpatterns = [
    path("admin/", admin.site.urls),
    *khalti_urls,
    # dj-khalti's API described by DRF's own OpenAPI generator (tests/api/test_schema.py).
    path(
        "khalti-schema/",
        get_schema_view(
            title="dj-khalti",
            version=django_khalti.__version__,
            patterns=khalti_urls,
            renderer_classes=[JSONOpenAPIRenderer],
        ),
        name="khalti-schema",
    ),
    # The demo: Khalti played by this server, and a small shop.
    path("sandbox/", include("django_khalti.sandbox.urls")),
    path("", include("shop.urls")),
]
