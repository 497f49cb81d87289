"""A hostile client, DRF throttling, and what the kit lets out: secrets and payer details.

The hostile-input properties post what hypothesis makes of the API's fields
(and of anything else) to the real endpoints: every answer is a 4xx with a JSON
body (the browser views: a 4xx page), never a 500, and Khalti is never called.
Inputs that would honestly reach Khalti are left out by asking the app's own
serializer and the shop's resolver (see :func:`proceeds`), so the properties
are about refusals only.
"""

from __future__ import annotations

import io
import json
import logging
import sys
import traceback
from datetime import timedelta
from urllib.parse import quote

import pytest
import requests
from django.core.cache import cache
from django.core.management import call_command
from django.db import transaction
from django.http import QueryDict
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django.views.debug import ExceptionReporter, get_default_exception_reporter_filter
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from rest_framework.throttling import AnonRateThrottle

from django_khalti import services
from django_khalti.models import Payment, order_key
from django_khalti.serializers import EpaymentInitiateSerializer, VerifySerializer
from shop.khalti import order_amount
from shop.models import Order

from ..conftest import SECRET, epayment_started, fixture

pytestmark = [pytest.mark.django_db, pytest.mark.reliability]

VERIFY = reverse("django_khalti:verify")
INITIATE = reverse("django_khalti:epayment-initiate")
RETURN = reverse("django_khalti:epayment-return")
PAID_TOKEN = "paid-token"
#: Orders the hostile inputs aim at: one awaiting 1000 paisa, one below Khalti's Rs 10
#: minimum, one paid (its resolver answer is None), and one that does not exist.
REFERENCES = ["ORD-1", " ORD-1 ", "ord-1", "ORD-CHEAP", "ORD-PAID", "ORD-NONE"]

HOSTILE = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)


# --- strategies -----------------------------------------------------------------------

#: Any code point, lone surrogates and NUL included.
any_char = st.characters(exclude_categories=())
nasty = st.sampled_from(
    [
        "",
        " ",
        "\x00",
        "\ud800",
        "\udfff",
        "ORD-1\x00",
        "\u202eORD-1",
        "ORD-1\n",
        "%00",
        "%s%n",
        "'; DROP TABLE django_khalti_payment; --",
        "../../etc/passwd",
        "{{ settings.KHALTI }}",
        "１０００",
        "١٠٠٠",
        "²",
        "\U0001f4b8" * 70,
        "x" * 256,
        "é" * 4096,
    ]
)
huge = st.builds(
    lambda char, n: char * n,
    st.sampled_from(["x", "é", "\U0001f4b8", "\x00", "9"]),
    st.sampled_from([256, 5_000, 100_000]),
)
hostile_text = st.one_of(st.text(any_char, max_size=40), nasty, huge)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.sampled_from([2**63, 2**64, -(2**63), 10**100, 1e308, -0.0, 5e-324]),
    hostile_text,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(hostile_text, inner, max_size=4),
    max_leaves=12,
)
hostile_amounts = st.one_of(
    st.integers(max_value=0),
    st.integers(min_value=2**63, max_value=10**40),
    st.integers(),
    st.floats(),
    st.booleans(),
    st.none(),
    hostile_text,
    json_values,
    st.sampled_from(
        [
            "1000.0",
            "1e3",
            "10e2",
            " 1000",
            "+1000",
            "-1000",
            "0x3e8",
            "1_000",
            "１０００",
            "١٠٠٠",
            "1000\x00",
            "Infinity",
            "NaN",
            1000.0,
            999.5,
            500,
        ]
    ),
)


def payloads(fields: dict) -> st.SearchStrategy:
    """The API's fields, each maybe there and maybe hostile, plus stray extra keys."""
    return st.builds(
        lambda extra, known: {**extra, **known},
        st.dictionaries(hostile_text, json_values, max_size=3),
        st.fixed_dictionaries({}, optional=fields),
    )


verify_payloads = payloads(
    {
        "token": st.one_of(hostile_text, json_values, st.just(PAID_TOKEN), st.just("PAID-TOKEN")),
        "amount": st.one_of(hostile_amounts, st.just(1000)),
        "product_identity": st.one_of(st.sampled_from(REFERENCES), hostile_text, json_values),
        "idx": st.one_of(hostile_text, json_values),
    }
)
customer_info = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {},
        optional={
            "name": st.one_of(hostile_text, json_values),
            "email": st.one_of(hostile_text, json_values),
            "phone": st.one_of(hostile_text, json_values),
        },
    ),
)
initiate_payloads = payloads(
    {
        "product_identity": st.one_of(st.sampled_from(REFERENCES), hostile_text, json_values),
        "product_name": st.one_of(hostile_text, json_values, st.just("Dragon")),
        "customer_info": customer_info,
        "amount": hostile_amounts,
        "amount_breakdown": json_values,
        "product_details": json_values,
    }
)
content_types = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-16",
        "application/json; charset=bogus",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
        "multipart/form-data; boundary=zz",
        "text/plain",
        "application/xml",
        "",
        "*/*",
        "application/json\x00",
        "text/html; charset=utf-8",
    ]
)


def encode_json(value, ascii_only: bool) -> bytes:
    """JSON text; not ``ascii_only``, lone surrogates become bytes that are not UTF-8."""
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def form_value(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def urlencoded(data: dict) -> bytes:
    """A form body, keeping what is not UTF-8 (surrogates) as raw, undecodable bytes."""
    return "&".join(
        f"{quote(key.encode('utf-8', 'surrogatepass'))}={quote(form_value(v).encode('utf-8', 'surrogatepass'))}"
        for key, v in data.items()
    ).encode()


# --- the oracle: what the app would honestly take to Khalti ----------------------------


def proceeds(serializer_class, data) -> bool:
    """Whether the app would accept ``data`` and go on (to Khalti, or to a 2xx).

    Asked of the app's own serializer and the shop's resolver, so that the
    properties below hold for refusals only.
    """
    serializer = serializer_class(data=data)
    if not serializer.is_valid():
        return False
    valid = serializer.validated_data
    if serializer_class is VerifySerializer:
        known = Payment.objects.filter(token=valid["token"]).first()
        if known is not None:  # a replay: 200 for its own order and amount
            return known.amount == valid["amount"] and valid["product_identity"] in (
                known.product_identity,
                known.order_reference,
            )
        return resolves(valid["product_identity"]) == valid["amount"]
    return (resolves(valid["product_identity"]) or 0) >= services.MIN_EPAYMENT_AMOUNT


def resolves(product_identity):
    try:
        with (
            transaction.atomic()
        ):  # a NUL on PostgreSQL is a DataError: keep the test's transaction
            found = order_amount(None, product_identity)
    except Exception:
        return None
    return found.amount if found else None


def form_data(body: bytes) -> QueryDict:
    return QueryDict(body, encoding="utf-8")


# --- fixtures and checks ----------------------------------------------------------------


@pytest.fixture
def shop(db):
    """The orders the hostile inputs aim at, and one verified payment."""
    Order.objects.create(reference="ORD-1", total=1000)
    Order.objects.create(reference="ORD-CHEAP", total=500)
    Order.objects.create(reference="ORD-PAID", total=1000, paid=True)
    paid = Payment.objects.create(
        token=PAID_TOKEN,
        product_identity="ORD-PAID",
        amount=1000,
        idx="paid-idx",
        status=Payment.Status.VERIFIED,
        verified_at=timezone.now(),
        order_claim=order_key("ORD-PAID"),
    )
    return paid


def assert_refused_json(response, expect_khalti, shop):
    """A 4xx with a JSON body; Khalti never called; no payment made or changed."""
    assert 400 <= response.status_code < 500, (response.status_code, response.content[:300])
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    assert isinstance(response.json(), (dict, list))
    assert_untouched(expect_khalti, shop)


def assert_refused_page(response, expect_khalti, shop):
    assert 400 <= response.status_code < 500, (response.status_code, response.content[:300])
    assert response["Content-Type"].startswith("text/html"), response["Content-Type"]
    assert_untouched(expect_khalti, shop)


def assert_untouched(expect_khalti, shop):
    assert not expect_khalti.calls, expect_khalti.calls
    assert list(Payment.objects.values_list("pk", "status")) == [(shop.pk, Payment.Status.VERIFIED)]


def hostile_client() -> Client:
    """A fresh client a request, so that no cookie or session carries over."""
    return Client()


# --- 1. hostile input ----------------------------------------------------------------------


@HOSTILE
@given(data=st.one_of(verify_payloads, json_values), ascii_only=st.booleans())
def test_verify_refuses_any_json_with_a_4xx_json_answer(expect_khalti, shop, data, ascii_only):
    assume(not proceeds(VerifySerializer, data))
    response = hostile_client().post(
        VERIFY, data=encode_json(data, ascii_only), content_type="application/json"
    )
    assert_refused_json(response, expect_khalti, shop)


well_formed_tokens = st.one_of(
    st.text(
        st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"]), min_size=1, max_size=255
    ).filter(str.strip),
    st.sampled_from([PAID_TOKEN, "PAID-TOKEN"]),
)
well_formed_amounts = st.one_of(
    st.integers(min_value=1, max_value=2**63 - 1),
    st.sampled_from([999, 1001, 500, 1000, 10**18]),
    st.integers(min_value=1, max_value=10**6).map(str),
)


@HOSTILE
@given(
    data=st.fixed_dictionaries(
        {
            "token": well_formed_tokens,
            "amount": well_formed_amounts,
            "product_identity": st.one_of(
                st.sampled_from(REFERENCES), st.text(min_size=1, max_size=64)
            ),
        }
    )
)
def test_verify_refuses_well_formed_payloads_that_do_not_match_an_order(expect_khalti, shop, data):
    """Tampered amounts, unknown or paid orders, a paid order's token on another order."""
    assume(not proceeds(VerifySerializer, data))
    response = hostile_client().post(VERIFY, data=json.dumps(data), content_type="application/json")
    assert_refused_json(response, expect_khalti, shop)


@HOSTILE
@given(
    data=st.fixed_dictionaries(
        {
            "product_identity": st.one_of(
                st.sampled_from(REFERENCES), st.text(min_size=1, max_size=64)
            ),
            "product_name": st.text(min_size=1, max_size=255).filter(str.strip),
        },
        optional={"amount": well_formed_amounts},
    )
)
def test_epayment_initiate_refuses_well_formed_payloads_for_no_payable_order(
    expect_khalti, shop, data
):
    """Unknown and paid orders, and orders under Khalti's Rs 10 minimum; a client amount changes nothing."""
    assume(not proceeds(EpaymentInitiateSerializer, data))
    response = hostile_client().post(
        INITIATE, data=json.dumps(data), content_type="application/json"
    )
    assert_refused_json(response, expect_khalti, shop)


@HOSTILE
@given(data=verify_payloads, multipart=st.booleans())
def test_verify_refuses_any_form_body_with_a_4xx_json_answer(expect_khalti, shop, data, multipart):
    if multipart:
        # Multipart as a browser sends it: text only (the test client encodes it in UTF-8).
        fields = {k: form_value(v) for k, v in data.items()}
        try:
            "".join(fields).encode() + "".join(fields.values()).encode()
        except UnicodeEncodeError:
            multipart = False
    if multipart:
        query = QueryDict(mutable=True)
        query.update(fields)
        assume(not proceeds(VerifySerializer, query))
        response = hostile_client().post(VERIFY, data=fields)
    else:
        body = urlencoded(data)
        assume(not proceeds(VerifySerializer, form_data(body)))
        response = hostile_client().post(
            VERIFY, data=body, content_type="application/x-www-form-urlencoded"
        )
    assert_refused_json(response, expect_khalti, shop)


@HOSTILE
@given(
    body=st.one_of(st.binary(max_size=2048), st.just(b"[" * 5000), st.just(b'{"a":' * 5000)),
    content_type=content_types,
    method=st.sampled_from(["post", "put", "patch", "delete"]),
    url=st.sampled_from([VERIFY, INITIATE]),
)
def test_api_refuses_garbage_bytes_and_wrong_content_types(
    expect_khalti, shop, body, content_type, method, url
):
    if method == "post" and content_type.startswith("application/x-www-form-urlencoded"):
        serializer = VerifySerializer if url == VERIFY else EpaymentInitiateSerializer
        assume(not proceeds(serializer, form_data(body)))
    # generic(): the bytes as they are, whatever charset the content type names.
    response = hostile_client().generic(method.upper(), url, body, content_type=content_type)
    assert_refused_json(response, expect_khalti, shop)


@HOSTILE
@given(data=st.one_of(initiate_payloads, json_values), ascii_only=st.booleans(), form=st.booleans())
def test_epayment_initiate_refuses_any_body_with_a_4xx_json_answer(
    expect_khalti, shop, data, ascii_only, form
):
    if form and isinstance(data, dict):
        body = urlencoded(data)
        assume(not proceeds(EpaymentInitiateSerializer, form_data(body)))
        response = hostile_client().post(
            INITIATE, data=body, content_type="application/x-www-form-urlencoded"
        )
    else:
        assume(not proceeds(EpaymentInitiateSerializer, data))
        response = hostile_client().post(
            INITIATE, data=encode_json(data, ascii_only), content_type="application/json"
        )
    assert_refused_json(response, expect_khalti, shop)


query_params = st.dictionaries(
    st.text(any_char, max_size=12)
    | st.sampled_from(
        ["pidx", "tries", "status", "mobile", "amount", "purchase_order_id", "transaction_id"]
    ),
    hostile_text,
    max_size=5,
)


def query_string(params: dict) -> str:
    return "&".join(
        f"{quote(k.encode('utf-8', 'surrogatepass'))}={quote(v.encode('utf-8', 'surrogatepass'))}"
        for k, v in params.items()
    )


@HOSTILE
@given(
    reference=st.one_of(st.sampled_from(REFERENCES), hostile_text).filter(bool),
    params=query_params,
    method=st.sampled_from(["get", "post", "put", "delete"]),
)
def test_epayment_start_refuses_any_reference_with_a_4xx_page(
    expect_khalti, shop, reference, params, method
):
    path_part = quote(reference.encode("utf-8", "surrogatepass"), safe="")
    url = f"/khalti/epayment/start/{path_part}/"
    # The view sees the path as Django decodes it (undecodable bytes stay percent-encoded).
    try:
        seen = reference.encode("utf-8").decode()
    except UnicodeEncodeError:
        seen = None
    assume(
        method not in ("get", "post")
        or seen is None
        or not proceeds(
            EpaymentInitiateSerializer, {"product_identity": seen, "product_name": seen}
        )
        or "/" in seen
    )
    assume(
        method not in ("get", "post")
        or seen is None
        or seen.strip() == seen
        or (resolves(seen) or 0) < services.MIN_EPAYMENT_AMOUNT
    )
    response = getattr(hostile_client(), method)(f"{url}?{query_string(params)}")
    if response.status_code == 404 and response["Content-Type"].startswith("text/html"):
        assert_untouched(expect_khalti, shop)  # no such URL, or no such order
    else:
        assert_refused_page(response, expect_khalti, shop)


@HOSTILE
@given(params=query_params)
def test_epayment_return_refuses_any_query_with_a_4xx_page(expect_khalti, shop, params):
    response = hostile_client().get(f"{RETURN}?{query_string(params)}")
    assert_refused_page(response, expect_khalti, shop)


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        (
            "application/json",
            json.dumps({"token": "t", "amount": 1000, "product_identity": "x" * 3_000_000}),
        ),
        (
            "application/x-www-form-urlencoded",
            "token=t&amount=1000&product_identity=" + "x" * 3_000_000,
        ),
        ("application/x-www-form-urlencoded", "&".join(f"f{i}=1" for i in range(1200))),
        ("application/json", "[" * 100_000 + "]" * 100_000),
        ("application/json", '{"amount": ' + "9" * 5000 + "}"),
    ],
)
@pytest.mark.parametrize("url", [VERIFY, INITIATE])
def test_oversized_and_deeply_nested_bodies_are_400_json_not_an_html_page_or_500(
    client, expect_khalti, shop, url, content_type, body
):
    response = client.post(url, data=body, content_type=content_type)
    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    assert response.json()["detail"]
    assert_untouched(expect_khalti, shop)


# --- 2. DRF throttling ---------------------------------------------------------------------


@pytest.fixture
def throttle_cache():
    """Throttles count in Django's cache: a clean count for each test."""
    cache.clear()
    yield cache
    cache.clear()


def refused_verify(client, **extra):
    return client.post(
        VERIFY,
        data=json.dumps({"token": "t", "amount": 1000, "product_identity": "ORD-NONE"}),
        content_type="application/json",
        **extra,
    )


def test_the_widget_endpoint_answers_429_past_the_khalti_rate(
    settings, throttle_cache, expect_khalti, shop
):
    settings.REST_FRAMEWORK = {"DEFAULT_THROTTLE_RATES": {"khalti": "5/min"}}
    client = Client()
    assert [refused_verify(client).status_code for _ in range(5)] == [404] * 5
    # The 6th is refused before anything is read, even an honest payload.
    honest = {"token": "QUvsT4Y8aWd3zTVdLCbsNs", "amount": 1000, "product_identity": "ORD-1"}
    response = client.post(VERIFY, data=json.dumps(honest), content_type="application/json")
    assert response.status_code == 429
    assert response["Content-Type"] == "application/json"
    assert "throttled" in response.json()["detail"]
    assert int(response["Retry-After"]) > 0
    # The rate is per client (and shared by the kit's endpoints).
    assert client.post(INITIATE, data={"product_identity": "ORD-1"}).status_code == 429
    assert refused_verify(Client(), REMOTE_ADDR="10.0.0.2").status_code == 404
    assert_untouched(expect_khalti, shop)


def test_without_a_khalti_rate_nothing_is_throttled_even_with_drfs_scoped_throttle(
    settings, throttle_cache, expect_khalti, shop
):
    settings.REST_FRAMEWORK = {
        "DEFAULT_THROTTLE_CLASSES": ["rest_framework.throttling.ScopedRateThrottle"],
        "DEFAULT_THROTTLE_RATES": {"other": "1/min"},
    }
    client = Client()
    assert {refused_verify(client).status_code for _ in range(20)} == {404}
    assert_untouched(expect_khalti, shop)


def test_the_projects_own_throttles_apply_too(
    settings, throttle_cache, expect_khalti, shop, monkeypatch
):
    settings.REST_FRAMEWORK = {
        "DEFAULT_THROTTLE_CLASSES": ["rest_framework.throttling.AnonRateThrottle"],
        "DEFAULT_THROTTLE_RATES": {"anon": "3/min"},
    }
    # DRF's own throttles keep the rates they saw at import (a class attribute).
    monkeypatch.setattr(AnonRateThrottle, "THROTTLE_RATES", {"anon": "3/min"})
    client = Client()
    assert [refused_verify(client).status_code for _ in range(4)] == [404, 404, 404, 429]
    assert_untouched(expect_khalti, shop)


# --- 3. secrets and the payer's details ------------------------------------------------


CUSTOMER = {"name": "Ram Bahadur Thapa", "email": "ram.thapa@example.com", "phone": "9812345678"}
PAYER = ("Test User", "98XXXXXXX9")
RETURN_MOBILE = "9800000001"


def record_texts(records):
    """Everything a log handler could write of these records."""
    formatter = logging.Formatter()
    for record in records:
        yield record.getMessage()
        yield repr(record.msg)
        yield repr(record.args)
        if record.exc_info:
            yield formatter.formatException(record.exc_info)
        for text in (record.exc_text, record.stack_info):
            if text:
                yield text


def exception_text(exc: BaseException) -> str:
    """The exception as a traceback shows it, with its causes and their messages."""
    return "".join(traceback.format_exception(exc)) + repr(exc) + repr(getattr(exc, "__dict__", {}))


def response_text(response) -> str:
    return response.content.decode("utf-8", "replace") + repr(sorted(response.items()))


@pytest.fixture
def loud(settings, caplog):
    """DEBUG everywhere: Django's DEBUG (SQL logged too) and every logger at DEBUG."""
    settings.DEBUG = True
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="django_khalti")
    caplog.set_level(logging.DEBUG, logger="django")
    return caplog


def widget_order(reference, token, expect_khalti=None):
    Order.objects.create(reference=reference, total=1000)
    return {
        "token": token,
        "amount": 1000,
        "product_identity": reference,
        "mobile": PAYER[1],
        "idx": f"idx-{token}",
    }


def test_the_secret_key_and_payer_details_never_leave_the_kit(
    loud, client, expect_khalti, django_capture_on_commit_callbacks
):
    responses, exceptions, output = [], [], []

    def post(data):
        response = client.post(VERIFY, data=json.dumps(data), content_type="application/json")
        responses.append(response)
        return response

    def attempt(call, *args, **kwargs):
        try:
            return call(*args, **kwargs)
        except Exception as exc:
            exceptions.append(exc)
            return None

    # Widget: verified, rejected, timed out, and our key refused (401) by Khalti.
    expect_khalti.verify("tok-ok", 1000)
    with django_capture_on_commit_callbacks(execute=True):
        assert post(widget_order("ORD-OK", "tok-ok")).status_code == 200
    expect_khalti.refused("tok-no", 1000)
    assert post(widget_order("ORD-NO", "tok-no")).status_code == 400
    expect_khalti.verify("tok-slow", 1000, body=requests.exceptions.ReadTimeout("Read timed out."))
    assert post(widget_order("ORD-SLOW", "tok-slow")).status_code == 504
    expect_khalti.verify("tok-401", 1000, status=401, json=fixture("error_bad_key"))
    assert post(widget_order("ORD-401", "tok-401")).status_code == 502
    # The same faults through the service, for the exceptions' own text.
    for token, kind in (("tok-svc-slow", "timeout"), ("tok-svc-401", "401"), ("tok-svc-no", "no")):
        if kind == "timeout":
            expect_khalti.verify(
                token, 1000, body=requests.exceptions.ReadTimeout("Read timed out.")
            )
        elif kind == "401":
            expect_khalti.verify(token, 1000, status=401, json=fixture("error_bad_key"))
        else:
            expect_khalti.refused(token, 1000)
        data = widget_order(f"ORD-{token}", token)
        attempt(
            services.verify_payment,
            None,
            token=token,
            amount=1000,
            product_identity=data["product_identity"],
            idx=data["idx"],
        )
    assert len(exceptions) == 3

    # ePayment: started with the buyer's details, and the buyer back with a mobile.
    Order.objects.create(reference="ORD-EP", total=1000)
    expect_khalti.initiate(1000, "ORD-EP", customer_info=CUSTOMER, json=epayment_started())
    started = client.post(
        INITIATE,
        data=json.dumps(
            {"product_identity": "ORD-EP", "product_name": "Dragon", "customer_info": CUSTOMER}
        ),
        content_type="application/json",
    )
    responses.append(started)
    assert started.status_code == 201
    pidx = started.json()["pidx"]
    expect_khalti.lookup(pidx, "epayment_lookup_completed")
    with django_capture_on_commit_callbacks(execute=True):
        back = client.get(
            RETURN,
            {
                "pidx": pidx,
                "status": "Completed",
                "mobile": RETURN_MOBILE,
                "transaction_id": "GFq9PFS7b2iYvL8Lir9oXe",
            },
        )
    responses.append(back)
    assert back.status_code == 200
    assert Payment.objects.get(pidx=pidx).status == Payment.Status.VERIFIED

    # Refunds: refused, then done.
    paid = Payment.objects.get(token="tok-ok")
    expect_khalti.refund(paid.idx, {}, status=400, json=fixture("refund_refused"))
    expect_khalti.status("tok-ok", 1000, "status_complete")  # asked after the refusal: not refunded
    attempt(services.refund_payment, paid)
    assert len(exceptions) == 4
    expect_khalti.refund(paid.idx, {})
    assert attempt(services.refund_payment, paid) is not None

    # Reconciliation of the payment whose answer timed out, and of the one refused our key.
    Payment.objects.filter(status=Payment.Status.PENDING).update(
        created_at=timezone.now() - timedelta(minutes=10), claimed_at=None
    )
    for token in ("tok-slow", "tok-401", "tok-svc-slow", "tok-svc-401"):
        expect_khalti.complete(token, 1000)
    out, err = io.StringIO(), io.StringIO()
    with django_capture_on_commit_callbacks(execute=True):
        call_command("khalti_reconcile", stdout=out, stderr=err)
    output += [out.getvalue(), err.getvalue()]
    assert "4 verified" in output[0]

    logged = list(record_texts(loud.records))
    assert any("Khalti" in text for text in logged)  # the run did log, at DEBUG too
    assert any(record.levelno == logging.DEBUG for record in loud.records)
    texts = {
        "log": [*logged, loud.text],
        "response": [response_text(r) for r in responses],
        "exception": [exception_text(e) for e in exceptions],
        "command output": output,
    }
    for where, found in texts.items():
        leaks = [text for text in found if SECRET in text]
        assert not leaks, f"the secret key is in a {where}: {leaks[0][:500]}"
    for response in responses:
        text = response_text(response)
        for detail in (*PAYER, *CUSTOMER.values(), RETURN_MOBILE):
            assert detail not in text, f"{detail!r} in a response: {text[:500]}"
    # The return URL's mobile is in no record of the kit's. (Django's own DEBUG loggers may
    # show the request: django.template logs the context of a missing variable, request
    # and URL included.)
    kits = [r for r in loud.records if r.name.startswith("django_khalti")]
    assert kits
    for text in record_texts(kits):
        assert RETURN_MOBILE not in text, text[:500]


def test_django_hides_the_secret_key_in_its_settings_dump(settings):
    settings.DEBUG = True
    safe = get_default_exception_reporter_filter().get_safe_settings()
    assert safe["KHALTI"]["SECRET_KEY"] != SECRET
    assert set(safe["KHALTI"]["SECRET_KEY"]) == {"*"}
    assert SECRET not in repr(safe)


@pytest.mark.parametrize("debug", [True, False])
def test_the_technical_500_page_shows_no_secret_key_in_settings(rf, settings, debug):
    settings.DEBUG = debug
    request = rf.get("/khalti/verify/")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        reporter = ExceptionReporter(request, *sys.exc_info())
    assert SECRET not in reporter.get_traceback_html()
    assert SECRET not in reporter.get_traceback_text()


def test_an_error_report_of_a_crash_inside_a_khalti_call_shows_no_secret_key(
    settings, expect_khalti
):
    """With DEBUG off (production), Django's error e-mails show every frame's local
    variables, cleansed only below a ``sensitive_variables`` frame."""
    settings.DEBUG = False
    Order.objects.create(reference="ORD-CRASH", total=1000)
    expect_khalti.verify("tok-crash", 1000, body=RuntimeError("a bug below requests"))
    with pytest.raises(RuntimeError) as raised:
        services.verify_payment(None, token="tok-crash", amount=1000, product_identity="ORD-CRASH")
    reporter = ExceptionReporter(None, raised.type, raised.value, raised.tb, is_email=True)
    assert SECRET not in reporter.get_traceback_text()
    assert SECRET not in reporter.get_traceback_html()


@HOSTILE
@given(
    amount=st.one_of(
        st.booleans(),
        st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: f != int(f)),
        st.floats().filter(lambda f: f != f or f in (float("inf"), float("-inf"))),
        st.just(1000.0),
        st.integers(max_value=0),
        st.integers(min_value=2**63, max_value=10**40),
        st.sampled_from(["1000.0", "1e3", "10e2", "+1000", "-1000", "0x3e8", "1_000", "１０００"]),
    )
)
def test_an_amount_that_is_not_whole_positive_paisa_is_always_a_400(expect_khalti, shop, amount):
    """The spec, not the app's serializer, is the oracle here: a boolean, a
    float (even 1000.0), a non-positive or huge number, or a numeral in any
    other form is refused, for an order whose amount it may even equal."""
    data = {"token": "fresh-token", "product_identity": "ORD-1", "amount": amount}
    response = hostile_client().post(
        VERIFY, data=encode_json(data, True), content_type="application/json"
    )
    assert response.status_code == 400, (amount, response.content[:200])
    body = response.json()
    # NaN and infinities are not even JSON (DRF's parser refuses them).
    assert "amount" in body or body.get("detail", "").startswith("JSON parse error"), body
    assert_untouched(expect_khalti, shop)
