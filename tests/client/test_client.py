"""KhaltiClient: Khalti's wire format, timeouts, typed errors, secret hygiene."""

import logging

import pytest
import requests
import responses
from responses import matchers

from django_khalti import __version__
from django_khalti.client import KhaltiClient, error_message, get_session
from django_khalti.exceptions import (
    KhaltiBadResponse,
    KhaltiConfigurationError,
    KhaltiConnectionError,
    KhaltiError,
    KhaltiInProgress,
    KhaltiRejected,
    KhaltiTimeout,
    KhaltiUnavailable,
    KhaltiUnknownOrder,
    KhaltiVerificationFailed,
)

from ..conftest import fixture

SECRET = "test_secret_key_for_the_client_tests_only"


@pytest.fixture
def client():
    return KhaltiClient(SECRET, "https://khalti.test/", timeout=7)


@pytest.fixture
def rsps():
    with responses.RequestsMock() as mock:
        yield mock


def test_verify_posts_token_and_amount_with_the_key_and_returns_the_record(client, rsps):
    rsps.post(
        "https://khalti.test/api/v2/payment/verify/",
        json=fixture("verify_completed"),
        match=[
            matchers.header_matcher(
                {"Authorization": f"Key {SECRET}", "User-Agent": f"dj-khalti/{__version__}"}
            ),
            matchers.json_params_matcher({"token": "tok", "amount": 1000}),
        ],
    )
    record = client.verify("tok", 1000)
    assert record.idx == "8xmeJnNXfoVjCvGcZiiGe7"
    assert record.state == "Completed"
    assert record.amount == 1000
    assert record.fee_amount == 30
    assert record.mobile == "98XXXXXXX9"
    assert record.refunded is False
    assert record.raw == fixture("verify_completed")


def test_every_call_is_bounded_by_the_timeout(client, rsps):
    rsps.post("https://khalti.test/api/v2/payment/verify/", json=fixture("verify_completed"))
    client.verify("tok", 1000)
    # Each socket operation within TIMEOUT; the whole call too (the tests below).
    assert rsps.calls[0].request.req_kwargs["timeout"] == (7.0, 7.0)


@pytest.mark.parametrize(
    ("base_url", "expected"),
    [
        ("https://khalti.com/", "https://khalti.com/api/v2/payment/verify/"),
        ("https://dev.khalti.com", "https://dev.khalti.com/api/v2/payment/verify/"),
        ("http://127.0.0.1:8765/", "http://127.0.0.1:8765/api/v2/payment/verify/"),
        ("http://127.0.0.1:8765/fake/", "http://127.0.0.1:8765/fake/api/v2/payment/verify/"),
    ],
)
def test_endpoint_paths_are_joined_to_the_base_url(rsps, base_url, expected):
    rsps.post(expected, json=fixture("verify_completed"))
    KhaltiClient(SECRET, base_url, 5).verify("tok", 1000)
    assert rsps.calls[0].request.url == expected


def test_record_with_source_instead_of_user_still_gives_the_mobile(client, rsps):
    body = fixture("verify_completed")
    body["source"] = body.pop("user")
    del body["fee_amount"]
    rsps.post("https://khalti.test/api/v2/payment/verify/", json=body)
    record = client.verify("tok", 1000)
    assert record.mobile == "98XXXXXXX9"
    assert record.fee_amount is None


def test_status_asks_with_token_and_amount_and_reads_the_state(client, rsps):
    rsps.get(
        "https://khalti.test/api/v2/payment/status/",
        json=fixture("status_confirmed"),
        match=[
            matchers.header_matcher({"Authorization": f"Key {SECRET}"}),
            matchers.query_param_matcher({"token": "tok", "amount": "1000"}),
        ],
    )
    answer = client.status("tok", 1000)
    assert answer.state == "Confirmed"
    assert answer.detail == "User has confirmed the transaction"


def test_status_answer_is_read_whatever_the_http_code(client, rsps):
    rsps.get("https://khalti.test/api/v2/payment/status/", status=400, json=fixture("status_error"))
    assert client.status("tok", 1000).state == "Error"


def test_status_without_a_state_is_a_bad_response(client, rsps):
    rsps.get("https://khalti.test/api/v2/payment/status/", json={"status": True})
    with pytest.raises(KhaltiBadResponse):
        client.status("tok", 1000)


def test_field_errors_on_400_are_a_rejection_with_the_message(client, rsps):
    rsps.post(
        "https://khalti.test/api/v2/payment/verify/",
        status=400,
        json=fixture("verify_invalid_token"),
    )
    with pytest.raises(KhaltiRejected) as info:
        client.verify("tok", 1000)
    assert info.value.detail == "token: Invalid token."
    assert info.value.khalti_status == 400
    assert info.value.body == fixture("verify_invalid_token")


@pytest.mark.parametrize(
    ("mock", "exc"),
    [
        ({"body": requests.exceptions.ConnectTimeout()}, KhaltiTimeout),
        ({"body": requests.exceptions.ReadTimeout()}, KhaltiTimeout),
        ({"body": requests.exceptions.ConnectionError()}, KhaltiConnectionError),
        ({"body": requests.exceptions.ChunkedEncodingError()}, KhaltiUnavailable),
        ({"status": 500, "body": "<html/>"}, KhaltiUnavailable),
        ({"status": 429, "json": {"detail": "Too many"}}, KhaltiUnavailable),
        ({"status": 401, "json": {"detail": "Invalid token."}}, KhaltiBadResponse),
        ({"status": 200, "body": "not json"}, KhaltiBadResponse),
        (
            {"status": 200, "json": {"idx": "", "state": {"name": "Completed"}, "amount": 1}},
            KhaltiBadResponse,
        ),
        (
            {"status": 200, "json": {"idx": "a", "state": "Completed", "amount": 1}},
            KhaltiBadResponse,
        ),
        (
            {"status": 200, "json": {"idx": "a", "state": {"name": "Completed"}, "amount": True}},
            KhaltiBadResponse,
        ),
        (
            {"status": 302, "headers": {"Location": "https://elsewhere.test/"}, "body": ""},
            KhaltiBadResponse,
        ),
        ({"status": 400, "json": {"detail": {"nested": 1}}}, KhaltiBadResponse),
        ({"status": 400, "json": {}}, KhaltiBadResponse),
    ],
)
def test_every_failure_is_a_typed_exception_that_carries_no_request(client, rsps, mock, exc):
    """requests' exceptions hold the request, its ``Authorization`` header included: the
    app's exception is a fresh one, chained to none of them (an error tracker records
    ``__cause__`` and ``__context__``)."""
    rsps.post("https://khalti.test/api/v2/payment/verify/", **mock)
    with pytest.raises(exc) as info:
        client.verify("tok", 1000)
    assert info.value.code == "khalti_unavailable"
    chain = list(exception_chain(info.value))
    assert not [e for e in chain if isinstance(e, requests.RequestException)], chain
    for error in chain:
        assert SECRET not in f"{error!r} {error} {vars(error)!r}"


def exception_chain(error):
    """``error`` and every exception behind it, through ``__cause__`` and ``__context__``."""
    seen = []
    todo = [error]
    while todo:
        current = todo.pop()
        if current is None or any(current is s for s in seen):
            continue
        seen.append(current)
        todo += [current.__cause__, current.__context__]
    return seen


@pytest.mark.parametrize("key", [SECRET + "\n", " " + SECRET, SECRET + "\r", "te st", "a\x00b"])
def test_a_key_with_whitespace_or_control_characters_is_refused_without_showing_it(key):
    with pytest.raises(KhaltiConfigurationError) as info:
        KhaltiClient(key, "https://khalti.test/", timeout=7)
    for error in exception_chain(info.value):
        assert key.strip() not in str(error)
    assert "strip" in str(info.value)


def test_a_header_requests_refuses_is_a_configuration_error_with_no_key_behind_it(
    client, rsps, caplog
):
    bad = requests.exceptions.InvalidHeader(
        f"Invalid leading whitespace, reserved character(s), or return character(s) in "
        f"header value: 'Key {SECRET}\\n'"
    )
    rsps.post("https://khalti.test/api/v2/payment/verify/", body=bad)
    with pytest.raises(KhaltiConfigurationError) as info:
        client.verify("tok", 1000)
    for error in exception_chain(info.value):
        assert SECRET not in f"{error!r} {error}"
    assert "cannot be sent in a header" in str(info.value)
    assert SECRET not in caplog.text


@pytest.mark.parametrize("timeout", [float("inf"), float("nan"), 0, -1, 121, True])
def test_a_timeout_out_of_bounds_is_refused(timeout):
    with pytest.raises(KhaltiConfigurationError, match="at most 120"):
        KhaltiClient(SECRET, "https://khalti.test/", timeout=timeout)


def test_the_secret_is_in_no_exception_repr_or_log(client, rsps, caplog):
    caplog.set_level("DEBUG")
    rsps.post("https://khalti.test/api/v2/payment/verify/", status=401, json={"detail": "x"})
    with pytest.raises(KhaltiBadResponse) as info:
        client.verify("tok", 1000)
    text = " ".join([str(info.value), repr(info.value), repr(client), caplog.text])
    assert SECRET not in text
    assert "Key" not in get_session().headers.get("Authorization", "")


@pytest.mark.parametrize(
    ("status", "detail"),
    [
        (401, "Invalid token."),
        (403, "The Khalti sandbox serves only while DEBUG is on: it marks any payment paid."),
    ],
)
def test_a_refused_call_logs_khaltis_own_reason(client, rsps, caplog, status, detail):
    # A local sandbox refusing to serve answers 403 with why: the log says that, not
    # only "check your key".
    rsps.post("https://khalti.test/api/v2/payment/verify/", status=status, json={"detail": detail})
    with pytest.raises(KhaltiBadResponse):
        client.verify("tok", 1000)
    assert f"HTTP {status}, saying {detail!r}" in caplog.text


def test_a_refusal_that_echoes_the_key_is_logged_without_it(client, rsps, caplog):
    rsps.post(
        "https://khalti.test/api/v2/payment/verify/",
        status=401,
        json={"detail": f"Key {SECRET} is not valid"},
    )
    with pytest.raises(KhaltiBadResponse):
        client.verify("tok", 1000)
    assert "saying 'Key [key] is not valid'" in caplog.text
    assert SECRET not in caplog.text


def test_one_pooled_session_is_reused_across_clients_and_calls(rsps):
    rsps.post("https://khalti.test/api/v2/payment/verify/", json=fixture("verify_completed"))
    rsps.post("https://khalti.test/api/v2/payment/verify/", json=fixture("verify_completed"))
    first, second = (
        KhaltiClient(SECRET, "https://khalti.test/", 5),
        KhaltiClient(SECRET, "https://khalti.test/", 5),
    )
    first.verify("a", 1000)
    second.verify("b", 1000)
    assert get_session() is get_session()
    adapter = get_session().get_adapter("https://khalti.test/")
    assert isinstance(adapter, requests.adapters.HTTPAdapter)
    assert adapter._pool_maxsize >= 8  # type: ignore[attr-defined]  # private: no public reader
    assert adapter.max_retries.total == 0


@pytest.mark.parametrize(
    ("key", "base_url", "timeout"),
    [
        ("", "https://khalti.test/", 5),
        (None, "https://khalti.test/", 5),
        (SECRET, None, 5),
        (SECRET, "khalti.test", 5),
        (SECRET, "https://khalti.test/", "abc"),
        (SECRET, "https://khalti.test/", 0),
        (SECRET, "https://khalti.test/", None),
        (SECRET, "https://khalti.test/", True),
    ],
)
def test_a_client_with_broken_settings_is_a_configuration_error(key, base_url, timeout):
    with pytest.raises(KhaltiConfigurationError):
        KhaltiClient(key, base_url, timeout)


def test_minor_fields_out_of_shape_never_block_a_completed_record(client, rsps):
    body = fixture("verify_completed")
    body["user"]["mobile"] = "9" * 100
    body["fee_amount"] = -30
    rsps.post("https://khalti.test/api/v2/payment/verify/", json=body)
    record = client.verify("tok", 1000)
    assert record.mobile == "9" * 32
    assert record.fee_amount is None
    assert record.state == "Completed"


def test_an_idx_longer_than_we_can_store_is_a_bad_response(client, rsps):
    body = fixture("verify_completed")
    body["idx"] = "x" * 256
    rsps.post("https://khalti.test/api/v2/payment/verify/", json=body)
    with pytest.raises(KhaltiBadResponse):
        client.verify("tok", 1000)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"detail": "Not found."}, "Not found."),
        ({"token": ["Invalid token."], "amount": ["Bad."]}, "token: Invalid token.; amount: Bad."),
        ({"amount": "Too small", "error_key": "validation_error"}, "amount: Too small"),
        ({"token": [{"code": 1}]}, None),
        ([], None),
        ("text", None),
        ({}, None),
    ],
)
def test_error_message_reads_both_documented_shapes_only(body, message):
    assert error_message(body) == message


def test_transaction_fetches_the_record_by_idx(client, rsps):
    body = fixture("verify_completed")
    body["state"] = "Completed"  # older records give the state as a string
    rsps.get(
        "https://khalti.test/api/v2/merchant-transaction/8xmeJnNXfoVjCvGcZiiGe7/",
        json=body,
        match=[matchers.header_matcher({"Authorization": f"Key {SECRET}"})],
    )
    record = client.transaction("8xmeJnNXfoVjCvGcZiiGe7")
    assert (record.idx, record.state, record.fee_amount, record.mobile) == (
        "8xmeJnNXfoVjCvGcZiiGe7",
        "Completed",
        30,
        "98XXXXXXX9",
    )


def test_transaction_idx_is_quoted_into_the_path(client, rsps):
    rsps.get(
        "https://khalti.test/api/v2/merchant-transaction/a%2F..%2Fb/",
        json=fixture("verify_completed"),
    )
    client.transaction("a/../b")
    assert rsps.calls[0].request.url.endswith("/merchant-transaction/a%2F..%2Fb/")


@pytest.mark.parametrize(
    ("kwargs", "body"),
    [
        ({}, {}),
        ({"amount": 400}, {"amount": 400}),
        ({"mobile": "9800000001"}, {"mobile": "9800000001"}),
        ({"amount": 400, "mobile": "9800000001"}, {"amount": 400, "mobile": "9800000001"}),
    ],
)
def test_refund_posts_to_the_unversioned_path_with_the_right_body(client, rsps, kwargs, body):
    rsps.post(
        "https://khalti.test/api/merchant-transaction/IDX/refund/",
        json=fixture("refund_success"),
        match=[
            matchers.header_matcher({"Authorization": f"Key {SECRET}"}),
            matchers.json_params_matcher(body),
        ],
    )
    assert client.refund("IDX", **kwargs) == fixture("refund_success")


@pytest.mark.parametrize("status", [400, 404, 422])
def test_refund_refused_with_a_detail_is_a_rejection(client, rsps, status):
    rsps.post(
        "https://khalti.test/api/merchant-transaction/IDX/refund/",
        status=status,
        json=fixture("refund_refused"),
    )
    with pytest.raises(KhaltiRejected, match=r"Refund period expired\."):
        client.refund("IDX")


@pytest.mark.parametrize(
    ("mock", "exc"),
    [
        ({"status": 403, "json": {"detail": "Forbidden"}}, KhaltiBadResponse),
        ({"status": 502, "body": "<html/>"}, KhaltiUnavailable),
        ({"body": requests.exceptions.ReadTimeout()}, KhaltiTimeout),
        ({"status": 200, "body": "OK"}, KhaltiBadResponse),
    ],
)
def test_refund_with_an_unknown_outcome_is_unavailable(client, rsps, mock, exc):
    rsps.post("https://khalti.test/api/merchant-transaction/IDX/refund/", **mock)
    with pytest.raises(exc):
        client.refund("IDX")


@pytest.mark.parametrize(
    "mock",
    [
        {"status": 200, "json": {}},
        {"status": 200, "json": {"detail": "Queued."}},
        {"status": 200, "json": ["ok"]},
        {"status": 408, "json": {"detail": "Request timeout"}},
        {"status": 409, "json": {"detail": "Conflict"}},
    ],
)
def test_refund_answers_that_prove_nothing_are_an_unknown_outcome(client, rsps, mock):
    rsps.post("https://khalti.test/api/merchant-transaction/IDX/refund/", **mock)
    with pytest.raises(KhaltiUnavailable):
        client.refund("IDX")


@pytest.mark.parametrize(
    ("call", "method", "url"),
    [
        (lambda c: c.status("tok", 1000), "GET", "https://khalti.test/api/v2/payment/status/"),
        (
            lambda c: c.transaction("IDX"),
            "GET",
            "https://khalti.test/api/v2/merchant-transaction/IDX/",
        ),
        (
            lambda c: c.refund("IDX"),
            "POST",
            "https://khalti.test/api/merchant-transaction/IDX/refund/",
        ),
        (lambda c: c.lookup("P"), "POST", "https://khalti.test/api/v2/epayment/lookup/"),
    ],
)
def test_every_endpoint_is_bounded_by_the_timeout(client, rsps, call, method, url):
    rsps.add(method, url, body=requests.exceptions.ReadTimeout())
    with pytest.raises(KhaltiTimeout):
        call(client)
    assert rsps.calls[0].request.req_kwargs["timeout"] == (7.0, 7.0)


def test_an_overlong_answer_is_not_khaltis(client, rsps):
    rsps.get("https://khalti.test/api/v2/payment/status/", body="[" + "0," * (1 << 20) + "0]")
    with pytest.raises(KhaltiBadResponse):
        client.status("tok", 1000)


@pytest.mark.parametrize(
    "answer",
    [
        {"status": 401, "json": {"detail": "Invalid token."}},
        {"status": 500, "body": "<html>oops</html>"},
        {"status": 200, "body": "not json"},
        {"status": 400, "json": {"token": ["Invalid token."]}},
        {"body": requests.exceptions.ConnectionError("refused")},
        {"body": requests.exceptions.ReadTimeout("slow")},
    ],
    ids=["401", "500", "not-json", "400", "connection", "timeout"],
)
def test_no_failure_of_a_call_logs_the_secret_key(client, rsps, caplog, answer):
    caplog.set_level(logging.DEBUG)  # requests' and urllib3's own debug lines too
    rsps.post("https://khalti.test/api/v2/payment/verify/", **answer)
    with pytest.raises(KhaltiError):
        client.verify("tok", 1000)
    assert SECRET not in caplog.text


@pytest.mark.parametrize(
    ("answer", "error", "khalti_status"),
    [
        ({"status": 400, "json": {"token": ["Invalid token."]}}, KhaltiRejected, 400),
        ({"status": 401, "json": {"detail": "Invalid token."}}, KhaltiBadResponse, 401),
        ({"status": 503, "body": "<html>down</html>"}, KhaltiUnavailable, 503),
        ({"status": 200, "body": "not json"}, KhaltiBadResponse, 200),
        ({"body": requests.exceptions.ConnectionError("refused")}, KhaltiConnectionError, None),
    ],
    ids=["400", "401", "503", "not-json", "unreachable"],
)
def test_an_error_about_khaltis_answer_names_the_endpoint_and_khaltis_status(
    client, rsps, answer, error, khalti_status
):
    rsps.post("https://khalti.test/api/v2/payment/verify/", **answer)
    with pytest.raises(error) as info:
        client.verify("tok", 1000)
    assert (info.value.endpoint, info.value.khalti_status) == ("verify", khalti_status)
    assert SECRET not in f"{info.value!r} {info.value}"
    assert "<html>" not in str(info.value)


def test_each_refusal_carries_the_http_status_the_api_answers_with():
    # One place for the statuses: the exceptions, as DRF's APIException does.
    assert (KhaltiUnknownOrder.status_code, KhaltiInProgress.status_code) == (404, 409)
    assert (KhaltiTimeout.status_code, KhaltiConnectionError.status_code) == (504, 503)
    assert (KhaltiUnavailable.status_code, KhaltiVerificationFailed.status_code) == (502, 400)
