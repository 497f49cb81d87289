"""Nobody deletes money from the admin: a superuser's Delete button and "Delete selected"
neither offer nor delete a payment that is not failed, or that has a signal the shop has
not had, nor an undelivered signal; the person is told which rows were kept, and why.
A failed payment whose signals were all delivered may go."""

import json
from datetime import timedelta

import pytest
from django.contrib.admin.models import LogEntry
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from django_khalti.models import Payment, SignalDelivery, order_key, snapshot_of

from ..services.test_deletion import payment
from .conftest import (
    CHANGELIST,
    action_choices,
    change_url,
    delete_url,
    messages_of,
    run_action,
    template_names,
)

pytestmark = pytest.mark.django_db

VERIFY = reverse("django_khalti:verify")
DELIVERIES = reverse("admin:django_khalti_signaldelivery_changelist")
RULE = "Only a failed payment whose signals were all delivered may be deleted."


def signal(of, delivered=True):
    now = timezone.now()
    return SignalDelivery.objects.create(
        payment=of,
        signal=SignalDelivery.Signal.FAILED,
        snapshot=snapshot_of(of),
        delivered_at=now if delivered else None,
        next_attempt_at=None if delivered else now,
    )


def offers_delete(client, row):
    """Whether the row's page shows a Delete link."""
    page = client.get(change_url(row))
    assert page.status_code == 200
    shown = 'class="deletelink"' in page.content.decode()
    assert shown == page.context["has_delete_permission"]
    return shown


def delivery_delete_url(delivery):
    return reverse("admin:django_khalti_signaldelivery_delete", args=[delivery.pk])


def test_the_issue_a_verified_payment_survives_its_delete_and_its_payload_stays_verified(
    superuser_client, client, expect_khalti, payload, signals, django_capture_on_commit_callbacks
):
    expect_khalti.verify(payload["token"], 1000)
    with django_capture_on_commit_callbacks(execute=True):
        answer = client.post(VERIFY, json.dumps(payload), content_type="application/json")
    assert answer.status_code == 200
    verified = Payment.objects.get()
    outbox = list(SignalDelivery.objects.values_list("pk", "delivered_at"))
    assert not offers_delete(superuser_client, verified)

    # The delete page, and its confirmation posted anyway: back to the payment, told why.
    for response in [
        superuser_client.get(delete_url(verified), follow=True),
        superuser_client.post(delete_url(verified), {"post": "yes"}, follow=True),
    ]:
        assert response.redirect_chain == [(change_url(verified), 302)]
        assert messages_of(response) == [
            ("error", f"Not deleted: {verified} (it is verified). {RULE}")
        ]
    # "Delete selected", chosen and confirmed.
    for post in [{}, {"post": "yes"}]:
        response = run_action(superuser_client, "delete_selected", [verified], **post)
        assert "admin/delete_selected_confirmation.html" not in template_names(response)
        assert messages_of(response) == [
            ("error", f"Not deleted: {verified} (it is verified). {RULE}")
        ]

    row = Payment.objects.get()
    assert (row.status, row.order_claim, row.token_claim) == (
        Payment.Status.VERIFIED,
        order_key("ORD-1"),
        payload["token"],
    )
    assert list(SignalDelivery.objects.values_list("pk", "delivered_at")) == outbox
    assert not LogEntry.objects.exists()  # nothing logged as deleted
    # The same payload is this payment's again: no second verify at Khalti, no second signal.
    with django_capture_on_commit_callbacks(execute=True):
        again = client.post(VERIFY, json.dumps(payload), content_type="application/json")
    assert again.status_code == 200
    assert again.json()["payment"]["id"] == str(row.pk)
    assert [call.endpoint for call in expect_khalti.calls] == ["verify"]
    assert [name for name, _, _ in signals] == ["verified"]


@pytest.mark.parametrize(
    ("status", "why"),
    [
        ("pending", "it is pending"),
        ("verified", "it is verified"),
        ("needs_review", "it is needs review"),
        ("partially_refunded", "it is partially refunded"),
        ("refunded", "it is refunded"),
        ("failed", "a signal to the shop is not delivered yet"),
    ],
)
def test_a_payment_that_holds_money_or_an_undelivered_signal_offers_no_delete(
    superuser_client, status, why
):
    row = payment(1, status)
    undelivered = signal(row, delivered=False)
    assert not offers_delete(superuser_client, row)
    response = superuser_client.post(delete_url(row), {"post": "yes"}, follow=True)
    assert messages_of(response) == [("error", f"Not deleted: {row} ({why}). {RULE}")]
    assert Payment.objects.filter(pk=row.pk).exists()
    assert SignalDelivery.objects.filter(pk=undelivered.pk).exists()


def test_a_failed_payment_whose_signals_were_delivered_can_be_deleted_with_them(
    superuser_client,
):
    row = payment(1)
    delivered = signal(row)
    assert offers_delete(superuser_client, row)
    page = superuser_client.get(delete_url(row))
    assert "admin/delete_confirmation.html" in template_names(page)
    assert not page.context["protected"]
    assert dict(page.context["model_count"]) == {"Khalti payments": 1, "signal deliveries": 1}

    response = superuser_client.post(delete_url(row), {"post": "yes"}, follow=True)
    assert response.redirect_chain == [(CHANGELIST, 302)]
    assert not Payment.objects.filter(pk=row.pk).exists()
    assert not SignalDelivery.objects.filter(pk=delivered.pk).exists()


def test_delete_selected_deletes_what_may_go_and_names_what_was_kept_and_why(superuser_client):
    gone, verified, waiting = payment(1), payment(2, Payment.Status.VERIFIED), payment(3)
    signal(waiting, delivered=False)
    Payment.objects.filter(pk=verified.pk).update(created_at=timezone.now() - timedelta(hours=1))
    # Named as the changelist lists them: the newest first.
    kept = (
        f"Not deleted: {waiting} (a signal to the shop is not delivered yet); {verified} "
        f"(it is verified). {RULE}"
    )
    assert "delete_selected" in action_choices(superuser_client.get(CHANGELIST))

    page = run_action(superuser_client, "delete_selected", [gone, verified, waiting], follow=False)
    assert "admin/delete_selected_confirmation.html" in template_names(page)
    assert list(page.context["queryset"]) == [gone]  # what the page asks to confirm
    assert messages_of(page) == [("error", kept)]

    response = run_action(
        superuser_client, "delete_selected", [gone, verified, waiting], post="yes"
    )
    assert messages_of(response) == [
        ("error", kept),
        ("success", "Successfully deleted 1 Khalti payment."),
    ]
    assert sorted(Payment.objects.values_list("order_reference", flat=True)) == [
        "ORD-2",
        "ORD-3",
    ]


def test_a_payment_kept_since_the_delete_page_was_shown_is_not_deleted(superuser_client):
    # The confirmation pages were shown for a failed payment that could go; then a
    # re-check finds Khalti completed it after all (needs review, with its signal).
    row = payment(1)
    assert superuser_client.get(delete_url(row)).status_code == 200
    page = run_action(superuser_client, "delete_selected", [row], follow=False)
    assert list(page.context["queryset"]) == [row]

    Payment.objects.filter(pk=row.pk).update(status=Payment.Status.NEEDS_REVIEW)
    signal(row, delivered=False)
    row.refresh_from_db()
    said = [("error", f"Not deleted: {row} (it is needs review). {RULE}")]

    response = superuser_client.post(delete_url(row), {"post": "yes"}, follow=True)
    assert messages_of(response) == said
    response = run_action(superuser_client, "delete_selected", [row], post="yes")
    assert messages_of(response) == said
    assert Payment.objects.filter(pk=row.pk, status=Payment.Status.NEEDS_REVIEW).exists()
    assert not LogEntry.objects.exists()


def test_a_payment_kept_between_the_check_and_the_delete_is_neither_deleted_nor_logged(
    superuser_client,
):
    # A re-check finds Khalti completed the payment after all at the worst moment: after
    # the page checked it, while the admin logs the deletion it is about to make.
    row = payment(1)

    def completed_meanwhile(execute, sql, params, many, context):
        if sql.startswith("INSERT") and LogEntry._meta.db_table in sql:
            Payment.objects.filter(pk=row.pk).update(status=Payment.Status.NEEDS_REVIEW)
        return execute(sql, params, many, context)

    said = [("error", f"Not deleted: ORD-1 · Rs 10.00 · Needs review (it is needs review). {RULE}")]
    for submit in [
        lambda: superuser_client.post(delete_url(row), {"post": "yes"}, follow=True),
        lambda: run_action(superuser_client, "delete_selected", [row], post="yes"),
    ]:
        with connection.execute_wrapper(completed_meanwhile):
            response = submit()
        assert messages_of(response) == said
        # (Made on the admin's own connection here, the change rolls back with the
        # refused delete, and with the deletion's log entry.)
        assert Payment.objects.filter(pk=row.pk).exists()
        assert not LogEntry.objects.exists()


def test_an_undelivered_signal_offers_no_delete_on_the_deliveries_page(superuser_client):
    row = payment(1, Payment.Status.VERIFIED)
    undelivered, delivered = signal(row, delivered=False), signal(row)
    page = superuser_client.get(
        reverse("admin:django_khalti_signaldelivery_change", args=[undelivered.pk])
    )
    assert page.context["has_delete_permission"] is False
    response = superuser_client.post(delivery_delete_url(undelivered), {"post": "yes"}, follow=True)
    said = (
        f"Not deleted: {undelivered} (it is not delivered to the shop yet). "
        "Only a signal delivered to the shop may be deleted."
    )
    assert messages_of(response) == [("error", said)]

    response = superuser_client.post(
        DELIVERIES,
        {
            "action": "delete_selected",
            "_selected_action": [str(undelivered.pk), str(delivered.pk)],
            "post": "yes",
        },
        follow=True,
    )
    assert messages_of(response) == [
        ("error", said),
        ("success", "Successfully deleted 1 signal delivery."),
    ]
    assert list(SignalDelivery.objects.all()) == [undelivered]


def test_a_superseded_epayment_whose_link_can_still_be_paid_is_not_deleted(
    superuser_client, khalti_fake, order, signals, django_capture_on_commit_callbacks
):
    # Buyer 1 presses Pay, then buyer 2 does: buyer 1's link, unpaid so far, is
    # superseded (failed, no signal). At Khalti that link is still open.
    start = reverse("django_khalti:epayment-start", args=[order.reference])
    first_buyer, second_buyer = Client(), Client()
    assert first_buyer.post(start).status_code == 302
    first_link = khalti_fake.last_epayment
    assert second_buyer.post(start).status_code == 302
    superseded = Payment.objects.get(pidx=first_link.pidx)
    assert superseded.status == Payment.Status.FAILED
    assert not superseded.signal_deliveries.exists()

    # A superuser tidying up failed payments: neither offered nor done.
    assert not offers_delete(superuser_client, superseded)
    response = superuser_client.post(delete_url(superseded), {"post": "yes"}, follow=True)
    assert messages_of(response) == [
        (
            "error",
            f"Not deleted: {superseded} (its Khalti payment link can still be paid). {RULE}",
        )
    ]
    response = run_action(superuser_client, "delete_selected", [superseded], post="yes")
    assert Payment.objects.filter(pk=superseded.pk).exists()

    # Buyer 1 pays the link after all, and comes back: the app still knows the payment
    # (a minute later, past the spacing of calls about it), and the shop hears of it.
    Payment.objects.filter(pk=superseded.pk).update(
        last_asked_at=timezone.now() - timedelta(minutes=5)
    )
    with django_capture_on_commit_callbacks(execute=True):
        back = first_buyer.get(khalti_fake.pay(first_link))
    assert (back.status_code, back.context["state"]) == (200, "verified")  # not "unknown"
    superseded.refresh_from_db()
    assert superseded.status == Payment.Status.VERIFIED
    assert [(name, kwargs["payment"].pk) for name, _, kwargs in signals] == [
        ("verified", superseded.pk)
    ]


def test_a_failed_epayment_whose_link_is_dead_may_be_deleted(superuser_client):
    row = payment(1, pidx="pidx-1", flow=Payment.Flow.EPAYMENT)
    gone = timezone.now() - timedelta(hours=2)
    Payment.objects.filter(pk=row.pk).update(expires_at=gone)
    assert offers_delete(superuser_client, row)
    # Without a stored expiry: Khalti's documented hour from its creation.
    other = payment(2, pidx="pidx-2", flow=Payment.Flow.EPAYMENT)
    assert not offers_delete(superuser_client, other)
    Payment.objects.filter(pk=other.pk).update(created_at=gone)
    assert offers_delete(superuser_client, other)
