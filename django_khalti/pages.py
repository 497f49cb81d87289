"""The ePayment flow's pages for the browser (no JavaScript needed): the buyer's
Pay button (``epayment-start``) and where Khalti sends the buyer back
(``epayment-return``). Plain Django views, thin as the API's: validate, call the
service, render its outcome.
"""

from __future__ import annotations

import logging
import math
from typing import Any
from urllib.parse import urlencode

from django.db import DatabaseError
from django.db.transaction import non_atomic_requests
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render, resolve_url
from django.urls import NoReverseMatch
from django.utils.functional import Promise
from django.utils.translation import gettext_lazy as _
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.http import require_GET, require_http_methods
from rest_framework import status
from rest_framework.exceptions import APIException

from . import services
from .conf import khalti_settings
from .exceptions import (
    KhaltiConfigurationError,
    KhaltiError,
    KhaltiInProgress,
    KhaltiUnavailable,
    KhaltiUnknownOrder,
    KhaltiUnknownPayment,
)
from .models import Payment, rupees
from .views import throttle_wait

logger = logging.getLogger(__name__)

#: How often the "being confirmed" page reloads itself before it stops asking.
MAX_REFRESHES = 12


def _result_page(
    request: HttpRequest,
    *,
    payment: Payment | None = None,
    error: Exception | None = None,
    state: str | None = None,
    http: int = 200,
    refresh_after: int = 5,
) -> HttpResponse:
    """The result page: ``django_khalti/epayment_result.html``, overridable.

    ``state`` is one of ``verified``, ``pending``, ``failed``, ``refunded``,
    ``needs_review`` or ``error``; a pending page reloads itself a few times,
    ``refresh_after`` seconds apart.
    """
    if state is None:
        state = "error" if error is not None else _page_state(payment)
    refresh_url = None
    tries = request.GET.get("tries", "0")
    # The browser's word: "²" is a digit to isdigit(), and 5000 digits are too many for int().
    tries_done = (
        int(tries) if tries.isascii() and tries.isdigit() and len(tries) <= 3 else MAX_REFRESHES
    )
    if state == "pending" and tries_done < MAX_REFRESHES:
        query = request.GET.copy()
        query["tries"] = str(tries_done + 1)
        refresh_url = f"{request.path}?{query.urlencode()}"
    return render(
        request,
        "django_khalti/epayment_result.html",
        {
            "payment": payment,
            "state": state,
            "error": error,
            "refresh_url": refresh_url,
            "refresh_after": refresh_after,
        },
        status=http,
    )


def _page_state(payment: Payment | None) -> str:
    if payment is None:
        return "error"
    if payment.status in (Payment.Status.REFUNDED, Payment.Status.PARTIALLY_REFUNDED):
        return "refunded"
    return str(payment.status)


def _unavailable_page(request: HttpRequest, exc: Exception) -> HttpResponse:
    logger.error("dj-khalti could not serve %s: %s", request.path, exc, exc_info=exc)
    return _result_page(
        request,
        error=KhaltiUnavailable(_("Payments are not available right now.")),
        http=status.HTTP_503_SERVICE_UNAVAILABLE,
    )


def _throttled_page(
    request: HttpRequest, message: str | Promise, *, state: str
) -> HttpResponse | None:
    """The result page (in ``state``, saying ``message``) for a browser's request the
    API's throttles refuse: ``429`` with ``Retry-After``, a pending page reloading
    itself once the wait is over; or None when the request may go on.
    """
    try:
        wait = throttle_wait(request)
    except APIException as exc:  # e.g. malformed Basic credentials
        return _result_page(request, error=exc, http=exc.status_code)
    if wait is None:
        return None
    retry_after = max(math.ceil(wait), 1)
    response = _result_page(
        request,
        error=KhaltiError(message),
        state=state,
        http=status.HTTP_429_TOO_MANY_REQUESTS,
        refresh_after=retry_after,
    )
    response["Retry-After"] = str(retry_after)
    return response


@non_atomic_requests
@never_cache
@csrf_protect
@require_http_methods(["GET", "POST"])
def epayment_start(request: HttpRequest, product_identity: str) -> HttpResponse:
    """The buyer's ePayment button: GET shows the order's amount and a Pay button
    (``django_khalti/epayment_start.html``, overridable); POST, with the CSRF
    token and throttled like the API, starts the ePayment and sends the browser
    to Khalti (302).

    Starting a payment changes state, so a link (or an ``<img>`` on another
    site) never starts one. Nothing is taken from the browser but the order's
    reference, which the resolver checks; Khalti shows that reference as the
    product's name.
    """
    if len(product_identity) > 255 or not product_identity.isprintable():  # e.g. a NUL: no order's
        return _result_page(request, error=KhaltiUnknownOrder(), http=status.HTTP_404_NOT_FOUND)
    try:
        if request.method == "GET":
            order = services.epayment_order(request, product_identity)
            return render(
                request,
                "django_khalti/epayment_start.html",
                {"order": order, "amount_rupees": rupees(order.amount), "action": request.path},
            )
        throttled = _throttled_page(
            request, _("Too many payments were started. Try again shortly."), state="error"
        )
        if throttled is not None:
            return throttled
        payment = services.start_epayment(request, product_identity, product_identity)
    except KhaltiInProgress as exc:
        # A double click while the first request is still getting the link, or an
        # order another payment is being confirmed for: the page reloads (as a GET,
        # the Pay button) a few times.
        return _result_page(request, error=exc, state="pending", http=status.HTTP_409_CONFLICT)
    except KhaltiError as exc:
        return _result_page(request, error=exc, http=exc.status_code)
    except (KhaltiConfigurationError, DatabaseError) as exc:
        return _unavailable_page(request, exc)
    return redirect(payment.payment_url)


#: Parameters of Khalti's return URL worth logging. They are the browser's word,
#: never proof of anything; the payer's mobile is left out on purpose.
UNTRUSTED_RETURN_PARAMS = (
    "status",
    "purchase_order_id",
    "amount",
    "total_amount",
    "transaction_id",
)


@non_atomic_requests
@never_cache
@require_GET
def epayment_return(request: HttpRequest) -> HttpResponse:
    """Where Khalti sends the buyer back: settle by lookup, then show the outcome.

    Throttled like the API (a ``429`` "please wait" page that reloads itself once
    the wait is over), before anything is read. Khalti is asked about a payment
    at most once per ``KHALTI["ASK_SPACING"]``, whoever opens the page: meanwhile
    the buyer sees "being confirmed".
    """
    throttled = _throttled_page(
        request,
        _("Too many requests from your address. Your payment is safe; wait a moment."),
        state="pending",
    )
    if throttled is not None:
        return throttled
    pidx = request.GET.get("pidx", "")
    logger.info(
        "ePayment return for pidx %r; the browser claims %s",
        pidx,
        {key: request.GET[key] for key in UNTRUSTED_RETURN_PARAMS if key in request.GET},
    )
    if not pidx or len(pidx) > 255 or not pidx.isprintable():
        return _result_page(request, error=KhaltiUnknownPayment(), http=status.HTTP_404_NOT_FOUND)
    try:
        try:
            payment = services.settle_epayment_return(pidx)
        except (KhaltiUnavailable, KhaltiInProgress, KhaltiConfigurationError) as exc:
            if isinstance(exc, KhaltiConfigurationError):
                logger.error("dj-khalti is misconfigured: %s", exc, exc_info=exc)
            # The payment stays as it was; a reload or khalti_reconcile settles it.
            payment = Payment.objects.get(pidx=pidx)
            if payment.status == Payment.Status.FAILED:
                # Its re-check could not finish, or waits its turn (Khalti may have
                # completed it after all): not a failure page while that is unknown.
                return _result_page(request, payment=payment, state="pending")
    except KhaltiUnknownPayment as exc:
        return _result_page(request, error=exc, http=status.HTTP_404_NOT_FOUND)
    except DatabaseError as exc:
        return _unavailable_page(request, exc)
    targets: dict[str, Any] = {
        Payment.Status.VERIFIED: khalti_settings.SUCCESS_URL,
        Payment.Status.FAILED: khalti_settings.FAILURE_URL,
        Payment.Status.REFUNDED: khalti_settings.FAILURE_URL,
        Payment.Status.PARTIALLY_REFUNDED: khalti_settings.FAILURE_URL,
        Payment.Status.NEEDS_REVIEW: khalti_settings.FAILURE_URL,
    }
    target = targets.get(payment.status)
    if target:
        try:
            url = resolve_url(target)
        except NoReverseMatch:
            logger.error("KHALTI success/failure URL %r cannot be resolved.", target)
        else:
            return redirect(
                f"{url}{'&' if '?' in url else '?'}{urlencode({'payment': payment.pk})}"
            )
    return _result_page(request, payment=payment)
