"""Refund with Khalti…: the confirmation page, full and partial refunds typed in
rupees, the guard against a page submitted twice or gone stale, and what Khalti's
refusals and silences leave."""

import io
from datetime import timedelta

import pytest
import requests
from django.core.management import call_command
from django.utils import timezone
from pytest_django.asserts import assertContains

from django_khalti.exceptions import KhaltiRefundUnknown
from django_khalti.models import Payment, Refund

from ..conftest import fixture, transaction_record
from .conftest import (
    CHANGELIST,
    REFUND_TEMPLATE,
    confirm_refund,
    confirmation_form,
    fresh,
    messages_of,
    mock_refund,
    mock_status,
    refund_confirmation,
    run_action,
    submit_refund,
    template_names,
    verified_payment,
)

pytestmark = pytest.mark.django_db


def test_refund_action_first_asks_for_confirmation(refunding_client, expect_khalti):
    payment = verified_payment(amount=1000, mobile="98XXXXXXX9")
    response = run_action(refunding_client, "refund", [payment], follow=False)
    assert response.status_code == 200
    assert REFUND_TEMPLATE in template_names(response)
    assert response.context["payments"] == [payment]
    assertContains(response, '<tr class="refund-candidate">', count=1)
    form = response.context["form"]
    assert not form.is_bound  # nothing to correct yet
    assert {"amount", "mobile"} <= set(form.fields)
    assert "(Rs)" in str(form.fields["amount"].label)
    assertContains(
        response,
        '<input type="submit" name="confirm" value="Yes, refund" class="default">',
        html=True,
    )
    hidden = confirmation_form(response, "refund")
    assert hidden["_selected_action"] == [str(payment.pk)]
    assert len(hidden["shown"]) == 1  # what the page shows, for its submit to check
    assert form["shown"].is_hidden  # nothing to type in
    # Nothing happens before the user confirms.
    assert len(expect_khalti.calls) == 0
    assert not Refund.objects.exists()
    assert fresh(payment).status == Payment.Status.VERIFIED


def test_confirmation_page_shows_the_refundable_amount_in_the_unit_it_names(
    refunding_client, expect_khalti
):
    payment = verified_payment(
        amount=1000, refunded_amount=400, status=Payment.Status.PARTIALLY_REFUNDED
    )
    response = run_action(refunding_client, "refund", [payment], follow=False)
    # Rs 6.00 (600 paisa) remain: the column headed "(Rs)" reads "6.00", not "600".
    for header in ["Amount (Rs)", "Refundable (Rs)"]:
        assertContains(response, f"<th>{header}</th>", count=1, html=True)
    assertContains(
        response,
        '<tr class="refund-candidate"><td>ORD-V</td><td>idx-V</td>'
        "<td>Partially refunded</td><td>10.00</td><td>6.00</td></tr>",
        count=1,
        html=True,
    )
    assert response.context["total_refundable"] == "6.00"
    assertContains(response, "Total refundable: Rs 6.00", count=1)


def test_full_refund(refunding_client, expect_khalti, sent, django_capture_on_commit_callbacks):
    payment = verified_payment(amount=1000)
    mock_refund(expect_khalti, "idx-V", {})
    with django_capture_on_commit_callbacks(execute=True):
        response = confirm_refund(refunding_client, [payment])

    assert messages_of(response) == [("success", "Refunded Rs 10.00 of ORD-V.")]
    row = fresh(payment)
    assert row.status == Payment.Status.REFUNDED
    assert row.refunded_amount == row.amount == 1000
    refund = row.refunds.get()
    assert (refund.amount, refund.status, refund.requested_by) == (
        1000,
        Refund.Status.SUCCEEDED,
        refunding_client.user,
    )
    assert refund.settled_at is not None
    assert refund.khalti_response == {"detail": "Transaction refund successful."}
    assert [(name, kw["payment"].pk, kw["amount"]) for name, kw in sent] == [
        ("refunded", payment.pk, 1000)
    ]


def test_partial_refund_then_the_rest(
    refunding_client, expect_khalti, sent, django_capture_on_commit_callbacks
):
    payment = verified_payment(amount=1000)
    mock_refund(expect_khalti, "idx-V", {"amount": 400})
    with django_capture_on_commit_callbacks(execute=True):
        response = confirm_refund(refunding_client, [payment], amount="4")  # rupees
    assert messages_of(response) == [("success", "Refunded Rs 4.00 of ORD-V.")]
    row = fresh(payment)
    assert (row.status, row.refunded_amount) == (Payment.Status.PARTIALLY_REFUNDED, 400)

    mock_refund(expect_khalti, "idx-V", {"amount": 600})
    with django_capture_on_commit_callbacks(execute=True):
        response = confirm_refund(refunding_client, [payment], amount="6.00")
    assert messages_of(response) == [("success", "Refunded Rs 6.00 of ORD-V.")]
    row = fresh(payment)
    assert (row.status, row.refunded_amount) == (Payment.Status.REFUNDED, 1000)
    assert list(row.refunds.values_list("amount", "status", "requested_by")) == [
        (400, Refund.Status.SUCCEEDED, refunding_client.user.pk),
        (600, Refund.Status.SUCCEEDED, refunding_client.user.pk),
    ]
    assert [(name, kw["amount"]) for name, kw in sent] == [("refunded", 400), ("refunded", 600)]


def test_refund_without_amount_after_a_partial_one_refunds_what_remains(
    refunding_client, expect_khalti, sent, django_capture_on_commit_callbacks
):
    payment = verified_payment(
        amount=1000, refunded_amount=400, status=Payment.Status.PARTIALLY_REFUNDED
    )
    mock_refund(expect_khalti, "idx-V", {"amount": 600})
    with django_capture_on_commit_callbacks(execute=True):
        response = confirm_refund(refunding_client, [payment])
    assert messages_of(response) == [("success", "Refunded Rs 6.00 of ORD-V.")]
    row = fresh(payment)
    assert (row.status, row.refunded_amount) == (Payment.Status.REFUNDED, 1000)
    assert [(name, kw["amount"]) for name, kw in sent] == [("refunded", 600)]


@pytest.mark.parametrize(("refunded_before", "amount"), [(0, "10.01"), (400, "6.01")])
def test_refund_of_more_than_remains_is_refused_before_asking_khalti(
    refunding_client, expect_khalti, sent, refunded_before, amount
):
    payment = verified_payment(
        amount=1000,
        refunded_amount=refunded_before,
        status=Payment.Status.PARTIALLY_REFUNDED if refunded_before else Payment.Status.VERIFIED,
    )
    response = confirm_refund(refunding_client, [payment], amount=amount)
    remaining = 1000 - refunded_before
    assert messages_of(response) == [
        ("error", f"ORD-V was not refunded: A refund must be between 1 and {remaining} paisa.")
    ]
    assert len(expect_khalti.calls) == 0
    assert not Refund.objects.exists()
    assert fresh(payment).refunded_amount == refunded_before
    assert sent == []


@pytest.mark.parametrize("amount", ["0", "0.00", "0.001", "-5", "ten", "4.555", "Rs 4"])
def test_a_malformed_amount_is_a_form_error(refunding_client, expect_khalti, amount):
    payment = verified_payment(amount=1000)
    response = submit_refund(
        refunding_client,
        refund_confirmation(refunding_client, [payment]),
        amount=amount,
        follow=False,
    )
    assert response.status_code == 200
    assert set(response.context["form"].errors) == {"amount"}
    # The page is shown again, ready for a corrected amount.
    assert REFUND_TEMPLATE in template_names(response)
    assert len(confirmation_form(response, "refund")["shown"]) == 1
    assert len(expect_khalti.calls) == 0
    assert not Refund.objects.exists()


def test_refund_to_a_khalti_id_sends_the_mobile(
    refunding_client, expect_khalti, sent, django_capture_on_commit_callbacks
):
    payment = verified_payment(amount=1000)
    mock_refund(expect_khalti, "idx-V", {"mobile": "9800000001"})
    with django_capture_on_commit_callbacks(execute=True):
        response = confirm_refund(refunding_client, [payment], mobile="9800000001")
    assert messages_of(response) == [("success", "Refunded Rs 10.00 of ORD-V.")]
    assert fresh(payment).refunds.get().mobile == "9800000001"
    assert fresh(payment).status == Payment.Status.REFUNDED


def test_partial_refund_to_a_khalti_id_sends_both(refunding_client, expect_khalti):
    payment = verified_payment(amount=1000)
    mock_refund(expect_khalti, "idx-V", {"amount": 250, "mobile": "9800000001"})
    confirm_refund(refunding_client, [payment], amount="2.50", mobile="9800000001")
    assert fresh(payment).refunded_amount == 250


@pytest.mark.parametrize(
    ("typed", "paisa", "shown"),
    [
        ("4.50", 450, "4.50"),
        ("4.5", 450, "4.50"),
        ("4", 400, "4.00"),
        ("0.01", 1, "0.01"),
        ("9.99", 999, "9.99"),
    ],
)
def test_the_amount_is_typed_in_rupees_and_refunded_in_paisa(
    refunding_client, expect_khalti, sent, django_capture_on_commit_callbacks, typed, paisa, shown
):
    payment = verified_payment(amount=1000)
    mock_refund(expect_khalti, "idx-V", {"amount": paisa})
    with django_capture_on_commit_callbacks(execute=True):
        response = confirm_refund(refunding_client, [payment], amount=typed)
    assert messages_of(response) == [("success", f"Refunded Rs {shown} of ORD-V.")]
    assert len(expect_khalti.calls) == 1
    row = fresh(payment)
    assert (row.status, row.refunded_amount) == (Payment.Status.PARTIALLY_REFUNDED, paisa)
    assert row.refunds.get().amount == paisa
    assert [(name, kw["amount"]) for name, kw in sent] == [("refunded", paisa)]


@pytest.mark.parametrize("typed", ["10", "10.00"])
def test_typing_the_whole_amount_in_rupees_refunds_it_all(refunding_client, expect_khalti, typed):
    payment = verified_payment(amount=1000)
    mock_refund(expect_khalti, "idx-V", {})  # all of it: Khalti is sent no amount
    response = confirm_refund(refunding_client, [payment], amount=typed)
    assert messages_of(response) == [("success", "Refunded Rs 10.00 of ORD-V.")]
    row = fresh(payment)
    assert (row.status, row.refunded_amount) == (Payment.Status.REFUNDED, 1000)


def test_submitting_the_same_confirmation_page_twice_refunds_once(
    refunding_client, expect_khalti, sent, django_capture_on_commit_callbacks
):
    payment = verified_payment(amount=1000)
    mock_refund(expect_khalti, "idx-V", {"amount": 400})
    page = refund_confirmation(refunding_client, [payment])
    with django_capture_on_commit_callbacks(execute=True):
        first = submit_refund(refunding_client, page, amount="4")
        # A double click, or the browser's back button and "Yes, refund" again.
        second = submit_refund(refunding_client, page, amount="4", follow=False)

    assert messages_of(first) == [("success", "Refunded Rs 4.00 of ORD-V.")]
    assert messages_of(second) == [
        ("error", "Nothing was done: review these payments again."),
        (
            "error",
            "ORD-V changed since the page was shown: it is Partially refunded now, not "
            "Verified; Rs 4.00 refunded now, not Rs 0.00.",
        ),
    ]
    assert REFUND_TEMPLATE in template_names(second)  # shown again, as it stands now
    assert len(expect_khalti.calls) == 1
    row = fresh(payment)
    assert (row.status, row.refunded_amount) == (Payment.Status.PARTIALLY_REFUNDED, 400)
    assert row.refunds.count() == 1
    assert [(name, kw["amount"]) for name, kw in sent] == [("refunded", 400)]


def test_a_refund_made_since_the_page_was_shown_makes_it_refuse(
    refunding_client, expect_khalti, sent, django_capture_on_commit_callbacks
):
    payment = verified_payment(amount=1000)
    stale_page = refund_confirmation(refunding_client, [payment])
    # Meanwhile a colleague (or another tab) refunds Rs 4.
    mock_refund(expect_khalti, "idx-V", {"amount": 400})
    with django_capture_on_commit_callbacks(execute=True):
        confirm_refund(refunding_client, [payment], amount="4")
        refused = submit_refund(refunding_client, stale_page, amount="6", follow=False)
    assert ("error", "Nothing was done: review these payments again.") in messages_of(refused)
    assert len(expect_khalti.calls) == 1
    assert fresh(payment).refunded_amount == 400

    # Choosing the action again shows what was refunded since, and goes through.
    mock_refund(expect_khalti, "idx-V", {"amount": 600})
    with django_capture_on_commit_callbacks(execute=True):
        page = refund_confirmation(refunding_client, [payment])
        response = submit_refund(refunding_client, page, amount="6")
    assert messages_of(response) == [("success", "Refunded Rs 6.00 of ORD-V.")]
    row = fresh(payment)
    assert (row.status, row.refunded_amount) == (Payment.Status.REFUNDED, 1000)
    assert [(name, kw["amount"]) for name, kw in sent] == [("refunded", 400), ("refunded", 600)]


def test_a_refused_page_shows_what_stands_now_and_can_be_confirmed_anew(
    refunding_client, expect_khalti, sent, django_capture_on_commit_callbacks
):
    payment = verified_payment(amount=1000)
    stale_page = refund_confirmation(refunding_client, [payment])
    mock_refund(expect_khalti, "idx-V", {"amount": 400})
    with django_capture_on_commit_callbacks(execute=True):
        confirm_refund(refunding_client, [payment], amount="4")
        refused = submit_refund(refunding_client, stale_page, amount="6", follow=False)
    assert ("error", "Nothing was done: review these payments again.") in messages_of(refused)
    assert REFUND_TEMPLATE in template_names(refused)
    assert not refused.context["form"].is_bound  # to be filled in anew
    assertContains(
        refused,
        '<tr class="refund-candidate"><td>ORD-V</td><td>idx-V</td>'
        "<td>Partially refunded</td><td>10.00</td><td>6.00</td></tr>",
        count=1,
        html=True,
    )
    reshown = confirmation_form(refused, "refund")
    mock_refund(expect_khalti, "idx-V", {"amount": 600})
    with django_capture_on_commit_callbacks(execute=True):
        response = submit_refund(refunding_client, reshown, amount="6")
    assert messages_of(response) == [("success", "Refunded Rs 6.00 of ORD-V.")]
    assert fresh(payment).refunded_amount == 1000


def test_the_guard_covers_every_selected_payment(refunding_client, expect_khalti):
    first, second = verified_payment("A", amount=1000), verified_payment("B", amount=2500)
    mock_refund(expect_khalti, "idx-A", {})
    mock_refund(expect_khalti, "idx-B", {})
    page = refund_confirmation(refunding_client, [first, second])
    response = submit_refund(refunding_client, page)
    assert sorted(messages_of(response)) == [
        ("success", "Refunded Rs 10.00 of ORD-A."),
        ("success", "Refunded Rs 25.00 of ORD-B."),
    ]
    again = submit_refund(refunding_client, page, follow=False)
    assert sorted(messages_of(again)) == [
        ("error", "Nothing was done: review these payments again."),
        (
            "error",
            "ORD-A changed since the page was shown: it is Refunded now, not Verified; "
            "Rs 10.00 refunded now, not Rs 0.00.",
        ),
        (
            "error",
            "ORD-B changed since the page was shown: it is Refunded now, not Verified; "
            "Rs 25.00 refunded now, not Rs 0.00.",
        ),
    ]
    assert len(expect_khalti.calls) == 2
    assert Refund.objects.count() == 2


def test_a_confirmation_without_the_guard_refunds_nothing(refunding_client, expect_khalti):
    payment = verified_payment(amount=1000)
    page = refund_confirmation(refunding_client, [payment])
    del page["shown"]  # a page from before the guard, or a hand-made post
    response = submit_refund(refunding_client, page, follow=False)
    assert response.status_code == 200
    assert REFUND_TEMPLATE in template_names(response)  # shown again
    assert set(response.context["form"].errors) == {"shown"}
    assert len(expect_khalti.calls) == 0
    assert not Refund.objects.exists()


def test_an_unknown_outcome_is_a_warning_beside_the_other_results(
    refunding_client, expect_khalti, sent, django_capture_on_commit_callbacks
):
    lost, done = verified_payment("A", amount=1000), verified_payment("B", amount=2500)
    expect_khalti.expect(
        "refund", "idx-A", {}, body=requests.exceptions.ReadTimeout("read timed out")
    )
    mock_refund(expect_khalti, "idx-B", {})
    with django_capture_on_commit_callbacks(execute=True):
        response = confirm_refund(refunding_client, [lost, done])
    assert sorted(messages_of(response)) == [
        ("success", "Refunded Rs 25.00 of ORD-B."),
        (
            "warning",
            f"The refund of ORD-A may have gone through: {KhaltiRefundUnknown.default_detail}",
        ),
    ]
    assert lost.refunds.get().status == Refund.Status.PENDING
    assert fresh(lost).status == Payment.Status.VERIFIED
    assert fresh(done).status == Payment.Status.REFUNDED
    assert [(name, kw["payment"].pk) for name, kw in sent] == [("refunded", done.pk)]


def test_khalti_refusing_a_refund_shows_why_and_records_nothing_refunded(
    refunding_client, expect_khalti, sent, django_capture_on_commit_callbacks
):
    payment = verified_payment(amount=1000)
    mock_refund(expect_khalti, "idx-V", {}, status=400, json={"detail": "Refund period expired."})
    expect_khalti.status(payment.token, 1000, "status_complete")  # asked: not refunded after all
    with django_capture_on_commit_callbacks(execute=True):
        response = confirm_refund(refunding_client, [payment])
    [(level, text)] = messages_of(response)
    assert level == "error"
    assert text.startswith("ORD-V was not refunded:")
    assert "Refund period expired." in text
    row = fresh(payment)
    assert (row.status, row.refunded_amount) == (Payment.Status.VERIFIED, 0)
    refund = row.refunds.get()
    assert refund.status == Refund.Status.FAILED
    assert "Refund period expired." in refund.failure_reason
    assert refund.requested_by == refunding_client.user
    assert sent == []


@pytest.mark.parametrize("failure", ["503", "timeout", "connection"])
def test_khalti_unreachable_leaves_the_refund_pending_and_blocks_another(
    refunding_client, expect_khalti, sent, django_capture_on_commit_callbacks, failure
):
    payment = verified_payment(amount=1000)
    if failure == "503":
        mock_refund(expect_khalti, "idx-V", {}, status=503, json={"detail": "Service unavailable"})
    else:
        expect_khalti.expect(
            "refund",
            "idx-V",
            {},
            body={
                "timeout": requests.exceptions.ReadTimeout("read timed out"),
                "connection": requests.exceptions.ConnectionError("connection refused"),
            }[failure],
        )
    with django_capture_on_commit_callbacks(execute=True):
        response = confirm_refund(refunding_client, [payment])
    # Not "was not refunded": the money may well have gone back.
    assert messages_of(response) == [
        (
            "warning",
            f"The refund of ORD-V may have gone through: {KhaltiRefundUnknown.default_detail}",
        ),
    ]
    row = fresh(payment)
    assert (row.status, row.refunded_amount) == (Payment.Status.VERIFIED, 0)
    assert row.refunds.get().status == Refund.Status.PENDING  # money may have moved
    assert sent == []

    # Until a re-check settles it, no second refund reaches Khalti.
    response = confirm_refund(refunding_client, [payment])
    [(level, text)] = messages_of(response)
    assert level == "error"
    assert "Another refund of this payment awaits Khalti" in text
    assert len(expect_khalti.calls) == 1


def test_a_partial_amount_for_several_payments_is_refused(refunding_client, expect_khalti):
    first, second = verified_payment("A"), verified_payment("B")
    page = run_action(refunding_client, "refund", [first, second], follow=False)
    assert len(page.context["payments"]) == 2
    assertContains(page, '<tr class="refund-candidate">', count=2)
    data = {
        **confirmation_form(page, "refund"),
        "amount": "4",
        "mobile": "",
        "confirm": "Yes, refund",
    }
    response = refunding_client.post(CHANGELIST, data)
    assert response.status_code == 200
    assert response.context["form"].errors == {
        "amount": ["A partial amount refunds one payment at a time."]
    }
    assert len(expect_khalti.calls) == 0
    assert not Refund.objects.exists()
    assert {fresh(first).status, fresh(second).status} == {Payment.Status.VERIFIED}


def test_several_payments_are_refunded_in_full_together(refunding_client, expect_khalti):
    first, second = verified_payment("A", amount=1000), verified_payment("B", amount=2500)
    mock_refund(expect_khalti, "idx-A", {})
    mock_refund(expect_khalti, "idx-B", {})
    response = confirm_refund(refunding_client, [first, second])
    assert sorted(messages_of(response)) == [
        ("success", "Refunded Rs 10.00 of ORD-A."),
        ("success", "Refunded Rs 25.00 of ORD-B."),
    ]
    assert {fresh(first).status, fresh(second).status} == {Payment.Status.REFUNDED}


@pytest.mark.parametrize("status", ["pending", "failed", "refunded"])
def test_a_payment_khalti_never_confirmed_or_fully_refunded_is_not_refundable(
    refunding_client, expect_khalti, payments, status
):
    payment = {
        "pending": payments.pending,
        "failed": payments.failed,
        "refunded": payments.refunded,
    }[status]
    response = confirm_refund(refunding_client, [payment])
    [(level, text)] = messages_of(response)
    assert level == "error"
    assert text == (
        f"{payment.product_identity} was not refunded: "
        "Only a payment Khalti confirmed can be refunded."
    )
    assert len(expect_khalti.calls) == 0
    assert not Refund.objects.exists()
    assert fresh(payment).status == status


def test_a_payment_whose_transaction_id_is_unknown_is_refunded_once_a_person_gives_it(
    refunding_client, expect_khalti, sent, django_capture_on_commit_callbacks
):
    """Paid, its idx unknown (verify's answer was lost; Khalti's status named none). The
    refund asks Khalti's records, then the person, for the transaction id."""
    payment = verified_payment(amount=1000, idx=None)
    page = run_action(refunding_client, "refund", [payment], follow=False)
    assertContains(page, "<td>ORD-V</td><td>-</td>", html=False)
    assert "idx" in page.context["form"].fields
    data = confirmation_form(page, "refund")
    mock_status(expect_khalti, payment, fixture("status_complete"))  # names no idx
    response = submit_refund(refunding_client, data)
    ((level, text),) = messages_of(response)
    assert level == "error"
    assert "ORD-V was not refunded: Khalti's transaction id of this payment is unknown" in text
    assert "Khalti's dashboard" in text
    assert not Refund.objects.exists()

    data = refund_confirmation(refunding_client, [payment])
    expect_khalti.transaction("IDX-DASH", json=transaction_record(idx="IDX-DASH"))
    mock_refund(expect_khalti, "IDX-DASH", {})
    with django_capture_on_commit_callbacks(execute=True):
        response = submit_refund(refunding_client, {**data, "idx": "IDX-DASH"})
    assert messages_of(response) == [("success", "Refunded Rs 10.00 of ORD-V.")]
    row = fresh(payment)
    assert (row.status, row.idx) == (Payment.Status.REFUNDED, "IDX-DASH")
    assert [(name, kw["payment"].pk, kw["amount"]) for name, kw in sent] == [
        ("refunded", payment.pk, 1000)
    ]


def test_a_transaction_id_is_given_for_one_payment_at_a_time(refunding_client, expect_khalti):
    one, two = verified_payment("A", idx=None), verified_payment("B", idx=None)
    data = refund_confirmation(refunding_client, [one, two])
    response = submit_refund(refunding_client, {**data, "idx": "IDX-DASH"})
    assert response.context["form"].errors["idx"] == [
        "A transaction id is given for one payment at a time."
    ]
    assert not Refund.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_refund_whose_database_connection_is_lost_is_a_warning_and_the_rest_go_on(
    superuser_client, expect_khalti, sent, lost_connection
):
    """Khalti refunds ORD-A but answers after the timeout, and meanwhile the database
    ends the request's connection (for real on PostgreSQL and MariaDB). The person is
    told it may have gone through, not shown a 500; the payments after it in the
    selection are refunded; khalti_reconcile settles ORD-A once."""
    # The page refunds the newest first: B, then A, then C.
    first, lost, last = (verified_payment(n, amount=1000) for n in "BAC")
    for age, payment in enumerate([first, lost, last], start=1):
        created = timezone.now() - timedelta(minutes=age)
        Payment.objects.filter(pk=payment.pk).update(created_at=created)
    page = refund_confirmation(superuser_client, [first, lost, last])

    def slow_khalti(request):
        lost_connection.lose(lost, Refund.objects.get(payment=lost))
        return requests.exceptions.ReadTimeout("read timed out")

    mock_refund(expect_khalti, "idx-B", {})
    expect_khalti.expect("refund", "idx-A", {}, callback=slow_khalti)
    mock_refund(expect_khalti, "idx-C", {})
    response = submit_refund(superuser_client, page)
    lost_connection.restore()
    assert response.status_code == 200
    refunds_asked = [call.params["idx"] for call in expect_khalti.calls]
    assert refunds_asked == ["idx-B", "idx-A", "idx-C"]  # C after A's lost connection
    assert sorted(messages_of(response)) == [
        ("success", "Refunded Rs 10.00 of ORD-B."),
        ("success", "Refunded Rs 10.00 of ORD-C."),
        (
            "warning",
            f"The refund of ORD-A may have gone through: {KhaltiRefundUnknown.default_detail}",
        ),
    ]
    assert lost.refunds.get().status == Refund.Status.PENDING
    assert [(name, kw["payment"].pk) for name, kw in sent] == [
        ("refunded", first.pk),
        ("refunded", last.pk),
    ]

    Refund.objects.filter(payment=lost).update(created_at=timezone.now() - timedelta(hours=1))
    expect_khalti.status("tok-A", 1000, "status_refunded")
    call_command("khalti_reconcile", "--older-than", "0", stdout=io.StringIO())
    call_command("khalti_reconcile", "--older-than", "0", stdout=io.StringIO())
    assert (fresh(lost).status, fresh(lost).refunded_amount) == (Payment.Status.REFUNDED, 1000)
    assert [(name, kw["payment"].pk, kw["amount"]) for name, kw in sent] == [
        ("refunded", first.pk, 1000),
        ("refunded", last.pk, 1000),
        ("refunded", lost.pk, 1000),
    ]


def test_refunding_again_after_a_failed_refund_khalti_applied_late_gives_nothing_twice(
    refunding_client, expect_khalti, sent, django_capture_on_commit_callbacks
):
    """khalti_reconcile recorded Rs 4 failed (Khalti showed nothing refunded then). A
    person opens the refund page for Rs 4 again; meanwhile Khalti applies the first one.
    On submit Khalti is asked first, read-only: nothing is refunded twice."""
    payment = verified_payment(amount=1000)
    Refund.objects.create(
        payment=payment, amount=400, status=Refund.Status.FAILED, settled_at=timezone.now()
    )
    page = refund_confirmation(refunding_client, [payment])
    expect_khalti.status(payment.token, 1000, "status_partially_refunded")  # applied late
    with django_capture_on_commit_callbacks(execute=True):
        response = submit_refund(refunding_client, page, amount="4")
    [(level, text)] = messages_of(response)
    assert level == "error"
    assert "It was refunded meanwhile (Rs 4.00 so far)" in text
    assert [call.endpoint for call in expect_khalti.calls] == ["status"]  # no refund
    row = fresh(payment)
    assert (row.status, row.refunded_amount) == (Payment.Status.PARTIALLY_REFUNDED, 400)
    assert list(row.refunds.values_list("amount", "status")) == [(400, Refund.Status.SUCCEEDED)]
    assert [(name, kw["amount"]) for name, kw in sent] == [("refunded", 400)]
