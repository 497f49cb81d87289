"""Test-only fault injection: the database failing between Khalti's answer and our write.

Installed by settings only when ``TESTPROJECT_FAIL_SETTLE_IF`` is set (the
reliability rig does it, tests/rig.py). While the file it names exists, an
``UPDATE`` of ``django_khalti_payment`` that sets ``status`` (the settle step,
``services._transition``; on PostgreSQL, the statement that also writes the
outbox) raises ``OperationalError`` before it reaches the database, as a
connection lost at that moment would. The pending insert and the
claim (which set no ``status``) go through, so a payment is claimed, Khalti is
asked, and only the recording of its answer fails. Stopping the real database
server instead would disturb everything else on a shared machine.
"""

import os
import re

from django.db import OperationalError, connections

#: The settle step's UPDATE: a statement of its own, or (PostgreSQL) the first part of
#: the ``WITH changed AS (UPDATE ...) ...`` that also writes the outbox.
SETTLE = re.compile(
    r"^\s*(WITH\s+\w+\s+AS\s*\(\s*)?"
    r'UPDATE\s+["`]?django_khalti_payment["`]?\s+SET\s+["`]?status["`]?\s*=',
    re.IGNORECASE,
)


def fail_settle(execute, sql, params, many, context):
    marker = os.environ.get("TESTPROJECT_FAIL_SETTLE_IF")
    if marker and os.path.exists(marker) and SETTLE.match(sql):
        raise OperationalError("injected by testproject.faults: the database went away")
    return execute(sql, params, many, context)


class FailPaymentSettleMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        with connections["default"].execute_wrapper(fail_settle):
            return self.get_response(request)


def slow_receiver(sender, payment, **kwargs):
    """While ``TESTPROJECT_SLOW_RECEIVER_IF``'s file exists: a receiver that outlives
    gunicorn's worker timeout (the worker is killed before the shop's receiver runs)."""
    import time

    marker = os.environ.get("TESTPROJECT_SLOW_RECEIVER_IF")
    if marker and os.path.exists(marker):
        time.sleep(10)


def connect_slow_receiver():
    """Connect :func:`slow_receiver` ahead of the shop's receivers (called first in
    the shop's ``ready``), only when the rig asks for it."""
    if os.environ.get("TESTPROJECT_SLOW_RECEIVER_IF"):
        from django_khalti.models import Payment
        from django_khalti.signals import payment_verified

        payment_verified.connect(slow_receiver, sender=Payment)
