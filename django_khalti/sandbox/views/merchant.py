"""Khalti's merchant API and hosted ePayment page, played by the sandbox.

Paths, bodies and answers follow /work/shared/khalti-api.md (what is known of
Khalti's API): the merchant API checks ``Authorization: Key <secret>`` against
``settings.KHALTI["SECRET_KEY"]``; the hosted page and the widget's dialog
take the buyer's sandbox Khalti id and MPIN. The API is CSRF-exempt: it is
"Khalti", called server to server.
"""

from __future__ import annotations

import hmac
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.db import transaction
from django.db.models import F, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods
from rest_framework import status
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.permissions import AllowAny
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from .. import serializers
from ..models import TEST_MOBILES, TEST_MPIN, SandboxEpayment, SandboxTransaction

INVALID_TOKEN = {"token": ["Invalid token."]}
NOT_FOUND = {"detail": "Not found."}


def khalti_setting(name: str) -> str:
    return str((getattr(settings, "KHALTI", None) or {}).get(name) or "")


class KhaltiKeyAuthentication(BaseAuthentication):
    """``Authorization: Key <secret key>``, as Khalti wants it; 401 otherwise."""

    keyword = "Key"

    def authenticate(self, request: Request) -> tuple[Any, str]:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        keyword, _, key = header.partition(" ")
        secret = khalti_setting("SECRET_KEY")
        if (
            keyword != self.keyword
            or not secret
            or not hmac.compare_digest(key.encode(), secret.encode())
        ):
            raise AuthenticationFailed("Invalid token.")
        return AnonymousUser(), key

    def authenticate_header(self, request: Request) -> str:
        return self.keyword


class SandboxAPIView(APIView):
    """A merchant API endpoint: the secret key required, JSON or form bodies, JSON answers."""

    authentication_classes = [KhaltiKeyAuthentication]
    permission_classes = [AllowAny]  # authentication above refuses a wrong key
    renderer_classes = [JSONRenderer]
    parser_classes = [JSONParser, FormParser, MultiPartParser]


def invalid(serializer: Any, **extra: Any) -> Response:
    return Response({**serializer.errors, **extra}, status=status.HTTP_400_BAD_REQUEST)


# --- widget flow (KPG-1) --------------------------------------------------------------


class VerifyView(SandboxAPIView):
    """``POST api/v2/payment/verify/``: completes a confirmed widget payment, once."""

    def post(self, request: Request) -> Response:
        serializer = serializers.VerifySerializer(data=request.data)
        if not serializer.is_valid():
            return invalid(serializer)
        token, amount = serializer.validated_data["token"], serializer.validated_data["amount"]
        # One winner: the token must still be Confirmed, for exactly this amount.
        with transaction.atomic():
            won = SandboxTransaction.objects.filter(
                token=token, state=SandboxTransaction.State.CONFIRMED, amount=amount
            ).update(state=SandboxTransaction.State.COMPLETED, completed_at=timezone.now())
        if not won:
            return Response(INVALID_TOKEN, status=status.HTTP_400_BAD_REQUEST)
        return Response(SandboxTransaction.objects.get(token=token).record())


class StatusView(SandboxAPIView):
    """``GET api/v2/payment/status/?token=&amount=``: the state of a payment (token or idx)."""

    def get(self, request: Request) -> Response:
        serializer = serializers.StatusSerializer(data=request.query_params)
        if not serializer.is_valid():
            return invalid(serializer)
        token, amount = serializer.validated_data["token"], serializer.validated_data["amount"]
        record = SandboxTransaction.objects.filter(Q(token=token) | Q(idx=token)).first()
        if record is None or record.amount != amount:
            return Response({"status": False, "state": "Error", "detail": "Transaction not found"})
        state = record.khalti_state()
        detail = {
            "Initiated": "Transaction is initiated",
            "Confirmed": "User has confirmed the transaction",
            "Complete": "Transaction is complete",
            "Refunded": "Transaction is refunded",
            "Partially refunded": "Transaction is partially refunded",
        }[state]
        return Response({"status": True, "state": state, "detail": detail})


class TransactionView(SandboxAPIView):
    """``GET api/v2/merchant-transaction/<idx>/``: Khalti's record of a transaction."""

    def get(self, request: Request, idx: str) -> Response:
        record = SandboxTransaction.objects.filter(idx=idx).first()
        if record is None:
            return Response(NOT_FOUND, status=status.HTTP_404_NOT_FOUND)
        return Response(record.record())


class RefundView(SandboxAPIView):
    """``POST api/merchant-transaction/<idx>/refund/``: all that remains, or ``amount`` of it."""

    def post(self, request: Request, idx: str) -> Response:
        serializer = serializers.RefundSerializer(data=request.data)
        if not serializer.is_valid():
            return invalid(serializer)
        wanted = serializer.validated_data.get("amount")
        with transaction.atomic():
            record = SandboxTransaction.objects.select_for_update().filter(idx=idx).first()
            if record is None:
                return Response(NOT_FOUND, status=status.HTTP_404_NOT_FOUND)
            remaining = record.refundable_amount
            if record.state != SandboxTransaction.State.COMPLETED:
                refusal = "Transaction is not complete; it cannot be refunded."
            elif remaining == 0:
                refusal = "Transaction is already refunded."
            elif wanted is not None and wanted > remaining:
                refusal = f"Refund amount exceeds the refundable amount ({remaining} paisa)."
            else:
                refusal = None
            if refusal:
                return Response({"detail": refusal}, status=status.HTTP_400_BAD_REQUEST)
            SandboxTransaction.objects.filter(pk=record.pk).update(
                refunded_amount=F("refunded_amount") + (wanted or remaining)
            )
        return Response({"detail": "Transaction refund successful."})


# --- ePayment (KPG-2) -----------------------------------------------------------------


class EpaymentInitiateView(SandboxAPIView):
    """``POST api/v2/epayment/initiate/``: a pidx and the hosted page to send the buyer to."""

    def post(self, request: Request) -> Response:
        serializer = serializers.InitiateSerializer(data=request.data)
        if not serializer.is_valid():
            return invalid(serializer, error_key="validation_error")
        data = serializer.validated_data
        epayment = SandboxEpayment.objects.create(
            amount=data["amount"],
            purchase_order_id=data["purchase_order_id"],
            purchase_order_name=data["purchase_order_name"],
            return_url=data["return_url"],
            website_url=data["website_url"],
            request=request.data.dict() if hasattr(request.data, "dict") else dict(request.data),
        )
        pay_url = request.build_absolute_uri(reverse("khalti_sandbox:pay"))
        return Response(
            {
                "pidx": epayment.pidx,
                "payment_url": f"{pay_url}?pidx={epayment.pidx}",
                "expires_at": timezone.localtime(epayment.expires_at).isoformat(),
                "expires_in": round((epayment.expires_at - timezone.now()).total_seconds()),
            }
        )


class EpaymentLookupView(SandboxAPIView):
    """``POST api/v2/epayment/lookup/``: HTTP 400 with the same body for Expired and User canceled."""

    def post(self, request: Request) -> Response:
        serializer = serializers.LookupSerializer(data=request.data)
        if not serializer.is_valid():
            return invalid(serializer, error_key="validation_error")
        epayment = (
            SandboxEpayment.objects.select_related("transaction")
            .filter(pidx=serializer.validated_data["pidx"])
            .first()
        )
        if epayment is None:
            return Response(
                {**NOT_FOUND, "error_key": "validation_error"}, status=status.HTTP_404_NOT_FOUND
            )
        body = epayment.lookup()
        failed = body["status"] in ("Expired", "User canceled")
        return Response(body, status=status.HTTP_400_BAD_REQUEST if failed else status.HTTP_200_OK)


@never_cache
@require_http_methods(["GET", "POST"])
def pay(request: HttpRequest) -> HttpResponse:
    """Khalti's hosted payment page: the buyer pays or cancels, and goes back (GET) to
    the merchant's ``return_url`` with Khalti's query parameters.
    """
    pidx = request.GET.get("pidx") or request.POST.get("pidx") or ""
    epayment = SandboxEpayment.objects.select_related("transaction").filter(pidx=pidx).first()
    if epayment is None:
        return render(request, "khalti_sandbox/pay.html", {"missing": True}, status=404)
    context: dict[str, Any] = {
        "epayment": epayment,
        "mobile": TEST_MOBILES[1],
        "mpin": TEST_MPIN,
        "test_mobiles": f"{TEST_MOBILES[0]} to {TEST_MOBILES[-1]}",
    }
    if (
        request.method == "POST"
        and epayment.status == SandboxEpayment.Status.INITIATED
        and not epayment.expired
    ):
        if request.POST.get("action") == "cancel":
            if _settle(epayment, SandboxEpayment.Status.USER_CANCELED):
                return redirect(_reloaded(epayment).return_url_with_result())
        else:
            payer = serializers.PayerSerializer(data=request.POST)
            if not payer.is_valid():
                context.update(errors=payer.errors, mobile=request.POST.get("mobile", ""), mpin="")
                return render(request, "khalti_sandbox/pay.html", context, status=400)
            if _settle(epayment, SandboxEpayment.Status.COMPLETED, payer.validated_data["mobile"]):
                return redirect(_reloaded(epayment).return_url_with_result())
        epayment = _reloaded(epayment)
        context["epayment"] = epayment
    # Paid, cancelled or expired already (or the page sent twice): say so, and offer
    # the way back to the merchant, as Khalti does.
    return render(request, "khalti_sandbox/pay.html", context)


def _reloaded(epayment: SandboxEpayment) -> SandboxEpayment:
    return SandboxEpayment.objects.select_related("transaction").get(pk=epayment.pk)


def _settle(epayment: SandboxEpayment, to: str, mobile: str = "") -> bool:
    """Pay or cancel an initiated ePayment; True for the one request that did it."""
    now = timezone.now()
    with transaction.atomic():
        record = None
        if to == SandboxEpayment.Status.COMPLETED:
            record = SandboxTransaction.objects.create(
                kind=SandboxTransaction.Kind.EPAYMENT,
                state=SandboxTransaction.State.COMPLETED,
                amount=epayment.amount,
                mobile=mobile,
                product_identity=epayment.purchase_order_id,
                product_name=epayment.purchase_order_name,
                product_url=epayment.website_url,
                completed_at=now,
            )
        won = SandboxEpayment.objects.filter(
            pk=epayment.pk, status=SandboxEpayment.Status.INITIATED, expires_at__gt=now
        ).update(status=to, mobile=mobile, transaction=record)
        if not won:
            transaction.set_rollback(True)
    return bool(won)
