"""The JSON API's thin views: validate, call the service, serialize.

Nothing is decided here. The ePayment flow's browser pages are in :mod:`.pages`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import IO, Any, cast

from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.db import DatabaseError, transaction
from django.http import HttpRequest
from django.utils.decorators import method_decorator
from django.utils.translation import gettext_lazy as _
from rest_framework import status
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import ParseError
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.permissions import AllowAny
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import Serializer
from rest_framework.settings import api_settings
from rest_framework.throttling import BaseThrottle, SimpleRateThrottle
from rest_framework.views import APIView

from . import services
from .conf import khalti_settings
from .exceptions import (
    KhaltiAlreadyPaid,
    KhaltiAmountMismatch,
    KhaltiAmountTooSmall,
    KhaltiConfigurationError,
    KhaltiConnectionError,
    KhaltiError,
    KhaltiInitiationRejected,
    KhaltiInProgress,
    KhaltiNeedsReview,
    KhaltiTimeout,
    KhaltiTokenUsed,
    KhaltiUnavailable,
    KhaltiUnknownOrder,
    KhaltiVerificationFailed,
)
from .schema import KhaltiSchema
from .serializers import (
    EpaymentInitiateSerializer,
    EpaymentSerializer,
    VerifiedSerializer,
    VerifySerializer,
)

logger = logging.getLogger(__name__)


def error_response(exc: KhaltiError) -> Response:
    """The API's answer to a refusal: ``{"code", "detail", ...}`` with its HTTP status."""
    return Response(
        {"code": exc.code, "detail": str(exc.detail), **exc.extra()}, status=exc.status_code
    )


class KhaltiJSONParser(JSONParser):
    """DRF's JSON parser, with a body nested too deep for Python a parse error."""

    def parse(
        self,
        stream: IO[Any],
        media_type: str | None = None,
        parser_context: Mapping[str, Any] | None = None,
    ) -> Any:
        """The parsed JSON body; a :class:`ParseError` (HTTP 400) for one nested too deeply."""
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError(_("The JSON body is nested too deeply.")) from None


class KhaltiRateThrottle(SimpleRateThrottle):
    """Throttles dj-khalti's API at ``REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]["khalti"]``
    (e.g. ``"30/min"``), per user or else per client address; without that rate, not at all.

    The rate is read on each request, so a project need not configure it (DRF's
    own scoped throttle would fail without it) and ``override_settings`` works.
    """

    scope = "khalti"

    def __init__(self) -> None:
        pass  # SimpleRateThrottle reads the rate here, once; it is read per request instead.

    def allow_request(self, request: Request, view: APIView) -> bool:
        """Whether the request is within the ``khalti`` rate; always, when none is set."""
        # drf-stubs types the rates as numbers; DRF's are strings such as "30/min".
        self.rate = cast("str | None", api_settings.DEFAULT_THROTTLE_RATES.get(self.scope))
        if self.rate is None:
            return True
        self.num_requests, self.duration = self.parse_rate(self.rate)
        return super().allow_request(request, view)

    def get_cache_key(self, request: Request, view: APIView) -> str:
        """The throttle's key: the user's id when logged in, else the client's address."""
        user = request.user
        ident = user.pk if user and user.is_authenticated else self.get_ident(request)
        return self.cache_format % {"scope": self.scope, "ident": ident}


#: The refusals of every view that asks Khalti: its answer is unknown (502, 503, 504),
#: and the payment stays pending.
UNKNOWN_OUTCOME = (KhaltiUnavailable, KhaltiConnectionError, KhaltiTimeout)


# The payment row must be committed before Khalti is called, even in a project
# with ATOMIC_REQUESTS: these views manage their own transactions.
@method_decorator(transaction.non_atomic_requests, name="dispatch")
class KhaltiAPIView(APIView):
    """The base of dj-khalti's API views: JSON only, open to anyone, throttled.

    Refusals become ``{"code", "detail"}`` answers (:func:`error_response`); a
    misconfiguration or an unreachable database a 503, never a 500. No view runs
    inside ``ATOMIC_REQUESTS``' transaction.
    """

    permission_classes = [AllowAny]
    renderer_classes = [JSONRenderer]
    parser_classes = [KhaltiJSONParser, FormParser, MultiPartParser]
    schema = KhaltiSchema()

    #: What the view takes and answers, for its OpenAPI schema (django_khalti.schema):
    #: the body, the success answer and its status, and the refusals it may raise.
    request_serializer: type[Serializer[Any]]
    response_serializer: type[Serializer[Any]]
    success_status: int
    refusals: tuple[type[KhaltiError], ...]

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        """Read the body through Django first, so an oversized one is refused (HTTP 400)."""
        # Django refuses a body over DATA_UPLOAD_MAX_MEMORY_SIZE (RequestDataTooBig, a
        # 400 below) only when it is read as HttpRequest.body; DRF before 3.18 streams
        # JSON and form bodies to its parsers unchecked. Read it here, whatever DRF.
        _ = request.body
        super().initial(request, *args, **kwargs)

    def validated(self, request: Request) -> dict[str, Any]:
        """The body, validated by :attr:`request_serializer` (a 400 when it is not)."""
        serializer = self.request_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        return dict(serializer.validated_data)

    def answer(self, instance: Any) -> Response:
        """``instance`` through :attr:`response_serializer`, with :attr:`success_status`."""
        return Response(self.response_serializer(instance).data, status=self.success_status)

    def get_throttles(self) -> list[BaseThrottle]:
        """The project's throttles as its settings are now (or the view's own), and :class:`KhaltiRateThrottle`."""
        # The project's throttles as its settings are now (APIView's class attribute
        # froze them at import), unless a subclass named its own; then ours.
        classes = (
            _imported_classes(api_settings.DEFAULT_THROTTLE_CLASSES)
            if self.throttle_classes is APIView.throttle_classes
            else self.throttle_classes
        )
        return [throttle() for throttle in classes] + [KhaltiRateThrottle()]

    def handle_exception(self, exc: Exception) -> Response:
        """A JSON answer for every failure: refusals, oversized bodies, misconfiguration, database errors."""
        if isinstance(exc, (RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent)):
            exc = ParseError(_("The request is too large."))  # JSON, not Django's HTML 400
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
                {
                    "code": "unavailable",
                    "detail": _("Payments are briefly unavailable. Try again shortly."),
                },
                status=status.HTTP_503_SERVICE_UNAVAILABLE,
            )
        return super().handle_exception(exc)


class VerifyView(KhaltiAPIView):
    """Verify a Khalti widget payment: POST the widget's ``onSuccess`` payload."""

    request_serializer = VerifySerializer
    response_serializer = VerifiedSerializer
    success_status = status.HTTP_200_OK
    refusals = (
        KhaltiUnknownOrder,
        KhaltiAmountMismatch,
        KhaltiVerificationFailed,
        KhaltiNeedsReview,
        KhaltiTokenUsed,
        KhaltiAlreadyPaid,
        KhaltiInProgress,
        *UNKNOWN_OUTCOME,
    )

    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Verify the payment: 200 ``{"status": "verified", "payment": {...}}``.

        A refusal answers ``{"code", "detail"}`` with its code's HTTP status
        (400, 404, 409; 502, 503 or 504 when Khalti's answer is unknown and the
        payment stays pending).
        """
        # The page that paid had the public key: a secret-shaped one is refused
        # (503 not_configured, logged), as {% khalti_widget %} refuses to publish it.
        khalti_settings.refuse_secret_as_public_key()
        payment = services.verify_payment(request, **self.validated(request))
        return self.answer({"status": "verified", "payment": payment})


class EpaymentInitiateView(KhaltiAPIView):
    """Start a Khalti ePayment for an order; answers where to send the buyer."""

    request_serializer = EpaymentInitiateSerializer
    response_serializer = EpaymentSerializer
    success_status = status.HTTP_201_CREATED
    refusals = (
        KhaltiUnknownOrder,
        KhaltiAmountTooSmall,
        KhaltiInitiationRejected,
        KhaltiAlreadyPaid,
        KhaltiInProgress,
        *UNKNOWN_OUTCOME,
    )

    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Start the ePayment: 201 ``{"payment", "pidx", "payment_url", "expires_at"}``.

        The amount is the shop's resolver's; the request names only the order.
        A refusal answers ``{"code", "detail"}`` (and Khalti's field ``errors``
        when it refused the request) with its code's HTTP status.
        """
        return self.answer(services.start_epayment(request, **self.validated(request)))


def _imported_classes(setting: Any) -> Any:
    """A class-list setting of DRF's, which ``api_settings`` hands over imported.

    (drf-stubs typed these as the dotted paths one writes up to 3.18.1, and as the
    classes from 3.18.2: typed here as neither, so that both read this code alike.)
    """
    return setting


def throttle_wait(request: HttpRequest) -> float | None:
    """Seconds a browser's request must wait under the API's throttles (the
    project's and :class:`KhaltiRateThrottle`, as :class:`KhaltiAPIView` applies
    them), or None when it may go on.
    """
    authentication: Sequence[type[BaseAuthentication]] = _imported_classes(
        api_settings.DEFAULT_AUTHENTICATION_CLASSES
    )
    api_request = Request(request, authenticators=[auth() for auth in authentication])
    view = KhaltiAPIView()
    view.request = api_request
    waits = [
        throttle.wait()
        for throttle in view.get_throttles()
        if not throttle.allow_request(api_request, view)
    ]
    return max((wait or 0 for wait in waits), default=None) if waits else None
