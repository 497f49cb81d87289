"""ePayment (KPG-2): start a payment link for an order, settle the buyer's return."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

from django.conf import settings
from django.db import connections, router
from django.db.models.expressions import CombinedExpression
from django.http import HttpRequest
from django.urls import reverse
from django.utils.crypto import salted_hmac
from django.utils.translation import gettext as _

from ..client import KhaltiClient, KhaltiInitiation
from ..conf import khalti_settings, website_url_is_sane
from ..exceptions import (
    KhaltiConfigurationError,
    KhaltiInitiationRejected,
    KhaltiInProgress,
    KhaltiRejected,
    KhaltiUnavailable,
    KhaltiUnknownPayment,
)
from ..models import DbNow, Payment
from .outbox import _due_exists, deliver_due
from .reconciliation import _rechecked, reconcile
from .settle import _claim_order
from .shop import epayment_order
from .state import _fail
from .writes import _held, _read_later

if TYPE_CHECKING:
    from rest_framework.request import Request

logger = logging.getLogger(__name__)

Status = Payment.Status


def start_epayment(
    request: HttpRequest | Request,
    product_identity: str,
    product_name: str,
    customer_info: dict[str, Any] | None = None,
    amount_breakdown: list[dict[str, Any]] | None = None,
    product_details: list[dict[str, Any]] | None = None,
) -> Payment:
    """Start an ePayment for the order and return its pending :class:`Payment`,
    whose ``payment_url`` the buyer is sent to.

    The amount is the resolver's, never the client's. While the order's
    ePayment link is still good, the same buyer (user, else session) asking
    again gets that same payment; anyone else gets a new link, and the old
    one, looked up and found unpaid, is superseded.
    """
    client = KhaltiClient.from_settings()
    # Everything that can fail on our side, before the order is claimed.
    website_url = _website_url(request)
    return_url = urljoin(website_url, reverse("django_khalti:epayment-return"))
    buyer = _buyer_of(request)
    order = epayment_order(request, product_identity)
    payment, created = _claim_order(
        client,
        product_identity,
        order,
        flow=Payment.Flow.EPAYMENT,
        purchase_order_name=product_name,
        started_by=buyer,
        reuse=lambda holder: (
            bool(buyer) and holder.started_by == buyer and _link_still_good(holder, order.amount)
        ),
    )
    if not created:
        return payment
    started = _initiate(
        client,
        payment,
        return_url=return_url,
        website_url=website_url,
        amount=order.amount,
        purchase_order_id=order.reference,
        purchase_order_name=product_name,
        customer_info=customer_info,
        amount_breakdown=amount_breakdown,
        product_details=product_details,
    )
    return _hand_over(payment, started)


def _initiate(client: KhaltiClient, payment: Payment, **asked: Any) -> KhaltiInitiation:
    """Khalti's initiation of the claimed ``payment`` (``asked``: initiate's
    arguments); a refusal, or no answer, fails the payment without a signal (the
    buyer never got a link to pay) and is raised for the buyer.
    """
    try:
        return client.initiate(**asked)
    except KhaltiRejected as exc:
        # Never started: the buyer paid nothing, so no payment_failed is sent.
        _fail(
            payment,
            _("Khalti refused to start the payment: %s") % exc.detail,
            exc.body,
            notify=False,
        )
        errors = {k: v for k, v in (exc.body or {}).items() if k != "error_key"}
        raise KhaltiInitiationRejected(exc.detail, errors=errors) from exc
    except KhaltiUnavailable as exc:
        # Whatever Khalti made of it, the buyer never got a link to pay.
        if not _fail(payment, _("Khalti could not be reached to start the payment."), notify=False):
            raise  # taken over meanwhile (a claim gone stale): it is pending, as exc says
        raise type(exc)(
            _("Khalti could not be reached, so the payment was not started. Try again shortly.")
        ) from None


def _hand_over(payment: Payment, started: KhaltiInitiation) -> Payment:
    """Store Khalti's link on ``payment`` and let go of its claim: the payment the
    buyer is sent to pay, if it is still ours and pending (else
    :class:`KhaltiInProgress`).
    """
    fields = {
        "pidx": started.pidx,
        "payment_url": started.payment_url,
        "expires_at": _expiry(started),
        "khalti_response": started.raw,
    }
    # The pidx is a fact about this row, stored whatever became of it meanwhile...
    Payment.objects.filter(pk=payment.pk).update(updated_at=DbNow(), **fields)
    # ...but the link goes to the buyer only if the row is still ours and pending.
    still_ours = Payment.objects.filter(
        _held(payment.attempts), pk=payment.pk, status=Status.PENDING
    ).update(claimed_at=None)
    if not still_ours:
        payment.refresh_from_db()
        if payment.status == Status.FAILED:
            raise KhaltiInProgress(
                _(
                    "The payment was not started: another payment for this order took its "
                    "place meanwhile. Try again."
                )
            )
        raise KhaltiInProgress()
    for name, value in fields.items():
        setattr(payment, name, value)
    payment.claimed_at = None
    _read_later(payment, "updated_at", *([] if started.expires_at else ["expires_at"]))
    return payment


def _expiry(started: KhaltiInitiation) -> datetime | CombinedExpression:
    """When the link expires: Khalti's time; else its ``expires_in``, or else its
    documented hour, from now on the database's clock (the one clock link ages are
    read on), never on this host's.
    """
    if started.expires_at is not None:
        return _on_database_clock(started.expires_at)
    return DbNow() + timedelta(seconds=started.expires_in or 3600)


def _on_database_clock(moment: datetime) -> datetime:
    """Khalti's aware ``moment`` as a column compared with :class:`DbNow` stores it.

    Without ``USE_TZ``, a database without time zones (SQLite, MySQL, MariaDB)
    refuses an aware time, and :class:`DbNow` reads UTC there: the moment is
    stored as a naive UTC time. PostgreSQL, and any database with ``USE_TZ``,
    store it as it is.
    """
    database = connections[router.db_for_write(Payment)]
    if settings.USE_TZ or database.features.supports_timezones:
        return moment
    return moment.astimezone(timezone.utc).replace(tzinfo=None)


def _website_url(request: HttpRequest | Request) -> str:
    """The shop's public origin, ``KHALTI["WEBSITE_URL"]``, that Khalti's return URL
    is built on: never the request's ``Host`` header, which the buyer (or an
    attacker) writes. Only with ``DEBUG`` does the request's origin stand in.
    """
    website_url = khalti_settings.WEBSITE_URL
    if website_url:
        if not website_url_is_sane(website_url):
            raise KhaltiConfigurationError(
                "KHALTI['WEBSITE_URL'] must be the shop's public origin, such as "
                f"'https://shop.example.com', not {website_url!r}."
            )
        return str(website_url)
    if settings.DEBUG:
        return f"{request.scheme}://{request.get_host()}"
    raise KhaltiConfigurationError(
        "KHALTI['WEBSITE_URL'] is not set: an ePayment's return URL is built on the shop's "
        "public origin, never on the request's Host header (check django_khalti.E005)."
    )


def _buyer_of(request: HttpRequest | Request) -> str:
    """Who is starting a payment: a keyed hash of the logged-in user, else of the
    session (saved now if new); empty when neither tells the buyer apart.
    """
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        who = f"user:{user.pk}"
    else:
        session = getattr(request, "session", None)
        if session is None:
            return ""
        if not session.session_key:
            session.save()
        if not session.session_key:
            return ""
        who = f"session:{session.session_key}"
    return salted_hmac("django_khalti.buyer", who, algorithm="sha256").hexdigest()


def _link_still_good(payment: Payment, amount: int) -> bool:
    """A pending ePayment for this amount whose link the buyer can still use (for a
    minute more, on the database's clock).
    """
    return bool(
        payment.flow == Payment.Flow.EPAYMENT
        and payment.status == Status.PENDING
        and payment.amount == amount
        and payment.payment_url
        and Payment.objects.filter(
            pk=payment.pk, expires_at__gt=DbNow() + timedelta(minutes=1)
        ).exists()
    )


def settle_epayment_return(pidx: str) -> Payment:
    """Settle the ePayment the buyer came back from, by asking Khalti's lookup.

    Only the ``pidx`` is taken from the return URL; everything else in it is
    the browser's word. A payment recorded failed is looked up again, read-only
    (the buyer may have paid after all: :func:`recheck_failed`). Khalti is
    asked at most once per ``KHALTI["ASK_SPACING"]`` about a payment, however
    often its return URL is opened (:func:`~.state.claim`). Returns the
    payment as it stands afterwards (still pending if Khalti says so, another
    worker is settling it right now, or Khalti was asked about it moments ago).
    Raises :class:`KhaltiUnknownPayment` for a pidx we never started,
    :class:`KhaltiInProgress` for a failed payment that could not be looked up
    again now (Khalti may have completed it since it was last asked), and
    :class:`KhaltiUnavailable` when Khalti could not be asked.
    """
    payment = (
        Payment.objects.filter(pidx=pidx, flow=Payment.Flow.EPAYMENT)
        .annotate(undelivered=_due_exists())
        .first()
    )
    if payment is None:
        raise KhaltiUnknownPayment()
    rechecked = True
    if payment.status == Status.PENDING:
        payment = reconcile(payment)  # an ePayment: settled by lookup
    elif payment.status == Status.FAILED:
        rechecked = _rechecked(payment)  # looked up again, read-only
    deliver_due(payment)  # what a dead worker or a raising receiver left undelivered
    if payment.status == Status.FAILED and not rechecked:
        raise KhaltiInProgress()
    return payment
