"""A person's verdict is on what the person saw (issue 25, section 7).

Each test opens a confirmation page, lets something change (khalti_reconcile, a
colleague's refund, a re-check, a re-sent signal), then submits the page: what
changed is refused, the page says what changed, and the shop hears of no money
that did not move.
"""

import io
from datetime import timedelta

import pytest
import requests
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from pytest_django.asserts import assertContains, assertNotContains

from django_khalti import services
from django_khalti.conf import khalti_settings
from django_khalti.models import Payment, Refund, SignalDelivery, snapshot_of
from django_khalti.signals import payment_refunded, payment_verified

from .conftest import (
    CHANGELIST,
    REFUND_TEMPLATE,
    RESOLVE_TEMPLATE,
    confirm_refund,
    confirmation_form,
    fresh,
    messages_of,
    mock_refund,
    pending_payment,
    refund_confirmation,
    resolve_confirmation,
    run_action,
    submit_refund,
    template_names,
    unknown_refund,
    verified_payment,
)

pytestmark = pytest.mark.django_db

REFUSED = ("error", "Nothing was done: review these payments again.")
DELIVERIES = reverse("admin:django_khalti_signaldelivery_changelist")


@pytest.fixture
def shop():
    """What the shop's refunds receiver (the refunds how-to's ``on_refunded``) was told,
    in order: (status, amount, refunded so far)."""
    told = []

    def on_refunded(sender, payment, amount, **kwargs):
        told.append((payment.status, amount, payment.refunded_amount))

    payment_refunded.connect(on_refunded, sender=Payment, weak=False)
    yield told
    payment_refunded.disconnect(on_refunded, sender=Payment)


def reconcile(capture):
    """``khalti_reconcile`` runs (from cron), its signals delivered after its commits."""
    with capture(execute=True):
        call_command("khalti_reconcile", "--older-than", "0", stdout=io.StringIO())


def age(refund):
    """Time passes: ``refund`` can no longer be in flight (it awaits an outcome)."""
    before = timezone.now() - timedelta(seconds=khalti_settings.stale_after + 60)
    Refund.objects.filter(pk=refund.pk).update(created_at=before)


def submit_resolve(client, page, outcome):
    data = {**page, "outcome": outcome, "note": "Seen in the dashboard.", "confirm": "Record it"}
    return client.post(CHANGELIST, data)


# --- Resolve an unknown refund -----------------------------------------------------------


@pytest.mark.parametrize("outcome", ["succeeded", "failed"])
def test_a_verdict_on_a_refund_settled_meanwhile_never_lands_on_the_next_refund(
    superuser_client,
    refunder_client,
    expect_khalti,
    shop,
    django_capture_on_commit_callbacks,
    outcome,
):
    """The issue's reproduction: a Rs 10 payment, its Rs 3 refund R1 of unknown outcome."""
    payment = verified_payment(amount=1000)
    first = unknown_refund(payment, amount=300, stale=True)
    # 1. A person opens "Resolve an unknown refund", which shows R1.
    page = resolve_confirmation(superuser_client, [payment])
    # 2. While they look at Khalti's dashboard, khalti_reconcile settles R1.
    expect_khalti.status(payment.token, 1000, "status_partially_refunded")
    reconcile(django_capture_on_commit_callbacks)
    # 3. A colleague refunds the remaining Rs 7 (R2); Khalti times out before doing anything.
    expect_khalti.expect(
        "refund", "idx-V", {"amount": 700}, body=requests.exceptions.ReadTimeout("timed out")
    )
    confirm_refund(refunder_client, [payment])
    second = Refund.objects.get(status=Refund.Status.PENDING)
    age(second)

    # 4. The first person submits what they found of R1.
    with django_capture_on_commit_callbacks(execute=True):
        response = submit_resolve(superuser_client, page, outcome)

    assert messages_of(response) == [
        REFUSED,
        (
            "error",
            "ORD-V changed since the page was shown: it is Partially refunded now, not "
            "Verified; Rs 3.00 refunded now, not Rs 0.00; its refund of Rs 3.00 was "
            "recorded Succeeded; a refund of Rs 7.00 was asked for.",
        ),
    ]
    # Shown again as it stands: R2, for a verdict of its own.
    assert RESOLVE_TEMPLATE in template_names(response)
    assert response.context["refunds"] == [second]
    assert not response.context["form"].is_bound
    # Nothing moved: R2 still awaits its outcome, and keeps the Rs 7 from being refunded again.
    assert Refund.objects.get(pk=second.pk).status == Refund.Status.PENDING
    assert Refund.objects.get(pk=first.pk).status == Refund.Status.SUCCEEDED
    row = fresh(payment)
    assert (row.status, row.refunded_amount) == (Payment.Status.PARTIALLY_REFUNDED, 300)
    assert row.refundable_amount == 700
    again = confirm_refund(refunder_client, [payment])
    assert [level for level, _ in messages_of(again)] == ["error"]
    assert "Another refund of this payment awaits Khalti" in messages_of(again)[0][1]
    # The shop was told of the Rs 3 that went back, and of nothing else.
    assert shop == [(Payment.Status.PARTIALLY_REFUNDED, 300, 300)]


def test_a_verdict_on_a_refund_khalti_settled_meanwhile_is_refused_and_says_so(
    refunding_client, expect_khalti, shop, django_capture_on_commit_callbacks
):
    payment = verified_payment(amount=1000)
    unknown_refund(payment, stale=True)
    page = resolve_confirmation(refunding_client, [payment])
    expect_khalti.status(payment.token, 1000, "status_refunded")
    reconcile(django_capture_on_commit_callbacks)

    with django_capture_on_commit_callbacks(execute=True):
        response = submit_resolve(refunding_client, page, "succeeded")

    # Nothing left to resolve: back to the list, which says what changed.
    assert (response.status_code, response["Location"]) == (302, CHANGELIST)
    assert messages_of(response) == [
        REFUSED,
        (
            "error",
            "ORD-V changed since the page was shown: it is Refunded now, not Verified; "
            "Rs 10.00 refunded now, not Rs 0.00; its refund of Rs 10.00 was recorded Succeeded.",
        ),
    ]
    assert shop == [(Payment.Status.REFUNDED, 1000, 1000)]  # once, from Khalti's answer


def test_a_refund_settled_between_the_pages_check_and_the_write_is_refused_where_it_is_written(
    refunding_client, expect_khalti, shop, django_capture_on_commit_callbacks, monkeypatch
):
    payment = verified_payment(amount=1000)
    refund = unknown_refund(payment, stale=True)
    page = resolve_confirmation(refunding_client, [payment])
    expect_khalti.status(payment.token, 1000, "status_refunded")
    real = services.resolve_refund

    def reconcile_lands_first(refund, **kwargs):
        # The page's check has passed; khalti_reconcile settles the refund just now.
        services.reconcile_refund(Refund.objects.get(pk=refund.pk))
        return real(refund, **kwargs)

    monkeypatch.setattr(services, "resolve_refund", reconcile_lands_first)
    with django_capture_on_commit_callbacks(execute=True):
        response = submit_resolve(refunding_client, page, "succeeded")

    assert messages_of(response) == [
        ("error", "ORD-V: This refund was already recorded Succeeded: review it again.")
    ]
    refund.refresh_from_db()
    assert refund.status == Refund.Status.SUCCEEDED
    assert "resolved_by" not in refund.khalti_response  # Khalti's answer, not the person's
    assert shop == [(Payment.Status.REFUNDED, 1000, 1000)]


def test_the_resolve_page_shows_what_the_verdict_is_on(refunding_client, expect_khalti):
    payment = verified_payment(
        amount=1000, refunded_amount=300, status=Payment.Status.PARTIALLY_REFUNDED
    )
    unknown_refund(payment, amount=400, stale=True)
    page = run_action(refunding_client, "resolve_refund", [payment], follow=False)
    assertContains(
        page,
        "<td>Rs 4.00 · Pending</td>",
        count=1,
        html=True,
    )
    for header in ["Payment status", "Refunded so far (Rs)"]:
        assertContains(page, f"<th>{header}</th>", count=1, html=True)
    assertContains(page, "<td>Partially refunded</td><td>3.00</td>", count=1, html=True)


# --- Refund with Khalti: per payment ------------------------------------------------------


def test_one_payment_changing_refuses_the_page_even_when_the_others_did_not(
    refunding_client, support_client, expect_khalti, shop, django_capture_on_commit_callbacks
):
    """What was refunded of the selection, summed, did not change: the page's guard
    is per payment."""
    paid, waiting = verified_payment("A", amount=1000), pending_payment(1, amount=1000)
    page = refund_confirmation(refunding_client, [paid, waiting])
    # Meanwhile a colleague re-checks the pending one: Khalti completed it.
    expect_khalti.complete(waiting.token, waiting.amount)
    with django_capture_on_commit_callbacks(execute=True):
        run_action(support_client, "recheck", [waiting])
    assert fresh(waiting).refundable_amount == 1000  # shown as 0.00 refundable

    with django_capture_on_commit_callbacks(execute=True):
        response = submit_refund(refunding_client, page, follow=False)

    assert messages_of(response) == [
        REFUSED,
        ("error", "ORD-P1 changed since the page was shown: it is Verified now, not Pending."),
    ]
    assert not [call for call in expect_khalti.calls if call.endpoint == "refund"]
    assert not Refund.objects.exists()
    assert shop == []
    # Shown again as it stands, it can be confirmed anew.
    assert REFUND_TEMPLATE in template_names(response)
    mock_refund(expect_khalti, "idx-A", {})
    mock_refund(expect_khalti, "idx-tok-pending-1", {})
    with django_capture_on_commit_callbacks(execute=True):
        response = confirm_refund(refunding_client, [paid, waiting])
    assert sorted(messages_of(response)) == [
        ("success", "Refunded Rs 10.00 of ORD-A."),
        ("success", "Refunded Rs 10.00 of ORD-P1."),
    ]


def test_a_refund_asked_for_meanwhile_refuses_the_page(
    refunding_client, refunder_client, expect_khalti, shop, django_capture_on_commit_callbacks
):
    payment = verified_payment(amount=1000)
    page = refund_confirmation(refunding_client, [payment])
    expect_khalti.expect(
        "refund", "idx-V", {"amount": 400}, body=requests.exceptions.ReadTimeout("timed out")
    )
    confirm_refund(refunder_client, [payment], amount="4")
    response = submit_refund(refunding_client, page, amount="6", follow=False)
    assert messages_of(response) == [
        REFUSED,
        ("error", "ORD-V changed since the page was shown: a refund of Rs 4.00 was asked for."),
    ]
    assert len(expect_khalti.calls) == 1
    assert shop == []


def test_a_payment_added_to_the_pages_selection_is_not_refunded(
    refunding_client, expect_khalti, shop
):
    shown, added = verified_payment("A"), verified_payment("B")
    page = refund_confirmation(refunding_client, [shown])
    page["_selected_action"].append(str(added.pk))  # a hand-made post
    response = submit_refund(refunding_client, page, follow=False)
    assert messages_of(response) == [
        REFUSED,
        ("error", "ORD-B changed since the page was shown: it was not on the page."),
    ]
    assert not expect_khalti.calls
    assert shop == []


@pytest.mark.parametrize("page_of", ["resolve_refund", "garbled"])
def test_a_page_that_did_not_sign_what_it_shows_refunds_nothing(
    refunding_client, expect_khalti, shop, page_of
):
    payment = verified_payment()
    unknown_refund(payment, stale=True)
    page = refund_confirmation(refunding_client, [payment])
    if page_of == "garbled":
        page["shown"] = [page["shown"][0][:-2]]
    else:  # what another page showed of the same payment
        page["shown"] = resolve_confirmation(refunding_client, [payment])["shown"]
    response = submit_refund(refunding_client, page, follow=False)
    assert response.context["form"].errors == {
        "shown": ["This page cannot be read back: open it again."]
    }
    assert not expect_khalti.calls
    assert shop == []


# --- Refund with Khalti: the shop not told it was paid yet (issue 25, section 1) ----------


def test_the_refund_page_says_when_payment_verified_has_not_reached_the_shop(
    refunding_client,
    superuser_client,
    expect_khalti,
    payload,
    shop,
    django_capture_on_commit_callbacks,
):
    def warehouse_down(sender, payment, **kwargs):
        raise RuntimeError("the warehouse is down")

    expect_khalti.verify(payload["token"], 1000)
    payment_verified.connect(warehouse_down, sender=Payment, weak=False)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            verify = reverse("django_khalti:verify")
            Client().post(verify, payload, content_type="application/json")
        payment = Payment.objects.get()
        page = run_action(refunding_client, "refund", [payment], follow=False)
    finally:
        payment_verified.disconnect(warehouse_down, sender=Payment)

    assertContains(page, '<tr class="unheard-verified">', count=1)
    assertContains(
        page,
        "The shop has not received payment_verified for this payment yet: it may not know "
        "the order was paid.",
        count=1,
    )
    assertContains(page, "warehouse_down: RuntimeError: the warehouse is down", count=1)

    # Meanwhile a colleague re-sends it, and the shop takes it: what the page said no
    # longer holds.
    delivery = SignalDelivery.objects.get(signal=SignalDelivery.Signal.VERIFIED)
    resend = {"action": "resend", "_selected_action": [str(delivery.pk)], "index": "0"}
    assert messages_of(superuser_client.post(DELIVERIES, resend, follow=True)) == [
        ("success", "Delivered 1 signal.")
    ]
    assert SignalDelivery.objects.get(pk=delivery.pk).delivered_at is not None
    response = submit_refund(refunding_client, confirmation_form(page, "refund"), follow=False)
    assert messages_of(response) == [
        REFUSED,
        ("error", "ORD-1 changed since the page was shown: payment_verified reached the shop."),
    ]
    assertNotContains(response, '<tr class="unheard-verified">')
    assert not Refund.objects.exists()
    assert shop == []


def test_the_refund_page_says_nothing_of_a_delivered_payment_verified(
    refunding_client, expect_khalti, payload, django_capture_on_commit_callbacks
):
    expect_khalti.verify(payload["token"], 1000)
    with django_capture_on_commit_callbacks(execute=True):
        Client().post(reverse("django_khalti:verify"), payload, content_type="application/json")
    page = run_action(refunding_client, "refund", [Payment.objects.get()], follow=False)
    assertNotContains(page, "unheard-verified")
    assertNotContains(page, "has not received payment_verified")


# --- Re-send to the receivers now: exactly the selection, and what of it was not sent ---


def undelivered_verified(payment):
    """``payment_verified`` of ``payment``, its receiver having raised once."""
    return SignalDelivery.objects.create(
        payment=payment,
        signal=SignalDelivery.Signal.VERIFIED,
        snapshot=snapshot_of(payment),
        next_attempt_at=timezone.now() + timedelta(minutes=1),
        attempts=1,
        attempts_finished=1,
        last_error="mark_order_paid: RuntimeError: the warehouse is down",
    )


def test_re_send_says_which_of_the_selection_was_delivered_meanwhile(
    superuser_client, expect_khalti
):
    first, second = (undelivered_verified(verified_payment(n)) for n in "AB")
    got = []

    def receiver(sender, payment, **kwargs):
        got.append(payment.product_identity)

    selection = {"action": "resend", "_selected_action": [str(first.pk), str(second.pk)]}
    payment_verified.connect(receiver, sender=Payment, weak=False)
    try:
        # A colleague re-sends the first, while the person's list still shows both.
        colleague = {**selection, "_selected_action": [str(first.pk)], "index": "0"}
        response = superuser_client.post(DELIVERIES, colleague, follow=True)
        assert messages_of(response) == [("success", "Delivered 1 signal.")]
        assert got == ["ORD-A"]
        response = superuser_client.post(DELIVERIES, {**selection, "index": "0"}, follow=True)
    finally:
        payment_verified.disconnect(receiver, sender=Payment)
    assert messages_of(response) == [
        ("warning", "1 of the selected signals had been delivered already: not sent again."),
        ("success", "Delivered 1 signal."),
    ]
    assert got == ["ORD-A", "ORD-B"]


def test_re_send_says_when_it_leaves_some_of_the_selection_for_later(
    superuser_client, expect_khalti, monkeypatch
):
    monkeypatch.setattr("django_khalti.admin.actions.RECHECK_LIMIT", 2)
    deliveries = [undelivered_verified(verified_payment(n)) for n in "ABC"]
    for delivery, hours in zip(deliveries, [1, 0, 2], strict=True):  # C, then A, are the oldest
        created = timezone.now() - timedelta(hours=hours)
        SignalDelivery.objects.filter(pk=delivery.pk).update(created_at=created)
    selection = {"action": "resend", "_selected_action": [str(d.pk) for d in deliveries]}
    response = superuser_client.post(DELIVERIES, {**selection, "index": "0"}, follow=True)
    assert messages_of(response) == [
        ("warning", "Only the oldest 2 undelivered signals were re-sent: select the rest again."),
        ("success", "Delivered 2 signals."),
    ]
    undelivered = SignalDelivery.objects.filter(delivered_at__isnull=True)
    assert [d.payment.product_identity for d in undelivered] == ["ORD-B"]
