"""The Payment admin, as a superuser and as staff members with and without the refund
permission see it: the list, one payment, "Re-check with Khalti", "Refund" and "Resolve
an unknown refund by hand"."""

import html
import json
import re
from datetime import timedelta
from types import SimpleNamespace

import pytest
import requests
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from django_khalti.admin import RECHECK_LIMIT, STATUS_COLOURS
from django_khalti.conf import khalti_settings
from django_khalti.exceptions import KhaltiRefundUnknown
from django_khalti.models import Payment, Refund, order_key
from django_khalti.signals import payment_failed, payment_refunded, payment_verified
from shop.models import Order

from .conftest import fixture, transaction_record

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:django_khalti_payment_changelist")
ADD = reverse("admin:django_khalti_payment_add")
#: Every field a person may want to read on the change page, none of them editable.
READONLY_FIELDS = [
    "id",
    "order_reference",
    "product_identity",
    "purchase_order_name",
    "amount_display",
    "status",
    "failure_reason",
    "flow",
    "token",
    "pidx",
    "payment_url",
    "idx",
    "received_amount",
    "fee_amount",
    "mobile",
    "refunded_display",
    "raw_response",
    "created_at",
    "updated_at",
    "verified_at",
    "expires_at",
    "claimed_at",
    "attempts",
]
#: Payment columns a change form could otherwise post.
MODEL_FIELDS = [
    "id",
    "token",
    "product_identity",
    "amount",
    "status",
    "idx",
    "fee_amount",
    "mobile",
    "khalti_response",
    "failure_reason",
    "refunded_amount",
    "created_at",
    "updated_at",
    "verified_at",
    "order_claim",
    "claimed_at",
    "attempts",
]
STATUSES = ["pending", "verified", "failed", "refunded", "partially_refunded"]


def change_url(payment):
    return reverse("admin:django_khalti_payment_change", args=[payment.pk])


def delete_url(payment):
    return reverse("admin:django_khalti_payment_delete", args=[payment.pk])


# --- Reading pages -----------------------------------------------------------------


def _text(fragment):
    return html.unescape(re.sub(r"<[^>]+>", "", fragment)).strip()


def cells(response):
    """The changelist's result table as a list of {column: inner HTML}, top to bottom."""
    assert response.status_code == 200
    page = response.content.decode()
    match = re.search(r'<table id="result_list">.*?<tbody>(.*?)</tbody>', page, re.S)
    if match is None:  # no table at all when nothing matches
        return []
    cell = re.compile(r'class="field-(\w+)[^"]*">(.*?)</t[dh]>', re.S)
    return [dict(cell.findall(tr)) for tr in re.findall(r"<tr>(.*?)</tr>", match.group(1), re.S)]


def rows(response):
    """The changelist's result table as a list of {column: text}, top to bottom."""
    return [{name: _text(value) for name, value in row.items()} for row in cells(response)]


def shown(response):
    """The product identities listed, in order."""
    return [row["order_reference"] for row in rows(response)]


def readonly_html(response):
    """{field: inner HTML} of the read-only fields on a change page."""
    assert response.status_code == 200
    page = response.content.decode()
    field = r'<div class="form-row field-(\w+)">.*?<div class="readonly">(.*?)</div>'
    return dict(re.findall(field, page, re.S))


def readonly_values(response):
    """{field: displayed text} of the read-only fields on a change page."""
    return {name: _text(value) for name, value in readonly_html(response).items()}


def form_control_names(response):
    """Names of every input, textarea and select on the page."""
    page = response.content.decode()
    return set(re.findall(r'<(?:input|textarea|select)\b[^>]*\bname="([^"]+)"', page))


def action_choices(response):
    """The values offered in the changelist's action dropdown."""
    page = response.content.decode()
    assert response.status_code == 200
    select = re.search(r'<select name="action"[^>]*>(.*?)</select>', page, re.S)
    if select is None:  # no action this user may take
        return []
    return [value for value in re.findall(r'<option value="([^"]*)"', select.group(1)) if value]


def refund_history(response):
    """The refund inline's rows as {column: text}, oldest first."""
    page = response.content.decode()
    inline = r'<div class="js-inline-admin-formset inline-group" id="refunds-group".*?</table>'
    group = re.search(inline, page, re.S)
    if group is None:
        return None
    cell = re.compile(r'<td class="field-(\w+)">(.*?)</td>', re.S)
    return [
        {name: _text(value) for name, value in cell.findall(tr)}
        for tr in re.findall(r'<tr class="form-row has_original".*?</tr>', group.group(0), re.S)
    ]


def filter_link(response, title, label):
    """The query string of the filter ``label`` in the sidebar block ``title``."""
    page = response.content.decode()
    block = re.search(rf'<details data-filter-title="{title}".*?</details>', page, re.S)
    assert block is not None, f"no {title!r} filter"
    link = re.search(rf'<a href="([^"]+)">{label}</a>', block.group(0))
    assert link is not None, f"no {label!r} in the {title!r} filter"
    return html.unescape(link.group(1))


def hierarchy_links(response):
    """{label: query string} of the date_hierarchy navigation."""
    page = response.content.decode()
    nav = re.search(r'<nav class="toplinks"[^>]*>(.*?)</nav>', page, re.S)
    assert nav is not None, "no date hierarchy"
    return {
        _text(label): html.unescape(href)
        for href, label in re.findall(r'<a href="([^"]+)"[^>]*>(.*?)</a>', nav.group(1), re.S)
    }


def messages_of(response):
    """The messages the admin shows after an action, as (level, text)."""
    return [(m.level_tag, str(m)) for m in response.context["messages"]]


# --- Users -------------------------------------------------------------------------


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
    client.user = user  # type: ignore[attr-defined]  # the logged-in user, for the tests
    return client


@pytest.fixture
def superuser_client(admin_client, admin_user):
    admin_client.user = admin_user
    return admin_client


@pytest.fixture
def viewer_client(django_user_model):
    """A staff member who may only view payments."""
    return staff_client(django_user_model, "viewer", "view_payment")


@pytest.fixture
def clerk_client(django_user_model):
    """A support desk member who may view and change payments, but not refund them."""
    return staff_client(django_user_model, "clerk", "view_payment", "change_payment")


@pytest.fixture
def refunder_client(django_user_model):
    """A support desk member who may also refund."""
    return staff_client(
        django_user_model, "refunder", "view_payment", "change_payment", "refund_payment"
    )


@pytest.fixture(
    params=["superuser_client", "viewer_client", "clerk_client", "refunder_client"],
    ids=["superuser", "viewer", "clerk", "refunder"],
)
def any_client(request):
    """Each test using it runs as a superuser and as each kind of staff member."""
    return request.getfixturevalue(request.param)


@pytest.fixture(
    params=["superuser_client", "clerk_client", "refunder_client"],
    ids=["superuser", "clerk", "refunder"],
)
def support_client(request):
    """Users who may change payments: with and without the refund permission."""
    return request.getfixturevalue(request.param)


@pytest.fixture(params=["superuser_client", "refunder_client"], ids=["superuser", "refunder"])
def refunding_client(request):
    """Users who may refund."""
    return request.getfixturevalue(request.param)


@pytest.fixture(params=["viewer_client", "clerk_client"], ids=["viewer", "clerk"])
def non_refunding_client(request):
    """Staff members without the refund permission."""
    return request.getfixturevalue(request.param)


# --- Data --------------------------------------------------------------------------


@pytest.fixture
def payments():
    now = timezone.now()
    verified = Payment.objects.create(
        token="tok-verified-AAAA",
        product_identity="ORD-VERIFIED",
        amount=123456,
        status=Payment.Status.VERIFIED,
        idx="idx-verified-1111",
        fee_amount=3000,
        mobile="98XXXXXXX9",
        khalti_response={"idx": "idx-verified-1111", "state": {"name": "Completed"}},
        verified_at=now,
        order_claim=order_key("ORD-VERIFIED"),
    )
    pending = Payment.objects.create(
        token="tok-pending-BBBB",
        product_identity="ORD-PENDING",
        amount=1000,
        order_claim=order_key("ORD-PENDING"),
    )
    failed = Payment.objects.create(
        token="tok-failed-CCCC",
        product_identity="ORD-FAILED",
        amount=50005,
        status=Payment.Status.FAILED,
        failure_reason="Invalid token.",
        khalti_response={"detail": "Invalid token.", "error_key": "validation_error"},
    )
    refunded = Payment.objects.create(
        token="tok-refunded-DDDD",
        product_identity="ORD-REFUNDED",
        amount=2000,
        status=Payment.Status.REFUNDED,
        idx="idx-refunded-2222",
        mobile="97XXXXXXX7",
        refunded_amount=2000,
        verified_at=now,
        order_claim=order_key("ORD-REFUNDED"),
    )
    partially_refunded = Payment.objects.create(
        token="tok-partial-EEEE",
        product_identity="ORD-PARTIAL",
        amount=3000,
        status=Payment.Status.PARTIALLY_REFUNDED,
        idx="idx-partial-3333",
        refunded_amount=1000,
        verified_at=now,
        order_claim=order_key("ORD-PARTIAL"),
    )
    return SimpleNamespace(
        verified=verified,
        pending=pending,
        failed=failed,
        refunded=refunded,
        partially_refunded=partially_refunded,
    )


def pending_payment(n, amount=1000):
    return Payment.objects.create(
        token=f"tok-pending-{n}",
        product_identity=f"ORD-P{n}",
        amount=amount,
        order_claim=order_key(f"ORD-P{n}"),
        claimed_idx=f"idx-tok-pending-{n}",  # the idx the widget handed the page
    )


def verified_payment(n="V", amount=1000, **fields):
    fields.setdefault("status", Payment.Status.VERIFIED)
    return Payment.objects.create(
        token=f"tok-{n}",
        product_identity=f"ORD-{n}",
        amount=amount,
        idx=f"idx-{n}",
        order_claim=order_key(f"ORD-{n}"),
        verified_at=timezone.now(),
        **fields,
    )


@pytest.fixture
def sent():
    """Every payment signal sent during the test, as (name, kwargs)."""
    got = []
    receivers = {}
    for name, signal in [
        ("verified", payment_verified),
        ("failed", payment_failed),
        ("refunded", payment_refunded),
    ]:

        def receiver(sender, _name=name, **kwargs):
            # A receiver's exception would only be logged: record a wrong sender instead.
            got.append((_name if sender is Payment else f"{_name} from {sender!r}", kwargs))

        receivers[signal] = receiver
        signal.connect(receiver, weak=False)
    yield got
    for signal, receiver in receivers.items():
        signal.disconnect(receiver)


# --- Talking to the admin ----------------------------------------------------------


def run_action(client, action, payments, follow=True, **data):
    """POST the changelist's action form for ``payments``, as the browser does."""
    return client.post(
        CHANGELIST,
        {"action": action, "_selected_action": [str(p.pk) for p in payments], "index": "0", **data},
        follow=follow,
    )


def confirmation_form(response):
    """The hidden fields of an action's confirmation page's form, as the browser would post them."""
    assert response.status_code == 200
    page = response.content.decode()
    form = re.search(r'<form method="post">(.*?)</form>', page, re.S)
    assert form is not None, "no confirmation form"
    data = {}
    for tag in re.findall(r'<input\b[^>]*type="hidden"[^>]*>', form.group(1)):
        name = re.search(r'name="([^"]+)"', tag).group(1)
        value = html.unescape(re.search(r'value="([^"]*)"', tag).group(1))
        data.setdefault(name, []).append(value)
    return data


def refund_confirmation(client, payments):
    """Choose "Refund" for ``payments``: the confirmation page's hidden fields, as the
    browser would post them (the selection, and what was refunded when it was shown)."""
    page = run_action(client, "refund", payments, follow=False)
    data = confirmation_form(page)
    assert data["action"] == ["refund"]
    assert sorted(data["_selected_action"]) == sorted(str(p.pk) for p in payments)
    assert len(data["refunded_before"]) == 1
    return data


def submit_refund(client, data, amount="", mobile="", follow=True):
    """Fill in the confirmation page's form (``amount`` in rupees) and submit it."""
    return client.post(
        CHANGELIST,
        {**data, "amount": amount, "mobile": mobile, "confirm": "Yes, refund"},
        follow=follow,
    )


def confirm_refund(client, payments, amount="", mobile=""):
    """Choose "Refund" for ``payments``, then fill in (``amount`` in rupees) and submit the
    confirmation page."""
    return submit_refund(client, refund_confirmation(client, payments), amount, mobile)


def confirm_resolve(client, payments, outcome, note=""):
    """Choose "Resolve an unknown refund by hand" for ``payments``, then record ``outcome``."""
    page = run_action(client, "resolve_refund", payments, follow=False)
    data = confirmation_form(page)
    assert data["action"] == ["resolve_refund"]
    data.update(outcome=outcome, note=note, confirm="Record it")
    return client.post(CHANGELIST, data, follow=True)


def unknown_refund(payment, amount=None, stale=False):
    """A refund of ``payment`` whose outcome Khalti never told (what a timeout leaves)."""
    refund = Refund.objects.create(
        payment=payment,
        amount=payment.refundable_amount if amount is None else amount,
        claim=payment.pk,
        failure_reason=str(KhaltiRefundUnknown.default_detail),
    )
    if stale:  # old enough for a re-check to ask Khalti about it
        created = timezone.now() - timedelta(seconds=khalti_settings.stale_after + 60)
        Refund.objects.filter(pk=refund.pk).update(created_at=created)
        refund.refresh_from_db()
    return refund


def mock_refund(expect_khalti, idx, body, *, status=200, json=None):
    """Khalti's refund endpoint for ``idx``, expecting exactly ``body`` ({} for a full refund)."""
    return expect_khalti.refund(
        idx,
        body,
        status=status,
        json={"detail": "Transaction refund successful."} if json is None else json,
    )


def mock_status(expect_khalti, payment, answer, *, status=200):
    """Khalti's status endpoint for ``payment``, answering ``answer``."""
    return expect_khalti.status(payment.token, payment.amount, status=status, json=answer)


def fresh(payment):
    return Payment.objects.get(pk=payment.pk)


# --- The list ----------------------------------------------------------------------


def test_changelist_shows_every_column(any_client, payments):
    response = any_client.get(CHANGELIST)
    page = response.content.decode()
    for header in [
        "Order reference",
        "Amount (Rs)",
        "Status",
        "Khalti transaction id",
        "Payer mobile",
        "Created",
        "Verified",
    ]:
        assert f">{header}" in page
    by_identity = {row["order_reference"]: row for row in rows(response)}
    assert set(by_identity) == {
        "ORD-VERIFIED",
        "ORD-PENDING",
        "ORD-FAILED",
        "ORD-REFUNDED",
        "ORD-PARTIAL",
    }
    verified = by_identity["ORD-VERIFIED"]
    assert verified["amount_display"] == "1,234.56"
    assert verified["status_badge"] == "Verified"
    assert verified["idx"] == "idx-verified-1111"
    assert verified["mobile"] == "98XXXXXXX9"
    assert verified["created_at"] not in ("", "-")
    assert verified["verified_at"] not in ("", "-")
    pending = by_identity["ORD-PENDING"]
    assert pending["amount_display"] == "10.00"
    assert pending["status_badge"] == "Pending"
    assert pending["idx"] == "-"  # no Khalti id yet
    assert pending["mobile"] == "-"
    assert pending["verified_at"] == "-"
    assert by_identity["ORD-FAILED"]["amount_display"] == "500.05"
    assert by_identity["ORD-PARTIAL"]["status_badge"] == "Partially refunded"


def test_a_payment_that_needs_review_has_its_badge_filter_and_one_step_refund(
    refunder_client, expect_khalti, sent, django_capture_on_commit_callbacks
):
    review = Payment.objects.create(
        token="tok-review",
        product_identity="ORD-REVIEW",
        amount=1000,
        received_amount=1100,  # Khalti completed it for another amount
        idx="idx-review",
        status=Payment.Status.NEEDS_REVIEW,
        failure_reason="Khalti's record is for 1100 paisa, the order is for 1000 paisa.",
    )
    verified_payment()
    page = refunder_client.get(CHANGELIST).content.decode()
    assert "khalti-status-needs_review" in page
    assert STATUS_COLOURS[Payment.Status.NEEDS_REVIEW] in page
    filtered = refunder_client.get(CHANGELIST, {"status__exact": "needs_review"})
    assert [row["order_reference"] for row in rows(filtered)] == ["ORD-REVIEW"]
    assert "?status__exact=needs_review" in page  # the filter offers it

    # One step: the action's confirmation, then Khalti's full refund of what it took.
    mock_refund(expect_khalti, "idx-review", {})
    with django_capture_on_commit_callbacks(execute=True):
        response = confirm_refund(refunder_client, [review])
    assert messages_of(response) == [("success", "Refunded Rs 11.00 of ORD-REVIEW.")]
    row = fresh(review)
    assert (row.status, row.refunded_amount) == (Payment.Status.REFUNDED, 1100)
    assert [(name, kw["amount"]) for name, kw in sent] == [("refunded", 1100)]


def test_changelist_never_shows_the_token(any_client, payments):
    assert "tok-verified-AAAA" not in any_client.get(CHANGELIST).content.decode()


def test_status_is_a_badge_of_its_own_colour(any_client, payments):
    badges = {}
    for row in cells(any_client.get(CHANGELIST)):
        payment = Payment.objects.get(product_identity=_text(row["order_reference"]))
        span = re.fullmatch(
            r'\s*<span class="([^"]+)" style="([^"]+)">(.*?)</span>\s*', row["status_badge"], re.S
        )
        assert span is not None, row["status_badge"]
        classes, style, label = span.groups()
        assert f"khalti-status-{payment.status}" in classes.split()
        assert label == payment.get_status_display()
        badges[payment.status] = re.search(r"background:\s*([^;]+)", style).group(1)
    assert set(badges) == set(STATUSES)
    assert len(set(badges.values())) == len(STATUSES)  # one colour per status


def test_amount_column_sorts_by_paisa(superuser_client, payments):
    ascending = rows(superuser_client.get(CHANGELIST, {"o": "2"}))
    assert [row["amount_display"] for row in ascending] == [
        "10.00",
        "20.00",
        "30.00",
        "500.05",
        "1,234.56",
    ]
    descending = rows(superuser_client.get(CHANGELIST, {"o": "-2"}))
    assert [row["amount_display"] for row in descending] == [
        "1,234.56",
        "500.05",
        "30.00",
        "20.00",
        "10.00",
    ]


@pytest.mark.parametrize(
    ("status", "identity"),
    [
        ("verified", "ORD-VERIFIED"),
        ("pending", "ORD-PENDING"),
        ("failed", "ORD-FAILED"),
        ("refunded", "ORD-REFUNDED"),
        ("partially_refunded", "ORD-PARTIAL"),
    ],
)
def test_filter_by_status_shows_only_matching_rows(any_client, payments, status, identity):
    page = any_client.get(CHANGELIST)
    assert filter_link(page, "status", re.escape(str(Payment.Status(status).label))) == (
        f"?status__exact={status}"
    )
    assert shown(any_client.get(CHANGELIST, {"status__exact": status})) == [identity]


def test_filter_by_created_date(any_client, payments):
    Payment.objects.filter(pk=payments.failed.pk).update(
        created_at=timezone.now() - timedelta(days=40)
    )
    page = any_client.get(CHANGELIST)
    today = shown(any_client.get(CHANGELIST + filter_link(page, "created", "Today")))
    assert sorted(today) == ["ORD-PARTIAL", "ORD-PENDING", "ORD-REFUNDED", "ORD-VERIFIED"]
    week = shown(any_client.get(CHANGELIST + filter_link(page, "created", "Past 7 days")))
    assert "ORD-FAILED" not in week


def test_filter_by_verified_date(any_client, payments):
    page = any_client.get(CHANGELIST)
    never = shown(any_client.get(CHANGELIST + filter_link(page, "verified", "No date")))
    assert sorted(never) == ["ORD-FAILED", "ORD-PENDING"]
    today = shown(any_client.get(CHANGELIST + filter_link(page, "verified", "Today")))
    assert sorted(today) == ["ORD-PARTIAL", "ORD-REFUNDED", "ORD-VERIFIED"]


def test_date_hierarchy_drills_down_by_creation_date(any_client, payments):
    now = timezone.now()
    last_year = now - timedelta(days=400)
    Payment.objects.filter(pk=payments.failed.pk).update(created_at=last_year)
    links = hierarchy_links(any_client.get(CHANGELIST))
    old, this = timezone.localtime(last_year).year, timezone.localtime(now).year
    assert links[str(old)] == f"?created_at__year={old}"
    assert links[str(this)] == f"?created_at__year={this}"
    assert shown(any_client.get(CHANGELIST + links[str(old)])) == ["ORD-FAILED"]
    assert "ORD-FAILED" not in shown(any_client.get(CHANGELIST + links[str(this)]))


@pytest.mark.parametrize(
    ("query", "identity"),
    [
        ("tok-verified-AAAA", "ORD-VERIFIED"),
        ("tok-failed-CCCC", "ORD-FAILED"),
        ("idx-verified-1111", "ORD-VERIFIED"),
        ("idx-partial-3333", "ORD-PARTIAL"),
        ("ORD-PENDING", "ORD-PENDING"),
        ("ORD-FAIL", "ORD-FAILED"),
        ("98XXXXXXX9", "ORD-VERIFIED"),
        ("97XXXXXXX7", "ORD-REFUNDED"),
    ],
)
def test_search_by_token_idx_product_identity_or_mobile_finds_only_that_row(
    any_client, payments, query, identity
):
    assert shown(any_client.get(CHANGELIST, {"q": query})) == [identity]


def test_search_by_the_beginning_of_a_reference_finds_every_order_it_begins(
    superuser_client, payments
):
    assert sorted(shown(superuser_client.get(CHANGELIST, {"q": "ORD-P"}))) == [
        "ORD-PARTIAL",
        "ORD-PENDING",
    ]


@pytest.mark.parametrize(
    "query",
    [
        "tok-verified",
        "AAAA",
        "idx-verified",
        "1111",
        "FAILED",
        "RD-FAILED",
        "XXXXXXX7",
        "98XXXXXXX",
    ],
)
def test_search_matches_only_what_an_index_can_find(superuser_client, payments, query):
    # Khalti's ids and the masked mobile are looked up exactly, an order reference by
    # its beginning: a piece from the middle finds nothing, as it would need a scan of
    # every payment (see test_performance.py). Whether case matters is the database's
    # collation (PostgreSQL: it does).
    assert shown(superuser_client.get(CHANGELIST, {"q": query})) == []


@pytest.mark.parametrize("client_fixture", ["superuser_client", "refunder_client"])
def test_the_list_costs_the_same_queries_for_10_or_200_payments(request, client_fixture):
    client = request.getfixturevalue(client_fixture)
    user = client.user

    def add(count, start):
        made = Payment.objects.bulk_create(
            Payment(
                token=f"tok-{n}",
                product_identity=f"ORD-{n}",
                amount=1000 + n,
                status=Payment.Status.VERIFIED if n % 2 else Payment.Status.PENDING,
                idx=f"idx-{n}" if n % 2 else None,
                mobile="98XXXXXXX9" if n % 2 else "",
                verified_at=timezone.now() if n % 2 else None,
                order_claim=order_key(f"ORD-{n}"),
            )
            for n in range(start, start + count)
        )
        # Refund history must not be fetched row by row either.
        Refund.objects.bulk_create(
            Refund(payment=p, amount=100, status=Refund.Status.SUCCEEDED, requested_by=user)
            for p in made
            if p.status == Payment.Status.VERIFIED
        )

    def page_queries():
        with CaptureQueriesContext(connection) as queries:
            response = client.get(CHANGELIST)
        return len(rows(response)), [q["sql"] for q in queries.captured_queries]

    add(10, 0)
    page_queries()  # warm caches (content types, sessions) before counting
    ten_rows, ten = page_queries()
    add(190, 10)
    many_rows, many = page_queries()
    assert (ten_rows, many_rows) == (10, 100)  # list_per_page
    assert len(many) == len(ten), "\n".join(many)


# --- One payment -------------------------------------------------------------------


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
    assert not set(MODEL_FIELDS) & form_control_names(response)


def test_change_page_pretty_prints_khaltis_answer(any_client, payments):
    answer = readonly_html(any_client.get(change_url(payments.verified)))["raw_response"]
    pre = re.fullmatch(r"\s*<pre>(.*)</pre>\s*", answer, re.S)
    assert pre is not None, answer
    text = html.unescape(pre.group(1))
    assert json.loads(text) == payments.verified.khalti_response
    assert '\n  "idx": "idx-verified-1111"' in text  # indented, one key a line


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
    history = refund_history(response)
    assert history is not None, "the change page shows no refund history"
    assert [(r["amount_display"], r["status"], r["requested_by"]) for r in history] == [
        ("10.00", "Succeeded", "desk"),
        ("5.00", "Failed", "desk"),
    ]
    assert history[1]["failure_reason"] == "Refund period expired."
    assert "Transaction refund successful." in history[0]["answer"]
    # History is read-only: no refund row can be added, changed or deleted from here.
    names = form_control_names(response)
    assert not {n for n in names if re.fullmatch(r"refunds-\d+-(amount|status|mobile|DELETE)", n)}
    assert 'id="refunds-empty"' not in response.content.decode()  # no blank row to add


def test_the_change_page_is_view_only_and_posting_it_changes_nothing(support_client, payments):
    page = support_client.get(change_url(payments.pending)).content.decode()
    assert 'name="_save"' not in page
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


# --- Adding and deleting -----------------------------------------------------------


def test_nobody_can_add_a_payment(any_client, payments):
    assert any_client.get(ADD).status_code == 403
    response = any_client.post(
        ADD, {"token": "t", "product_identity": "ORD-NEW", "amount": "1000", "status": "verified"}
    )
    assert response.status_code == 403
    assert not Payment.objects.filter(product_identity="ORD-NEW").exists()
    assert f'href="{ADD}"' not in any_client.get(CHANGELIST).content.decode()


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
    run_action(client, "delete_selected", [payments.failed], post="yes")
    assert Payment.objects.count() == 5


def test_superuser_can_reach_the_delete_view_and_delete(superuser_client, payments):
    response = superuser_client.get(delete_url(payments.failed))
    assert response.status_code == 200
    assert "Are you sure" in response.content.decode()
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
    assert not Refund.objects.exists()


# --- Action: Re-check with Khalti --------------------------------------------------


def test_recheck_is_offered_to_support_staff(support_client, payments):
    assert "recheck" in action_choices(support_client.get(CHANGELIST))
    assert "Re-check with Khalti" in support_client.get(CHANGELIST).content.decode()


def test_recheck_settles_each_pending_payment_from_khaltis_answer(
    support_client, expect_khalti, sent, django_capture_on_commit_callbacks
):
    complete, error, initiated = pending_payment(1), pending_payment(2, 2000), pending_payment(3)
    verified = verified_payment()
    expect_khalti.complete(complete.token, complete.amount)
    expect_khalti.status(error.token, error.amount, "status_error")
    expect_khalti.status(initiated.token, initiated.amount, "status_initiated")

    with django_capture_on_commit_callbacks(execute=True):
        response = run_action(support_client, "recheck", [complete, error, initiated, verified])

    assert response.status_code == 200
    assert messages_of(response) == [
        ("success", "Re-checked 3 with Khalti: 1 failed, 1 pending, 1 verified.")
    ]
    assert fresh(complete).status == Payment.Status.VERIFIED
    assert fresh(complete).verified_at is not None
    assert fresh(error).status == Payment.Status.FAILED
    assert "Transaction not found" in fresh(error).failure_reason
    assert fresh(initiated).status == Payment.Status.PENDING
    assert fresh(initiated).claimed_at is None  # free for the next re-check
    assert fresh(verified).status == Payment.Status.VERIFIED
    # The verified payment was not sent to Khalti: one status call per pending payment.
    assert sorted(c.params["token"] for c in expect_khalti.calls if c.endpoint == "status") == [
        complete.token,
        error.token,
        initiated.token,
    ]
    assert sorted((name, kw["payment"].pk) for name, kw in sent) == [
        ("failed", error.pk),
        ("verified", complete.pk),
    ]


def test_recheck_of_nothing_pending_says_so_and_asks_khalti_nothing(support_client, expect_khalti):
    verified = verified_payment()
    response = run_action(support_client, "recheck", [verified])
    assert messages_of(response) == [("warning", "None of the selected payments awaits Khalti.")]
    assert len(expect_khalti.calls) == 0


def test_recheck_when_khalti_is_down_reports_it_and_leaves_the_payment_pending(
    support_client, expect_khalti, sent, django_capture_on_commit_callbacks
):
    payment = pending_payment(1)
    mock_status(expect_khalti, payment, {"detail": "Internal server error"}, status=500)
    with django_capture_on_commit_callbacks(execute=True):
        response = run_action(support_client, "recheck", [payment])
    assert messages_of(response) == [
        ("error", "Khalti could not be reached; the payments not re-checked stay pending.")
    ]
    row = fresh(payment)
    assert row.status == Payment.Status.PENDING
    assert row.claimed_at is None
    assert sent == []


def test_recheck_settles_a_refund_whose_outcome_was_unknown(
    support_client, expect_khalti, sent, django_capture_on_commit_callbacks
):
    payment = verified_payment(amount=1000)
    refund = Refund.objects.create(
        payment=payment,
        amount=1000,
        claim=payment.pk,
        failure_reason="Khalti did not answer in time.",
    )
    stale = timezone.now() - timedelta(seconds=khalti_settings.stale_after + 60)
    Refund.objects.filter(pk=refund.pk).update(created_at=stale)
    mock_status(
        expect_khalti,
        payment,
        {"status": True, "state": "Refunded", "detail": "Transaction is refunded"},
    )

    with django_capture_on_commit_callbacks(execute=True):
        response = run_action(support_client, "recheck", [payment])

    assert messages_of(response) == [("success", "Re-checked 1 with Khalti: 1 refund succeeded.")]
    refund.refresh_from_db()
    assert refund.status == Refund.Status.SUCCEEDED
    assert refund.settled_at is not None
    row = fresh(payment)
    assert row.status == Payment.Status.REFUNDED
    assert row.refunded_amount == 1000
    assert [(name, kw["payment"].pk, kw["amount"]) for name, kw in sent] == [
        ("refunded", payment.pk, 1000)
    ]


def test_recheck_leaves_a_refund_that_may_still_be_in_flight(support_client, expect_khalti):
    payment = verified_payment(amount=1000)
    refund = Refund.objects.create(payment=payment, amount=1000, claim=payment.pk)
    run_action(support_client, "recheck", [payment])
    assert len(expect_khalti.calls) == 0
    refund.refresh_from_db()
    assert refund.status == Refund.Status.PENDING
    assert fresh(payment).status == Payment.Status.VERIFIED


@pytest.mark.parametrize("selected", [RECHECK_LIMIT, RECHECK_LIMIT + 5])
def test_one_recheck_asks_khalti_about_at_most_20_pending_payments(
    support_client, expect_khalti, selected
):
    # Each call may take up to TIMEOUT: a click must not hold the request for minutes.
    assert RECHECK_LIMIT == 20
    chosen = [pending_payment(n) for n in range(selected)]
    expect_khalti.expect("status", json=fixture("status_initiated"), times=20)  # 20 calls, no more
    response = run_action(support_client, "recheck", chosen)

    assert len(expect_khalti.calls) == 20
    asked = {c.params["token"] for c in expect_khalti.calls}
    assert len(asked) == 20  # each one once
    expected = [("success", "Re-checked 20 with Khalti: 20 pending.")]
    if selected > RECHECK_LIMIT:
        expected.insert(
            0,
            (
                "warning",
                "Only the first 20 pending payments were re-checked; "
                "run khalti_reconcile for more.",
            ),
        )
    assert messages_of(response) == expected
    # The ones left over were not even claimed: the next click or khalti_reconcile takes them.
    untouched = {p.token for p in Payment.objects.filter(attempts=0)}
    assert untouched == {p.token for p in chosen} - asked
    assert len(untouched) == selected - 20
    assert all(
        (p.status, p.claimed_at) == (Payment.Status.PENDING, None)
        for p in Payment.objects.filter(pk__in=[p.pk for p in chosen])
    )


def test_recheck_stops_at_the_first_payment_khalti_does_not_answer(
    support_client, expect_khalti, sent, django_capture_on_commit_callbacks
):
    chosen = [pending_payment(n) for n in range(3)]
    # A refund of unknown outcome in the selection is not asked about either.
    refunded = verified_payment(amount=1000)
    refund = unknown_refund(refunded, stale=True)
    expect_khalti.expect(
        "status", status=500, json={"detail": "Internal server error"}
    )  # whichever first
    with django_capture_on_commit_callbacks(execute=True):
        response = run_action(support_client, "recheck", [*chosen, refunded])

    # The others would only wait for Khalti's timeout too.
    assert len(expect_khalti.calls) == 1
    assert messages_of(response) == [
        ("error", "Khalti could not be reached; the payments not re-checked stay pending.")
    ]
    for payment in chosen:
        row = fresh(payment)
        assert (row.status, row.claimed_at) == (Payment.Status.PENDING, None)
    refund.refresh_from_db()
    assert refund.status == Refund.Status.PENDING
    assert fresh(refunded).status == Payment.Status.VERIFIED
    assert sent == []


def test_recheck_reports_what_it_settled_before_khalti_stopped_answering(
    support_client, expect_khalti, sent, django_capture_on_commit_callbacks
):
    chosen = [pending_payment(n) for n in range(3)]
    # Whichever payment is asked first is complete; Khalti fails on the next one.
    expect_khalti.expect("status", status=200, json=fixture("status_complete"))
    expect_khalti.expect(
        "transaction",
        # The token is no transaction's idx; the idx its page reported is Khalti's record.
        callback=lambda request: (
            (404, {"detail": "Not found."})
            if request.params["idx"].startswith("tok-")
            else (200, transaction_record(idx=request.params["idx"]))
        ),
        times=2,
    )
    expect_khalti.expect("status", status=500, json={"detail": "Internal server error"})
    with django_capture_on_commit_callbacks(execute=True):
        response = run_action(support_client, "recheck", chosen)

    assert len(expect_khalti.calls) == 4
    assert messages_of(response) == [
        ("success", "Re-checked 1 with Khalti: 1 verified."),
        ("error", "Khalti could not be reached; the payments not re-checked stay pending."),
    ]
    statuses = sorted(fresh(p).status for p in chosen)
    assert statuses == [Payment.Status.PENDING, Payment.Status.PENDING, Payment.Status.VERIFIED]
    assert all(fresh(p).claimed_at is None for p in chosen)
    assert [name for name, _ in sent] == ["verified"]


def test_a_payment_left_pending_by_a_timed_out_verify_is_settled_and_refunded_from_the_admin(
    refunder_client, expect_khalti, sent, django_capture_on_commit_callbacks
):
    # What issue 3 calls done: re-check settles it with exactly one payment_verified,
    # then a staff member with the permission refunds it.
    order = Order.objects.create(reference="ORD-1", total=1000)
    payment = Payment.objects.create(
        token="tok-timed-out",
        product_identity="ORD-1",
        amount=1000,
        order_claim=order_key("ORD-1"),
        attempts=1,
    )
    mock_status(
        expect_khalti,
        payment,
        {
            "status": True,
            "state": "Complete",
            "detail": "Transaction is complete",
            "idx": "idx-late",
        },
    )
    expect_khalti.not_a_transaction(payment.token)
    expect_khalti.transaction("idx-late", json=transaction_record(amount=1000, idx="idx-late"))
    with django_capture_on_commit_callbacks(execute=True):
        run_action(refunder_client, "recheck", [payment])
        run_action(refunder_client, "recheck", [payment])  # a second look changes nothing
    row = fresh(payment)
    assert (row.status, row.idx, row.fee_amount, row.mobile) == (
        Payment.Status.VERIFIED,
        "idx-late",
        30,
        "98XXXXXXX9",
    )
    order.refresh_from_db()
    assert order.paid
    assert [name for name, _ in sent] == ["verified"]

    mock_refund(expect_khalti, "idx-late", {})
    with django_capture_on_commit_callbacks(execute=True):
        response = confirm_refund(refunder_client, [payment])
    assert ("success", "Refunded Rs 10.00 of ORD-1.") in messages_of(response)
    assert fresh(payment).status == Payment.Status.REFUNDED
    assert [name for name, _ in sent] == ["verified", "refunded"]


# --- Action: Refund ----------------------------------------------------------------


def test_refund_is_offered_only_to_users_with_the_permission(any_client):
    choices = action_choices(any_client.get(CHANGELIST))
    assert ("refund" in choices) == any_client.user.has_perm("django_khalti.refund_payment")


def test_refund_action_first_asks_for_confirmation(refunding_client, expect_khalti):
    payment = verified_payment(amount=1000, mobile="98XXXXXXX9")
    response = run_action(refunding_client, "refund", [payment], follow=False)
    assert response.status_code == 200
    assert "admin/django_khalti/payment/refund_confirmation.html" in [
        t.name for t in response.templates
    ]
    page = response.content.decode()
    candidates = re.findall(r'<tr class="refund-candidate">(.*?)</tr>', page, re.S)
    assert len(candidates) == 1
    assert "ORD-V" in candidates[0]
    assert "idx-V" in candidates[0]
    assert {"amount", "mobile", "confirm"} <= form_control_names(response)
    label = re.search(r'<label for="id_amount"[^>]*>(.*?)</label>', page, re.S)
    assert label is not None
    assert "(Rs)" in _text(label.group(1))
    hidden = confirmation_form(response)
    assert hidden["_selected_action"] == [str(payment.pk)]
    assert hidden["refunded_before"] == ["0"]  # hidden: nothing to type in
    assert not re.search(r'<input\b(?![^>]*type="hidden")[^>]*name="refunded_before"', page)
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
    page = run_action(refunding_client, "refund", [payment], follow=False).content.decode()
    headers = [_text(h) for h in re.findall(r"<th>(.*?)</th>", page, re.S)]
    candidate = re.search(r'<tr class="refund-candidate">(.*?)</tr>', page, re.S).group(1)
    columns = [_text(td) for td in re.findall(r"<td>(.*?)</td>", candidate, re.S)]
    values = dict(zip(headers, columns, strict=False))
    assert values["Amount (Rs)"] == "10.00"
    refundable = [h for h in headers if h.startswith("Refundable")]
    assert len(refundable) == 1
    # Rs 6.00 (600 paisa) remain: a column headed "(Rs)" must not read "600".
    if "(Rs)" in refundable[0]:
        assert values[refundable[0]] == "6.00"
    else:
        assert "paisa" in refundable[0]
        assert values[refundable[0]] in ("600", "600 paisa")
    assert "Total refundable: Rs 6.00" in page
    # What was refunded when the page was shown, in paisa, for the guard.
    assert confirmation_form(run_action(refunding_client, "refund", [payment], follow=False))[
        "refunded_before"
    ] == ["400"]


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
    page = response.content.decode()
    errors = re.search(r'<ul class="errorlist[^"]*"[^>]*>(.*?)</ul>', page, re.S)
    assert errors is not None
    # The page is shown again, ready for a corrected amount.
    assert 'name="confirm"' in page
    assert confirmation_form(response)["refunded_before"] == ["0"]
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


def nonfield_errors(response):
    """The texts of the form's errors that belong to no field."""
    assert response.status_code == 200
    page = response.content.decode()
    return [
        _text(item)
        for block in re.findall(r'<ul class="errorlist nonfield"[^>]*>(.*?)</ul>', page, re.S)
        for item in re.findall(r"<li>(.*?)</li>", block, re.S)
    ]


def test_submitting_the_same_confirmation_page_twice_refunds_once(
    refunding_client, expect_khalti, sent, django_capture_on_commit_callbacks
):
    payment = verified_payment(amount=1000)
    mock_refund(expect_khalti, "idx-V", {"amount": 400})
    page = refund_confirmation(refunding_client, [payment])
    assert page["refunded_before"] == ["0"]
    with django_capture_on_commit_callbacks(execute=True):
        first = submit_refund(refunding_client, page, amount="4")
        # A double click, or the browser's back button and "Yes, refund" again.
        second = submit_refund(refunding_client, page, amount="4", follow=False)

    assert messages_of(first) == [("success", "Refunded Rs 4.00 of ORD-V.")]
    assert nonfield_errors(second) == ["These payments were refunded meanwhile: review them again."]
    assert messages_of(second) == []
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
    assert nonfield_errors(refused) == [
        "These payments were refunded meanwhile: review them again."
    ]
    assert len(expect_khalti.calls) == 1
    assert fresh(payment).refunded_amount == 400

    # Choosing the action again shows what was refunded since, and goes through.
    mock_refund(expect_khalti, "idx-V", {"amount": 600})
    with django_capture_on_commit_callbacks(execute=True):
        page = refund_confirmation(refunding_client, [payment])
        assert page["refunded_before"] == ["400"]
        response = submit_refund(refunding_client, page, amount="6")
    assert messages_of(response) == [("success", "Refunded Rs 6.00 of ORD-V.")]
    row = fresh(payment)
    assert (row.status, row.refunded_amount) == (Payment.Status.REFUNDED, 1000)
    assert [(name, kw["amount"]) for name, kw in sent] == [("refunded", 400), ("refunded", 600)]


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
    assert nonfield_errors(again) == ["These payments were refunded meanwhile: review them again."]
    assert len(expect_khalti.calls) == 2
    assert Refund.objects.count() == 2


def test_a_confirmation_without_the_guard_refunds_nothing(refunding_client, expect_khalti):
    payment = verified_payment(amount=1000)
    page = refund_confirmation(refunding_client, [payment])
    del page["refunded_before"]  # a page from before the guard, or a hand-made post
    response = submit_refund(refunding_client, page, follow=False)
    assert response.status_code == 200
    assert 'name="confirm"' in response.content.decode()  # shown again
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
    assert len(re.findall(r'<tr class="refund-candidate">', page.content.decode())) == 2
    data = {**confirmation_form(page), "amount": "4", "mobile": "", "confirm": "Yes, refund"}
    response = refunding_client.post(CHANGELIST, data)
    assert response.status_code == 200
    assert "A partial amount refunds one payment at a time." in response.content.decode()
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


def test_staff_without_the_permission_cannot_refund(
    non_refunding_client, expect_khalti, sent, django_capture_on_commit_callbacks
):
    payment = verified_payment(amount=1000)
    assert "refund" not in action_choices(non_refunding_client.get(CHANGELIST))
    with django_capture_on_commit_callbacks(execute=True):
        # Neither the confirmation page...
        asked = run_action(non_refunding_client, "refund", [payment], follow=False)
        # ...nor a forged confirmation refunds anything.
        forged = run_action(
            non_refunding_client,
            "refund",
            [payment],
            follow=False,
            amount="",
            mobile="",
            confirm="Yes, refund",
        )
    for response in (asked, forged):
        # 302 back with "No action selected."; the plain changelist (200) for a
        # user who has no action at all.
        assert response.status_code in (200, 302, 403)
        assert 'name="confirm"' not in response.content.decode()
    if action_choices(non_refunding_client.get(CHANGELIST)):
        followed = run_action(non_refunding_client, "refund", [payment], confirm="Yes, refund")
        assert ("warning", "No action selected.") in messages_of(followed)
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


def test_view_only_staff_may_not_recheck(viewer_client, payments, expect_khalti):
    assert "recheck" not in action_choices(viewer_client.get(CHANGELIST))
    viewer_client.post(CHANGELIST, {"action": "recheck", "_selected_action": [payments.pending.pk]})
    assert not expect_khalti.calls
    assert fresh(payments.pending).status == Payment.Status.PENDING


# --- Action: Resolve an unknown refund by hand ---------------------------------------


def radio_values(response, name):
    page = response.content.decode()
    return [
        re.search(r'value="([^"]*)"', tag).group(1)
        for tag in re.findall(r'<input\b[^>]*type="radio"[^>]*>', page)
        if f'name="{name}"' in tag
    ]


def test_resolve_refund_is_offered_only_to_users_with_the_refund_permission(any_client):
    response = any_client.get(CHANGELIST)
    allowed = any_client.user.has_perm("django_khalti.refund_payment")
    assert ("resolve_refund" in action_choices(response)) == allowed
    assert ("Resolve an unknown refund by hand" in response.content.decode()) == allowed


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
    assert "admin/django_khalti/payment/resolve_refund.html" in [t.name for t in response.templates]
    page = response.content.decode()
    listed = re.findall(r'<tr class="unknown-refund">(.*?)</tr>', page, re.S)
    assert len(listed) == 1  # only the refund whose outcome is unknown
    assert "ORD-A" in listed[0]
    assert "idx-A" in listed[0]
    assert "Rs 4.00" in _text(listed[0])
    assert {"outcome", "note", "confirm"} <= form_control_names(response)
    assert sorted(radio_values(response, "outcome")) == ["failed", "succeeded"]
    hidden = confirmation_form(response)
    assert hidden["action"] == ["resolve_refund"]
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
    assert 'name="outcome"' not in response.content.decode()


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

    # The payment is free for a new refund.
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
    page = run_action(refunding_client, "resolve_refund", [payment], follow=False)
    data = {**confirmation_form(page), "note": "", "confirm": "Record it"}
    response = refunding_client.post(CHANGELIST, data)
    assert response.status_code == 200
    assert 'class="errorlist' in response.content.decode()
    refund.refresh_from_db()
    assert refund.status == Refund.Status.PENDING
    assert fresh(payment).status == Payment.Status.VERIFIED
    assert sent == []


def test_staff_without_the_permission_cannot_resolve_a_refund(
    non_refunding_client, expect_khalti, sent, django_capture_on_commit_callbacks
):
    payment = verified_payment(amount=1000)
    refund = unknown_refund(payment, stale=True)
    assert "resolve_refund" not in action_choices(non_refunding_client.get(CHANGELIST))
    with django_capture_on_commit_callbacks(execute=True):
        asked = run_action(non_refunding_client, "resolve_refund", [payment], follow=False)
        forged = run_action(
            non_refunding_client,
            "resolve_refund",
            [payment],
            follow=False,
            outcome="succeeded",
            note="",
            confirm="Record it",
        )
    for response in (asked, forged):
        assert response.status_code in (200, 302, 403)
        assert 'name="outcome"' not in response.content.decode()
    if action_choices(non_refunding_client.get(CHANGELIST)):
        followed = run_action(
            non_refunding_client,
            "resolve_refund",
            [payment],
            outcome="succeeded",
            confirm="Record it",
        )
        assert ("warning", "No action selected.") in messages_of(followed)
    assert len(expect_khalti.calls) == 0
    refund.refresh_from_db()
    assert refund.status == Refund.Status.PENDING
    row = fresh(payment)
    assert (row.status, row.refunded_amount) == (Payment.Status.VERIFIED, 0)
    assert sent == []


# --- ATOMIC_REQUESTS -----------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_actions_work_in_a_project_with_atomic_requests(
    refunder_client, expect_khalti, sent, monkeypatch
):
    # The actions claim payments in durable transactions before calling Khalti: they
    # must not run inside the request's transaction.
    monkeypatch.setitem(connection.settings_dict, "ATOMIC_REQUESTS", True)
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


def test_a_refused_page_shows_what_stands_now_and_can_be_confirmed_anew(
    refunding_client, expect_khalti, sent, django_capture_on_commit_callbacks
):
    payment = verified_payment(amount=1000)
    stale_page = refund_confirmation(refunding_client, [payment])
    mock_refund(expect_khalti, "idx-V", {"amount": 400})
    with django_capture_on_commit_callbacks(execute=True):
        confirm_refund(refunding_client, [payment], amount="4")
        refused = submit_refund(refunding_client, stale_page, amount="6", follow=False)
    assert nonfield_errors(refused) == [
        "These payments were refunded meanwhile: review them again."
    ]
    reshown = confirmation_form(refused)
    assert reshown["refunded_before"] == ["400"]
    mock_refund(expect_khalti, "idx-V", {"amount": 600})
    with django_capture_on_commit_callbacks(execute=True):
        response = submit_refund(refunding_client, reshown, amount="6")
    assert messages_of(response) == [("success", "Refunded Rs 6.00 of ORD-V.")]
    assert fresh(payment).refunded_amount == 1000
