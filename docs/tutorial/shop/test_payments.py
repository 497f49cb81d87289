import pytest
from django.urls import reverse

from django_khalti.models import Payment
from shop.models import Order


@pytest.fixture
def order(db):
    return Order.objects.create(reference="ORD-1", name="Dragon figurine", total=150000)


def test_the_order_page_offers_both_checkouts(client, order):
    response = client.get(reverse("shop:order", args=[order.reference]))

    assert response.status_code == 200
    page = response.content.decode()
    # {% khalti_epayment_button %}: a form that posts to dj-khalti's start view.
    assert reverse("django_khalti:epayment-start", args=[order.reference]) in page
    # {% khalti_widget %}: the widget, ready to pay (not a "not available" message).
    assert "data-khalti-widget" in page


def test_an_order_paid_on_khaltis_page_is_paid(client, khalti, order):
    # The buyer presses the ePayment button: dj-khalti starts a payment at Khalti
    # for your resolver's amount and sends the browser there.
    start = reverse("django_khalti:epayment-start", args=[order.reference])
    response = client.post(start)

    epayment = khalti.last_epayment  # the payment the button started at Khalti
    assert response["Location"] == epayment.payment_url
    assert (epayment.amount, epayment.purchase_order_id) == (150000, "ORD-1")

    # The buyer pays on Khalti's page, and Khalti sends the browser back.
    response = client.get(khalti.pay(epayment))

    order.refresh_from_db()
    assert order.paid_at is not None  # shop/receivers.py ran
    assert response["Location"].startswith(reverse("shop:thanks"))  # SUCCESS_URL
    thanks = client.get(response["Location"])
    assert "Khalti confirmed your payment of Rs 1,500.00" in thanks.content.decode()


def test_an_order_paid_in_the_widget_is_paid(client, khalti, order):
    # The buyer pays Rs 1,500 in the widget, whose script posts the token and
    # amount Khalti gave it to dj-khalti's verify view.
    payment = khalti.add_payment(amount=150000)

    response = client.post(
        reverse("django_khalti:verify"),
        payment.payload(order.reference),
        content_type="application/json",
    )

    assert response.status_code == 200
    order.refresh_from_db()
    assert order.paid_at is not None
    assert khalti.verify_calls == [(payment.token, 150000)]  # checked with Khalti


def test_a_widget_payment_of_less_than_the_order_is_refused(client, khalti, order):
    payment = khalti.add_payment(amount=1000)  # Rs 10 paid for a Rs 1,500 order

    response = client.post(
        reverse("django_khalti:verify"),
        payment.payload(order.reference),
        content_type="application/json",
    )

    assert response.status_code == 400
    assert response.json()["code"] == "amount_mismatch"  # your order's amount, not the browser's
    assert khalti.verify_calls == []  # refused before Khalti was asked
    order.refresh_from_db()
    assert order.paid_at is None


def test_an_epayment_khalti_reports_for_less_is_not_paid(client, khalti, order):
    client.post(reverse("django_khalti:epayment-start", args=[order.reference]))
    epayment = khalti.last_epayment  # dj-khalti asked Khalti for Rs 1,500

    # The buyer pays, and Khalti's lookup says Rs 10 was paid.
    response = client.get(khalti.pay_wrong_amount(epayment, amount=1000))

    order.refresh_from_db()
    assert order.paid_at is None  # not paid: the shop checks the payment first
    payment = Payment.objects.get(pidx=epayment.pidx)
    assert (payment.status, payment.received_amount) == ("needs_review", 1000)
    assert response["Location"].startswith(reverse("shop:payment-failed"))
