"""What the admin's tests share: the users (a superuser and staff members with and
without the refund permission), the payments, and readers of the admin's pages that
take what a page shows from its context (``response.context``), not from its HTML.
"""

import html
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.contrib.admin.templatetags.admin_list import date_hierarchy, result_headers
from django.contrib.admin.utils import display_for_field, display_for_value, lookup_field
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django.utils.html import strip_tags
from django.utils.text import capfirst
from pytest_django.asserts import assertContains

from django_khalti.conf import khalti_settings
from django_khalti.exceptions import KhaltiRefundUnknown
from django_khalti.models import Payment, Refund, order_key
from django_khalti.signals import payment_failed, payment_refunded, payment_verified

CHANGELIST = reverse("admin:django_khalti_payment_changelist")
ADD = reverse("admin:django_khalti_payment_add")
#: The confirmation pages' own URLs (the actions show the same pages in place).
REFUND_PAGE = reverse("admin:django_khalti_payment_refund")
RESOLVE_PAGE = reverse("admin:django_khalti_payment_resolve_refund")
REFUND_TEMPLATE = "admin/django_khalti/payment/refund_confirmation.html"
RESOLVE_TEMPLATE = "admin/django_khalti/payment/resolve_refund.html"
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
    "last_asked_at",
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
    "last_asked_at",
    "attempts",
]
STATUSES = ["pending", "verified", "failed", "refunded", "partially_refunded"]


def change_url(payment):
    return reverse("admin:django_khalti_payment_change", args=[payment.pk])


def delete_url(payment):
    return reverse("admin:django_khalti_payment_delete", args=[payment.pk])


# --- Reading pages, from their context -----------------------------------------------


def text(value):
    """What a person reads of a value the admin renders as HTML."""
    return html.unescape(strip_tags(str(value))).strip()


def cells(response):
    """The changelist's rows as a list of {column: what its cell renders}, top to bottom:
    the admin's own lookup and display of each ``list_display`` column."""
    assert response.status_code == 200
    cl = response.context["cl"]
    empty = cl.model_admin.get_empty_value_display()

    def cell(payment, name):
        field, attr, value = lookup_field(name, payment, cl.model_admin)
        if field is None:
            return display_for_value(value, empty, getattr(attr, "boolean", False))
        return display_for_field(value, field, empty)

    columns = [name for name in cl.list_display if name != "action_checkbox"]
    return [{name: cell(payment, name) for name in columns} for payment in cl.result_list]


def rows(response):
    """The changelist's rows as a list of {column: text}, top to bottom."""
    return [{name: text(value) for name, value in row.items()} for row in cells(response)]


def shown(response):
    """The order references listed, in order."""
    assert response.status_code == 200
    return [payment.order_reference for payment in response.context["cl"].result_list]


def headers(response):
    """The changelist's column headers, left to right, as the page capitalises them (the
    checkbox's left out)."""
    cl = response.context["cl"]
    return [
        capfirst(text(header["text"]))
        for name, header in zip(cl.list_display, result_headers(cl), strict=True)
        if name != "action_checkbox"
    ]


def readonly_fields(admin_form):
    """{field: rendered value} of the read-only fields of an admin form (a page's, or an
    inline row's)."""
    return {
        field.field["name"]: field.contents()
        for fieldset in admin_form
        for line in fieldset
        for field in line
        if field.is_readonly
    }


def readonly_html(response):
    """{field: rendered value} of the read-only fields on a change page."""
    assert response.status_code == 200
    return readonly_fields(response.context["adminform"])


def readonly_values(response):
    """{field: displayed text} of the read-only fields on a change page."""
    return {name: text(value) for name, value in readonly_html(response).items()}


def inline(response, model):
    """The change page's inline of ``model``; None if the page shows none."""
    found = [i for i in response.context["inline_admin_formsets"] if i.formset.model is model]
    return found[0] if found else None


def action_choices(response):
    """{action: label} offered in the changelist's action dropdown."""
    assert response.status_code == 200
    form = response.context["action_form"]
    if form is None:  # no action this user may take
        return {}
    return {value: str(label) for value, label in form.fields["action"].choices if value}


def filter_link(response, title, label):
    """The query string of the filter ``label`` in the sidebar block ``title``."""
    cl = response.context["cl"]
    [spec] = [spec for spec in cl.filter_specs if spec.title == title]
    [link] = [c["query_string"] for c in spec.choices(cl) if str(c["display"]) == label]
    return link


def hierarchy_links(response):
    """{label: query string} of the date_hierarchy navigation."""
    choices = date_hierarchy(response.context["cl"])["choices"]
    return {str(choice["title"]): choice["link"] for choice in choices}


def messages_of(response):
    """The messages the admin shows after an action, as (level, text)."""
    return [(m.level_tag, str(m)) for m in get_messages(response.wsgi_request)]


def template_names(response):
    return [t.name for t in response.templates]


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
def payments(db):
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
    fields.setdefault("idx", f"idx-{n}")
    return Payment.objects.create(
        token=f"tok-{n}",
        product_identity=f"ORD-{n}",
        amount=amount,
        order_claim=order_key(f"ORD-{n}"),
        verified_at=timezone.now(),
        **fields,
    )


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


def fresh(payment):
    return Payment.objects.get(pk=payment.pk)


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


def confirmation_form(response, action):
    """What the browser posts back of an action's confirmation page: the action, the
    selection and the form's hidden fields (checked to be on the page as such)."""
    assert response.status_code == 200
    context = response.context
    data = {"action": [action], "_selected_action": [str(p.pk) for p in context["payments"]]}
    for name, values in data.items():
        for value in values:
            assertContains(
                response, f'<input type="hidden" name="{name}" value="{value}">', html=True
            )
    for field in context["form"].hidden_fields():
        value = field.value()
        data[field.html_name] = [] if value in (None, "") else [str(value)]
    return data


def refund_confirmation(client, payments):
    """Choose "Refund" for ``payments``: the confirmation page's hidden fields, as the
    browser would post them (the selection, and what was refunded when it was shown)."""
    data = confirmation_form(run_action(client, "refund", payments, follow=False), "refund")
    assert sorted(data["_selected_action"]) == sorted(str(p.pk) for p in payments)
    assert len(data["shown"]) == 1
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


def resolve_confirmation(client, payments):
    """Choose "Resolve an unknown refund by hand" for ``payments``: the page's hidden fields."""
    page = run_action(client, "resolve_refund", payments, follow=False)
    return confirmation_form(page, "resolve_refund")


def confirm_resolve(client, payments, outcome, note=""):
    """Choose "Resolve an unknown refund by hand" for ``payments``, then record ``outcome``."""
    data = resolve_confirmation(client, payments)
    data.update(outcome=outcome, note=note, confirm="Record it")
    return client.post(CHANGELIST, data, follow=True)


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
