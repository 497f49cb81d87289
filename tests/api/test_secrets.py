"""What the kit lets out: the secret key and the payer's details never appear in a log
line, an exception, an error answer or an error report."""

from __future__ import annotations

import io
import json
import logging
import sys
import traceback
from datetime import timedelta

import pytest
import requests
from django.core.management import call_command
from django.utils import timezone
from django.views.debug import ExceptionReporter, get_default_exception_reporter_filter

from django_khalti import services
from django_khalti.models import Payment
from shop.models import Order

from ..conftest import SECRET, epayment_started, fixture
from .conftest import (
    INITIATE,
    RETURN,
    VERIFY,
)

pytestmark = [pytest.mark.django_db, pytest.mark.reliability]


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
    # Before a new refund, the refused one is re-checked read-only (Khalti may apply it late).
    expect_khalti.status("tok-ok", 1000, "status_complete")
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
