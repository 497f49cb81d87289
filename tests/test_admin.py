"""The Payment admin: what a superuser and a view-only staff member can see and do."""

import html
import re
from types import SimpleNamespace

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from django_khalti.models import Payment

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:django_khalti_payment_changelist")
ADD = reverse("admin:django_khalti_payment_add")
#: Every field a person may want to read on the change page, none of them editable.
KHALTI_FIELDS = [
    "id", "token", "product_identity", "amount", "status", "idx", "fee_amount", "mobile",
    "khalti_response", "failure_reason", "created_at", "updated_at", "verified_at",
    "claimed_at", "attempts",
]


def change_url(payment):
    return reverse("admin:django_khalti_payment_change", args=[payment.pk])


def delete_url(payment):
    return reverse("admin:django_khalti_payment_delete", args=[payment.pk])


def _text(fragment):
    return html.unescape(re.sub(r"<[^>]+>", "", fragment)).strip()


def rows(response):
    """The changelist's result table as a list of {column: text}, top to bottom."""
    assert response.status_code == 200
    page = response.content.decode()
    match = re.search(r'<table id="result_list">.*?<tbody>(.*?)</tbody>', page, re.S)
    if match is None:  # no table at all when nothing matches
        return []
    cell = re.compile(r'class="field-(\w+)[^"]*">(.*?)</t[dh]>', re.S)
    return [
        {name: _text(text) for name, text in cell.findall(tr)}
        for tr in re.findall(r"<tr>(.*?)</tr>", match.group(1), re.S)
    ]


def shown(response):
    """The product identities listed, in order."""
    return [row["product_identity"] for row in rows(response)]


def readonly_values(response):
    """{field: displayed text} of the read-only fields on a change page."""
    assert response.status_code == 200
    page = response.content.decode()
    return {
        name: _text(value)
        for name, value in re.findall(
            r'<div class="form-row field-(\w+)">.*?<div class="readonly">(.*?)</div>', page, re.S
        )
    }


def form_control_names(response):
    """Names of every input, textarea and select on the page."""
    page = response.content.decode()
    return set(re.findall(r'<(?:input|textarea|select)\b[^>]*\bname="([^"]+)"', page))


@pytest.fixture
def payments():
    verified = Payment.objects.create(
        token="tok-verified-AAAA", product_identity="ORD-VERIFIED", amount=123456,
        status=Payment.Status.VERIFIED, idx="idx-verified-1111", fee_amount=3000,
        mobile="98XXXXXXX9",
        khalti_response={"idx": "idx-verified-1111", "state": {"name": "Completed"}},
        verified_at=timezone.now(), order_claim="ORD-VERIFIED",
    )
    pending = Payment.objects.create(
        token="tok-pending-BBBB", product_identity="ORD-PENDING", amount=1000,
        order_claim="ORD-PENDING",
    )
    failed = Payment.objects.create(
        token="tok-failed-CCCC", product_identity="ORD-FAILED", amount=50005,
        status=Payment.Status.FAILED, failure_reason="Invalid token.",
        khalti_response={"detail": "Invalid token.", "error_key": "validation_error"},
    )
    return SimpleNamespace(verified=verified, pending=pending, failed=failed)


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    # pytest-django's admin_user has a password: hash it cheaply.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def staff_client(django_user_model, username, *codenames):
    user = django_user_model.objects.create_user(username, is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="django_khalti", codename__in=codenames)
    )
    assert user.user_permissions.count() == len(codenames)
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def viewer_client(django_user_model):
    """A staff member who may only view payments."""
    return staff_client(django_user_model, "viewer", "view_payment")


@pytest.fixture(params=["admin_client", "viewer_client"], ids=["superuser", "viewer"])
def any_client(request):
    """Each test using it runs once as a superuser, once as a view-only staff member."""
    return request.getfixturevalue(request.param)


# --- The list ----------------------------------------------------------------------


def test_changelist_shows_identity_amount_in_rupees_status_and_idx(any_client, payments):
    response = any_client.get(CHANGELIST)
    by_identity = {row["product_identity"]: row for row in rows(response)}
    assert set(by_identity) == {"ORD-VERIFIED", "ORD-PENDING", "ORD-FAILED"}
    verified = by_identity["ORD-VERIFIED"]
    assert verified["amount_display"] == "1,234.56"
    assert verified["status"] == "Verified"
    assert verified["idx"] == "idx-verified-1111"
    assert verified["created_at"]
    assert by_identity["ORD-PENDING"]["amount_display"] == "10.00"
    assert by_identity["ORD-PENDING"]["status"] == "Pending"
    assert by_identity["ORD-PENDING"]["idx"] == "-"  # no Khalti id yet
    assert by_identity["ORD-FAILED"]["amount_display"] == "500.05"
    assert by_identity["ORD-FAILED"]["status"] == "Failed"
    assert "Amount (Rs)" in response.content.decode()


def test_changelist_never_shows_the_payers_mobile_or_the_token(any_client, payments):
    page = any_client.get(CHANGELIST).content.decode()
    assert "98XXXXXXX9" not in page
    assert "tok-verified-AAAA" not in page


def test_amount_column_sorts_by_paisa(admin_client, payments):
    ascending = rows(admin_client.get(CHANGELIST, {"o": "2"}))
    assert [row["amount_display"] for row in ascending] == ["10.00", "500.05", "1,234.56"]
    descending = rows(admin_client.get(CHANGELIST, {"o": "-2"}))
    assert [row["amount_display"] for row in descending] == ["1,234.56", "500.05", "10.00"]


@pytest.mark.parametrize(
    "status, identity",
    [("verified", "ORD-VERIFIED"), ("pending", "ORD-PENDING"), ("failed", "ORD-FAILED")],
)
def test_filter_by_status_shows_only_matching_rows(any_client, payments, status, identity):
    assert shown(any_client.get(CHANGELIST, {"status__exact": status})) == [identity]


def test_status_filter_offers_every_status(admin_client, payments):
    page = admin_client.get(CHANGELIST).content.decode()
    for status in ["pending", "verified", "failed"]:
        assert f'href="?status__exact={status}"' in page


@pytest.mark.parametrize(
    "query, identity",
    [
        ("tok-verified-AAAA", "ORD-VERIFIED"),
        ("tok-failed-CCCC", "ORD-FAILED"),
        ("idx-verified-1111", "ORD-VERIFIED"),
        ("ORD-PENDING", "ORD-PENDING"),
        ("ord-failed", "ORD-FAILED"),
        ("FAILED", "ORD-FAILED"),
    ],
)
def test_search_by_token_idx_or_product_identity_finds_only_that_row(
    any_client, payments, query, identity
):
    assert shown(any_client.get(CHANGELIST, {"q": query})) == [identity]


@pytest.mark.parametrize("query", ["tok-verified", "AAAA", "idx-verified", "1111", "98XXXXXXX9"])
def test_search_matches_token_and_idx_only_exactly(admin_client, payments, query):
    # A partial token or Khalti id finds nothing: they are looked up with "=".
    assert shown(admin_client.get(CHANGELIST, {"q": query})) == []


# --- One payment -------------------------------------------------------------------


def test_change_page_shows_every_khalti_field_read_only(any_client, payments):
    response = any_client.get(change_url(payments.verified))
    values = readonly_values(response)
    assert set(values) == set(KHALTI_FIELDS)
    assert values["id"] == str(payments.verified.pk)
    assert values["token"] == "tok-verified-AAAA"
    assert values["product_identity"] == "ORD-VERIFIED"
    assert values["amount"] == "123456"
    assert values["status"] == "Verified"
    assert values["idx"] == "idx-verified-1111"
    assert values["fee_amount"] == "3000"
    assert values["mobile"] == "98XXXXXXX9"
    assert "Completed" in values["khalti_response"]
    assert values["verified_at"] != "-"
    assert not set(KHALTI_FIELDS) & form_control_names(response)


def test_change_page_of_a_failed_payment_shows_why(any_client, payments):
    values = readonly_values(any_client.get(change_url(payments.failed)))
    assert values["failure_reason"] == "Invalid token."
    assert values["status"] == "Failed"
    assert "validation_error" in values["khalti_response"]


def test_posting_the_change_form_changes_nothing(admin_client, payments):
    payment = payments.pending
    response = admin_client.post(
        change_url(payment),
        {
            "token": "forged", "product_identity": "ORD-OTHER", "amount": "1",
            "status": "verified", "idx": "forged-idx", "fee_amount": "0",
            "failure_reason": "", "_save": "Save",
        },
    )
    assert response.status_code == 302
    fresh = Payment.objects.get(pk=payment.pk)
    assert (fresh.token, fresh.product_identity, fresh.amount, fresh.status, fresh.idx) == (
        "tok-pending-BBBB", "ORD-PENDING", 1000, "pending", None,
    )


def test_viewer_cannot_post_the_change_form(viewer_client, payments):
    response = viewer_client.post(change_url(payments.pending), {"status": "verified"})
    assert response.status_code == 403
    assert Payment.objects.get(pk=payments.pending.pk).status == Payment.Status.PENDING


# --- Adding and deleting -----------------------------------------------------------


def test_nobody_can_add_a_payment(any_client, payments):
    assert any_client.get(ADD).status_code == 403
    response = any_client.post(
        ADD, {"token": "t", "product_identity": "ORD-NEW", "amount": "1000", "status": "verified"}
    )
    assert response.status_code == 403
    assert not Payment.objects.filter(product_identity="ORD-NEW").exists()
    assert f'href="{ADD}"' not in any_client.get(CHANGELIST).content.decode()


def test_view_only_staff_cannot_delete(viewer_client, payments):
    assert viewer_client.get(delete_url(payments.failed)).status_code == 403
    assert viewer_client.post(delete_url(payments.failed), {"post": "yes"}).status_code == 403
    assert Payment.objects.filter(pk=payments.failed.pk).exists()


def test_staff_with_delete_permission_still_cannot_delete(django_user_model, payments):
    # Only a superuser may delete a payment record, whatever the model permissions say.
    client = staff_client(
        django_user_model, "clerk", "view_payment", "change_payment", "delete_payment"
    )
    assert client.get(delete_url(payments.failed)).status_code == 403
    assert client.post(delete_url(payments.failed), {"post": "yes"}).status_code == 403

    changelist = client.get(CHANGELIST)
    assert 'value="delete_selected"' not in changelist.content.decode()
    client.post(
        CHANGELIST,
        {"action": "delete_selected", "_selected_action": [str(payments.failed.pk)], "post": "yes"},
    )
    assert Payment.objects.count() == 3


def test_superuser_can_reach_the_delete_view_and_delete(admin_client, payments):
    response = admin_client.get(delete_url(payments.failed))
    assert response.status_code == 200
    assert "Are you sure" in response.content.decode()
    assert 'value="delete_selected"' in admin_client.get(CHANGELIST).content.decode()

    response = admin_client.post(delete_url(payments.failed), {"post": "yes"})
    assert response.status_code == 302
    assert set(Payment.objects.values_list("product_identity", flat=True)) == {
        "ORD-VERIFIED", "ORD-PENDING",
    }


def test_anonymous_visitors_are_sent_to_the_login_page(client, payments):
    for url in [CHANGELIST, change_url(payments.verified), delete_url(payments.verified)]:
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("admin:login"))
    assert Payment.objects.count() == 3
