"""The API described in OpenAPI: DRF's generator, drf-spectacular, and schemathesis
driving the API from that description (no 500, no answer the schema does not name)."""

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import schemathesis
from django.core.cache import cache
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import DatabaseError, close_old_connections
from django.test import override_settings
from django.urls import include, path, reverse
from drf_spectacular.drainage import GENERATOR_STATS
from drf_spectacular.generators import SchemaGenerator as SpectacularGenerator
from drf_spectacular.validation import validate_schema
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from rest_framework.response import Response
from rest_framework.schemas.openapi import AutoSchema, SchemaGenerator
from schemathesis.checks import not_a_server_error
from schemathesis.errors import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from werkzeug.test import Client

from django_khalti.models import Payment, order_key
from django_khalti.testing import MIN_AMOUNT
from shop.models import Order

from ..conftest import fixture

VERIFY = "/khalti/verify/"
INITIATE = "/khalti/epayment/initiate/"
KHALTI_URLS = [path("khalti/", include("django_khalti.urls"))]
SPECTACULAR = {"DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema"}

#: Each operation's statuses, and the codes of the refusals answered with each (None:
#: the success, or DRF's own ``{"detail"}`` body; 400 also has DRF's field errors).
ANSWERS = {
    VERIFY: {
        "200": None,
        "400": ["amount_mismatch", "verification_failed", "needs_review"],
        "401": None,
        "403": None,
        "404": ["unknown_order"],
        "406": None,
        "409": ["token_used", "already_paid", "in_progress"],
        "415": None,
        "429": None,
        "502": ["khalti_unavailable"],
        "503": ["khalti_unavailable", "not_configured", "unavailable"],
        "504": ["khalti_unavailable"],
    },
    INITIATE: {
        "201": None,
        "400": ["amount_too_small", "initiation_rejected"],
        "401": None,
        "403": None,
        "404": ["unknown_order"],
        "406": None,
        "409": ["already_paid", "in_progress"],
        "415": None,
        "429": None,
        "502": ["khalti_unavailable"],
        "503": ["khalti_unavailable", "not_configured", "unavailable"],
        "504": ["khalti_unavailable"],
    },
}
REQUEST_BODIES = {VERIFY: "KhaltiVerify", INITIATE: "KhaltiEpaymentInitiate"}


def codes(response):
    """The refusal codes an OpenAPI response names (the ``enum`` of its ``code``)."""
    schema = response["content"]["application/json"]["schema"]
    for body in schema.get("anyOf", [schema]):
        if "code" in body.get("properties", {}):
            return body["properties"]["code"]["enum"]
    return None


def assert_describes_the_api(schema):
    assert set(schema["paths"]) == {VERIFY, INITIATE}  # neither the HTML pages nor the demo's
    for url, answers in ANSWERS.items():
        operation = schema["paths"][url]["post"]
        assert operation["requestBody"]["content"]["application/json"]["schema"] == {
            "$ref": f"#/components/schemas/{REQUEST_BODIES[url]}"
        }
        responses = operation["responses"]
        assert {status: codes(responses[status]) for status in responses} == answers
        assert "Retry-After" in responses["429"]["headers"]
    components = schema["components"]["schemas"]
    assert set(components["KhaltiVerify"]["required"]) == {"token", "amount", "product_identity"}
    assert components["KhaltiVerify"]["properties"]["amount"]["type"] == "integer"


# --- DRF's own generator ---------------------------------------------------------------


def test_drf_schema_names_each_body_answer_and_refusal(client):
    response = client.get(reverse("khalti-schema"))
    assert response.status_code == 200
    schema = response.json()
    validate_schema(schema)
    assert_describes_the_api(schema)
    verify = schema["paths"][VERIFY]["post"]
    assert verify["operationId"] == "createKhaltiVerify"
    success = verify["responses"]["200"]["content"]["application/json"]["schema"]
    assert success == {"$ref": "#/components/schemas/KhaltiVerified"}
    verified = schema["components"]["schemas"]["KhaltiVerified"]["properties"]
    assert set(verified) == {"status", "payment"}
    # DRF's field errors of a bad body: one key per field of the request.
    field_errors = verify["responses"]["400"]["content"]["application/json"]["schema"]["anyOf"][1]
    assert set(field_errors["properties"]) == {
        "token",
        "amount",
        "product_identity",
        "idx",
        "non_field_errors",
    }


class TaggedSchema(AutoSchema):
    """A project's own AutoSchema: ours works over it."""

    def get_tags(self, path, method):
        return ["payments"]


@override_settings(REST_FRAMEWORK={"DEFAULT_SCHEMA_CLASS": "tests.api.test_schema.TaggedSchema"})
def test_drf_schema_over_a_projects_own_autoschema():
    schema = SchemaGenerator(patterns=KHALTI_URLS).get_schema(request=None, public=True)
    operation = schema["paths"][VERIFY]["post"]
    assert operation["tags"] == ["payments"]
    assert codes(operation["responses"]["409"]) == ANSWERS[VERIFY]["409"]


# --- drf-spectacular ---------------------------------------------------------------------


@override_settings(REST_FRAMEWORK=SPECTACULAR)
def test_spectacular_schema_names_each_body_answer_and_refusal_without_warnings():
    GENERATOR_STATS.reset()
    schema = SpectacularGenerator(patterns=KHALTI_URLS).get_schema(request=None, public=True)
    warnings = {**GENERATOR_STATS._warn_cache, **GENERATOR_STATS._error_cache}
    assert not warnings, warnings
    # OpenAPI's JSON, as SpectacularAPIView renders it.
    schema = json.loads(json.dumps(schema, default=str))
    validate_schema(schema)
    assert_describes_the_api(schema)
    payment = schema["components"]["schemas"]["KhaltiPayment"]
    assert payment["properties"]["status"]["allOf"] == [
        {"$ref": "#/components/schemas/KhaltiPaymentStatusEnum"}
    ]


def test_spectacular_is_optional():
    """Without drf-spectacular, the app starts and DRF's generator describes the API."""
    script = (
        "import sys; sys.modules['drf_spectacular'] = None\n"
        "import django; django.setup()\n"
        "from django.test import Client\n"
        "response = Client().get('/khalti-schema/')\n"
        "print(response.status_code, sorted(response.json()['paths']))\n"
    )
    root = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "testproject.settings",
        "PYTHONPATH": os.pathsep.join([str(root / "testproject"), str(root)]),
    }
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"200 {sorted([INITIATE, VERIFY])}"


# --- schemathesis: the API against its schema ---------------------------------------------

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


#: The API as schemathesis sees it: its schema from the test project's schema URL,
#: and Django's WSGI application answering. Khalti or the database failing is 502,
#: 503 or 504 by design (and in the schema); any other 5xx is a server error.
schema = schemathesis.openapi.from_wsgi(
    "/khalti-schema/",
    get_wsgi_application(),
    config=schemathesis.Config.from_dict(
        {
            "checks": {
                "not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", 502, 503, 504]}
            }
        }
    ),
)


@pytest.fixture
def api(db, khalti_fake):
    """:data:`schema`, its requests on the test's database connection (as Django's test
    client keeps them) and answered with the fake Khalti behind."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield schema
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


def any_order(request, product_identity):
    """The shop of the schemathesis run: any reference is an order, so that requests
    get as far as Khalti. Its amount is the one the page sends, if any, so that
    verification reaches Khalti; else Rs 10, or Rs 9 (too little) for a reference
    ending in "9"; a reference ending in "x" is no order."""
    if product_identity.endswith("x"):
        return None
    amount = str(request.data.get("amount", ""))
    if amount.isascii() and amount.isdigit() and len(amount) < 19:
        return int(amount)
    return 900 if product_identity.endswith("9") else 1000


#: The fake Khalti's answers, in turn: paid (None: Khalti answers as usual, here for a
#: payment the buyer made), or one of its failures.
KHALTI_ANSWERS = (None, "rejected", "timeout", "connection_error", "server_error", "wrong_amount")


@pytest.fixture
def fuzzed_api(api, khalti_fake, settings):
    """:func:`api`, with :func:`any_order` for a shop and Khalti giving each of
    :data:`KHALTI_ANSWERS` in turn."""
    settings.KHALTI = {**settings.KHALTI, "AMOUNT_RESOLVER": "tests.api.test_schema.any_order"}

    answers = itertools.cycle(KHALTI_ANSWERS)

    def verify(request):
        answer = next(answers)
        amount = request.params["amount"]
        if answer is None and isinstance(amount, int) and amount >= MIN_AMOUNT:
            # A payment the buyer made (Khalti's widget takes none below Rs 10).
            khalti_fake.add_payment(token=request.params["token"], amount=amount)
        return answer

    def initiate(request):
        answer = next(answers)
        return None if answer == "wrong_amount" else answer

    khalti_fake.on_next("verify", verify, times=None)
    khalti_fake.on_next("initiate", initiate, times=None)
    return api


@schema.parametrize()
@hypothesis_settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_api_answers_as_its_schema_says(case, fuzzed_api):
    case.call_and_validate(checks=CHECKS)


# --- each answer of the status table, as the schema names it ---------------------------------


def post(api, url, body, *, status, code=None, content_type="application/json", **headers):
    """POST ``body`` (JSON unless it is bytes) to ``url``: the answer must be ``status``
    (with the refusal ``code``), and what the schema says of it."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = Client(api.app).post(
        url, data=data, content_type=content_type, headers={"Accept": "application/json", **headers}
    )
    assert response.status_code == status, response.text
    if code is not None:
        assert response.json["code"] == code
    api[url]["POST"].Case().validate_response(response, checks=CHECKS)
    return response


@pytest.fixture
def payload(payload):
    """The widget's payload, as the page posts it (the fields of the request)."""
    return {key: payload[key] for key in ("token", "amount", "product_identity", "idx")}


def test_token_used_already_paid_and_in_progress_are_409(api, khalti_fake, payload):
    khalti_fake.add_payment(token=payload["token"], amount=1000)
    post(api, VERIFY, payload, status=200)
    Order.objects.create(reference="ORD-2", total=1000)
    other_order = {**payload, "product_identity": "ORD-2"}
    post(api, VERIFY, other_order, status=409, code="token_used")
    post(api, VERIFY, {**payload, "token": "another"}, status=409, code="already_paid")
    khalti_fake.add_payment(token="first", amount=1000, state="Initiated")
    Payment.objects.create(
        token="first", product_identity="ORD-2", amount=1000, order_claim=order_key("ORD-2")
    )
    post(api, VERIFY, {**other_order, "token": "second"}, status=409, code="in_progress")


def test_refusals_of_an_epayment_are_400_or_404(api, khalti_fake, order):
    Order.objects.create(reference="CHEAP", total=999)
    start = {"product_identity": "CHEAP", "product_name": "Dragon"}
    post(api, INITIATE, start, status=400, code="amount_too_small")
    rejected = fixture("epayment_initiate_validation_error")
    khalti_fake.answer_next("initiate", status=400, json=rejected)
    start = {"product_identity": "ORD-1", "product_name": "Dragon"}
    response = post(api, INITIATE, start, status=400, code="initiation_rejected")
    assert "amount" in response.json["errors"]
    post(api, INITIATE, {"product_identity": "NONE", "product_name": "Dragon"}, status=404)


def test_malformed_requests_are_400_406_and_415(api, payload):
    post(api, VERIFY, {**payload, "amount": 10.5, "token": ""}, status=400)
    post(api, VERIFY, [], status=400)
    post(api, INITIATE, {"product_identity": "x", "customer_info": {"email": "@"}}, status=400)
    post(api, VERIFY, b"{", status=400)
    post(api, VERIFY, b"token=t", status=415, content_type="text/plain")
    post(api, VERIFY, payload, status=406, Accept="text/html")


def test_refused_credentials_are_403(api, payload):
    post(api, VERIFY, payload, status=403, Authorization="Basic !")


def test_throttled_is_429_with_retry_after(api, settings, payload):
    settings.REST_FRAMEWORK = {"DEFAULT_THROTTLE_RATES": {"khalti": "1/hour"}}
    cache.clear()
    nowhere = {**payload, "product_identity": "NONE"}
    post(api, VERIFY, nowhere, status=404, code="unknown_order")
    response = post(api, VERIFY, nowhere, status=429)
    assert int(response.headers["Retry-After"]) > 0
    cache.clear()


def test_shop_misconfigured_or_database_down_is_503(api, settings, payload, monkeypatch):
    settings.KHALTI = {**settings.KHALTI, "AMOUNT_RESOLVER": "tests.api.test_schema.no_such_thing"}
    post(api, VERIFY, payload, status=503, code="not_configured")

    def database_down(*args, **kwargs):
        raise DatabaseError("the database went away")

    monkeypatch.setattr("django_khalti.services.verify_payment", database_down)
    post(api, VERIFY, payload, status=503, code="unavailable")


@pytest.mark.parametrize(
    ("failure", "status"), [("timeout", 504), ("connection_error", 503), ("server_error", 502)]
)
def test_khalti_unavailable_is_502_503_or_504(api, khalti_fake, payload, failure, status):
    khalti_fake.fail_next("verify", failure)
    post(api, VERIFY, payload, status=status, code="khalti_unavailable")


def test_an_answer_the_schema_does_not_name_fails(api, monkeypatch, payload):
    """The checks bite: here a code the schema does not list for its status."""
    monkeypatch.setattr(
        "django_khalti.views.VerifyView.post",
        lambda self, request: Response({"code": "teapot", "detail": "No."}, status=409),
    )
    with pytest.raises(FailureGroup, match="teapot"):
        post(api, VERIFY, payload, status=409)
