"""Resolve an unknown refund by hand…: a person records what Khalti's dashboard shows
of a refund whose outcome Khalti's API cannot tell."""

from datetime import timedelta

import pytest
from django.utils import timezone
from pytest_django.asserts import assertContains

from django_khalti.conf import khalti_settings
from django_khalti.models import Payment, Refund

from .conftest import (
    CHANGELIST,
    RESOLVE_TEMPLATE,
    confirm_refund,
    confirm_resolve,
    confirmation_form,
    fresh,
    messages_of,
    mock_refund,
    resolve_confirmation,
    run_action,
    template_names,
    unknown_refund,
    verified_payment,
)

pytestmark = pytest.mark.django_db


def test_resolve_refund_first_shows_the_refunds_of_unknown_outcome(
    refunding_client, expect_khalti, sent
):
    unknown = verified_payment("A", amount=1000)
    refund = unknown_refund(unknown, amount=400, stale=True)
    settled = verified_payment(
        "B", amount=1000, refunded_amount=1000, status=Payment.Status.REFUNDED
    )
    Refund.objects.create(
        payment=settled, amount=1000, status=Refund.Status.SUCCEEDED, settled_at=timezone.now()
    )
    untouched = verified_payment("C", amount=1000)

    response = run_action(
        refunding_client, "resolve_refund", [unknown, settled, untouched], follow=False
    )
    assert response.status_code == 200
    assert RESOLVE_TEMPLATE in template_names(response)
    assert response.context["refunds"] == [refund]  # only the refund whose outcome is unknown
    assertContains(response, '<tr class="unknown-refund">', count=1)
    assertContains(
        response, "<td>ORD-A</td><td>idx-A</td><td>Rs 4.00 · Pending</td>", count=1, html=True
    )
    form = response.context["form"]
    assert not form.is_bound
    assert set(form.fields) == {"outcome", "note", "shown"}
    assert form["shown"].is_hidden  # what the page shows, for its submit to check
    assert form.fields["outcome"].widget.input_type == "radio"
    assert sorted(value for value, _ in form.fields["outcome"].choices) == ["failed", "succeeded"]
    assertContains(
        response,
        '<input type="submit" name="confirm" value="Record it" class="default">',
        html=True,
    )
    hidden = confirmation_form(response, "resolve_refund")
    assert set(hidden) == {"action", "_selected_action", "shown"}
    assert hidden["_selected_action"] == [str(unknown.pk)]
    # Nothing is settled before the person confirms, and Khalti is not asked.
    assert len(expect_khalti.calls) == 0
    refund.refresh_from_db()
    assert refund.status == Refund.Status.PENDING
    assert fresh(unknown).status == Payment.Status.VERIFIED
    assert sent == []


def test_resolve_refund_with_nothing_unknown_says_so(refunding_client, expect_khalti, payments):
    response = run_action(
        refunding_client, "resolve_refund", [payments.verified, payments.partially_refunded]
    )
    assert messages_of(response) == [
        ("warning", "None of the selected payments has a refund of unknown outcome.")
    ]
    assert RESOLVE_TEMPLATE not in template_names(response)
    assert response.redirect_chain == [(CHANGELIST, 302)]


def test_resolve_refund_leaves_a_refund_that_may_still_be_in_flight(
    refunding_client, expect_khalti
):
    payment = verified_payment(amount=1000)
    unknown_refund(payment)  # just now: its call to Khalti may still be running
    response = run_action(refunding_client, "resolve_refund", [payment])
    assert ("warning", "None of the selected payments has a refund of unknown outcome.") in (
        messages_of(response)
    )
    assert Refund.objects.get().status == Refund.Status.PENDING


def test_the_resolve_page_shows_what_left_each_refund_unknown(refunding_client, expect_khalti):
    """The person decides on what Khalti said of the refund, not on its amount alone:
    a refund Khalti answered with a gateway error shows that answer's words."""
    payment = verified_payment("A", amount=1000)
    mock_refund(expect_khalti, payment.idx, {"amount": 400}, status=502, json={})
    confirm_refund(refunding_client, [payment], amount="4")
    refund = Refund.objects.get()
    assert refund.status == Refund.Status.PENDING
    assert refund.failure_reason
    stale = timezone.now() - timedelta(seconds=khalti_settings.stale_after + 60)
    Refund.objects.filter(pk=refund.pk).update(created_at=stale)
    page = run_action(refunding_client, "resolve_refund", [payment], follow=False)
    assertContains(page, "<th>Why it is unknown</th>", html=True)
    assertContains(page, f"<td>{refund.failure_reason}</td>", html=True)


@pytest.mark.parametrize(
    ("refunded_before", "amount", "status"),
    [
        (0, 1000, Payment.Status.REFUNDED),
        (0, 400, Payment.Status.PARTIALLY_REFUNDED),
        (400, 600, Payment.Status.REFUNDED),
        (400, 200, Payment.Status.PARTIALLY_REFUNDED),
    ],
)
def test_resolving_an_unknown_refund_as_succeeded_refunds_the_payment(
    refunding_client,
    expect_khalti,
    sent,
    django_capture_on_commit_callbacks,
    refunded_before,
    amount,
    status,
):
    payment = verified_payment(
        amount=1000,
        refunded_amount=refunded_before,
        status=Payment.Status.PARTIALLY_REFUNDED if refunded_before else Payment.Status.VERIFIED,
    )
    refund = unknown_refund(payment, amount=amount, stale=True)
    with django_capture_on_commit_callbacks(execute=True):
        response = confirm_resolve(
            refunding_client, [payment], "succeeded", note="Shown as refunded in the dashboard."
        )
    assert messages_of(response) == [("success", "Resolved 1 refund.")]
    assert len(expect_khalti.calls) == 0
    refund.refresh_from_db()
    assert refund.status == Refund.Status.SUCCEEDED
    assert refund.settled_at is not None
    assert refund.failure_reason == ""
    assert refund.khalti_response == {
        "resolved_by": str(refunding_client.user),
        "note": "Shown as refunded in the dashboard.",
    }
    row = fresh(payment)
    assert (row.status, row.refunded_amount) == (status, refunded_before + amount)
    assert [(name, kw["payment"].pk, kw["amount"]) for name, kw in sent] == [
        ("refunded", payment.pk, amount)
    ]


@pytest.mark.parametrize(
    ("note", "reason"),
    [
        ("Not in the dashboard.", "Not in the dashboard."),
        ("", "Not refunded, as checked in Khalti's dashboard."),
    ],
)
def test_resolving_an_unknown_refund_as_failed_leaves_the_payment_and_allows_a_new_refund(
    refunding_client, expect_khalti, sent, django_capture_on_commit_callbacks, note, reason
):
    payment = verified_payment(amount=1000)
    refund = unknown_refund(payment, stale=True)
    with django_capture_on_commit_callbacks(execute=True):
        response = confirm_resolve(refunding_client, [payment], "failed", note=note)
    assert messages_of(response) == [("success", "Resolved 1 refund.")]
    assert len(expect_khalti.calls) == 0
    refund.refresh_from_db()
    assert refund.status == Refund.Status.FAILED
    assert refund.settled_at is not None
    assert refund.failure_reason == reason
    row = fresh(payment)
    assert (row.status, row.refunded_amount) == (Payment.Status.VERIFIED, 0)
    assert sent == []

    # The payment is free for a new refund (Khalti, asked again first, still shows the
    # failed one not refunded).
    expect_khalti.status(payment.token, 1000, "status_complete")
    mock_refund(expect_khalti, "idx-V", {"amount": 400})
    with django_capture_on_commit_callbacks(execute=True):
        response = confirm_refund(refunding_client, [payment], amount="4")
    assert messages_of(response) == [("success", "Refunded Rs 4.00 of ORD-V.")]
    row = fresh(payment)
    assert (row.status, row.refunded_amount) == (Payment.Status.PARTIALLY_REFUNDED, 400)
    assert list(row.refunds.values_list("amount", "status")) == [
        (1000, Refund.Status.FAILED),
        (400, Refund.Status.SUCCEEDED),
    ]
    assert [(name, kw["amount"]) for name, kw in sent] == [("refunded", 400)]


def test_resolve_refund_settles_every_selected_unknown_refund(
    refunding_client, expect_khalti, sent, django_capture_on_commit_callbacks
):
    first, second = verified_payment("A", amount=1000), verified_payment("B", amount=2500)
    unknown_refund(first, stale=True), unknown_refund(second, amount=500, stale=True)
    with django_capture_on_commit_callbacks(execute=True):
        response = confirm_resolve(refunding_client, [first, second], "succeeded")
    assert messages_of(response) == [("success", "Resolved 2 refunds.")]
    assert (fresh(first).status, fresh(first).refunded_amount) == (Payment.Status.REFUNDED, 1000)
    assert (fresh(second).status, fresh(second).refunded_amount) == (
        Payment.Status.PARTIALLY_REFUNDED,
        500,
    )
    assert sorted((kw["payment"].pk, kw["amount"]) for _, kw in sent) == sorted(
        [(first.pk, 1000), (second.pk, 500)]
    )
    assert not Refund.objects.filter(status=Refund.Status.PENDING).exists()


def test_resolve_refund_without_an_outcome_settles_nothing(refunding_client, expect_khalti, sent):
    payment = verified_payment(amount=1000)
    refund = unknown_refund(payment, stale=True)
    data = {**resolve_confirmation(refunding_client, [payment]), "note": "", "confirm": "Record it"}
    response = refunding_client.post(CHANGELIST, data)
    assert response.status_code == 200
    assert RESOLVE_TEMPLATE in template_names(response)  # shown again
    assert response.context["form"].errors == {"outcome": ["This field is required."]}
    refund.refresh_from_db()
    assert refund.status == Refund.Status.PENDING
    assert fresh(payment).status == Payment.Status.VERIFIED
    assert sent == []
