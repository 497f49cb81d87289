"""Issue 25, part 5: the return page is not a door to Khalti.

Whoever asks (the buyer's return page from any number of addresses, a widget
resubmission, ``khalti_reconcile``, a person's re-check in the admin), Khalti is
asked about one payment at most once per ``KHALTI["ASK_SPACING"]`` (a person's
re-check: ``PERSON_SPACING``), on the database's clock; a buyer who comes back
meanwhile sees "being confirmed". The return page is throttled like the API.

The test project spaces questions a millisecond apart; these tests set the
default, and let time pass on the database's clock (:func:`asked_ago`).

Khalti is the shipped kit's fake (``django_khalti.testing``).
"""

from __future__ import annotations

import io
import json
import time
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from django_khalti.conf import DEFAULTS
from django_khalti.models import DbNow, Payment
from django_khalti.services import PERSON_SPACING
from shop.models import Order

from ..conftest import race

Status = Payment.Status
RETURN_URL = reverse("django_khalti:epayment-return")
VERIFY_URL = reverse("django_khalti:verify")
CHANGELIST = reverse("admin:django_khalti_payment_changelist")
#: The default spacing, in seconds.
SPACING = DEFAULTS["ASK_SPACING"]


@pytest.fixture
def spaced(settings):
    """dj-khalti's default ``ASK_SPACING`` (the test project's is a millisecond)."""
    settings.KHALTI = {**settings.KHALTI, "ASK_SPACING": SPACING}


@pytest.fixture
def throttle_cache():
    """Throttles count in Django's cache: a clean count for each test."""
    cache.clear()
    yield cache
    cache.clear()


def asked_ago(payment, seconds):
    """Time passes: Khalti was last asked about ``payment`` ``seconds`` ago, on the
    database's clock."""
    Payment.objects.filter(pk=payment.pk).update(last_asked_at=DbNow() - timedelta(seconds=seconds))


def start(client, khalti, reference):
    """The buyer of ``client`` starts an ePayment for ``reference``; Khalti's and ours."""
    response = client.post(reverse("django_khalti:epayment-start", args=[reference]))
    assert response.status_code == 302, response.content
    epayment = khalti.last_epayment
    return epayment, Payment.objects.get(pidx=epayment.pidx)


def page_state(response):
    """What the result page tells the buyer (``data-state``), or where it sent them."""
    if response.status_code == 302:
        return f"redirect {response['Location']}"
    marker = 'data-state="'
    content = response.content.decode()
    return content[content.index(marker) + len(marker) :].split('"', 1)[0]


def come_back(url, address="10.0.0.1"):
    return Client().get(url, REMOTE_ADDR=address)


# --- the reproduction: one link, many requests ------------------------------------------


@pytest.mark.django_db
def test_forty_gets_of_a_cancelled_payments_return_url_ask_khalti_once(client, khalti, spaced):
    Order.objects.create(reference="ORD-A", total=1000)
    epayment, payment = start(client, khalti, "ORD-A")
    url = khalti.cancel(epayment)

    pages = [page_state(come_back(url, f"10.0.{n // 250}.{n % 250}")) for n in range(40)]

    assert len(khalti.lookup_calls) == 1  # not 40 with the merchant's key
    assert pages[0] == "failed"
    # The others could not ask: Khalti may have completed it meanwhile (cancelled,
    # then paid), so not a failure page while that is unknown.
    assert set(pages[1:]) == {"pending"}
    payment.refresh_from_db()
    assert payment.status == Status.FAILED

    asked_ago(payment, SPACING)
    assert page_state(come_back(url)) == "failed"
    assert len(khalti.lookup_calls) == 2


@pytest.mark.django_db
def test_a_buyer_back_while_khalti_was_just_asked_sees_being_confirmed(client, khalti, spaced):
    Order.objects.create(reference="ORD-A", total=1000)
    epayment, payment = start(client, khalti, "ORD-A")
    # Someone opens the link's return URL while the buyer is still at Khalti.
    assert page_state(come_back(khalti.return_url(epayment), "203.0.113.9")) == "pending"
    assert len(khalti.lookup_calls) == 1

    url = khalti.pay(epayment)
    response = come_back(url)

    assert page_state(response) == "pending"
    assert response.status_code == 200
    assert "We are confirming your payment with Khalti" in response.content.decode()
    assert 'http-equiv="refresh"' in response.content.decode()  # it asks again by itself
    assert len(khalti.lookup_calls) == 1
    # Once the spacing is over, the page's reload asks Khalti, and the order is paid.
    asked_ago(payment, SPACING)
    assert page_state(come_back(url)) == "verified"
    assert len(khalti.lookup_calls) == 2
    payment.refresh_from_db()
    assert payment.status == Status.VERIFIED


@pytest.mark.django_db
def test_a_cancelled_then_paid_link_is_being_confirmed_then_verified(client, khalti, spaced):
    Order.objects.create(reference="ORD-A", total=1000)
    epayment, payment = start(client, khalti, "ORD-A")
    assert page_state(come_back(khalti.cancel(epayment))) == "failed"
    khalti.set_state(epayment.pidx, "Completed")  # Khalti completes it after all

    assert page_state(come_back(khalti.return_url(epayment))) == "pending"
    assert len(khalti.lookup_calls) == 1

    asked_ago(payment, SPACING)
    assert page_state(come_back(khalti.return_url(epayment))) == "verified"
    payment.refresh_from_db()
    assert payment.status == Status.VERIFIED


@pytest.mark.django_db
def test_widget_resubmissions_from_many_addresses_ask_khalti_once_per_spacing(
    khalti, payload, spaced
):
    # The buyer has not confirmed at Khalti yet: it stays pending.
    paid = khalti.add_payment(amount=payload["amount"], state="Initiated")
    body = json.dumps(paid.payload(payload["product_identity"]))
    answers = [
        Client()
        .post(VERIFY_URL, body, content_type="application/json", REMOTE_ADDR=f"10.1.0.{n}")
        .json()["code"]
        for n in range(20)
    ]

    assert set(answers) == {"in_progress"}
    payment = Payment.objects.get()
    assert payment.status == Status.PENDING
    # The first submission verifies (refused: not confirmed yet) and asks status;
    # the first resubmission's claim asks status; the 18 others ask nothing.
    assert [call.endpoint for call in khalti.calls] == ["verify", "status", "status"]
    asked_ago(payment, SPACING)
    Client().post(VERIFY_URL, body, content_type="application/json")
    assert [call.endpoint for call in khalti.calls] == ["verify", "status", "status", "status"]


@pytest.mark.django_db
def test_reconcile_leaves_a_payment_asked_moments_ago_for_its_next_run(client, khalti, spaced):
    Order.objects.create(reference="ORD-A", total=1000)
    epayment, payment = start(client, khalti, "ORD-A")
    assert page_state(come_back(khalti.return_url(epayment))) == "pending"
    khalti.expire(epayment)

    out = io.StringIO()
    call_command("khalti_reconcile", "--older-than", "0", stdout=out)

    assert len(khalti.lookup_calls) == 1  # the return page's
    payment.refresh_from_db()
    assert payment.status == Status.PENDING  # not failed, not lost: left as it is
    asked_ago(payment, SPACING)
    call_command("khalti_reconcile", "--older-than", "0", stdout=io.StringIO())
    assert len(khalti.lookup_calls) == 2
    payment.refresh_from_db()
    assert payment.status == Status.FAILED


@pytest.mark.django_db
def test_a_persons_recheck_waits_only_the_persons_spacing(client, khalti, spaced, admin_client):
    Order.objects.create(reference="ORD-A", total=1000)
    epayment, payment = start(client, khalti, "ORD-A")
    assert page_state(come_back(khalti.return_url(epayment))) == "pending"
    khalti.pay(epayment)
    recheck = {"action": "recheck", "_selected_action": [str(payment.pk)], "index": "0"}

    # Asked by the return page a moment ago: a person's click does not ask again.
    admin_client.post(CHANGELIST, recheck)
    assert len(khalti.lookup_calls) == 1
    # The person's spacing is over (not the buyer's): the click asks.
    asked_ago(payment, PERSON_SPACING.total_seconds())
    response = admin_client.post(CHANGELIST, recheck, follow=True)
    assert len(khalti.lookup_calls) == 2
    assert "1 verified" in response.content.decode()
    payment.refresh_from_db()
    assert payment.status == Status.VERIFIED


# --- the throttle ------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_return_page_is_throttled_like_the_api(client, khalti, settings, throttle_cache):
    settings.REST_FRAMEWORK = {"DEFAULT_THROTTLE_RATES": {"khalti": "5/min"}}
    Order.objects.create(reference="ORD-A", total=1000)
    epayment, _ = start(client, khalti, "ORD-A")  # one request of the five
    url = khalti.return_url(epayment)
    assert [client.get(url).status_code for _ in range(4)] == [200] * 4
    asked = len(khalti.lookup_calls)

    response = client.get(url)

    assert response.status_code == 429
    assert response["Content-Type"].startswith("text/html")
    assert int(response["Retry-After"]) > 0
    assert page_state(response) == "pending"
    content = response.content.decode()
    assert "Too many requests from your address" in content
    assert f'content="{response["Retry-After"]};' in content  # it reloads once allowed
    assert len(khalti.lookup_calls) == asked  # nothing asked, nothing read
    # Per address, as for the API.
    assert Client().get(url, REMOTE_ADDR="10.0.0.2").status_code == 200


# --- real concurrent requests ------------------------------------------------------------


@pytest.mark.concurrency
@pytest.mark.django_db(transaction=True)
def test_concurrent_returns_rechecks_and_reconciles_ask_khalti_within_the_bound(khalti, spaced):
    """Buyers' pages from many addresses, a person re-checking and cron reconciling,
    all at once and again and again: Khalti hears of the payment once per spacing
    (a person's re-check: once per its own spacing)."""
    Order.objects.create(reference="ORD-A", total=1000)
    epayment, payment = start(Client(), khalti, "ORD-A")
    url = khalti.return_url(epayment)  # the buyer is still at Khalti: it stays pending
    admin = get_user_model().objects.create_superuser("boss", "boss@example.com", "x")
    recheck = {"action": "recheck", "_selected_action": [str(payment.pk)], "index": "0"}

    def buyer_pages(address):
        return [page_state(come_back(url, address)) for _ in range(8)]

    def person():
        browser = Client()
        browser.force_login(admin)
        return [browser.post(CHANGELIST, recheck).status_code for _ in range(4)]

    def cron():
        for _ in range(4):
            call_command("khalti_reconcile", "--older-than", "0", stdout=io.StringIO())

    began = time.monotonic()
    *pages, clicks, _ = race(
        *(lambda n=n: buyer_pages(f"198.51.100.{n}") for n in range(6)), person, cron
    )
    elapsed = time.monotonic() - began

    assert {state for buyer in pages for state in buyer} == {"pending"}  # being confirmed
    assert set(clicks) == {302}
    # One question for everyone within the spacing, and the person's own at most
    # once per PERSON_SPACING: not 6 * 8 + 4 + 4.
    bound = 1 + int(elapsed // PERSON_SPACING.total_seconds())
    assert 1 <= len(khalti.lookup_calls) <= bound, (len(khalti.lookup_calls), elapsed)
    payment.refresh_from_db()
    assert (payment.status, payment.claimed_at) == (Status.PENDING, None)


@pytest.mark.concurrency
@pytest.mark.django_db(transaction=True)
def test_concurrent_returns_of_a_cancelled_link_from_many_addresses_ask_once(khalti, spaced):
    Order.objects.create(reference="ORD-A", total=1000)
    epayment, payment = start(Client(), khalti, "ORD-A")
    url = khalti.cancel(epayment)
    # A slow Khalti, so that the requests overlap the question in flight.
    khalti.on_next("lookup", lambda request: None, delay=0.2, times=None)

    def buyer_pages(address):
        return [page_state(come_back(url, address)) for _ in range(4)]

    pages = race(*(lambda n=n: buyer_pages(f"192.0.2.{n}") for n in range(12)))

    assert len(khalti.lookup_calls) == 1
    states = [state for buyer in pages for state in buyer]
    assert set(states) == {"failed", "pending"}  # the one that asked; being confirmed
    payment.refresh_from_db()
    assert (payment.status, payment.order_claim) == (Status.FAILED, None)
