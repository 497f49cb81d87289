"""A payment's page offers the changelist's actions that apply to it as buttons: Re-check
with Khalti, Refund with Khalti…, Resolve an unknown refund by hand… Each posts the
changelist's own action for this one payment (the same confirmation page, the same
service), only for users with its permission, then comes back to the payment's page."""

from html.parser import HTMLParser

import pytest
from django.urls import resolve, reverse

from django_khalti.models import Payment, Refund

from .conftest import (
    REFUND_TEMPLATE,
    RESOLVE_TEMPLATE,
    change_url,
    confirmation_form,
    fresh,
    messages_of,
    mock_refund,
    pending_payment,
    template_names,
    unknown_refund,
    verified_payment,
)

pytestmark = pytest.mark.django_db


class _Buttons(HTMLParser):
    """The page's buttons: {label: (where its form posts, the form's fields)}."""

    def __init__(self):
        super().__init__()
        self.found, self.form = {}, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form" and "khalti-page-action" in attrs.get("class", ""):
            self.form = (attrs["action"], {}, [])
        elif self.form and tag == "input":
            self.form[1].setdefault(attrs["name"], []).append(attrs["value"])
        elif self.form and tag == "button":
            self.form[2].append("")

    def handle_data(self, data):
        if self.form and self.form[2]:
            self.form[2][-1] += data

    def handle_endtag(self, tag):
        if tag == "form" and self.form:
            url, fields, labels = self.form
            self.found[labels[0].strip()] = (url, fields)
            self.form = None


def buttons(response):
    """The payment page's buttons, as {label: (url, fields)}."""
    assert response.status_code == 200
    parser = _Buttons()
    parser.feed(response.content.decode())
    return parser.found


def press(client, page, label, follow=True, **more):
    """Press the button ``label`` of ``page`` as the browser does: post its form."""
    url, fields = buttons(page)[label]
    return client.post(url, {**fields, **more}, follow=follow)


def test_a_pending_payment_offers_a_recheck_that_settles_it_and_comes_back(
    support_client, expect_khalti, sent, django_capture_on_commit_callbacks
):
    payment = pending_payment(1)
    page = support_client.get(change_url(payment))
    assert list(buttons(page)) == ["Re-check with Khalti"]  # nothing to refund yet

    expect_khalti.complete(payment.token, payment.amount)
    with django_capture_on_commit_callbacks(execute=True):
        response = press(support_client, page, "Re-check with Khalti")
    assert response.redirect_chain == [(change_url(payment), 302)]
    assert messages_of(response) == [("success", "Re-checked 1 with Khalti: 1 verified.")]
    assert fresh(payment).status == Payment.Status.VERIFIED
    assert [(name, kw["payment"].pk) for name, kw in sent] == [("verified", payment.pk)]
    # Verified now: nothing left to re-check on its page.
    assert "Re-check with Khalti" not in buttons(response)


def test_the_recheck_button_acts_only_on_its_own_payment(support_client, expect_khalti):
    payment, other = pending_payment(1), pending_payment(2)
    page = support_client.get(change_url(payment))
    expect_khalti.status(payment.token, payment.amount, "status_initiated")
    # A forged selection naming another payment too: only the page's payment is asked.
    response = press(
        support_client, page, "Re-check with Khalti", _selected_action=[payment.pk, other.pk]
    )
    assert messages_of(response) == [("success", "Re-checked 1 with Khalti: 1 pending.")]
    assert [c.params["token"] for c in expect_khalti.calls] == [payment.token]


def test_a_verified_payment_offers_the_refund_page_of_the_changelist(
    refunding_client, expect_khalti, sent, django_capture_on_commit_callbacks
):
    payment = verified_payment(amount=1000)
    page = refunding_client.get(change_url(payment))
    assert list(buttons(page)) == ["Refund with Khalti…"]

    confirmation = press(refunding_client, page, "Refund with Khalti…", follow=False)
    # The changelist's confirmation page, about this payment only.
    assert REFUND_TEMPLATE in template_names(confirmation)
    assert confirmation.context["payments"] == [payment]
    assert not expect_khalti.calls  # nothing moves before the person confirms

    # Its form posts back where it was shown, as on the changelist.
    url, _fields = buttons(page)["Refund with Khalti…"]
    form = {
        **confirmation_form(confirmation, "refund"),
        "amount": "4",
        "mobile": "",
        "confirm": "Yes, refund",
    }
    mock_refund(expect_khalti, "idx-V", {"amount": 400})
    with django_capture_on_commit_callbacks(execute=True):
        response = refunding_client.post(url, form, follow=True)
    assert response.redirect_chain == [(change_url(payment), 302)]
    assert messages_of(response) == [("success", "Refunded Rs 4.00 of ORD-V.")]
    row = fresh(payment)
    assert (row.status, row.refunded_amount) == (Payment.Status.PARTIALLY_REFUNDED, 400)
    assert [(name, kw["amount"]) for name, kw in sent] == [("refunded", 400)]

    # The same page submitted again refunds nothing: the changelist's own guard.
    response = refunding_client.post(url, form, follow=True)
    assert fresh(payment).refunded_amount == 400
    assert "ORD-V changed since the page was shown" in response.content.decode()


def test_a_refund_of_unknown_outcome_offers_recheck_and_resolve(refunding_client, expect_khalti):
    payment = verified_payment(amount=1000)
    refund = unknown_refund(payment, stale=True)
    page = refunding_client.get(change_url(payment))
    assert list(buttons(page)) == [
        "Re-check with Khalti",
        "Refund with Khalti…",
        "Resolve an unknown refund by hand…",
    ]
    confirmation = press(refunding_client, page, "Resolve an unknown refund by hand…", follow=False)
    assert RESOLVE_TEMPLATE in template_names(confirmation)
    assert confirmation.context["refunds"] == [refund]

    url, _fields = buttons(page)["Resolve an unknown refund by hand…"]
    response = refunding_client.post(
        url,
        {
            **confirmation_form(confirmation, "resolve_refund"),
            "outcome": "failed",
            "note": "Not in Khalti's dashboard.",
            "confirm": "Record it",
        },
        follow=True,
    )
    assert response.redirect_chain == [(change_url(payment), 302)]
    assert messages_of(response) == [("success", "Resolved 1 refund.")]
    refund.refresh_from_db()
    assert refund.status == Refund.Status.FAILED
    assert not expect_khalti.calls


@pytest.mark.parametrize(
    ("status", "offered"),
    [
        ("pending", ["Re-check with Khalti"]),
        ("verified", ["Refund with Khalti…"]),
        ("partially_refunded", ["Refund with Khalti…"]),
        ("refunded", []),
        ("failed", ["Re-check with Khalti"]),  # read-only: did Khalti complete it after all?
    ],
)
def test_each_button_only_where_it_applies(superuser_client, payments, status, offered):
    assert list(buttons(superuser_client.get(change_url(getattr(payments, status))))) == offered


def test_each_button_only_for_users_with_its_permission(any_client, payments):
    user = any_client.user
    recheck = user.has_perm("django_khalti.change_payment")
    refund = user.has_perm("django_khalti.refund_payment")
    assert ("Re-check with Khalti" in buttons(any_client.get(change_url(payments.pending)))) == (
        recheck
    )
    assert ("Refund with Khalti…" in buttons(any_client.get(change_url(payments.verified)))) == (
        refund
    )


def test_a_post_without_the_permission_is_refused(
    non_refunding_client, superuser_client, expect_khalti
):
    payment = verified_payment(amount=1000)
    url, fields = buttons(superuser_client.get(change_url(payment)))["Refund with Khalti…"]
    forged = {**fields, "refunded_before": "0", "amount": "", "mobile": "", "confirm": "Yes"}
    assert non_refunding_client.post(url, forged).status_code == 403
    # Only the changelist's actions a page offers: not a delete, not an unknown one.
    for action in ["delete_selected", "nope"]:
        assert non_refunding_client.post(url, {**fields, "action": action}).status_code == 403
    assert not Refund.objects.exists()
    assert Payment.objects.filter(pk=payment.pk, status=Payment.Status.VERIFIED).exists()
    assert not expect_khalti.calls


def test_a_viewer_cannot_recheck(viewer_client, superuser_client, expect_khalti):
    payment = pending_payment(1)
    url, fields = buttons(superuser_client.get(change_url(payment)))["Re-check with Khalti"]
    assert viewer_client.post(url, fields).status_code == 403
    assert fresh(payment).attempts == 0
    assert not expect_khalti.calls


def test_the_buttons_url_is_exempt_from_atomic_requests(payments):
    # The buttons post the actions that claim payments in durable transactions before
    # calling Khalti, as the changelist does (BaseHandler.make_view_atomic reads this).
    url = reverse("admin:django_khalti_payment_page_action", args=[payments.pending.pk])
    assert getattr(resolve(url).func, "_non_atomic_requests", None) == {"default"}
