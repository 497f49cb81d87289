"""Who may do what: nobody adds a payment, only a superuser deletes one, anonymous
visitors log in first, and the actions that move money need their permission."""

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from django_khalti.models import Payment, Refund

from .conftest import (
    ADD,
    CHANGELIST,
    REFUND_TEMPLATE,
    RESOLVE_TEMPLATE,
    action_choices,
    change_url,
    confirm_refund,
    delete_url,
    fresh,
    messages_of,
    mock_refund,
    run_action,
    shown,
    staff_client,
    template_names,
    unknown_refund,
    verified_payment,
)

pytestmark = pytest.mark.django_db

#: What posting an action they may not take gets a staff member without the refund
#: permission: a viewer has no action at all, so the post shows the list again; a
#: clerk's actions do not include it, so "No action selected." and back to the list.
REFUSED_ACTION = {
    "viewer": (200, []),
    "clerk": (302, [("warning", "No action selected.")]),
}


def refused_as_expected(client, response):
    status, said = REFUSED_ACTION[client.user.username]
    assert response.status_code == status
    assert REFUND_TEMPLATE not in template_names(response)
    assert RESOLVE_TEMPLATE not in template_names(response)
    if status == 302:
        assert response["Location"] == CHANGELIST
        response = client.get(response["Location"])  # where the messages are shown
    assert "admin/change_list.html" in template_names(response)
    assert messages_of(response) == said


# --- Adding and deleting -----------------------------------------------------------


def test_nobody_can_add_a_payment(any_client, payments):
    assert any_client.get(ADD).status_code == 403
    response = any_client.post(
        ADD, {"token": "t", "product_identity": "ORD-NEW", "amount": "1000", "status": "verified"}
    )
    assert response.status_code == 403
    assert not Payment.objects.filter(product_identity="ORD-NEW").exists()
    assert any_client.get(CHANGELIST).context["has_add_permission"] is False  # no "Add" button


def test_staff_cannot_delete(non_refunding_client, payments):
    client = non_refunding_client
    assert client.get(delete_url(payments.failed)).status_code == 403
    assert client.post(delete_url(payments.failed), {"post": "yes"}).status_code == 403
    assert "delete_selected" not in action_choices(client.get(CHANGELIST))
    assert Payment.objects.filter(pk=payments.failed.pk).exists()


def test_staff_with_delete_permission_still_cannot_delete(django_user_model, payments):
    # Only a superuser may delete a payment record, whatever the model permissions say.
    client = staff_client(
        django_user_model,
        "remover",
        "view_payment",
        "change_payment",
        "delete_payment",
        "refund_payment",
    )
    assert client.get(delete_url(payments.failed)).status_code == 403
    assert client.post(delete_url(payments.failed), {"post": "yes"}).status_code == 403
    assert "delete_selected" not in action_choices(client.get(CHANGELIST))
    response = run_action(client, "delete_selected", [payments.failed], post="yes")
    assert messages_of(response) == [("warning", "No action selected.")]
    assert Payment.objects.count() == 5


def test_superuser_can_reach_the_delete_view_and_delete(superuser_client, payments):
    response = superuser_client.get(delete_url(payments.failed))
    assert response.status_code == 200
    assert "admin/delete_confirmation.html" in template_names(response)
    assert response.context["object"] == payments.failed
    assert "delete_selected" in action_choices(superuser_client.get(CHANGELIST))

    response = superuser_client.post(delete_url(payments.failed), {"post": "yes"})
    assert response.status_code == 302
    assert not Payment.objects.filter(pk=payments.failed.pk).exists()
    assert Payment.objects.count() == 4


def test_anonymous_visitors_are_sent_to_the_login_page(client, payments):
    for url in [CHANGELIST, change_url(payments.verified), delete_url(payments.verified)]:
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("admin:login"))
    response = run_action(client, "refund", [payments.verified], follow=False, confirm="yes")
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))
    assert not Refund.objects.exists()


# --- The actions -------------------------------------------------------------------


def test_view_only_staff_may_not_recheck(viewer_client, payments, expect_khalti):
    assert "recheck" not in action_choices(viewer_client.get(CHANGELIST))
    response = viewer_client.post(
        CHANGELIST, {"action": "recheck", "_selected_action": [payments.pending.pk], "index": "0"}
    )
    refused_as_expected(viewer_client, response)
    assert not expect_khalti.calls
    assert fresh(payments.pending).status == Payment.Status.PENDING


def test_refund_is_offered_only_to_users_with_the_permission(any_client):
    choices = action_choices(any_client.get(CHANGELIST))
    assert ("refund" in choices) == any_client.user.has_perm("django_khalti.refund_payment")


def test_resolve_refund_is_offered_only_to_users_with_the_refund_permission(any_client):
    choices = action_choices(any_client.get(CHANGELIST))
    allowed = any_client.user.has_perm("django_khalti.refund_payment")
    assert ("resolve_refund" in choices) == allowed
    assert (choices.get("resolve_refund") == "Resolve an unknown refund by hand…") == allowed


def test_staff_without_the_permission_cannot_refund(
    non_refunding_client, expect_khalti, sent, django_capture_on_commit_callbacks
):
    payment = verified_payment(amount=1000)
    assert "refund" not in action_choices(non_refunding_client.get(CHANGELIST))
    with django_capture_on_commit_callbacks(execute=True):
        # Neither the confirmation page...
        asked = run_action(non_refunding_client, "refund", [payment], follow=False)
        refused_as_expected(non_refunding_client, asked)
        # ...nor a forged confirmation refunds anything.
        forged = run_action(
            non_refunding_client,
            "refund",
            [payment],
            follow=False,
            shown="forged",
            amount="",
            mobile="",
            confirm="Yes, refund",
        )
        refused_as_expected(non_refunding_client, forged)
    assert len(expect_khalti.calls) == 0
    assert not Refund.objects.exists()
    row = fresh(payment)
    assert (row.status, row.refunded_amount) == (Payment.Status.VERIFIED, 0)
    assert sent == []


def test_granting_the_permission_lets_a_clerk_refund(clerk_client, expect_khalti):
    payment = verified_payment(amount=1000)
    clerk_client.user.user_permissions.add(Permission.objects.get(codename="refund_payment"))
    assert "refund" in action_choices(clerk_client.get(CHANGELIST))
    mock_refund(expect_khalti, "idx-V", {})
    response = confirm_refund(clerk_client, [payment])
    assert messages_of(response) == [("success", "Refunded Rs 10.00 of ORD-V.")]
    assert fresh(payment).refunds.get().requested_by == clerk_client.user


def test_staff_without_the_permission_cannot_resolve_a_refund(
    non_refunding_client, expect_khalti, sent, django_capture_on_commit_callbacks
):
    payment = verified_payment(amount=1000)
    refund = unknown_refund(payment, stale=True)
    assert "resolve_refund" not in action_choices(non_refunding_client.get(CHANGELIST))
    with django_capture_on_commit_callbacks(execute=True):
        asked = run_action(non_refunding_client, "resolve_refund", [payment], follow=False)
        refused_as_expected(non_refunding_client, asked)
        forged = run_action(
            non_refunding_client,
            "resolve_refund",
            [payment],
            follow=False,
            outcome="succeeded",
            note="",
            confirm="Record it",
        )
        refused_as_expected(non_refunding_client, forged)
    assert len(expect_khalti.calls) == 0
    refund.refresh_from_db()
    assert refund.status == Refund.Status.PENDING
    row = fresh(payment)
    assert (row.status, row.refunded_amount) == (Payment.Status.VERIFIED, 0)
    assert sent == []
    assert shown(non_refunding_client.get(CHANGELIST)) == ["ORD-V"]  # still there to see
