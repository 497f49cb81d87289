"""One payment's page: every field read-only, Khalti's answer readable, the refund
history, and nothing a post could change."""

import html
import json
import re
from datetime import timedelta

import pytest
from django.utils import timezone

from django_khalti.models import Payment, Refund

from .conftest import (
    MODEL_FIELDS,
    READONLY_FIELDS,
    change_url,
    fresh,
    inline,
    readonly_fields,
    readonly_html,
    readonly_values,
    template_names,
    text,
)

pytestmark = pytest.mark.django_db


def editable_fields(response):
    """The names of the fields the change page's own form would take from a post."""
    return set(response.context["adminform"].form.fields)


def test_change_page_shows_every_field_read_only(any_client, payments):
    response = any_client.get(change_url(payments.verified))
    values = readonly_values(response)
    assert set(values) == set(READONLY_FIELDS)
    assert values["id"] == str(payments.verified.pk)
    assert values["token"] == "tok-verified-AAAA"
    assert values["product_identity"] == "ORD-VERIFIED"
    assert values["amount_display"] == "1,234.56"
    assert values["status"] == "Verified"
    assert values["idx"] == "idx-verified-1111"
    assert values["fee_amount"] == "3000"
    assert values["mobile"] == "98XXXXXXX9"
    assert values["refunded_display"] == "0.00"
    assert values["verified_at"] != "-"
    assert not set(MODEL_FIELDS) & editable_fields(response)


def test_change_page_pretty_prints_khaltis_answer(any_client, payments):
    answer = readonly_html(any_client.get(change_url(payments.verified)))["raw_response"]
    # The field's HTML, as the page shows it.
    pre = re.fullmatch(r"\s*<pre>(.*)</pre>\s*", answer, re.S)
    assert pre is not None, answer
    shown = html.unescape(pre.group(1))
    assert json.loads(shown) == payments.verified.khalti_response
    assert '\n  "idx": "idx-verified-1111"' in shown  # indented, one key a line


def test_change_page_of_a_failed_payment_shows_why(any_client, payments):
    response = any_client.get(change_url(payments.failed))
    values = readonly_values(response)
    assert values["failure_reason"] == "Invalid token."
    assert values["status"] == "Failed"
    assert "validation_error" in values["raw_response"]


def test_change_page_shows_the_refund_history(any_client, payments, django_user_model):
    payment = payments.partially_refunded
    desk = django_user_model.objects.create_user("desk", is_staff=True)
    Refund.objects.create(
        payment=payment,
        amount=1000,
        status=Refund.Status.SUCCEEDED,
        requested_by=desk,
        settled_at=timezone.now(),
        khalti_response={"detail": "Transaction refund successful."},
    )
    later = Refund.objects.create(
        payment=payment,
        amount=500,
        status=Refund.Status.FAILED,
        requested_by=desk,
        failure_reason="Refund period expired.",
        settled_at=timezone.now(),
    )
    # The database's clock may give both the same millisecond (SQLite's precision).
    Refund.objects.filter(pk=later.pk).update(created_at=timezone.now() + timedelta(seconds=1))
    response = any_client.get(change_url(payment))
    assert readonly_values(response)["refunded_display"] == "10.00"
    refunds = inline(response, Refund)
    assert refunds is not None, "the change page shows no refund history"
    history = [
        {name: text(value) for name, value in readonly_fields(row).items()} for row in refunds
    ]
    assert [(r["amount_display"], r["status"], r["requested_by"]) for r in history] == [
        ("10.00", "Succeeded", "desk"),
        ("5.00", "Failed", "desk"),
    ]
    assert {r["origin"] for r in history} == {"This app"}
    assert history[1]["failure_reason"] == "Refund period expired."
    assert "Transaction refund successful." in history[0]["answer"]
    # History is read-only: no refund row can be added, changed or deleted from here,
    # and there is no blank row to add one.
    assert (refunds.has_add_permission, refunds.has_change_permission) == (False, False)
    assert refunds.has_delete_permission is False
    assert all(row.original is not None for row in refunds)
    assert not {name for row in refunds for name in row.form.fields} & {
        "amount",
        "status",
        "mobile",
        "DELETE",
    }


def test_the_change_page_is_view_only_and_posting_it_changes_nothing(support_client, payments):
    page = support_client.get(change_url(payments.pending))
    assert page.context["has_change_permission"] is False
    assert editable_fields(page) == set()
    assert 'name="_save"' not in page.content.decode()  # no Save button
    payment = payments.pending
    response = support_client.post(
        change_url(payment),
        {
            "token": "forged",
            "product_identity": "ORD-OTHER",
            "amount": "1",
            "status": "verified",
            "idx": "forged-idx",
            "fee_amount": "0",
            "refunded_amount": "1000",
            "failure_reason": "",
            "_save": "Save",
            "refunds-TOTAL_FORMS": "0",
            "refunds-INITIAL_FORMS": "0",
            "refunds-MIN_NUM_FORMS": "0",
            "refunds-MAX_NUM_FORMS": "0",
        },
    )
    assert response.status_code == 403
    row = fresh(payment)
    assert (
        row.token,
        row.product_identity,
        row.amount,
        row.status,
        row.idx,
        row.refunded_amount,
    ) == ("tok-pending-BBBB", "ORD-PENDING", 1000, "pending", None, 0)


def test_viewer_cannot_post_the_change_form(viewer_client, payments):
    response = viewer_client.post(change_url(payments.pending), {"status": "verified"})
    assert response.status_code == 403
    assert fresh(payments.pending).status == Payment.Status.PENDING
    assert "admin/change_form.html" not in template_names(response)


def test_a_refund_made_at_khalti_shows_so_in_the_refund_history(any_client, payments):
    """A refund a ledger walk found (made in Khalti's dashboard): nobody here asked."""
    payment = payments.partially_refunded
    Refund.objects.create(
        payment=payment,
        amount=1000,
        status=Refund.Status.SUCCEEDED,
        origin=Refund.Origin.KHALTI,
        settled_at=timezone.now(),
        khalti_response={"idx": payment.idx, "state": "Partially refunded"},
    )
    (row,) = inline(any_client.get(change_url(payment)), Refund)
    shown = {name: text(value) for name, value in readonly_fields(row).items()}
    assert (shown["origin"], shown["amount_display"]) == ("Khalti, outside the app", "10.00")
    assert shown["requested_by"] in ("-", "")
