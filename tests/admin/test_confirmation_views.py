"""The refund and resolve-refund confirmation pages at their own URLs: the same pages
as the actions show in place, for the same users, back to the list once done."""

import pytest
from django.urls import reverse

from django_khalti.models import Payment, Refund

from .conftest import (
    CHANGELIST,
    REFUND_PAGE,
    REFUND_TEMPLATE,
    RESOLVE_PAGE,
    RESOLVE_TEMPLATE,
    confirmation_form,
    fresh,
    messages_of,
    mock_refund,
    template_names,
    unknown_refund,
    verified_payment,
)

pytestmark = pytest.mark.django_db


def test_the_refund_page_shows_the_selection_then_refunds(
    refunding_client, expect_khalti, sent, django_capture_on_commit_callbacks
):
    payment = verified_payment(amount=1000)
    page = refunding_client.get(REFUND_PAGE, {"_selected_action": [str(payment.pk)]})
    assert page.status_code == 200
    assert REFUND_TEMPLATE in template_names(page)
    assert page.context["payments"] == [payment]
    assert not page.context["form"].is_bound
    data = confirmation_form(page, "refund")
    assert len(data["shown"]) == 1

    mock_refund(expect_khalti, "idx-V", {"amount": 400})
    with django_capture_on_commit_callbacks(execute=True):
        response = refunding_client.post(
            REFUND_PAGE, {**data, "amount": "4", "confirm": "Yes, refund"}, follow=True
        )
    assert response.redirect_chain == [(CHANGELIST, 302)]
    assert messages_of(response) == [("success", "Refunded Rs 4.00 of ORD-V.")]
    assert fresh(payment).refunded_amount == 400
    assert [(name, kw["amount"]) for name, kw in sent] == [("refunded", 400)]

    # The same page submitted again is refused: the guard holds here too.
    again = refunding_client.post(REFUND_PAGE, {**data, "amount": "4", "confirm": "Yes, refund"})
    assert ("error", "Nothing was done: review these payments again.") in messages_of(again)
    assert len(expect_khalti.calls) == 1


def test_the_resolve_page_shows_the_unknown_refunds_then_records_the_outcome(
    refunding_client, expect_khalti, sent
):
    payment = verified_payment(amount=1000)
    refund = unknown_refund(payment, stale=True)
    page = refunding_client.get(RESOLVE_PAGE, {"_selected_action": [str(payment.pk)]})
    assert page.status_code == 200
    assert RESOLVE_TEMPLATE in template_names(page)
    assert page.context["refunds"] == [refund]
    data = confirmation_form(page, "resolve_refund")

    response = refunding_client.post(
        RESOLVE_PAGE, {**data, "outcome": "failed", "note": "", "confirm": "Record it"}, follow=True
    )
    assert response.redirect_chain == [(CHANGELIST, 302)]
    assert messages_of(response) == [("success", "Resolved 1 refund.")]
    refund.refresh_from_db()
    assert refund.status == Refund.Status.FAILED
    assert len(expect_khalti.calls) == 0
    assert sent == []


def test_the_resolve_page_with_nothing_unknown_goes_back_with_a_warning(refunding_client):
    payment = verified_payment(amount=1000)
    response = refunding_client.get(
        RESOLVE_PAGE, {"_selected_action": [str(payment.pk)]}, follow=True
    )
    assert response.redirect_chain == [(CHANGELIST, 302)]
    assert messages_of(response) == [
        ("warning", "None of the selected payments has a refund of unknown outcome.")
    ]


@pytest.mark.parametrize("url", [REFUND_PAGE, RESOLVE_PAGE])
@pytest.mark.parametrize("selected", [[], ["not-a-payment"]], ids=["nothing", "garbage"])
def test_a_page_with_no_payment_selected_goes_back_to_the_list(refunding_client, url, selected):
    response = refunding_client.post(
        url, {"_selected_action": selected, "shown": "forged", "confirm": "Yes, refund"}
    )
    assert (response.status_code, response["Location"]) == (302, CHANGELIST)
    assert messages_of(response) == []
    assert not Refund.objects.exists()


@pytest.mark.parametrize("url", [REFUND_PAGE, RESOLVE_PAGE])
def test_the_pages_need_the_refund_permission(non_refunding_client, expect_khalti, url):
    payment = verified_payment(amount=1000)
    refund = unknown_refund(payment, stale=True)
    selected = {"_selected_action": [str(payment.pk)]}
    assert non_refunding_client.get(url, selected).status_code == 403
    forged = {**selected, "shown": "forged", "outcome": "succeeded"}
    response = non_refunding_client.post(url, {**forged, "confirm": "Yes"})
    assert response.status_code == 403
    assert len(expect_khalti.calls) == 0
    refund.refresh_from_db()
    assert refund.status == Refund.Status.PENDING
    assert Refund.objects.count() == 1
    assert fresh(payment).status == Payment.Status.VERIFIED


@pytest.mark.parametrize("url", [REFUND_PAGE, RESOLVE_PAGE])
def test_anonymous_visitors_are_sent_to_the_login_page(client, url):
    payment = verified_payment(amount=1000)
    response = client.post(url, {"_selected_action": [str(payment.pk)], "confirm": "Yes"})
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))
    assert not Refund.objects.exists()
