# The local Khalti sandbox: appended to the end of mysite/urls.py. Served only
# where the settings installed it (DEBUG, no Khalti keys in the environment).
from django.apps import apps

if apps.is_installed("django_khalti.sandbox"):
    urlpatterns += [path("sandbox/", include("django_khalti.sandbox.urls"))]
