"""Business rules: expected amount, exactly-once, and every status change.

How a verification runs, and why it is safe under concurrency:

1. The shop's resolver gives the expected amount; the client's amount must
   equal it. Nothing else the browser says is trusted.
2. The payment row is inserted (pending) and committed **before** Khalti is
   called. Two unique columns make the insert the claim: ``token`` (one row a
   token) and ``order_claim`` (one live payment an order). Whoever inserts the
   row holds it and is the only one to call Khalti's verify.
3. An existing pending row is taken over only by a guarded ``UPDATE ... WHERE
   claimed_at IS NULL OR claimed_at < stale``: one winner. Since an earlier
   attempt may already have moved the money, the winner asks Khalti's
   read-only status endpoint first and verifies only if Khalti says the
   payment still awaits it.
4. No transaction or row lock is held while Khalti is called. The answer is
   settled by :func:`_transition`, the only place a status changes: a guarded
   ``UPDATE ... WHERE status = 'pending'`` whose winner queues the signal with
   ``on_commit``.
5. An unknown outcome (timeout, 5xx, garbage, our database failing) leaves the
   payment pending for a resubmission or reconciliation to settle.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

from django.core.exceptions import ObjectDoesNotExist, PermissionDenied, ValidationError
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import F, Q
from django.dispatch import Signal
from django.http import Http404, HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _

from .client import KhaltiClient, KhaltiTransaction
from .conf import khalti_settings
from .exceptions import (
    KhaltiAlreadyPaid,
    KhaltiAmountMismatch,
    KhaltiAmountTooSmall,
    KhaltiBadResponse,
    KhaltiConfigurationError,
    KhaltiInitiationRejected,
    KhaltiInProgress,
    KhaltiInvalidRefundAmount,
    KhaltiNotRefundable,
    KhaltiRefundFailed,
    KhaltiRefundInProgress,
    KhaltiRefundUnknown,
    KhaltiRejected,
    KhaltiTokenUsed,
    KhaltiUnavailable,
    KhaltiUnknownOrder,
    KhaltiUnknownPayment,
    KhaltiVerificationFailed,
)
from .models import Payment, Refund, order_key
from .signals import payment_failed, payment_refunded, payment_verified

if TYPE_CHECKING:
    # The project's user model or AnonymousUser, as django-stubs resolves request.user.
    from django.contrib.auth.models import _AnyUser
    from rest_framework.request import Request

logger = logging.getLogger(__name__)

Status = Payment.Status


# --- the shop's truth ---------------------------------------------------------


def expected_amount(request: HttpRequest | Request | None, product_identity: str) -> int:
    """The amount in paisa the shop expects for this order, from its resolver."""
    resolver = khalti_settings.AMOUNT_RESOLVER
    if not callable(resolver):
        raise KhaltiConfigurationError("KHALTI['AMOUNT_RESOLVER'] must name a callable.")
    try:
        amount = resolver(request, product_identity)
    except (ObjectDoesNotExist, ValidationError, ValueError, Http404):
        # A malformed reference (``int("abc")``, a bad UUID) is an unknown order.
        logger.info("The amount resolver found no order for %r.", product_identity, exc_info=True)
        amount = None
    except Exception as exc:
        raise KhaltiConfigurationError(
            f"KHALTI['AMOUNT_RESOLVER'] raised {type(exc).__name__}: {exc}"
        ) from exc
    if amount is None:
        raise KhaltiUnknownOrder()
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise KhaltiConfigurationError(
            f"KHALTI['AMOUNT_RESOLVER'] must return a positive int (paisa) or None, not {amount!r}."
        )
    return amount


# --- widget flow ----------------------------------------------------------------


def verify_payment(
    request: HttpRequest | Request | None,
    *,
    token: str,
    amount: int,
    product_identity: str,
    idx: str = "",
) -> Payment:
    """Verify a widget payment for ``product_identity`` exactly once.

    Returns the verified :class:`Payment` (also when it was verified before).
    Raises a :class:`~django_khalti.exceptions.KhaltiError` for every refusal,
    and :class:`~django_khalti.exceptions.KhaltiUnavailable` when Khalti's
    answer is unknown (the payment then stays pending). ``idx`` is the
    transaction id the widget reported: only a hint (see ``Payment.claimed_idx``).
    """
    client = KhaltiClient.from_settings()  # a broken configuration fails before any write
    payment = Payment.objects.filter(token=token).first()
    created = False
    if payment is None:
        expected = _expected_for_new_payment(request, product_identity)
        if amount != expected:
            raise KhaltiAmountMismatch()
        payment, created = _claim_order(
            client, product_identity, expected, token=token, claimed_idx=idx
        )
    # A token is bound to the order and amount it was first verified for. The
    # amount stored is the shop's, so a known token needs no resolver.
    if payment.product_identity != product_identity or payment.amount != amount:
        raise KhaltiTokenUsed()
    if created:
        return _verified_or_raise(_settle(client, payment, _verify))
    if payment.status == Status.PENDING:
        if claim(payment):
            # An earlier attempt may have reached Khalti: ask before verifying again.
            return _verified_or_raise(_settle(client, payment, _ask_khalti))
        payment.refresh_from_db()
    return _verified_or_raise(payment)


def _expected_for_new_payment(request: HttpRequest | Request | None, product_identity: str) -> int:
    """The shop's amount; a paid order the resolver no longer knows is ``already_paid``."""
    try:
        return expected_amount(request, product_identity)
    except KhaltiUnknownOrder:
        if Payment.objects.filter(
            order_claim=order_key(product_identity), status__in=Payment.PAID_STATUSES
        ).exists():
            raise KhaltiAlreadyPaid() from None
        raise


def reconcile(payment: Payment) -> Payment:
    """Settle a pending payment from what Khalti says of it now.

    Returns the payment as it stands afterwards: still pending when Khalti
    cannot tell yet, or when another worker holds it right now. Raises
    :class:`~django_khalti.exceptions.KhaltiUnavailable` when Khalti could not
    be asked.
    """
    client = KhaltiClient.from_settings()
    if payment.status == Status.PENDING and claim(payment):
        return _settle(client, payment, _ask_khalti)
    payment.refresh_from_db()
    return payment


def pending_batch(
    created_before: datetime, size: int, after: tuple[datetime, uuid.UUID] | None = None
) -> tuple[list[Payment], tuple[datetime, uuid.UUID] | None]:
    """Up to ``size`` pending payments created before ``created_before``, oldest first.

    Rows come after the ``(created_at, pk)`` cursor ``after``. Rows another
    reconciler is selecting right now (``select_for_update(skip_locked=True)``)
    or holds by a fresh claim are passed over, so several reconcilers on
    several hosts share the work. Each payment must still be won with
    :func:`claim` just before it is settled: the claim, not this selection,
    makes sure no payment is settled twice. Returns the batch and the cursor
    for the next one (None when there is none).
    """
    rows = Payment.objects.pending().filter(created_at__lt=created_before).filter(_claimable())
    if after is not None:
        created_at, pk = after
        rows = rows.filter(Q(created_at__gt=created_at) | Q(created_at=created_at, pk__gt=pk))
    with transaction.atomic():
        batch = list(rows.order_by("created_at", "pk").select_for_update(skip_locked=True)[:size])
    cursor = (batch[-1].created_at, batch[-1].pk) if len(batch) == size else None
    return batch, cursor


def settle_claimed(payment: Payment) -> Payment:
    """Ask Khalti about a payment this worker has won with :func:`claim`, and record
    the answer. Raises :class:`KhaltiUnavailable` when Khalti could not be asked.
    """
    return _settle(KhaltiClient.from_settings(), payment, _ask_khalti)


def _verified_or_raise(payment: Payment) -> Payment:
    if payment.status in Payment.PAID_STATUSES and payment.verified_at is not None:
        return payment
    if payment.status in Payment.PAID_STATUSES:
        raise KhaltiVerificationFailed(_("Khalti reports this payment refunded."))
    if payment.status == Status.FAILED:
        raise KhaltiVerificationFailed(payment.failure_reason or None)
    raise KhaltiInProgress()


def _claim_order(
    client: KhaltiClient,
    product_identity: str,
    amount: int,
    *,
    reuse: Callable[[Payment], bool] | None = None,
    **fields: Any,
) -> tuple[Payment, bool]:
    """Insert (and so claim) a new payment for the order; or the row that beat us to it.

    The insert claims the order (``order_claim``) and, for the widget, the
    token. When the order is taken by a pending payment, that payment is
    settled with Khalti first (if no one else is at it): only if it failed
    does the new one go on. ``reuse`` may accept the holder as the answer
    (an ePayment whose link is still good). Returns the payment and whether
    it was created.
    """
    token = fields.get("token")
    for _attempt in range(3):
        try:
            with transaction.atomic(durable=True):
                payment = Payment.objects.create(
                    product_identity=product_identity,
                    amount=amount,
                    order_claim=order_key(product_identity),
                    claimed_at=timezone.now(),
                    attempts=1,
                    **fields,
                )
            return payment, True
        except IntegrityError:
            pass  # The same token inserted concurrently, or the order is taken.
        raced = Payment.objects.filter(token=token).first() if token else None
        if raced is not None:
            return raced, False
        holder = Payment.objects.filter(order_claim=order_key(product_identity)).first()
        if holder is None:
            continue  # the holder failed and let go of the order in between
        if reuse is not None and reuse(holder):
            return holder, False
        if holder.status == Status.PENDING and claim(holder):
            with contextlib.suppress(KhaltiUnavailable):
                _settle(client, holder, _ask_khalti)
        if holder.status in Payment.PAID_STATUSES:
            raise KhaltiAlreadyPaid()
        if holder.status == Status.PENDING:
            raise KhaltiInProgress(
                _("Another payment for this order is being confirmed. Try again shortly.")
            )
    raise KhaltiInProgress()


def claim(payment: Payment) -> bool:
    """Take a pending payment to call Khalti about it; True for the one winner."""
    now = timezone.now()
    # Durable: a claim inside a caller's transaction would not be seen by other
    # workers before Khalti is called (Django raises RuntimeError instead).
    with transaction.atomic(durable=True):
        won = (
            Payment.objects.filter(pk=payment.pk, status=Status.PENDING)
            .filter(_claimable(now))
            .update(claimed_at=now, attempts=F("attempts") + 1, updated_at=now)
        )
    if won:
        payment.claimed_at = now
    return bool(won)


def _claimable(now: datetime | None = None) -> Q:
    """Nobody holds the payment, or its holder's claim is stale (the worker died)."""
    stale = (now or timezone.now()) - timedelta(seconds=khalti_settings.stale_after)
    return Q(claimed_at__isnull=True) | Q(claimed_at__lt=stale)


def _release(payment: Payment) -> None:
    """Let go of a claim after an unknown outcome, so a retry need not wait."""
    try:
        Payment.objects.filter(
            pk=payment.pk, status=Status.PENDING, claimed_at=payment.claimed_at
        ).update(claimed_at=None, updated_at=timezone.now())
    except DatabaseError:
        logger.exception("Could not release the claim on payment %s.", payment.pk)


def _settle(
    client: KhaltiClient, payment: Payment, ask: Callable[[KhaltiClient, Payment], None]
) -> Payment:
    """Call Khalti through ``ask`` while holding the claim, then record its answer."""
    try:
        ask(client, payment)
    except KhaltiUnavailable:
        _release(payment)
        raise
    except DatabaseError as exc:
        # Khalti answered but we could not record it: the claim goes stale and a
        # resubmission or reconciliation asks Khalti again.
        logger.exception("Could not record Khalti's answer for payment %s.", payment.pk)
        raise KhaltiUnavailable(
            _("The payment could not be recorded yet. It is pending; try again shortly.")
        ) from exc
    return payment


def _verify(client: KhaltiClient, payment: Payment) -> None:
    try:
        record = client.verify(payment.token or "", payment.amount)
    except KhaltiRejected as exc:
        _fail(payment, _("Khalti rejected the payment: %s") % exc.detail, exc.body)
        return
    _record_transaction(payment, record)


def _ask_khalti(client: KhaltiClient, payment: Payment) -> None:
    """Settle a claimed payment from Khalti's read-only answer for its flow."""
    if payment.flow == Payment.Flow.EPAYMENT:
        _lookup(client, payment)
    else:
        _ask_status(client, payment)


def _ask_status(client: KhaltiClient, payment: Payment) -> None:
    try:
        answer = client.status(payment.token or "", payment.amount)
    except KhaltiRejected as exc:
        # A refusal from the status endpoint says nothing sure about the payment.
        raise KhaltiUnavailable() from exc
    state = answer.state.strip().lower()
    if state == "confirmed":
        # The buyer paid and Khalti waits for us: now verification is due.
        _verify(client, payment)
    elif state == "complete":
        _transition(payment, Status.VERIFIED, **_details(client, answer.raw, payment))
    elif state in ("error", "failed"):
        reason = _("Khalti reports the payment as %(state)s: %(detail)s") % {
            "state": answer.state,
            "detail": answer.detail,
        }
        _fail(payment, reason, answer.raw)
    elif state in ("refunded", "partially refunded"):
        _refunded_elsewhere(
            payment, full=state == "refunded", **_details(client, answer.raw, payment)
        )
    else:
        # Initiated, or a state we do not know: not ours to decide yet.
        logger.info("Khalti reports payment %s as %r; it stays pending.", payment.pk, answer.state)
        _release(payment)


#: How long after its link expired a Khalti answer of "not found" or "Initiated"
#: means the buyer can no longer pay: no money can move on a dead link.
EXPIRY_MARGIN = timedelta(minutes=15)


def _lookup(client: KhaltiClient, payment: Payment) -> None:
    if not payment.pidx:
        # Its initiation never finished: the buyer was never given a payment
        # link, so no money can have moved.
        _fail(payment, _("The payment was never started with Khalti."), notify=False)
        return
    expires_at = payment.expires_at or payment.created_at + timedelta(minutes=60)
    dead = timezone.now() > expires_at + EXPIRY_MARGIN
    try:
        answer = client.lookup(payment.pidx)
    except KhaltiRejected as exc:
        if dead:
            _fail(
                payment,
                _("Khalti does not know this payment (%(detail)s) and its link expired.")
                % {"detail": exc.detail},
                exc.body,
            )
            return
        # "Not found" for a live pidx Khalti gave us says nothing sure.
        raise KhaltiUnavailable() from exc
    if answer.pidx != payment.pidx:
        logger.warning("Khalti's lookup for %s answered about another pidx.", payment.pidx)
        raise KhaltiBadResponse()
    status = answer.status.strip().lower()
    fields: dict[str, Any] = {"khalti_response": answer.raw}
    if answer.transaction_id:
        fields["idx"] = answer.transaction_id  # what refunds need
    if answer.fee is not None:
        fields["fee_amount"] = answer.fee
    if status == "completed" and answer.total_amount is None:
        logger.warning("Khalti's lookup for %s is Completed without an amount.", payment.pidx)
        raise KhaltiBadResponse()
    if status == "completed" and answer.total_amount == payment.amount:
        _transition(payment, Status.VERIFIED, **fields)
    elif status == "completed":
        reason = _("Khalti's payment is for %(got)s paisa, the order is for %(want)s paisa.") % {
            "got": answer.total_amount,
            "want": payment.amount,
        }
        _fail(payment, reason, **fields)
    elif status in ("expired", "user canceled", "user cancelled") or (
        status == "initiated" and dead
    ):
        _fail(
            payment,
            _("Khalti reports the payment as %(status)s.") % {"status": answer.status},
            **fields,
        )
    elif status in ("refunded", "partially refunded"):
        _refunded_elsewhere(payment, full=status == "refunded", **fields)
    else:
        # Pending (hold: do not fulfil, do not fail), Initiated, or unknown.
        logger.info(
            "Khalti reports ePayment %s as %r; it stays pending.", payment.pk, answer.status
        )
        _release(payment)


def _refunded_elsewhere(payment: Payment, *, full: bool, **fields: Any) -> None:
    """A pending payment Khalti reports paid and then refunded outside this app.

    The shop never fulfilled the order, so no signal is due; what was refunded
    of a partial refund is unknown, so the app refunds nothing more of it.
    """
    _transition(
        payment,
        Status.REFUNDED if full else Status.PARTIALLY_REFUNDED,
        refunded_amount=payment.amount if full else payment.refunded_amount,
        notify=False,
        **fields,
    )


def _details(client: KhaltiClient, raw: dict[str, Any], payment: Payment) -> dict[str, Any]:
    """What to record of a paid transaction the status endpoint told us about.

    Khalti's status answer names no transaction id, fee or payer. The record is
    fetched by the ``idx`` the answer gives, or else by the one the buyer's
    page reported (``claimed_idx``), which is kept only if Khalti's record
    matches: completed, for this amount, and no other payment's. Failing to
    fetch it does not hold up the settlement; the payment is then verified
    without an ``idx`` (and cannot be refunded from the app).
    """
    fields: dict[str, Any] = {"khalti_response": raw}
    given = raw.get("idx")
    idx = given if isinstance(given, str) and given else payment.claimed_idx
    if not idx:
        return fields
    try:
        record = client.transaction(idx)
    except (KhaltiUnavailable, KhaltiRejected):
        logger.warning("Could not fetch Khalti's record %s for payment %s.", idx, payment.pk)
        return {**fields, "idx": given} if idx == given else fields
    matches = (
        record.idx == idx
        and record.state.strip().lower() in ("completed", "complete")
        and record.amount == payment.amount
        and not Payment.objects.filter(idx=idx).exclude(pk=payment.pk).exists()
    )
    if not matches:
        logger.warning(
            "Khalti's record %s does not match payment %s; not recorded.", idx, payment.pk
        )
        return fields
    return {**fields, "idx": idx, "fee_amount": record.fee_amount, "mobile": record.mobile}


def _record_transaction(payment: Payment, record: KhaltiTransaction) -> None:
    fields: dict[str, Any] = {
        "idx": record.idx,
        "fee_amount": record.fee_amount,
        "mobile": record.mobile,
        "khalti_response": record.raw,
    }
    if record.state == "Completed" and record.refunded:
        # Paid, then refunded before we verified it: not paid for the shop.
        _refunded_elsewhere(payment, full=True, **fields)
    elif record.state != "Completed":
        _fail(
            payment,
            _("Khalti's record is %(state)s, not Completed.") % {"state": record.state},
            **fields,
        )
    elif record.amount != payment.amount:
        _fail(
            payment,
            _("Khalti's record is for %(got)s paisa, the order is for %(want)s paisa.")
            % {"got": record.amount, "want": payment.amount},
            **fields,
        )
    else:
        _transition(payment, Status.VERIFIED, **fields)


def _fail(
    payment: Payment, reason: str, raw: Any = None, notify: bool = True, **fields: Any
) -> bool:
    """Fail a payment this worker still holds.

    A worker whose claim went stale and was taken over must not fail the
    payment: its successor may have seen Khalti complete it. (Verifying needs
    no such guard: Khalti's completed record is proof whoever brings it.)
    """
    if raw is not None:
        fields.setdefault("khalti_response", raw)
    return _transition(
        payment,
        Status.FAILED,
        held=True,
        notify=notify,
        failure_reason=reason,
        order_claim=None,
        **fields,
    )


# --- ePayment flow ---------------------------------------------------------------------

#: Khalti's smallest ePayment, in paisa (Rs 10).
MIN_EPAYMENT_AMOUNT = 1000


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
    ePayment link is still good, asking again returns that same payment.
    """
    client = KhaltiClient.from_settings()
    # Everything that can fail on our side, before the order is claimed.
    website_url = khalti_settings.WEBSITE_URL or f"{request.scheme}://{request.get_host()}"
    return_url = urljoin(website_url, reverse("django_khalti:epayment-return"))
    expected = _expected_for_new_payment(request, product_identity)
    if expected < MIN_EPAYMENT_AMOUNT:
        raise KhaltiAmountTooSmall()
    payment, created = _claim_order(
        client,
        product_identity,
        expected,
        flow=Payment.Flow.EPAYMENT,
        purchase_order_name=product_name,
        reuse=lambda holder: _link_still_good(holder, expected),
    )
    if not created:
        return payment
    try:
        started = client.initiate(
            return_url=return_url,
            website_url=website_url,
            amount=expected,
            purchase_order_id=product_identity,
            purchase_order_name=product_name,
            customer_info=customer_info,
            amount_breakdown=amount_breakdown,
            product_details=product_details,
        )
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
    except KhaltiUnavailable:
        # Whatever Khalti made of it, the buyer never got a link to pay.
        _fail(payment, _("Khalti could not be reached to start the payment."), notify=False)
        raise
    now = timezone.now()
    fields = {
        "pidx": started.pidx,
        "payment_url": started.payment_url,
        "expires_at": started.expires_at or now + timedelta(minutes=60),
        "khalti_response": started.raw,
    }
    # The pidx is a fact about this row, stored whatever became of it meanwhile...
    Payment.objects.filter(pk=payment.pk).update(updated_at=now, **fields)
    # ...but the link goes to the buyer only if the row is still ours and pending.
    still_ours = Payment.objects.filter(
        pk=payment.pk, status=Status.PENDING, claimed_at=payment.claimed_at
    ).update(claimed_at=None)
    if not still_ours:
        raise KhaltiInProgress()
    for name, value in fields.items():
        setattr(payment, name, value)
    payment.claimed_at = None
    return payment


def _link_still_good(payment: Payment, amount: int) -> bool:
    """A pending ePayment for this amount whose link the buyer can still use."""
    margin = timezone.now() + timedelta(minutes=1)
    return bool(
        payment.flow == Payment.Flow.EPAYMENT
        and payment.status == Status.PENDING
        and payment.amount == amount
        and payment.payment_url
        and payment.expires_at is not None
        and payment.expires_at > margin
    )


def settle_epayment_return(pidx: str) -> Payment:
    """Settle the ePayment the buyer came back from, by asking Khalti's lookup.

    Only the ``pidx`` is taken from the return URL; everything else in it is
    the browser's word. Returns the payment as it stands afterwards (still
    pending if Khalti says so, or another worker is settling it right now).
    Raises :class:`KhaltiUnknownPayment` for a pidx we never started and
    :class:`KhaltiUnavailable` when Khalti could not be asked.
    """
    payment = Payment.objects.filter(pidx=pidx, flow=Payment.Flow.EPAYMENT).first()
    if payment is None:
        raise KhaltiUnknownPayment()
    return reconcile(payment)  # an ePayment: settled by lookup


# --- refunds -------------------------------------------------------------------------


def refund_payment(
    payment: Payment,
    amount: int | None = None,
    mobile: str | None = None,
    by: _AnyUser | None = None,
) -> Refund:
    """Give ``amount`` paisa of a confirmed payment back to the buyer (all that remains
    without ``amount``); ``mobile`` is the Khalti id to refund to, which Khalti
    wants for bank-funded payments; ``by`` is the user asking, who needs the
    ``django_khalti.refund_payment`` permission.

    One refund of a payment is in flight at a time. Khalti refusing raises
    :class:`KhaltiRefundFailed` and nothing is refunded. An unknown outcome
    raises :class:`KhaltiRefundUnknown` (a :class:`KhaltiUnavailable`) and
    leaves the refund pending: money may have moved, so no other refund of the
    payment starts until :func:`reconcile_refund` (or ``khalti_reconcile``, or
    a person in the admin) has settled it.
    """
    if by is not None and not by.has_perm("django_khalti.refund_payment"):
        raise PermissionDenied
    client = KhaltiClient.from_settings()
    refund, locked = _claim_refund(payment, amount, mobile or "", by)
    whole = refund.amount == locked.amount  # nothing refunded before, all of it now
    try:
        answer = client.refund(
            locked.idx or "", amount=None if whole else refund.amount, mobile=mobile or None
        )
    except KhaltiRejected as exc:
        _settle_refund(refund, succeeded=False, raw=exc.body, reason=str(exc.detail))
        raise KhaltiRefundFailed(_("Khalti refused the refund: %s") % exc.detail) from exc
    except KhaltiUnavailable as exc:
        unknown = KhaltiRefundUnknown()
        Refund.objects.filter(pk=refund.pk).update(failure_reason=str(unknown.detail))
        raise unknown from exc
    _settle_refund(refund, succeeded=True, raw=answer)
    payment.refresh_from_db()
    refund.refresh_from_db()
    return refund


def reconcile_refund(refund: Refund) -> Refund:
    """Settle a refund whose outcome was unknown, from the payment's state at Khalti.

    A refund younger than the claim timeout may still be in flight and is left
    alone. Raises :class:`KhaltiUnavailable` when Khalti could not be asked.
    """
    in_flight_since = timezone.now() - timedelta(seconds=khalti_settings.stale_after)
    if refund.status != Refund.Status.PENDING or refund.created_at > in_flight_since:
        return refund
    payment = refund.payment
    client = KhaltiClient.from_settings()
    try:
        if payment.flow == Payment.Flow.EPAYMENT:
            looked_up = client.lookup(payment.pidx or "")
            state, raw = looked_up.status, looked_up.raw
        else:
            status = client.status(payment.token or "", payment.amount)
            state, raw = status.state, status.raw
    except KhaltiRejected as exc:
        raise KhaltiUnavailable() from exc
    state = state.strip().lower()
    remaining = payment.amount - payment.refunded_amount
    first = payment.refunded_amount == 0
    # Settle only on an answer that proves what became of *this* refund.
    if (state == "refunded" and refund.amount == remaining) or (
        state == "partially refunded" and first and refund.amount < remaining
    ):
        _settle_refund(refund, succeeded=True, raw=raw)
    elif state in ("complete", "completed") and first:
        _settle_refund(
            refund,
            succeeded=False,
            raw=raw,
            reason=_("Khalti shows the payment complete and not refunded."),
        )
    else:
        # E.g. "Partially refunded" after an earlier partial refund: Khalti's
        # state cannot tell whether this one went through. A person decides
        # (admin: "Resolve unknown refund"), after a look at Khalti's dashboard.
        logger.warning(
            "Refund %s of payment %s stays pending: Khalti says %r, which does not "
            "tell whether this refund went through.",
            refund.pk,
            payment.pk,
            state,
        )
    refund.refresh_from_db()
    return refund


def resolve_refund(refund: Refund, *, succeeded: bool, by: _AnyUser, note: str = "") -> Refund:
    """Record what a person found in Khalti's dashboard about a refund of unknown outcome.

    For the cases Khalti's API cannot settle. ``by`` needs the
    ``django_khalti.refund_payment`` permission.
    """
    if not by.has_perm("django_khalti.refund_payment"):
        raise PermissionDenied
    reason = "" if succeeded else (note or _("Not refunded, as checked in Khalti's dashboard."))
    _settle_refund(
        refund, succeeded=succeeded, raw={"resolved_by": str(by), "note": note}, reason=reason
    )
    refund.refresh_from_db()
    return refund


def _claim_refund(
    payment: Payment, amount: int | None, mobile: str, by: _AnyUser | None
) -> tuple[Refund, Payment]:
    """Record a pending refund under the payment's row lock, after checking it is due.

    Returns the refund and the payment row as it was under the lock.
    """
    with transaction.atomic(durable=True):
        locked = Payment.objects.select_for_update().get(pk=payment.pk)
        if locked.status not in Payment.REFUNDABLE_STATUSES or not locked.idx:
            raise KhaltiNotRefundable()
        remaining = locked.refundable_amount
        if amount is None:
            amount = remaining
        if isinstance(amount, bool) or not isinstance(amount, int) or not 0 < amount <= remaining:
            raise KhaltiInvalidRefundAmount(
                _("A refund must be between 1 and %(remaining)s paisa.") % {"remaining": remaining}
            )
        try:
            with transaction.atomic():
                refund = Refund.objects.create(
                    payment=locked,
                    amount=amount,
                    mobile=mobile,
                    # refund_payment checked that ``by`` may refund: a user, not AnonymousUser.
                    requested_by=by,  # type: ignore[misc]
                    claim=locked.pk,
                )
            return refund, locked
        except IntegrityError:
            raise KhaltiRefundInProgress() from None


def _settle_refund(refund: Refund, *, succeeded: bool, raw: Any, reason: str = "") -> None:
    """Record a refund's outcome and, if money went back, the payment's new status."""
    with transaction.atomic():
        payment = Payment.objects.select_for_update().get(pk=refund.payment_id)
        settled = Refund.objects.filter(pk=refund.pk, status=Refund.Status.PENDING).update(
            status=Refund.Status.SUCCEEDED if succeeded else Refund.Status.FAILED,
            claim=None,
            settled_at=timezone.now(),
            khalti_response=raw,
            failure_reason=reason,
        )
        if settled and succeeded:
            total = payment.refunded_amount + refund.amount
            _transition(
                payment,
                Status.REFUNDED if total >= payment.amount else Status.PARTIALLY_REFUNDED,
                source=payment.status,
                refunded_amount=total,
                refund_amount=refund.amount,
            )


# --- the one choke point ------------------------------------------------------------

_SIGNALS: dict[str, Signal] = {
    Status.VERIFIED: payment_verified,
    Status.FAILED: payment_failed,
    Status.REFUNDED: payment_refunded,
    Status.PARTIALLY_REFUNDED: payment_refunded,
}


def _transition(
    payment: Payment,
    to: str,
    *,
    source: str = Status.PENDING,
    notify: bool = True,
    held: bool = False,
    refund_amount: int | None = None,
    **fields: Any,
) -> bool:
    """Move ``payment`` from ``source`` to ``to``; True if this call made the change.

    Every status change goes through here. The ``UPDATE`` is guarded by the
    current status, so of any number of concurrent callers exactly one changes
    the row and queues the signal for after the commit (unless ``notify`` is
    False). The others see the row as the winner left it. With ``held``, the
    row must also still carry this worker's claim.
    """
    now = timezone.now()
    values = {"status": to, "claimed_at": None, "updated_at": now, **fields}
    if to == Status.VERIFIED:
        values["verified_at"] = now
    with transaction.atomic():
        rows = Payment.objects.filter(pk=payment.pk, status=source)
        if held:
            rows = rows.filter(claimed_at=payment.claimed_at)
        changed = rows.update(**values)
        if changed:
            for name, value in values.items():
                setattr(payment, name, value)
            if notify:
                _send_on_commit(to, payment, refund_amount)
    if not changed:
        payment.refresh_from_db()
    return bool(changed)


def _send_on_commit(status: str, payment: Payment, refund_amount: int | None) -> None:
    signal = _SIGNALS[status]
    kwargs: dict[str, Any] = {"payment": payment}
    if status == Status.FAILED:
        kwargs["reason"] = payment.failure_reason
    if signal is payment_refunded:
        kwargs["amount"] = refund_amount

    def send() -> None:
        for receiver, result in signal.send_robust(sender=Payment, **kwargs):
            if isinstance(result, Exception):
                logger.error(
                    "A receiver of %s failed for payment %s: %r",
                    status,
                    payment.pk,
                    receiver,
                    exc_info=result,
                )

    transaction.on_commit(send)
