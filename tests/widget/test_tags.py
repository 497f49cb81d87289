"""``{% khalti_widget %}`` and ``{% khalti_epayment_button %}``: what they render."""

import json
import logging
import re

import pytest
from django.contrib.auth import get_user_model
from django.template import Context, Template, TemplateSyntaxError
from django.test import Client, RequestFactory, override_settings
from django.urls import reverse

from django_khalti.decorators import allow_khalti_popups
from django_khalti.exceptions import KhaltiConfigurationError
from shop.models import Order

pytestmark = pytest.mark.django_db

LOADER = (
    "https://khalti.s3.ap-south-1.amazonaws.com/KPG/dist/2020.12.17.0.0.0/khalti-checkout.iffe.js"
)


def render(source, request=None, **context):
    request = request or RequestFactory().get("/orders/ORD-1/")
    return Template("{% load khalti %}" + source).render(Context({"request": request, **context}))


def configs(html):
    """Every widget configuration the page holds (json_script), by element id."""
    found = re.findall(r'<script id="([^"]+)" type="application/json">(.*?)</script>', html, re.S)
    return {element_id: json.loads(text) for element_id, text in found}


def test_the_widget_renders_a_button_its_config_and_the_scripts(order, settings):
    html = render('{% khalti_widget "ORD-1" "Dragon" %}')
    config = configs(html)["khalti-widget-1-config"]
    assert config == {
        "publicKey": settings.KHALTI["PUBLIC_KEY"],
        "productIdentity": "ORD-1",
        "productName": "Dragon",
        "productUrl": "http://testserver/orders/ORD-1/",  # WEBSITE_URL + the path
        "amount": 1000,
        "verifyUrl": "/khalti/verify/",
        "csrfToken": config["csrfToken"],
        "successUrl": None,
        "failureUrl": None,
        "messages": config["messages"],
    }
    assert len(config["csrfToken"]) == 64
    assert set(config["messages"]) == {
        "confirming", "verified", "failed", "unconfirmed", "checkAgain", "closed", "unavailable"
    }  # fmt: skip
    assert 'data-khalti-widget="khalti-widget-1-config"' in html
    assert re.search(
        r"<button type=\"button\" class=\"khalti-pay\" data-khalti-pay disabled>Pay with Khalti</button>",
        html,
    )
    assert f'<script src="{LOADER}" defer></script>' in html
    assert '<script src="/static/django_khalti/khalti-pay.js" defer></script>' in html


def test_the_amount_is_the_resolvers_never_the_templates(order):
    order.total = 123456
    order.save()
    config = configs(render('{% khalti_widget "ORD-1" "Dragon" %}'))["khalti-widget-1-config"]
    assert config["amount"] == 123456
    with pytest.raises(TemplateSyntaxError, match="amount"):
        render('{% khalti_widget "ORD-1" "Dragon" amount=1 %}')


def test_the_resolver_gets_the_request_and_the_reference(order, settings):
    seen = []

    def resolver(request, product_identity):
        seen.append((request.path, product_identity))
        return 1000

    settings.KHALTI = {**settings.KHALTI, "AMOUNT_RESOLVER": resolver}
    render("{% khalti_widget ref %}", ref="ORD-1")
    assert seen == [("/orders/ORD-1/", "ORD-1")]


def test_options_reach_the_config_and_the_button(order):
    html = render(
        '{% khalti_widget "ORD-1" "Dragon" product_url="https://shop.example.com/dragon" '
        'label="Pay now" payment_preference="khalti, EBANKING" success_url="/thanks/" '
        'button_id="pay" button_class="big" %}'
    )
    config = configs(html)["khalti-widget-1-config"]
    assert config["productUrl"] == "https://shop.example.com/dragon"
    assert config["paymentPreference"] == ["KHALTI", "EBANKING"]
    assert config["successUrl"] == "/thanks/"
    assert (
        '<button type="button" class="khalti-pay big" id="pay" data-khalti-pay disabled>Pay now</button>'
        in html
    )


def test_payment_preference_may_be_a_list(order):
    html = render(
        '{% khalti_widget "ORD-1" payment_preference=tabs %}', tabs=["SCT", "CONNECT_IPS"]
    )
    assert configs(html)["khalti-widget-1-config"]["paymentPreference"] == ["SCT", "CONNECT_IPS"]


def test_an_unknown_payment_preference_is_the_shops_bug(order):
    with pytest.raises(KhaltiConfigurationError, match="WALLET"):
        render('{% khalti_widget "ORD-1" payment_preference="WALLET" %}')


def test_the_success_url_defaults_to_the_setting_resolved(order, settings):
    settings.KHALTI = {**settings.KHALTI, "SUCCESS_URL": "shop:payment-success"}
    config = configs(render('{% khalti_widget "ORD-1" %}'))["khalti-widget-1-config"]
    assert config["successUrl"] == "/payment/success/"
    assert config["productName"] == "ORD-1"  # no name given: the reference


def test_an_unresolvable_success_url_is_logged_and_left_out(order, settings, caplog):
    settings.KHALTI = {**settings.KHALTI, "SUCCESS_URL": "shop:nope"}
    config = configs(render('{% khalti_widget "ORD-1" %}'))["khalti-widget-1-config"]
    assert config["successUrl"] is None
    assert "cannot be resolved" in caplog.text


def test_an_unknown_order_shows_a_message_and_nothing_to_pay(db):
    html = render('{% khalti_widget "NOPE" "Dragon" %}')
    assert "No order with this product identity is awaiting payment." in html
    assert "data-khalti-pay" not in html
    assert "<script" not in html
    assert not configs(html)


def test_a_resolver_that_raises_shows_not_available_and_logs(settings, caplog):
    def resolver(request, product_identity):
        raise RuntimeError("the shop's bug")

    settings.KHALTI = {**settings.KHALTI, "AMOUNT_RESOLVER": resolver}
    with caplog.at_level(logging.ERROR, logger="django_khalti"):
        html = render('{% khalti_widget "ORD-1" %}')
    assert "Payments are not available right now." in html
    assert "data-khalti-pay" not in html
    assert "the shop's bug" in caplog.text


def test_an_amount_a_browser_cannot_count_exactly_is_not_offered(settings):
    settings.KHALTI = {**settings.KHALTI, "AMOUNT_RESOLVER": lambda request, ref: 2**53}
    html = render('{% khalti_widget "ORD-1" %}')
    assert "Payments are not available right now." in html
    assert not configs(html)


def test_two_widgets_on_a_page_load_the_scripts_once(order):
    Order = type(order)
    Order.objects.create(reference="ORD-2", total=2000)
    html = render('{% khalti_widget "ORD-1" %}{% khalti_widget "ORD-2" %}')
    assert {key: value["amount"] for key, value in configs(html).items()} == {
        "khalti-widget-1-config": 1000,
        "khalti-widget-2-config": 2000,
    }
    assert html.count("khalti-pay.js") == 1
    assert html.count(LOADER) == 1


def test_the_config_cannot_break_out_of_its_script_element(order):
    html = render('{% khalti_widget "ORD-1" name %}', name="</script><script>alert(1)</script>")
    assert "<script>alert(1)" not in html
    assert configs(html)["khalti-widget-1-config"]["productName"].startswith("</script>")


def test_the_script_url_is_a_setting(order, settings):
    settings.KHALTI = {**settings.KHALTI, "WIDGET_SCRIPT_URL": "/sandbox/khalti-checkout.js"}
    html = render('{% khalti_widget "ORD-1" %}')
    assert '<script src="/sandbox/khalti-checkout.js" defer></script>' in html


def test_without_the_request_in_the_context_the_tag_says_what_to_add(order):
    with pytest.raises(KhaltiConfigurationError, match=r"context_processors\.request"):
        Template('{% load khalti %}{% khalti_widget "ORD-1" %}').render(Context({}))


def test_the_pages_csrf_token_is_accepted_by_verify(order):
    """A logged-in buyer's verify needs the CSRF token: the one in the config works."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(get_user_model().objects.create_user("buyer"))
    page = client.get("/orders/ORD-1/")
    config = configs(page.content.decode())["khalti-widget-1-config"]
    body = json.dumps({"token": "T", "amount": 1000, "product_identity": "NOPE"})
    refused = client.post("/khalti/verify/", body, content_type="application/json")
    assert refused.status_code == 403
    answered = client.post(
        "/khalti/verify/",
        body,
        content_type="application/json",
        headers={"X-CSRFToken": config["csrfToken"]},
    )
    assert answered.status_code == 404
    assert answered.json()["code"] == "unknown_order"


# --- DEBUG: a widget on a page whose view is not decorated ---------------------------


def _page(request):
    from django.http import HttpResponse

    return HttpResponse(render('{% khalti_widget "ORD-1" %}', request=request))


@pytest.mark.parametrize(
    ("debug", "decorated", "warned"),
    [(True, False, True), (True, True, False), (False, False, False)],
)
def test_debug_warns_of_a_widget_on_a_view_without_the_decorator(
    order, caplog, debug, decorated, warned
):
    view = allow_khalti_popups(_page) if decorated else _page
    with override_settings(DEBUG=debug), caplog.at_level(logging.WARNING, logger="django_khalti"):
        view(RequestFactory().get("/orders/ORD-1/"))
    messages = [r.getMessage() for r in caplog.records if "allow_khalti_popups" in r.getMessage()]
    assert bool(messages) is warned
    if warned:
        assert "bank tabs" in messages[0]


# --- {% khalti_epayment_button %} ----------------------------------------------------


def test_the_epayment_button_is_a_post_form_with_the_csrf_token(order):
    html = render('{% khalti_epayment_button "ORD-1" %}')
    assert (
        '<form method="post" action="/khalti/epayment/start/ORD-1/" class="khalti-epayment">'
        in html
    )
    assert re.search(r'<input type="hidden" name="csrfmiddlewaretoken" value="\w{64}">', html)
    assert '<button type="submit" class="khalti-pay">Pay with Khalti</button>' in html


def test_the_epayment_button_takes_a_label_and_attributes(db):
    Order.objects.create(reference="A B", total=1000)
    html = render(
        '{% khalti_epayment_button ref "Pay on Khalti" button_id="go" button_class="big" %}',
        ref="A B",
    )
    assert 'action="/khalti/epayment/start/A%20B/"' in html
    assert '<button type="submit" class="khalti-pay big" id="go">Pay on Khalti</button>' in html


def test_the_epayment_button_starts_the_payment_it_names(client, order, expect_khalti):
    html = render('{% khalti_epayment_button "ORD-1" %}')
    action = re.search(r'action="([^"]+)"', html).group(1)
    expect_khalti.initiate(1000, "ORD-1")
    response = client.post(action)
    assert response.status_code == 302


@pytest.mark.parametrize(
    ("total", "words"),
    [
        (999, "Khalti takes online payments of Rs 10 or more."),  # ePayment's own refusal
        (None, None),  # no such order: the resolver's refusal
    ],
)
def test_the_epayment_button_shows_the_refusal_instead_of_a_button(db, client, total, words):
    if total is not None:
        Order.objects.create(reference="ORD-9", total=total)
    html = render('{% khalti_epayment_button "ORD-9" %}')
    assert "<form" not in html
    assert "<button" not in html
    refusal = client.post(reverse("django_khalti:epayment-start", args=["ORD-9"]))
    assert refusal.status_code in (400, 404)
    said = re.search(r'role="status">([^<]+)</p>', html).group(1)
    # What the button shows is what starting the payment answers.
    assert said in refusal.content.decode()
    if words:
        assert said == words


@override_settings(ROOT_URLCONF="tests.widget_only_urls")
def test_the_epayment_button_without_the_epayment_urls_says_so(db):
    with pytest.raises(KhaltiConfigurationError, match=r"django_khalti\.urls"):
        render('{% khalti_epayment_button "ORD-1" %}')
