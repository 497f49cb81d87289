"""The limit: the least a correct view does to record a widget payment exactly once.

Served by ``bench/run.py`` in the testproject (its settings, middleware and database),
under the same gunicorn settings as the app: ``gunicorn limit:application --chdir bench``
with ``DJANGO_SETTINGS_MODULE=limit`` (this module is the settings too: the testproject's,
with this URLconf). Per verification:

1. the order's amount, through the shop's own resolver (the app's query); a mismatch is refused;
2. the token and the order claimed by one INSERT into ``bench_limit_payment`` (unique
   ``token``, unique ``reference``), committed on its own before Khalti is asked;
3. Khalti's verify over a kept-alive ``requests.Session`` (one per thread);
4. one transaction: the row verified or failed (guarded by ``status = 'pending'``) and the
   shop's own writes, those of its ``payment_verified`` receiver.

Two commits. An unknown outcome (timeout, 5xx, an amount that is not the order's) leaves
the row pending. bench/run.py makes the table.
"""

import json
import os
import threading
import uuid

os.environ["DJANGO_SETTINGS_MODULE"] = "limit"
from testproject.settings import *  # noqa: F403

ROOT_URLCONF = "limit"

import requests  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.db import IntegrityError, connection, transaction  # noqa: E402
from django.http import JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402
from django.utils import timezone  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402

_sessions = threading.local()  # a kept-alive session per thread


@csrf_exempt
def verify(request):
    from shop.khalti import order_amount
    from shop.models import Order, OrderEvent

    body = json.loads(request.body)
    token, amount = str(body["token"]), int(body["amount"])
    order = order_amount(request, str(body["product_identity"]))
    if order is None or order.amount != amount:
        return JsonResponse({"detail": "no such order at this amount"}, status=400)
    try:
        with connection.cursor() as cursor:  # autocommit: the claim commits on its own
            cursor.execute(
                "INSERT INTO bench_limit_payment (token, reference, amount, status)"
                " VALUES (%s, %s, %s, 'pending')",
                [token, order.reference, amount],
            )
    except IntegrityError:
        return JsonResponse({"detail": "token or order claimed already"}, status=409)
    if not hasattr(_sessions, "session"):
        _sessions.session = requests.Session()
    try:
        answer = _sessions.session.post(
            KHALTI["BASE_URL"] + "api/v2/payment/verify/",  # noqa: F405
            json={"token": token, "amount": amount},
            headers={"Authorization": "Key " + KHALTI["SECRET_KEY"]},  # noqa: F405
            timeout=KHALTI["TIMEOUT"],  # noqa: F405
        )
        record = answer.json()
        verified = answer.status_code == 200 and record["amount"] == amount
    except (requests.RequestException, ValueError, KeyError):
        record, verified = None, False
    if not verified and (record is None or answer.status_code != 400):
        return JsonResponse({"detail": "pending"}, status=503)  # unknown: stays pending
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE bench_limit_payment SET status = %s, idx = %s, reference ="
                " CASE WHEN %s THEN reference END WHERE token = %s AND status = 'pending'",
                ["verified" if verified else "failed", record.get("idx", ""), verified, token],
            )  # fmt: skip
            changed = cursor.rowcount == 1
        if (
            changed
            and verified
            and Order.objects.filter(reference=order.reference, paid=False).update(
                paid=True, paid_at=timezone.now()
            )
        ):
            OrderEvent.objects.create(
                order_reference=order.reference, kind="paid", payment_id=uuid.uuid4()
            )
    status = "verified" if verified else "failed"
    return JsonResponse({"status": status}, status=200 if verified else 400)


urlpatterns = [path("khalti/verify/", verify)]
application = get_wsgi_application()
