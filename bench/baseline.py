"""The naive baseline: what most Khalti integrations do, as a one-file Django site.

One view that ``requests.post``-s Khalti's verify endpoint on every call: no
session, no connection pooling, no database, no amount check, no idempotency.
Served by ``bench/run.py`` under the same gunicorn settings as the app
(``gunicorn baseline:application --chdir bench``). KHALTI_BASE_URL and
KHALTI_TIMEOUT come from the environment, as for the testproject; the fake's
certificate is trusted through REQUESTS_CA_BUNDLE.
"""

import json
import os

import requests
from django.conf import settings
from django.core.wsgi import get_wsgi_application
from django.http import JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

settings.configure(
    DEBUG=False,
    SECRET_KEY="bench-baseline-not-secret",
    ALLOWED_HOSTS=["127.0.0.1", "localhost"],
    ROOT_URLCONF=__name__,
    MIDDLEWARE=[
        "django.middleware.security.SecurityMiddleware",
        "django.middleware.common.CommonMiddleware",
    ],
    INSTALLED_APPS=[],
    DATABASES={},
    USE_TZ=True,
)

BASE_URL = os.environ["KHALTI_BASE_URL"]
SECRET = os.environ.get("KHALTI_SECRET_KEY", "test_secret_key_testproject")
TIMEOUT = float(os.environ.get("KHALTI_TIMEOUT") or 5)


@csrf_exempt
def verify(request):
    if request.method != "POST":
        return JsonResponse({"detail": "POST only"}, status=405)
    payload = json.loads(request.body)
    answer = requests.post(
        BASE_URL + "api/v2/payment/verify/",
        json={"token": payload["token"], "amount": payload["amount"]},
        headers={"Authorization": f"Key {SECRET}"},
        timeout=TIMEOUT,
    )
    if answer.status_code != 200:
        return JsonResponse({"detail": "not verified"}, status=400)
    return JsonResponse({"status": "verified", "payment": answer.json()})


urlpatterns = [path("khalti/verify/", verify)]
application = get_wsgi_application()
