"""Issue 14, the ePayment's side doors: starting a payment is a POST with CSRF and
throttled; an open link never blocks another way to pay, and no widget token is
dropped; the return URL is built on ``WEBSITE_URL``, never on the Host header; an
open link goes back only to the buyer who started it; an order the resolver hides
is 404 whatever its payments; every message tells the truth about the stored row.

Khalti is the shipped kit's fake (``django_khalti.testing``).
"""

from __future__ import annotations

import io
import re
from datetime import timedelta

import pytest
import requests
import responses
from django.contrib.auth import get_user_model
from django.core import checks
from django.core.cache import cache
from django.core.management import call_command
from django.test import Client, override_settings
from django.urls import reverse
from django.utils import timezone

from django_khalti.models import Payment, order_key
from shop.models import Order

pytestmark = pytest.mark.django_db

Status = Payment.Status
VERIFY_URL = reverse("django_khalti:verify")
INITIATE_URL = reverse("django_khalti:epayment-initiate")


def start_url(reference="ORD-A"):
    return reverse("django_khalti:epayment-start", args=[reference])


@pytest.fixture
def orders(db):
    return {ref: Order.objects.create(reference=ref, total=1000) for ref in ("ORD-A", "ORD-B")}


def khalti_settings(**changes):
    from django.conf import settings

    config = {**settings.KHALTI, **changes}
    return override_settings(KHALTI={k: v for k, v in config.items() if v is not None})


def post(client, payload):
    return client.post(VERIFY_URL, payload, content_type="application/json")


def open_link(client, khalti, reference="ORD-A"):
    """The buyer of ``client`` starts an ePayment and leaves its link open."""
    response = client.post(start_url(reference))
    assert response.status_code == 302, response.content
    epayment = khalti.last_epayment
    return epayment, Payment.objects.get(pidx=epayment.pidx)


# --- 1. starting a payment is a POST with CSRF, throttled ----------------------------------


def test_a_get_of_the_start_url_starts_nothing(client, khalti, orders):
    # What an <img src> on another site does, with the victim's cookies.
    for _ in range(3):
        assert client.get(start_url()).status_code == 200
    assert not Payment.objects.exists()
    assert not khalti.initiate_calls
    # ... and the order is free for the buyer's own widget payment.
    paid = khalti.add_payment(amount=1000)
    assert post(client, paid.payload("ORD-A")).status_code == 200


def test_a_post_without_the_csrf_token_starts_nothing():
    browser = Client(enforce_csrf_checks=True)
    Order.objects.create(reference="ORD-A", total=1000)
    assert browser.post(start_url()).status_code == 403
    assert not Payment.objects.exists()


def test_a_post_without_the_csrf_token_starts_nothing_even_without_the_middleware(settings):
    settings.MIDDLEWARE = [
        m for m in settings.MIDDLEWARE if m != "django.middleware.csrf.CsrfViewMiddleware"
    ]
    Order.objects.create(reference="ORD-A", total=1000)
    assert Client(enforce_csrf_checks=True).post(start_url()).status_code == 403
    assert not Payment.objects.exists()


def test_the_pay_button_posts_with_the_csrf_token(khalti, orders):
    browser = Client(enforce_csrf_checks=True)
    page = browser.get(start_url())
    token = page.cookies["csrftoken"].value
    response = browser.post(start_url(), {"csrfmiddlewaretoken": token})
    assert response.status_code == 302
    assert response["Location"] == khalti.last_epayment.payment_url


def test_starting_is_throttled_like_the_api(client, khalti, orders, settings):
    cache.clear()
    settings.REST_FRAMEWORK = {
        **getattr(settings, "REST_FRAMEWORK", {}),
        "DEFAULT_THROTTLE_RATES": {"khalti": "2/min"},
    }
    try:
        assert client.post(start_url("ORD-A")).status_code == 302
        assert client.post(start_url("ORD-B")).status_code == 302
        refused = client.post(start_url("ORD-A"))
        assert refused.status_code == 429
        assert int(refused["Retry-After"]) > 0
        assert len(khalti.initiate_calls) == 2
        # The API's own counter is the same one: the buyer has used it up there too.
        assert (
            client.post(
                INITIATE_URL, {"product_identity": "ORD-A", "product_name": "Dragon"}
            ).status_code
            == 429
        )
    finally:
        cache.clear()


# --- 8. an open link never blocks the widget; no widget token is dropped ---------------------


def test_an_open_link_is_superseded_by_a_widget_payment(
    client, khalti, orders, signals, django_capture_on_commit_callbacks
):
    epayment, link = open_link(client, khalti)
    paid = khalti.add_payment(amount=1000)
    with django_capture_on_commit_callbacks(execute=True):
        response = post(client, paid.payload("ORD-A"))
    assert response.status_code == 200, response.json()
    assert khalti.lookup_calls  # the link was looked up before it was set aside
    link.refresh_from_db()
    assert (link.status, link.order_claim) == (Status.FAILED, None)
    assert "Superseded" in link.failure_reason
    assert [name for name, _, _ in signals] == ["verified"]  # nothing sent for the link
    # Should the buyer pay on the superseded link after all, it needs review.
    with django_capture_on_commit_callbacks(execute=True):
        page = client.get(khalti.pay(epayment))
    link.refresh_from_db()
    assert link.status == Status.NEEDS_REVIEW
    assert "Payment being checked" in page.content.decode()
    assert [name for name, _, _ in signals] == ["verified", "needs_review"]


def test_a_widget_payment_waits_while_khalti_holds_the_link_and_its_token_is_kept(
    client, khalti, orders, django_capture_on_commit_callbacks
):
    epayment, link = open_link(client, khalti)
    khalti.pay(epayment, status="Pending")  # the buyer is paying on Khalti's page
    paid = khalti.add_payment(amount=1000)
    for _ in range(5):
        refused = post(client, paid.payload("ORD-A"))
        assert (refused.status_code, refused.json()["code"]) == (409, "in_progress")
        assert "waits" in refused.json()["detail"]
    waiting = Payment.objects.get(token=paid.token)
    assert (waiting.status, waiting.order_claim) == (Status.PENDING, None)
    assert not khalti.verify_calls
    # Khalti cancels the held link: the widget payment, resubmitted, takes the order.
    khalti.set_state(epayment.pidx, "User canceled")
    with django_capture_on_commit_callbacks(execute=True):
        assert post(client, paid.payload("ORD-A")).status_code == 200
    waiting.refresh_from_db()
    assert waiting.status == Status.VERIFIED
    link.refresh_from_db()
    assert link.status == Status.FAILED


def test_a_waiting_widget_payment_is_settled_by_reconcile_without_the_buyer(
    client, khalti, orders, signals, django_capture_on_commit_callbacks
):
    _, link = open_link(client, khalti)
    khalti.fail_next("lookup", "connection_error", times=5)  # the link cannot be asked about
    paid = khalti.add_payment(amount=1000)
    for _ in range(5):
        assert post(client, paid.payload("ORD-A")).json()["code"] == "in_progress"
    assert Payment.objects.filter(token=paid.token).count() == 1  # kept, once
    assert not khalti.verify_calls
    # The buyer closed the page. Khalti is back; reconcile finds the stored token.
    with django_capture_on_commit_callbacks(execute=True):
        call_command("khalti_reconcile", "--older-than", "0", stdout=io.StringIO())
    assert Payment.objects.get(token=paid.token).status == Status.VERIFIED
    link.refresh_from_db()
    assert link.status == Status.FAILED
    assert [name for name, _, _ in signals] == ["verified"]
    assert Order.objects.get(reference="ORD-A").paid


def test_a_waiting_widget_payment_fails_unverified_when_the_link_paid_the_order(
    client, khalti, orders, signals, django_capture_on_commit_callbacks
):
    epayment, _ = open_link(client, khalti)
    khalti.pay(epayment, status="Pending")
    paid = khalti.add_payment(amount=1000)
    assert post(client, paid.payload("ORD-A")).json()["code"] == "in_progress"
    with django_capture_on_commit_callbacks(execute=True):
        client.get(khalti.pay(epayment))  # the link completes and pays the order
        refused = post(client, paid.payload("ORD-A"))
    assert refused.status_code == 400
    assert "never verified" in refused.json()["detail"]
    waiting = Payment.objects.get(token=paid.token)
    assert waiting.status == Status.FAILED
    assert not khalti.verify_calls  # Khalti moved none of the widget's money
    assert not khalti.payments[paid.token].verified
    assert [name for name, _, _ in signals] == ["verified"]  # the link's, and nothing else


def test_a_widget_payment_behind_another_pending_widget_payment_is_kept(
    client, khalti, orders, django_capture_on_commit_callbacks
):
    first = khalti.add_payment(amount=1000, outcome="timeout")
    assert post(client, first.payload("ORD-A")).status_code == 504
    khalti.fail_next("status", "connection_error", key=first.token)
    second = khalti.add_payment(amount=1000)
    assert post(client, second.payload("ORD-A")).json()["code"] == "in_progress"
    assert Payment.objects.get(token=second.token).status == Status.PENDING
    with django_capture_on_commit_callbacks(execute=True):
        call_command("khalti_reconcile", "--older-than", "0", stdout=io.StringIO())
    statuses = dict(Payment.objects.values_list("token", "status"))
    assert statuses == {first.token: Status.VERIFIED, second.token: Status.FAILED}
    assert not khalti.payments[second.token].verified


# --- 2. the return URL is built on WEBSITE_URL, never the Host header --------------------------


@override_settings(ALLOWED_HOSTS=["*"])
def test_the_host_header_never_reaches_khaltis_return_url(client, khalti, orders):
    with khalti_settings(WEBSITE_URL="https://shop.example.com"):
        assert client.post(start_url(), headers={"host": "evil.example"}).status_code == 302
    sent = khalti.initiate_calls[-1]
    assert sent["return_url"] == "https://shop.example.com/khalti/epayment/return/"
    assert sent["website_url"] == "https://shop.example.com"


@override_settings(ALLOWED_HOSTS=["*"], DEBUG=False)
def test_without_website_url_nothing_starts_unless_debugging(client, khalti, orders, caplog):
    with khalti_settings(WEBSITE_URL=None):
        page = client.post(start_url(), headers={"host": "evil.example"})
        api = client.post(INITIATE_URL, {"product_identity": "ORD-A", "product_name": "Dragon"})
    assert page.status_code == 503
    assert (api.status_code, api.json()["code"]) == (503, "not_configured")
    assert "WEBSITE_URL" in caplog.text
    assert not Payment.objects.exists()
    assert not khalti.initiate_calls


@override_settings(DEBUG=True)
def test_while_debugging_the_requests_origin_stands_in(client, khalti, orders):
    with khalti_settings(WEBSITE_URL=None):
        assert client.post(start_url()).status_code == 302
    assert khalti.initiate_calls[-1]["return_url"] == "http://testserver/khalti/epayment/return/"


# --- an open link goes back only to the buyer who started it -----------------------------------


def test_the_same_buyer_gets_the_same_open_link(client, khalti, orders):
    first = client.post(start_url())
    again = client.post(start_url())
    assert first["Location"] == again["Location"]
    assert len(khalti.initiate_calls) == 1
    started_by = Payment.objects.get().started_by
    assert started_by
    assert client.session.session_key not in started_by  # a keyed hash


def test_another_buyer_gets_a_link_of_their_own(client, khalti, orders, signals):
    _, first = open_link(client, khalti)
    stranger = Client()
    response = stranger.post(start_url())
    assert response.status_code == 302
    assert response["Location"] == khalti.last_epayment.payment_url
    assert response["Location"] != first.payment_url
    first.refresh_from_db()
    assert first.status == Status.FAILED  # superseded: nobody had paid on it
    assert not signals


def test_a_logged_in_buyer_gets_their_link_back_from_another_browser(khalti, orders):
    user = get_user_model().objects.create_user("buyer", password="pw")
    phone, laptop = Client(), Client()
    phone.force_login(user)
    laptop.force_login(user)
    assert phone.post(start_url())["Location"] == laptop.post(start_url())["Location"]
    assert len(khalti.initiate_calls) == 1


# --- 6. an order the resolver hides is 404, whatever its payments ------------------------------


def hiding_resolver(request, product_identity):
    return None  # e.g. the order is another customer's


@pytest.mark.parametrize(
    "status", [Status.PENDING, Status.VERIFIED, Status.FAILED, Status.NEEDS_REVIEW]
)
def test_an_order_the_resolver_hides_is_404_whatever_its_payment(client, khalti, orders, status):
    paid = khalti.add_payment(amount=1000)
    live = status in (Status.PENDING, Status.VERIFIED)
    Payment.objects.create(
        token="held",
        product_identity="ORD-A",
        amount=1000,
        status=status,
        order_claim=order_key("ORD-A") if live else None,
    )
    hidden = f"{__name__}.hiding_resolver"
    with khalti_settings(AMOUNT_RESOLVER=hidden):
        answers = [
            post(client, paid.payload("ORD-A")),
            client.post(INITIATE_URL, {"product_identity": "ORD-A", "product_name": "Dragon"}),
        ]
        page = client.post(start_url())
    assert [(a.status_code, a.json()["code"]) for a in answers] == [(404, "unknown_order")] * 2
    assert page.status_code == 404
    assert not khalti.verify_calls
    assert not khalti.initiate_calls
    assert not khalti.status_calls


# --- 9. every message tells the truth about the row it leaves --------------------------------


#: What a message says of the payment, and the stored states it may then be in.
CLAIMS = {
    "is pending": {Status.PENDING},
    "was not started": {Status.FAILED},
}


def said(detail):
    return {claim for claim in CLAIMS if claim in detail}


#: What a buyer is answered when Khalti did not answer: its outcome's own status.
UNANSWERED_STATUS = {"timeout": 504, "connection_error": 503, "server_error": 502, "not_json": 502}


@pytest.mark.parametrize("outcome", list(UNANSWERED_STATUS))
@pytest.mark.parametrize("way", ["api", "page"])
def test_a_start_khalti_never_answered_says_not_started_and_the_row_is_failed(
    client, khalti, orders, outcome, way
):
    khalti.fail_next("initiate", outcome)
    if way == "api":
        response = client.post(
            INITIATE_URL, {"product_identity": "ORD-A", "product_name": "Dragon"}
        )
        detail = response.json()["detail"]
    else:
        response = client.post(start_url())
        detail = re.search(r"<main.*</main>", response.content.decode(), re.S)[0]
    assert response.status_code == UNANSWERED_STATUS[outcome]
    payment = Payment.objects.get()
    assert said(detail) == {"was not started"}, detail
    assert payment.status in CLAIMS["was not started"]
    assert "pending" not in detail


@pytest.mark.parametrize("outcome", list(UNANSWERED_STATUS))
def test_a_verify_khalti_never_answered_says_pending_and_the_row_is_pending(
    client, khalti, orders, outcome
):
    paid = khalti.add_payment(amount=1000, outcome=outcome)
    response = post(client, paid.payload("ORD-A"))
    assert response.status_code == UNANSWERED_STATUS[outcome]
    assert said(response.json()["detail"]) == {"is pending"}
    assert Payment.objects.get().status in CLAIMS["is pending"]


#: Each refusal's words, and what the row the buyer's payment left must then be.
TRUTHS = {
    "is pending": Status.PENDING,
    "waits while another payment": Status.PENDING,
    "being confirmed": Status.PENDING,
    "was not started": Status.FAILED,
    "Khalti did not confirm": Status.FAILED,
    "refused": Status.FAILED,
    "needs a check by the shop": Status.NEEDS_REVIEW,
}


def widget_timeout(client, khalti):
    paid = khalti.add_payment(amount=1000, outcome="timeout")
    return post(client, paid.payload("ORD-A")), paid.token


def widget_waiting(client, khalti):
    epayment, _ = open_link(client, khalti)
    khalti.pay(epayment, status="Pending")
    paid = khalti.add_payment(amount=1000)
    return post(client, paid.payload("ORD-A")), paid.token


def widget_refused(client, khalti):
    paid = khalti.add_payment(amount=1000, state="Failed")
    return post(client, paid.payload("ORD-A")), paid.token


def widget_other_amount(client, khalti):
    paid = khalti.add_payment(amount=1000)
    khalti.answer_next("verify", json={**paid.record(amount=2000)})
    return post(client, paid.payload("ORD-A")), paid.token


def widget_resubmitted_while_held(client, khalti):
    paid = khalti.add_payment(amount=1000, outcome="timeout")
    post(client, paid.payload("ORD-A"))
    Payment.objects.filter(token=paid.token).update(claimed_at=timezone.now())
    return post(client, paid.payload("ORD-A")), paid.token


@pytest.mark.parametrize(
    "scenario",
    [
        widget_timeout,
        widget_waiting,
        widget_refused,
        widget_other_amount,
        widget_resubmitted_while_held,
    ],
)
def test_every_refusals_words_match_the_row_it_leaves(client, khalti, orders, scenario):
    response, token = scenario(client, khalti)
    detail = response.json()["detail"]
    claims = [words for words in TRUTHS if words in detail]
    assert claims, f"no known claim in {detail!r}"
    row = Payment.objects.get(token=token)
    assert {TRUTHS[words] for words in claims} == {row.status}, (detail, row.status)


# --- the hostile review's finds (each failed before its fix) ------------------------------


# --- a holder refunded before it was verified is taken for "already paid" ------------------


def test_waiting_widget_payment_is_not_failed_as_already_paid_when_the_link_was_refunded(
    client, khalti, orders, signals, django_capture_on_commit_callbacks
):
    """The link holding the order is Pending at Khalti, so the buyer's widget token is
    stored waiting. Khalti then reports the link Refunded (never verified by us):
    _refunded_before_verified frees the order (order_claim NULL, status REFUNDED). But
    _free_order checks ``holder.status in PAID_STATUSES`` and REFUNDED is one of them,
    so _take_order fails the waiting payment "Another payment paid this order first":
    the order is unpaid, the buyer's confirmed widget token is never verified, and
    every resubmission is answered from that failed record.
    """
    epayment, link = open_link(client, khalti)
    khalti.pay(epayment, status="Pending")
    paid = khalti.add_payment(amount=1000)
    assert post(client, paid.payload("ORD-A")).json()["code"] == "in_progress"
    khalti.set_state(epayment.pidx, "Refunded")  # Khalti gave the link's money back
    with django_capture_on_commit_callbacks(execute=True):
        response = post(client, paid.payload("ORD-A"))
    link.refresh_from_db()
    assert (link.status, link.order_claim) == (Status.REFUNDED, None)  # order let go
    waiting = Payment.objects.get(token=paid.token)
    assert "paid this order first" not in waiting.failure_reason, waiting.failure_reason
    assert waiting.status == Status.VERIFIED
    assert response.status_code == 200, response.json()
    assert Order.objects.get(reference="ORD-A").paid


def test_new_widget_payment_is_not_refused_already_paid_when_the_holder_was_refunded(
    client, khalti, orders, django_capture_on_commit_callbacks
):
    """Same root cause on the first submission (_claim_order -> _free_order): the holder
    link, looked up, is Refunded and lets go of the order, yet the buyer is told
    ``409 already_paid`` and the token is not stored anywhere (no waiting row), while
    the order is unpaid and the buyer's widget money sits confirmed at Khalti.
    """
    epayment, link = open_link(client, khalti)
    khalti.pay(epayment, status="Pending")
    khalti.set_state(epayment.pidx, "Refunded")
    paid = khalti.add_payment(amount=1000)
    with django_capture_on_commit_callbacks(execute=True):
        response = post(client, paid.payload("ORD-A"))
    link.refresh_from_db()
    assert (link.status, link.order_claim) == (Status.REFUNDED, None)  # the order is free
    assert response.status_code == 200, response.json()
    assert Payment.objects.get(token=paid.token).status == Status.VERIFIED
    assert Order.objects.get(reference="ORD-A").paid


# --- a stranger's start turns the buyer's real payment into needs_review -------------------


def test_a_strangers_start_does_not_turn_the_buyers_payment_into_needs_review(
    khalti, orders, signals, django_capture_on_commit_callbacks
):
    """Buyer opens the link (Initiated while they type their PIN on Khalti's page).
    Anyone whose resolver shows the order (the shop's resolver: any unpaid order) POSTs
    start from their own session, at no cost: the buyer's link is "superseded" and the
    stranger's unpaid link now holds the order. The buyer completes payment; the
    return page's re-check finds the order held (IntegrityError in _completed_late)
    and the only money paid for the order is needs_review, while the order stays
    held by a link nobody paid. Repeatable on every attempt the buyer makes.
    """
    buyer, stranger = Client(), Client()
    epayment, link = open_link(buyer, khalti)
    assert stranger.post(start_url()).status_code == 302  # the stranger's own link
    with django_capture_on_commit_callbacks(execute=True):
        buyer.get(khalti.pay(epayment))  # the buyer pays the link they were given
    link.refresh_from_db()
    # Khalti completed the only payment made for this order, for its amount.
    assert link.status == Status.VERIFIED, (link.status, link.failure_reason)
    assert Order.objects.get(reference="ORD-A").paid


# --- E005 passes WEBSITE_URLs Khalti cannot send anyone back to ---------------------------


@pytest.mark.parametrize(
    "website_url",
    ["https://shop.example.com ", "https://shop example.com", "https://<shop>"],
)
def test_e005_refuses_a_website_url_with_spaces_or_a_bogus_host(website_url):
    """website_url_is_sane checks isprintable() (a space is printable) and that
    urlsplit() found *a* hostname: a trailing space (typical of a value read from an
    env file) or a host with a space or '<' passes E005, and every start then sends
    Khalti ``return_url='https://shop.example.com /khalti/epayment/return/'``.
    """
    with khalti_settings(WEBSITE_URL=website_url), override_settings(DEBUG=False):
        found = [m.id for m in checks.run_checks() if m.id and m.id.startswith("django_khalti")]
    assert "django_khalti.E005" in found


# --- a start taken over while Khalti was slow says "being confirmed" of a failed row --------


def test_a_start_taken_over_while_khalti_was_slow_tells_the_truth(
    client, khalti, orders, monkeypatch
):
    """Khalti is slow to answer initiate; the start's claim goes stale; a widget
    payment for the order arrives and _free_order supersedes the unstarted row
    ("The payment was never started with Khalti.", failed, order let go). When
    initiate finally answers, start_epayment's still_ours check fails and raises a
    bare KhaltiInProgress: the buyer reads "This payment is being confirmed right
    now" (409, a pending page that reloads) of a row stored failed. (The
    KhaltiUnavailable branch just above handles the same takeover truthfully.)
    """
    from django_khalti.client import KhaltiClient
    from django_khalti.services import lookup, state

    real_initiate = KhaltiClient.initiate

    def slow_initiate(self, **kwargs):
        # While Khalti took its time the start's claim went stale, and a widget
        # payment for the order did what _claim_order -> _free_order does: it
        # claimed the stale holder and superseded it (no pidx yet: no Khalti call).
        Payment.objects.filter(flow=Payment.Flow.EPAYMENT).update(
            claimed_at=timezone.now() - timedelta(hours=1)
        )
        holder = Payment.objects.get(flow=Payment.Flow.EPAYMENT)
        assert state.claim(holder)
        state._settle(self, holder, lookup._supersede)
        return real_initiate(self, **kwargs)

    monkeypatch.setattr(KhaltiClient, "initiate", slow_initiate)
    response = client.post(start_url())
    start = Payment.objects.get(flow=Payment.Flow.EPAYMENT)
    assert (start.status, start.order_claim) == (Status.FAILED, None)
    page = response.content.decode()
    assert "being confirmed right now" not in page
    assert "Confirming your payment" not in page
    assert "was not started" in page


# --- the second review's finds (each failed before its fix) -----------------------------


# --- one slow answer about the stranger's link makes the buyer's money needs_review ------


def paid_on_reload(buyer, khalti, epayment, link, capture):
    """The late completion is not needs_review while its order's holder is unknown,
    and a reload of the return page (Khalti answering now) verifies it.
    """
    link.refresh_from_db()
    assert link.status != Status.NEEDS_REVIEW, link.failure_reason
    with capture(execute=True):
        buyer.get(khalti.return_url(epayment))
    link.refresh_from_db()
    assert link.status == Status.VERIFIED, (link.status, link.failure_reason)
    assert Order.objects.get(reference="ORD-A").paid


def test_a_late_completion_is_not_needs_review_because_the_holders_lookup_timed_out_once(
    khalti, orders, signals, django_capture_on_commit_callbacks
):
    """The fix of 'a stranger's start turns the buyer's payment into needs_review'
    holds only while Khalti answers the lookup of the stranger's link at once.
    Buyer opens link B; a stranger's start supersedes it and holds the order with an
    unpaid link S. The buyer pays B and comes back. _verify_late -> _free_order(S):
    the lookup of S times out (suppressed), S "holds on", _free_order returns False
    and _completed_late makes B needs_review: final (only failed rows are re-checked),
    though nothing was decided about S. The order stays held by the stranger's
    unpaid link; the buyer's only payment waits for a person.
    Expected: B stays failed (re-checked later) or is verified on the next look;
    never a permanent needs_review from an unknown answer.
    """
    buyer, stranger = Client(), Client()
    epayment, link = open_link(buyer, khalti)
    assert stranger.post(start_url()).status_code == 302
    strangers = khalti.last_epayment
    khalti.fail_next("lookup", "timeout", key=strangers.pidx)  # Khalti slow, once
    with django_capture_on_commit_callbacks(execute=True):
        buyer.get(khalti.pay(epayment))
    paid_on_reload(buyer, khalti, epayment, link, django_capture_on_commit_callbacks)


def test_a_late_completion_is_not_needs_review_while_a_strangers_start_is_in_flight(
    khalti, orders, signals, django_capture_on_commit_callbacks, monkeypatch
):
    """Same root cause, with Khalti merely slow to start the stranger's link: the
    stranger's start superseded the buyer's link B and, while Khalti's initiate is
    still answering (a claim held, no pidx yet), the buyer pays B and comes back.
    _free_order cannot claim the stranger's row, so it "holds on" and B becomes
    needs_review for good. A moment later the stranger's link is just an unpaid
    Initiated link holding the order.
    """
    from django_khalti.client import KhaltiClient

    buyer, stranger = Client(), Client()
    epayment, link = open_link(buyer, khalti)
    real_initiate = KhaltiClient.initiate
    returned = []

    def slow_initiate(self, **kwargs):
        # Khalti is working on the stranger's initiate; the buyer pays and returns.
        if not returned:
            with django_capture_on_commit_callbacks(execute=True):
                returned.append(buyer.get(khalti.pay(epayment)))
        return real_initiate(self, **kwargs)

    monkeypatch.setattr(KhaltiClient, "initiate", slow_initiate)
    assert stranger.post(start_url()).status_code == 302
    assert returned
    paid_on_reload(buyer, khalti, epayment, link, django_capture_on_commit_callbacks)


def test_a_late_completion_is_not_needs_review_behind_a_widget_payment_khalti_refuses(
    client, khalti, orders, signals, django_capture_on_commit_callbacks
):
    """Same root cause with a widget holder: _verify_late gives up at once when the
    order's holder is a widget payment, whatever it is. A token the buyer never paid
    with (a stranger's replay, a typo) is pending because Khalti's verify timed out;
    the buyer's completed link B, coming back, is made needs_review at once, without
    asking Khalti about the holder. Khalti then refuses the holder (no money moved),
    the order is free, and the only money paid for it stays needs_review.
    """
    buyer, stranger = Client(), Client()
    epayment, link = open_link(buyer, khalti)
    bogus = khalti.add_payment(amount=1000, state="Failed")
    khalti.fail_next("verify", "timeout", key=bogus.token)
    assert post(stranger, bogus.payload("ORD-A")).status_code == 504  # holds the order
    link.refresh_from_db()
    assert link.status == Status.FAILED  # superseded by the widget payment
    with django_capture_on_commit_callbacks(execute=True):
        buyer.get(khalti.pay(epayment))
    with django_capture_on_commit_callbacks(execute=True):
        post(stranger, bogus.payload("ORD-A"))  # Khalti refuses it now
    assert Payment.objects.get(token=bogus.token).status == Status.FAILED
    with django_capture_on_commit_callbacks(execute=True):
        buyer.get(khalti.return_url(epayment))
    link.refresh_from_db()
    assert link.status == Status.VERIFIED, (link.status, link.failure_reason)
    assert Order.objects.get(reference="ORD-A").paid


# --- _verify_late gives up after freeing the order ------------------------------------


def test_a_late_completion_retries_after_the_second_holder_let_go(
    khalti, orders, signals, django_capture_on_commit_callbacks, monkeypatch
):
    """_verify_late tries twice: insert fails -> free holder 1; insert fails again
    (a stranger's new start took the freed order meanwhile) -> free holder 2, which
    lets go (Initiated: superseded) ... and the loop ends: return False. The order is
    now free, both links were failed, and the buyer's completed payment is made
    needs_review ("paid or being paid by another payment": neither is true).
    The stranger's second start in the window is simulated by wrapping _free_order.
    """
    from django_khalti.services import settle

    buyer, stranger = Client(), Client()
    epayment, link = open_link(buyer, khalti)
    assert stranger.post(start_url()).status_code == 302  # link B superseded
    real_free = settle._free_order
    starts = []

    def free_then_a_stranger_starts(client, holder, **kwargs):
        freed = real_free(client, holder, **kwargs)
        if freed and not starts:
            starts.append(Client().post(start_url()))  # another fresh session
        return freed

    monkeypatch.setattr(settle, "_free_order", free_then_a_stranger_starts)
    with django_capture_on_commit_callbacks(execute=True):
        buyer.get(khalti.pay(epayment))
    assert starts
    assert starts[0].status_code == 302
    link.refresh_from_db()
    held = Payment.objects.filter(order_claim__isnull=False).exclude(pk=link.pk)
    assert link.status == Status.VERIFIED or held.exists(), (
        link.status,
        link.failure_reason,
        "and the order is held by nobody",
    )
    assert link.status == Status.VERIFIED, (link.status, link.failure_reason)


# --- E005 / runtime: WEBSITE_URLs Khalti cannot send anyone back to ---------------------


@pytest.mark.parametrize(
    "website_url",
    [
        "https://[::1]evil",  # junk after a bracketed host: netloc.startswith(host) passes
        "https://shop.exa\nmple.com",  # urlsplit drops \n and \t: isprintable() was removed
        "https://shop\t.example.com",
        "https://shop.example.com:0",  # port 0
    ],
)
def test_e005_refuses_a_website_url_khalti_cannot_return_to(website_url):
    """website_url_is_sane (E005 and start_epayment) passes these; the start then sends
    Khalti website_url with a newline/tab in it, or return_url
    'https://[::1]evil/khalti/epayment/return/'.
    """
    from django_khalti.conf import website_url_is_sane

    with khalti_settings(WEBSITE_URL=website_url), override_settings(DEBUG=False):
        found = [m.id for m in checks.run_checks() if m.id and m.id.startswith("django_khalti")]
    assert not website_url_is_sane(website_url)
    assert "django_khalti.E005" in found


def test_a_key_the_header_cannot_carry_is_logged_once_and_clearly(client, orders, caplog):
    from django.conf import settings

    bad = requests.exceptions.InvalidHeader(f"header value: 'Key {settings.KHALTI['SECRET_KEY']}'")
    with responses.RequestsMock() as rsps:
        rsps.post(re.compile(r".*/api/v2/payment/verify/"), body=bad)
        response = post(client, {"token": "tok", "amount": 1000, "product_identity": "ORD-A"})
    assert (response.status_code, response.json()["code"]) == (503, "not_configured")
    errors = [
        r for r in caplog.records if r.levelname == "ERROR" and r.name.startswith("django_khalti")
    ]
    assert len(errors) == 1
    assert "cannot be sent in a header" in errors[0].getMessage()
    assert settings.KHALTI["SECRET_KEY"] not in caplog.text
