"""The admin, attacked: a careless superuser, a racing colleague, a forged post.

What a person can do in the admin must not delete money, act on anything but what
its page showed, or run another action than the one its button was checked for.
"""

import pytest
from django.contrib.admin.models import DELETION, LogEntry
from django.db import NotSupportedError
from django.urls import reverse
from django.utils import timezone
from pytest_django.asserts import assertContains, assertNotContains

from django_khalti.models import Payment, Refund, SignalDelivery, snapshot_of

from ..conftest import fixture, race
from .conftest import (
    REFUND_TEMPLATE,
    change_url,
    fresh,
    messages_of,
    refund_confirmation,
    run_action,
    staff_client,
    submit_refund,
    template_names,
    verified_payment,
)

Status = Payment.Status


def page_action_url(payment):
    return reverse("admin:django_khalti_payment_page_action", args=[payment.pk])


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


# --- Confirmation pages act only on what they showed ------------------------------------


@pytest.mark.concurrency
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("amounts", [("", ""), ("4", "6")], ids=["all-of-it", "two-parts"])
def test_two_colleagues_submitting_the_refund_page_at_once_refund_once(
    django_user_model, expect_khalti, sent, amounts
):
    payment = verified_payment(amount=1000)
    perms = ("view_payment", "change_payment", "refund_payment")
    ram, sita = (staff_client(django_user_model, name, *perms) for name in ("ram", "sita"))
    pages = [refund_confirmation(ram, [payment]), refund_confirmation(sita, [payment])]
    # Khalti takes its time: the two submits overlap. One call reaches it, whichever.
    expect_khalti.expect("refund", "idx-V", None, json=fixture("refund_success"), delay=0.5)

    responses = race(
        lambda: submit_refund(ram, pages[0], amount=amounts[0], follow=False),
        lambda: submit_refund(sita, pages[1], amount=amounts[1], follow=False),
    )

    told = sorted(messages_of(response)[0][0] for response in responses)
    assert told == ["error", "success"]
    refund = Refund.objects.get()
    assert refund.status == Refund.Status.SUCCEEDED
    assert fresh(payment).refunded_amount == refund.amount
    assert [(name, kw["amount"]) for name, kw in sent] == [("refunded", refund.amount)]


@pytest.mark.django_db
def test_a_receivers_error_on_the_refund_page_is_shown_as_text(refunding_client, superuser_client):
    # A receiver's exception text is the shop's (or a buyer's, through an order field):
    # the refund page, the payment's page and the deliveries' list show it, never run it.
    payment = verified_payment(amount=1000)
    script = "<script>alert('paid')</script>"
    SignalDelivery.objects.create(
        payment=payment,
        signal=SignalDelivery.Signal.VERIFIED,
        snapshot=snapshot_of(payment),
        next_attempt_at=timezone.now(),
        attempts=1,
        attempts_finished=1,
        last_error=f"mark_order_paid: RuntimeError: {script}",
    )
    deliveries = reverse("admin:django_khalti_signaldelivery_changelist")
    for client, url in [
        (refunding_client, None),
        (superuser_client, change_url(payment)),
        (superuser_client, deliveries),
    ]:
        if url is None:
            page = run_action(client, "refund", [payment], follow=False)
            assertContains(page, '<tr class="unheard-verified">', count=1)
        else:
            page = client.get(url)
        assertNotContains(page, script)
        assertContains(page, "&lt;script&gt;alert(&#x27;paid&#x27;)&lt;/script&gt;")
