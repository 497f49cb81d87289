"""Thin views: validate, call the service, serialize. Nothing is decided here."""

from __future__ import annotations

import logging
from typing import Any

from django.db import DatabaseError, transaction
from django.utils.decorators import method_decorator
from django.utils.translation import gettext_lazy as _
from rest_framework import status
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.permissions import AllowAny
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from . import services
from .exceptions import (
    KhaltiAlreadyPaid,
    KhaltiAmountMismatch,
    KhaltiConfigurationError,
    KhaltiConnectionError,
    KhaltiError,
    KhaltiInProgress,
    KhaltiTimeout,
    KhaltiTokenUsed,
    KhaltiUnavailable,
    KhaltiUnknownOrder,
    KhaltiVerificationFailed,
)
from .serializers import PaymentSerializer, VerifySerializer

logger = logging.getLogger(__name__)

#: The one table from refusals to HTTP codes. The most specific class wins.
HTTP_STATUS: dict[type[KhaltiError], int] = {
    KhaltiUnknownOrder: status.HTTP_404_NOT_FOUND,
    KhaltiAmountMismatch: status.HTTP_400_BAD_REQUEST,
    KhaltiTokenUsed: status.HTTP_409_CONFLICT,
    KhaltiAlreadyPaid: status.HTTP_409_CONFLICT,
    KhaltiInProgress: status.HTTP_409_CONFLICT,
    KhaltiVerificationFailed: status.HTTP_400_BAD_REQUEST,
    KhaltiTimeout: status.HTTP_504_GATEWAY_TIMEOUT,
    KhaltiConnectionError: status.HTTP_503_SERVICE_UNAVAILABLE,
    KhaltiUnavailable: status.HTTP_502_BAD_GATEWAY,
}


def error_response(exc: KhaltiError) -> Response:
    code = next(
        (HTTP_STATUS[cls] for cls in type(exc).__mro__ if cls in HTTP_STATUS),
        status.HTTP_400_BAD_REQUEST,
    )
    return Response({"code": exc.code, "detail": str(exc.detail)}, status=code)


# The payment row must be committed before Khalti is called, even in a project
# with ATOMIC_REQUESTS: these views manage their own transactions.
@method_decorator(transaction.non_atomic_requests, name="dispatch")
class KhaltiAPIView(APIView):
    permission_classes = [AllowAny]
    renderer_classes = [JSONRenderer]
    parser_classes = [JSONParser, FormParser, MultiPartParser]

    def handle_exception(self, exc: Exception) -> Response:
        if isinstance(exc, KhaltiError):
            return error_response(exc)
        if isinstance(exc, KhaltiConfigurationError):
            # The shop's bug, not the buyer's: loud in the logs, a clean 503 outside.
            logger.error("dj-khalti is misconfigured: %s", exc, exc_info=exc)
            return Response(
                {"code": "not_configured", "detail": _("Payments are not available right now.")},
                status=status.HTTP_503_SERVICE_UNAVAILABLE,
            )
        if isinstance(exc, DatabaseError):
            # Our database failing is not the buyer's fault either; whatever was
            # written stays pending for a retry or khalti_reconcile.
            logger.error("dj-khalti could not reach its database: %s", exc, exc_info=exc)
            return Response(
                {"code": "unavailable", "detail": _("Payments are briefly unavailable. Try again shortly.")},
                status=status.HTTP_503_SERVICE_UNAVAILABLE,
            )
        return super().handle_exception(exc)


class VerifyView(KhaltiAPIView):
    """Verify a Khalti widget payment: POST the widget's ``onSuccess`` payload."""

    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = VerifySerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        payment = services.verify_payment(request, **serializer.validated_data)
        return Response({"status": "verified", "payment": PaymentSerializer(payment).data})
