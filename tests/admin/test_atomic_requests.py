"""In a project with ATOMIC_REQUESTS: the actions and the confirmation pages claim
payments in durable transactions before calling Khalti, so they must not run inside
the request's transaction (each is exempt where it is defined)."""

import pytest
from django.db import connection
from django.urls import resolve

from django_khalti.models import Payment, Refund

from .conftest import (
    CHANGELIST,
    REFUND_PAGE,
    RESOLVE_PAGE,
    confirm_refund,
    confirmation_form,
    fresh,
    messages_of,
    mock_refund,
    pending_payment,
    run_action,
    unknown_refund,
    verified_payment,
)


@pytest.fixture
def atomic_requests(monkeypatch):
    monkeypatch.setitem(connection.settings_dict, "ATOMIC_REQUESTS", True)


@pytest.mark.django_db(transaction=True)
def test_the_actions_work_in_a_project_with_atomic_requests(
    refunder_client, expect_khalti, sent, atomic_requests
):
    # The actions claim payments in durable transactions before calling Khalti: they
    # must not run inside the request's transaction.
    pending = pending_payment(1)
    expect_khalti.complete(pending.token, pending.amount)
    response = run_action(refunder_client, "recheck", [pending])
    assert response.status_code == 200
    assert messages_of(response) == [("success", "Re-checked 1 with Khalti: 1 verified.")]
    assert fresh(pending).status == Payment.Status.VERIFIED

    payment = verified_payment(amount=1000)
    mock_refund(expect_khalti, "idx-V", {"amount": 400})
    response = confirm_refund(refunder_client, [payment], amount="4")
    assert response.status_code == 200
    assert messages_of(response) == [("success", "Refunded Rs 4.00 of ORD-V.")]
    row = fresh(payment)
    assert (row.status, row.refunded_amount) == (Payment.Status.PARTIALLY_REFUNDED, 400)
    assert row.refunds.get().status == Refund.Status.SUCCEEDED
    # The signals went out once each, after the commit.
    assert [(name, kw["payment"].pk) for name, kw in sent] == [
        ("verified", pending.pk),
        ("refunded", payment.pk),
    ]


@pytest.mark.django_db(transaction=True)
def test_the_confirmation_pages_own_urls_work_in_a_project_with_atomic_requests(
    refunder_client, expect_khalti, sent, atomic_requests
):
    payment = verified_payment(amount=1000)
    mock_refund(expect_khalti, "idx-V", {"amount": 400})
    page = confirmation_form(
        refunder_client.get(REFUND_PAGE, {"_selected_action": [str(payment.pk)]}), "refund"
    )
    response = refunder_client.post(
        REFUND_PAGE, {**page, "amount": "4", "confirm": "Yes, refund"}, follow=True
    )
    assert response.redirect_chain == [(CHANGELIST, 302)]
    assert messages_of(response) == [("success", "Refunded Rs 4.00 of ORD-V.")]
    assert fresh(payment).refunded_amount == 400

    refund = unknown_refund(verified_payment("U", amount=1000), stale=True)
    selected = {"_selected_action": [str(refund.payment.pk)]}
    page = confirmation_form(refunder_client.get(RESOLVE_PAGE, selected), "resolve_refund")
    response = refunder_client.post(
        RESOLVE_PAGE, {**page, "outcome": "failed", "confirm": "Record it"}, follow=True
    )
    assert messages_of(response) == [("success", "Resolved 1 refund.")]
    refund.refresh_from_db()
    assert refund.status == Refund.Status.FAILED
    assert [(name, kw["payment"].pk) for name, kw in sent] == [("refunded", payment.pk)]


@pytest.mark.parametrize("url", [CHANGELIST, REFUND_PAGE, RESOLVE_PAGE])
def test_the_views_that_call_khalti_are_exempt_from_atomic_requests(url):
    # What Django reads off the view its URL resolves to (BaseHandler.make_view_atomic).
    assert getattr(resolve(url).func, "_non_atomic_requests", None) == {"default"}
