"""Khalti's merchant API and hosted ePayment page, played by the sandbox.

What the merchant API answers is decided by Khalti's rules
(:mod:`django_khalti.rules`), the same the testing kit answers by: these views
read the request, show the sandbox's rows to the rules as a ledger, and send
back the rules' answer. The merchant API checks ``Authorization: Key <secret>``
against ``settings.KHALTI["SECRET_KEY"]``; the hosted page and the widget's
dialog take the buyer's sandbox Khalti id and MPIN. The API is CSRF-exempt: it
is "Khalti", called server to server.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods
from rest_framework import status
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import AuthenticationFailed, NotAuthenticated
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.permissions import AllowAny
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from ...rules import answers as rules
from ...rules.shapes import PAGE_SIZE, pay_refusal
from .. import serializers
from ..ledger import SandboxLedger
from ..models import TEST_MOBILES, TEST_MPIN, SandboxEpayment, SandboxTransaction


def khalti_setting(name: str) -> str:
    """``settings.KHALTI[name]`` as a string (``""`` when unset)."""
    return str((getattr(settings, "KHALTI", None) or {}).get(name) or "")


class KhaltiKeyAuthentication(BaseAuthentication):
    """``Authorization: Key <secret key>``, as Khalti wants it; 401 otherwise."""

    keyword = "Key"

    def authenticate(self, request: Request) -> tuple[Any, str]:
        """The anonymous merchant and its key; Khalti's 401 for any other key."""
        header = request.META.get("HTTP_AUTHORIZATION", "")
        refusal = rules.authorize(header, khalti_setting("SECRET_KEY"))
        if refusal is not None and refusal.rule == "auth.key":
            raise NotAuthenticated(refusal.body["detail"])
        if refusal is not None:
            raise AuthenticationFailed(refusal.body["detail"])
        return AnonymousUser(), header.partition(" ")[2]

    def authenticate_header(self, request: Request) -> str:
        """The ``WWW-Authenticate`` keyword, which makes DRF answer 401."""
        return self.keyword


class SandboxAPIView(APIView):
    """A merchant API endpoint: the secret key required, JSON or form bodies, JSON answers."""

    authentication_classes = [KhaltiKeyAuthentication]
    permission_classes = [AllowAny]  # authentication above refuses a wrong key
    renderer_classes = [JSONRenderer]
    parser_classes = [JSONParser, FormParser, MultiPartParser]


def invalid(serializer: Any, **extra: Any) -> Response:
    """HTTP 400 with a serializer's errors (and ``extra`` keys)."""
    return Response({**serializer.errors, **extra}, status=status.HTTP_400_BAD_REQUEST)


def params(data: Any) -> Mapping[str, Any]:
    """A request's body or query as the rules read it: a form's last values, or the JSON
    object (anything else as ``{"body": ...}``, which has none of the fields).
    """
    if hasattr(data, "dict"):
        return dict(data.dict())
    return data if isinstance(data, dict) else {"body": data}


def answered(answer: rules.Answer) -> Response:
    """The rules' answer as the sandbox's HTTP response."""
    return Response(answer.body, status=answer.status)


class VerifyView(SandboxAPIView):
    """``POST api/v2/payment/verify/``: completes a confirmed widget payment, once."""

    def post(self, request: Request) -> Response:
        """Khalti's answer to a verify."""
        return answered(rules.verify(params(request.data), SandboxLedger()))


class StatusView(SandboxAPIView):
    """``GET api/v2/payment/status/?token=&amount=``: the state of a payment (token or idx)."""

    def get(self, request: Request) -> Response:
        """Khalti's answer to a status call."""
        return answered(rules.status(params(request.query_params), SandboxLedger()))


class TransactionView(SandboxAPIView):
    """``GET api/v2/merchant-transaction/<idx>/``: Khalti's record of a transaction."""

    def get(self, request: Request, idx: str) -> Response:
        """Khalti's record of ``idx``, or 404."""
        return answered(rules.transaction(idx, SandboxLedger()))


class TransactionListView(SandboxAPIView):
    """``GET api/v2/merchant-transaction/?page=N`` (and the older ``api/merchant-transaction/``):
    the merchant's transactions, a page at a time, counted and sliced in SQL.
    """

    #: Transactions a page, unless ``?page_size=`` asks another (1 to 100).
    page_size = PAGE_SIZE

    def get(self, request: Request) -> Response:
        """A page of the merchant's transactions, or 404 for a page it has not."""
        url = request.build_absolute_uri()
        ledger = SandboxLedger()
        answer = rules.transaction_list(params(request.query_params), ledger, url, self.page_size)
        return answered(answer)


class RefundView(SandboxAPIView):
    """``POST api/merchant-transaction/<idx>/refund/``: all that remains, or ``amount`` of it."""

    def post(self, request: Request, idx: str) -> Response:
        """Khalti's answer to a refund, the row locked meanwhile."""
        with transaction.atomic():
            answer = rules.refund(idx, params(request.data), SandboxLedger(for_update=True))
        return answered(answer)


# --- ePayment (KPG-2) -----------------------------------------------------------------


class EpaymentInitiateView(SandboxAPIView):
    """``POST api/v2/epayment/initiate/``: a pidx and the hosted page to send the buyer to."""

    def post(self, request: Request) -> Response:
        """Khalti's answer to an initiate."""
        ledger = SandboxLedger(request)
        return answered(rules.initiate(params(request.data), ledger, timezone.now()))


class EpaymentLookupView(SandboxAPIView):
    """``POST api/v2/epayment/lookup/``: HTTP 400 with the same body for Expired and User canceled."""

    def post(self, request: Request) -> Response:
        """Khalti's answer to a lookup."""
        return answered(rules.lookup(params(request.data), SandboxLedger(), timezone.now()))


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
    if request.method == "POST" and pay_refusal(epayment.held(), timezone.now()) is None:
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
    """The ePayment as it is now in the database."""
    return SandboxEpayment.objects.select_related("transaction").get(pk=epayment.pk)


def _settle(epayment: SandboxEpayment, to: str, mobile: str = "") -> bool:
    """Pay or cancel an initiated ePayment; True for the one request that did it (the
    update's guard re-checks, in the database, what :func:`pay_refusal` allowed).
    """
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
