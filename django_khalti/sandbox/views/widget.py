"""What Khalti's widget calls from the buyer's browser, played by the sandbox.

The spec, as read from Khalti's real widget (npm ``khalti-checkout-web`` 2.2.0,
``dist/``), so that the real script runs against these views when a browser is
pointed here (tests/system/test_real_widget.py routes Khalti's hosts to them):

* **Loader** (``khalti-checkout.iffe.js``): ``new KhaltiCheckout(config)`` appends a
  hidden iframe ``https://khalti.s3.ap-south-1.amazonaws.com/KPG/dist/2020.12.22.0.0.0/
  payment_gateway_widget.html`` (``widget.js``, ``main.css`` and icons beside it), id
  ``khalti-widget-<Date.now()>``. ``show(updates)`` merges ``updates`` into the config,
  validates it (publicKey, productUrl, productIdentity, productName, eventHandler,
  amount required; merchantData an object, paymentPreference an array; eventHandler
  .onSuccess a function, onError/onClose functions) and throws ``Error(JSON of the
  errors)``, then posts ``{realm: "paymentInfo", payload: config less eventHandler,
  + widgetId, source: "checkout_v2.1"}`` to the iframe. The iframe answers with
  ``{realm, payload}`` messages: ``walletPaymentVerification`` → ``onSuccess(payload)``
  then ``hide()``; ``widgetError`` → ``onError``; ``hide`` → ``hide()``, ``onClose``.
  They are matched by ``payload.widget_id`` alone, with no origin check.
* **Tabs**: ``paymentPreference`` (default KHALTI, EBANKING, MOBILE_BANKING,
  CONNECT_IPS, SCT), the first one open.
* **Wallet** (KHALTI): ``POST api/v2/payment/initiate/``, JSON (axios), no
  Authorization header, cross-origin from the S3 host (so CORS, with a preflight):
  ``{public_key, mobile, transaction_pin, amount, product_identity, product_name,
  product_url}`` plus the config's other keys (``widgetId``, ``source``, ``merchantData``
  ...). An answer with a ``token`` (Khalti: ``{token, pin_created,
  pin_created_message}``) opens the OTP field. A refusal is read from ``mobile``,
  ``transaction_pin``, ``amount``, ``public_key`` (lists of messages), ``detail``
  (shown as HTML) and ``tries_remaining``.
  Then ``POST api/v2/payment/confirm/`` ``{public_key, token, confirmation_code,
  transaction_pin}``: an answer with an ``idx`` is **the confirm answer** ``{idx, token,
  amount (a number), mobile, product_identity, product_name, product_url}``; the iframe
  adds ``widget_id`` and posts it to the page (``walletPaymentVerification``). A
  refusal shows ``confirmation_code`` (a list) or ``detail``; any other body goes to
  the page's ``onError`` (``widgetError``).
* **Bank tabs**: ``GET api/v2/bank/?payment_type=sdkebanking&page_size=100``
  (e-banking) or ``payment_type=mobilecheckout`` (mobile banking) → ``{records: [{idx,
  name, short_name, logo}]}``. The buyer picks a bank and types a mobile number; the
  iframe ``window.open``s ``ebanking/initiate/?public_key=&product_identity=
  &product_name=&amount=&source=&bank=<idx>&mobile=&product_url=&return_url`` plus the
  config's other keys (mobile banking adds ``payment_type=mobilecheckout``; connectIPS
  ``payment_type=connectips&bank=connectips``; SCT ``payment_type=sct&bank=npay``), the
  values not URL-encoded. The result comes back **only through ``window.opener``** (the
  iframe): ``opener.postMessage({realm: "ebankingResponse", payload}, "*")``; a payload
  with an ``idx`` reaches ``onSuccess`` as ``{widget_id, ...payload}``, any other
  ``onError``. A pay page whose Cross-Origin-Opener-Policy is ``same-origin`` (Django's
  default) loses the opener: the buyer pays and ``onSuccess`` never runs.

Every transaction made here verifies through ``api/v2/payment/verify/`` (merchant.py).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping
from typing import Any

from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods
from rest_framework import status
from rest_framework.parsers import JSONParser
from rest_framework.permissions import AllowAny
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from .. import serializers
from ..models import (
    BANKS,
    TEST_MOBILES,
    TEST_MPIN,
    TEST_OTP,
    SandboxTransaction,
    bank_name,
    new_id,
    rupees,
)
from .merchant import invalid, khalti_setting

#: A bank's logo: an inline image, so that nothing is fetched from elsewhere.
LOGO = (
    "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 32 32'%3E"
    "%3Crect width='32' height='32' rx='6' fill='%235c2d91'/%3E%3Ctext x='16' y='21' "
    "font-size='12' text-anchor='middle' fill='white'%3EBANK%3C/text%3E%3C/svg%3E"
)


def public_key_ok(public_key: str) -> bool:
    """Whether ``public_key`` is the merchant's public key (``KHALTI["PUBLIC_KEY"]``)."""
    expected = khalti_setting("PUBLIC_KEY")
    return bool(expected) and hmac.compare_digest(public_key.encode(), expected.encode())


INVALID_PUBLIC_KEY = {"public_key": ["Invalid public key."]}


def _new_transaction(
    data: dict[str, Any], state: str, funded_by: str = SandboxTransaction.FundedBy.WALLET
) -> SandboxTransaction:
    """A widget payment of the buyer's (validated) request, with its token, paid from
    a wallet or (the bank popup) a bank.
    """
    return SandboxTransaction.objects.create(
        kind=SandboxTransaction.Kind.WIDGET,
        state=state,
        funded_by=funded_by,
        token=new_id(),
        amount=data["amount"],
        mobile=data["mobile"],
        product_identity=data["product_identity"],
        product_name=data["product_name"],
        product_url=data.get("product_url", ""),
    )


class WidgetAPIView(APIView):
    """Called by the widget in the buyer's browser, from Khalti's S3 host: the public
    key in the body, no session, CORS open to any origin (withCredentials is off).
    """

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]
    renderer_classes = [JSONRenderer]
    parser_classes = [JSONParser]

    def finalize_response(
        self, request: Request, response: Response, *args: Any, **kwargs: Any
    ) -> Response:
        """The response, open to the widget's cross-origin calls (CORS)."""
        response = super().finalize_response(request, response, *args, **kwargs)
        response["Access-Control-Allow-Origin"] = "*"
        response["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
        response["Access-Control-Allow-Headers"] = "Content-Type, Accept"
        response["Access-Control-Max-Age"] = "600"
        return response


def _buyers_payment(serializer: Any, state: str) -> SandboxTransaction | Response:
    """A new transaction in ``state`` from the buyer's input in ``serializer``, or
    the refusal of that input (its field errors, or an invalid public key).
    """
    if not serializer.is_valid():
        return invalid(serializer)
    data = serializer.validated_data
    if not public_key_ok(data["public_key"]):
        return Response(INVALID_PUBLIC_KEY, status=status.HTTP_400_BAD_REQUEST)
    return _new_transaction(data, state)


class InitiateView(WidgetAPIView):
    """``POST api/v2/payment/initiate/``: Khalti id and MPIN checked, a pending
    transaction, its token; the OTP (``TEST_OTP``) "sent" to the buyer.
    """

    def post(self, request: Request) -> Response:
        """A token for the buyer's payment, or Khalti's refusal."""
        record = _buyers_payment(
            serializers.WidgetInitiateSerializer(data=request.data),
            SandboxTransaction.State.INITIATED,
        )
        if isinstance(record, Response):
            return record
        return Response({"token": record.token, "pin_created": True, "pin_created_message": ""})


class ConfirmView(WidgetAPIView):
    """``POST api/v2/payment/confirm/``: the OTP and MPIN; the pending transaction
    becomes Confirmed (once), ready for the merchant's verify.
    """

    def post(self, request: Request) -> Response:
        """The confirm answer, or Khalti's refusal of the code or the PIN."""
        serializer = serializers.WidgetConfirmSerializer(data=request.data)
        if not serializer.is_valid():
            return invalid(serializer)
        data = serializer.validated_data
        if not public_key_ok(data["public_key"]):
            return Response(INVALID_PUBLIC_KEY, status=status.HTTP_400_BAD_REQUEST)
        if data["transaction_pin"] != TEST_MPIN:
            return Response(
                {"detail": f"Incorrect Khalti PIN (the sandbox's is {TEST_MPIN})."},
                status=status.HTTP_400_BAD_REQUEST,
            )
        if data["confirmation_code"] != TEST_OTP:
            return Response(
                {
                    "confirmation_code": [
                        f"Invalid confirmation code (the sandbox's is {TEST_OTP})."
                    ]
                },
                status=status.HTTP_400_BAD_REQUEST,
            )
        with transaction.atomic():
            won = SandboxTransaction.objects.filter(
                token=data["token"], state=SandboxTransaction.State.INITIATED
            ).update(state=SandboxTransaction.State.CONFIRMED)
        if not won:
            return Response(
                {"detail": "Invalid token: no payment is waiting for this code."},
                status=status.HTTP_400_BAD_REQUEST,
            )
        return Response(SandboxTransaction.objects.get(token=data["token"]).confirm_answer())


class BankListView(WidgetAPIView):
    """``GET api/v2/bank/?payment_type=sdkebanking|mobilecheckout``: a page of banks."""

    def get(self, request: Request) -> Response:
        """The sandbox's banks of ``payment_type``, as one page."""
        banks = [
            {**bank, "logo": LOGO} for bank in BANKS.get(request.GET.get("payment_type", ""), [])
        ]
        return Response(
            {
                "total_pages": 1,
                "total_records": len(banks),
                "next": None,
                "previous": None,
                "record_range": [1, len(banks)] if banks else [0, 0],
                "current_page": 1,
                "records": banks,
            }
        )


class WidgetPayView(WidgetAPIView):
    """The stand-in widget's one-step wallet Pay (Khalti id and MPIN, no OTP): answers
    the confirm answer, as Khalti's confirm does; the script adds its ``widget_id``.
    """

    def post(self, request: Request) -> Response:
        """The confirm answer of a wallet payment, or the refusal of the buyer's input."""
        record = _buyers_payment(
            serializers.WidgetPaySerializer(data=request.data), SandboxTransaction.State.CONFIRMED
        )
        if isinstance(record, Response):
            return record
        return Response(record.confirm_answer())


@csrf_exempt  # the bank's page, reached through Khalti's host: no session of ours
@never_cache
@require_http_methods(["GET", "POST"])
def bank_initiate(request: HttpRequest) -> HttpResponse:
    """``ebanking/initiate/?...``: the bank popup. "Pay" (POST, the same query) takes the
    payment and the page reports to ``window.opener`` as Khalti's bank flow does.
    """
    payment = serializers.BankInitiateSerializer(data=request.GET.dict())
    errors: Mapping[str, Any] | None
    if not payment.is_valid():
        errors = payment.errors
    elif not public_key_ok(payment.validated_data["public_key"]):
        errors = INVALID_PUBLIC_KEY
    else:
        errors = None
    context: dict[str, Any] = {"errors": errors}
    if not errors:
        data = payment.validated_data
        context.update(
            payment=data, bank=bank_name(data["bank"]), amount_rupees=rupees(data["amount"])
        )
        if request.method == "POST":
            record = _new_transaction(
                data, SandboxTransaction.State.CONFIRMED, SandboxTransaction.FundedBy.BANK
            )
            context["result"] = record.confirm_answer()
    status_code = 400 if errors else 200
    response = render(request, "khalti_sandbox/bank.html", context, status=status_code)
    # Khalti's pages send no Cross-Origin-Opener-Policy; Django's default (same-origin)
    # would cut the opener from this side as well.
    response["Cross-Origin-Opener-Policy"] = "unsafe-none"
    return response


@never_cache
def checkout_js(request: HttpRequest) -> HttpResponse:
    """``khalti-checkout.js``: a stand-in for Khalti's widget script, same API."""
    banks = {kind: [[bank["idx"], bank["name"]] for bank in banks] for kind, banks in BANKS.items()}
    return render(
        request,
        "khalti_sandbox/khalti-checkout.js",
        {
            "pay_url": request.build_absolute_uri(reverse("khalti_sandbox:widget-pay")),
            "bank_url": request.build_absolute_uri(reverse("khalti_sandbox:bank-initiate")),
            "banks": json.dumps(banks),
            "test_mobile": TEST_MOBILES[1],
            "test_mpin": TEST_MPIN,
        },
        content_type="application/javascript; charset=utf-8",
    )
