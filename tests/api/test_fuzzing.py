"""A hostile client: what hypothesis makes of the API's fields (and of anything else),
posted to the real endpoints. Every answer is a 4xx with a JSON body (the browser
views: a 4xx page), never a 500, and Khalti is never called. Inputs that would
honestly reach Khalti are left out by asking the app's own serializer and the shop's
resolver (see :func:`proceeds`), so the properties are about refusals only.
"""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
from django.db import transaction
from django.http import QueryDict
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from django_khalti import services
from django_khalti.models import Payment
from django_khalti.serializers import EpaymentInitiateSerializer, VerifySerializer
from shop.khalti import order_amount

from .conftest import (
    INITIATE,
    PAID_TOKEN,
    RETURN,
    VERIFY,
    assert_refused_json,
    assert_refused_page,
    assert_untouched,
    hostile_client,
)

pytestmark = [pytest.mark.django_db, pytest.mark.reliability]

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


# --- hostile input ----------------------------------------------------------------------


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
