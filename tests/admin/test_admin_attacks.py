"""The admin, attacked: a careless superuser, a racing colleague, a forged post.

What a person can do in the admin must not delete money, act on anything but what
its page showed, or run another action than the one its button was checked for.
"""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.contrib.admin.models import DELETION, LogEntry
from django.db import NotSupportedError, connections
from django.urls import reverse
from django.utils import timezone

from django_khalti.models import Payment, SignalDelivery, snapshot_of

from .conftest import (
    REFUND_TEMPLATE,
    template_names,
)

Status = Payment.Status


def page_action_url(payment):
    return reverse("admin:django_khalti_payment_page_action", args=[payment.pk])


def race(*calls):
    """Run each call in its own thread with its own connection, released together."""
    barrier = threading.Barrier(len(calls))

    def one(call):
        try:
            barrier.wait(timeout=10)
            return call()
        finally:
            connections.close_all()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(one, calls))


def failed_payment(n, **fields):
    """A failed payment whose signals were all delivered: one the admin may delete."""
    fields = {"token": f"tok-{n}", "product_identity": f"ORD-{n}", "amount": 1000, **fields}
    payment = Payment.objects.create(status=Status.FAILED, **fields)
    now = timezone.now()
    SignalDelivery.objects.create(
        payment=payment,
        signal=SignalDelivery.Signal.FAILED,
        snapshot=snapshot_of(payment),
        delivered_at=now,
    )
    return payment


# --- Nobody deletes money ------------------------------------------------------------


@pytest.mark.django_db
def test_a_combined_querysets_delete_is_refused_as_django_refuses_it():
    # Django refuses delete() after union(), intersection() or difference(). The kept
    # rule's delete went on: a database error on SQLite, and on PostgreSQL and MariaDB
    # the rows that may go were deleted, by a call Django never lets delete.
    one, two = failed_payment(1), failed_payment(2)
    combined = Payment.objects.filter(pk=one.pk).union(Payment.objects.filter(pk=two.pk))
    with pytest.raises(NotSupportedError, match=r"delete\(\) after union\(\)"):
        combined.delete()
    assert Payment.objects.count() == 2


# --- A payment's buttons --------------------------------------------------------------


@pytest.mark.django_db
def test_a_page_button_runs_only_the_action_it_was_checked_for(superuser_client):
    # A forged post naming two actions: the button's view checked the last one
    # (QueryDict.get), the changelist ran the first (its "index"): a delete through a
    # button that offers none.
    payment = failed_payment(1)
    forged = {
        "action": ["delete_selected", "refund"],
        "index": "0",
        "post": "yes",  # Django's delete confirmation, answered
        "_selected_action": [str(payment.pk)],
    }
    response = superuser_client.post(page_action_url(payment), forged)
    assert Payment.objects.filter(pk=payment.pk).exists()
    assert not LogEntry.objects.filter(action_flag=DELETION).exists()
    assert REFUND_TEMPLATE in template_names(response)  # the action it was checked for
