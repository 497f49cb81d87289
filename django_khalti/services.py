"""Business rules: expected amount, exactly-once, and every status change.

How a verification runs, and why it is safe under concurrency:

1. The shop's resolver gives the expected amount; the client's amount must
   equal it. Nothing else the browser says is trusted.
2. The payment row is inserted (pending) and committed **before** Khalti is
   called. Two unique columns make the insert the claim: ``token`` (one row a
   token) and ``order_claim`` (one live payment an order). Whoever inserts the
   row holds it and is the only one to call Khalti's verify. (A widget
   payment whose order another payment holds is stored waiting, with no
   ``order_claim``: it takes the order, :func:`_take_order`, before verify.)
3. An existing pending row is taken over only by a guarded ``UPDATE ... WHERE
   claimed_at IS NULL OR claimed_at < stale``, on the database's clock (never a
   host's): one winner. Since an earlier
   attempt may already have moved the money, the winner asks Khalti's
   read-only status endpoint first and verifies only if Khalti says the
   payment still awaits it.
4. No transaction or row lock is held while Khalti is called. The answer is
   settled by :func:`_transition`, the only place a status changes: a guarded
   ``UPDATE ... WHERE status = 'pending'`` whose winner writes the signal to
   the outbox (:class:`~django_khalti.models.SignalDelivery`) in the same
   transaction, and delivers it after the commit; :func:`deliver_due` delivers
   again what a receiver or a dying worker left undelivered.
5. An unknown outcome (timeout, 5xx, garbage, our database failing) leaves the
   payment pending for a resubmission or reconciliation to settle.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urljoin

from django.conf import settings
from django.core.exceptions import ObjectDoesNotExist, PermissionDenied, ValidationError
from django.db import DatabaseError, IntegrityError, OperationalError, transaction
from django.db.models import Exists, F, OuterRef, Q, QuerySet
from django.db.models.expressions import CombinedExpression
from django.db.models.functions import Coalesce
from django.dispatch import Signal
from django.http import Http404, HttpRequest
from django.urls import reverse
from django.utils.crypto import salted_hmac
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from .client import KhaltiClient, KhaltiLookup, KhaltiOutcome, KhaltiStatus, KhaltiTransaction
from .conf import khalti_settings, website_url_is_sane
from .exceptions import (
    KhaltiAlreadyPaid,
    KhaltiAmountMismatch,
    KhaltiAmountTooSmall,
    KhaltiBadResponse,
    KhaltiConfigurationError,
    KhaltiInitiationRejected,
    KhaltiInProgress,
    KhaltiInvalidRefundAmount,
    KhaltiNeedsReview,
    KhaltiNotRefundable,
    KhaltiRefundConflict,
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
from .models import DbNow, Payment, Refund, SignalDelivery, order_key, rupees, snapshot_of
from .orders import KhaltiOrder
from .signals import payment_failed, payment_needs_review, payment_refunded, payment_verified

if TYPE_CHECKING:
    # The project's user model or AnonymousUser, as django-stubs resolves request.user.
    from django.contrib.auth.models import _AnyUser
    from rest_framework.request import Request

logger = logging.getLogger(__name__)

Status = Payment.Status


# --- the shop's truth ---------------------------------------------------------

#: The largest amount a payment holds, in paisa (the column's limit on every database).
MAX_AMOUNT = 2**63 - 1


def resolve_order(request: HttpRequest | Request | None, product_identity: str) -> KhaltiOrder:
    """The order the shop's resolver names for ``product_identity``: its canonical
    reference and the amount in paisa it expects.

    A resolver that returns a plain ``int`` names the amount; the reference given
    is then canonical. Raises :class:`KhaltiUnknownOrder` for ``None``.
    """
    resolver = khalti_settings.AMOUNT_RESOLVER
    if not callable(resolver):
        raise KhaltiConfigurationError("KHALTI['AMOUNT_RESOLVER'] must name a callable.")
    try:
        answer = resolver(request, product_identity)
    except (ObjectDoesNotExist, ValidationError, ValueError, Http404):
        # A malformed reference (``int("abc")``, a bad UUID) is an unknown order.
        logger.info("The amount resolver found no order for %r.", product_identity, exc_info=True)
        answer = None
    except Exception as exc:
        raise KhaltiConfigurationError(
            f"KHALTI['AMOUNT_RESOLVER'] raised {type(exc).__name__}: {exc}"
        ) from exc
    if answer is None:
        raise KhaltiUnknownOrder()
    if isinstance(answer, tuple) and len(answer) == 2:
        reference, amount = answer
    else:
        reference, amount = product_identity, answer
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise KhaltiConfigurationError(
            "KHALTI['AMOUNT_RESOLVER'] must return a positive int (paisa), a "
            f"KhaltiOrder(reference, amount) or None, not {answer!r}."
        )
    if amount > MAX_AMOUNT:
        raise KhaltiConfigurationError(
            f"KHALTI['AMOUNT_RESOLVER'] returned {amount} paisa, more than a payment can "
            f"hold ({MAX_AMOUNT}): is it in paisa?"
        )
    if not isinstance(reference, str) or not 0 < len(reference) <= 255:
        raise KhaltiConfigurationError(
            "KHALTI['AMOUNT_RESOLVER'] returned a KhaltiOrder whose reference is not a "
            f"string of 1 to 255 characters: {reference!r}."
        )
    return KhaltiOrder(reference, amount)


def expected_amount(request: HttpRequest | Request | None, product_identity: str) -> int:
    """The amount in paisa the shop expects for this order, from its resolver."""
    return resolve_order(request, product_identity).amount


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
    payment, refused = _bound_payment(token, amount, product_identity)
    if refused is not None:
        deliver_due(refused)  # what a dead worker or a raising receiver left undelivered
        return _verified_or_raise(refused)  # Khalti refused this very payload before
    created = False
    if payment is None:
        order = resolve_order(request, product_identity)  # a hidden order: 404, whatever its state
        if amount != order.amount:
            raise KhaltiAmountMismatch()
        payment, created = _claim_order(
            client, product_identity, order, token=token, token_claim=token, claimed_idx=idx
        )
        if not created and not _bound_to(payment, amount, product_identity):
            raise KhaltiTokenUsed()
    if created:
        return _verified_or_raise(_settle(client, payment, _verify))
    if payment.status == Status.PENDING:
        if claim(payment):
            # An earlier attempt may have reached Khalti: ask before verifying again.
            return _verified_or_raise(_settle(client, payment, _ask_khalti))
        payment.refresh_from_db()
    else:
        deliver_due(payment)  # a resubmission: what is still undelivered, if due
    return _verified_or_raise(payment)


def _bound_payment(
    token: str, amount: int, product_identity: str
) -> tuple[Payment | None, Payment | None]:
    """The live payment this token is bound to, or what the token's history says.

    Returns ``(live, None)`` when the token is bound to a live payment for this
    order and amount; ``(None, failed)`` when its payment for this order and
    amount failed (answered from the record); ``(None, None)`` when the token is
    new, or its only uses were refused by Khalti for another order or amount
    (it may be bound again: a replay of a stolen token cannot lock its buyer out).
    Raises :class:`KhaltiTokenUsed` for a token bound to another order or amount,
    and for a token that is any payment's Khalti id (``idx`` or ``pidx``): Khalti's
    status endpoint answers for an ``idx`` as for a token, so one payment's id must
    never stand in for another's token. Raises :class:`KhaltiInProgress` (the
    buyer's page retries it) while the token is held by a pending payment for
    another order or amount, or is the ``idx`` a pending payment's page reported
    (the browser's word: it cannot lock anyone out for good).
    """
    rows = list(
        Payment.objects.filter(
            Q(token=token) | Q(idx=token) | Q(pidx=token) | Q(claimed_idx=token)
        ).annotate(undelivered=_due_exists())
    )
    if any(token in (row.idx, row.pidx) for row in rows):
        raise KhaltiTokenUsed()
    if any(
        row.claimed_idx == token and row.token != token and row.status == Status.PENDING
        for row in rows
    ):
        raise KhaltiInProgress()
    live = next((row for row in rows if row.token_claim == token), None)
    if live is not None:
        if _bound_to(live, amount, product_identity):
            return live, None
        if live.status == Status.PENDING:
            # Perhaps a replay Khalti is about to refuse; then the token is free again.
            raise KhaltiInProgress()
        raise KhaltiTokenUsed()
    failed = [
        row for row in rows if row.token == token and _bound_to(row, amount, product_identity)
    ]
    return None, max(failed, key=lambda row: row.created_at, default=None)


def _bound_to(payment: Payment, amount: int, product_identity: str) -> bool:
    """Whether a payment is for this amount and this order (as given, or canonical)."""
    return payment.amount == amount and product_identity in (
        payment.product_identity,
        payment.order_reference,
    )


def reconcile(payment: Payment) -> Payment:
    """Settle a payment from what Khalti says of it now.

    A pending payment is settled (verified only if Khalti has not been asked
    to before, or says it awaits verification); a failed one is re-checked
    read-only, in case Khalti completed it after all (see
    :func:`recheck_failed`). Returns the payment as it stands afterwards:
    unchanged when Khalti cannot tell yet, or when another worker holds it
    right now. Raises :class:`~django_khalti.exceptions.KhaltiUnavailable` when
    Khalti could not be asked.
    """
    if payment.status == Status.FAILED:
        return recheck_failed(payment)
    client = KhaltiClient.from_settings()
    if payment.status == Status.PENDING and claim(payment):
        return _settle(client, payment, _ask_khalti)
    payment.refresh_from_db()
    return payment


def recheck_failed(payment: Payment) -> Payment:
    """Ask Khalti, read-only, whether a failed payment was completed after all.

    Khalti may complete a payment after it was recorded failed (an ePayment
    cancelled, then paid; a verification refused, then completed). If it did,
    for the order's amount, and no other payment holds the order, the payment
    is verified (``payment_verified``); otherwise it needs review
    (``payment_needs_review``). Anything else leaves it failed. Nothing is
    verified at Khalti here: only status and lookup are asked. Returns the
    payment as it stands afterwards; raises :class:`KhaltiUnavailable` when
    Khalti could not be asked.
    """
    client = KhaltiClient.from_settings()
    if payment.status != Status.FAILED or not (payment.token or payment.pidx):
        return payment
    if not claim(payment, status=Status.FAILED):
        payment.refresh_from_db()
        return payment
    try:
        _settle(client, payment, _recheck)
    finally:
        _release(payment, status=Status.FAILED)
    return payment


def pending_batch(
    older_than: timedelta, size: int, after: tuple[datetime, uuid.UUID] | None = None
) -> tuple[list[Payment], tuple[datetime, uuid.UUID] | None]:
    """Up to ``size`` pending payments at least ``older_than`` old (on the
    database's clock), oldest first.

    Rows come after the ``(created_at, pk)`` cursor ``after``. Rows another
    reconciler holds by a fresh claim are passed over, so several reconcilers
    on several hosts share the work. The read takes no row locks: each payment
    is won with :func:`claim` just before it is settled, and the claim, not
    this selection, makes sure no payment is settled twice. (``SELECT ... FOR
    UPDATE SKIP LOCKED`` would lock every row MariaDB sorts, not just the
    batch, so a second reconciler read nothing and stopped; and MariaDB 10.5
    has no ``SKIP LOCKED``.) Returns the batch and the cursor for the next one
    (None when there is none).
    """
    rows = Payment.objects.pending().filter(created_at__lte=DbNow() - older_than)
    return _batch(rows, size, after)


#: How often ``khalti_reconcile`` asks Khalti again about one failed payment.
RECHECK_FAILED_EVERY = timedelta(hours=1)


def failed_batch(
    within: timedelta, size: int, after: tuple[datetime, uuid.UUID] | None = None
) -> tuple[list[Payment], tuple[datetime, uuid.UUID] | None]:
    """Up to ``size`` failed payments created in the last ``within`` that Khalti
    could still complete (they have a token or a pidx), oldest first, each at
    most once per :data:`RECHECK_FAILED_EVERY`. As :func:`pending_batch`, for
    :func:`recheck_failed`.
    """
    rows = (
        Payment.objects.filter(status=Status.FAILED, created_at__gte=DbNow() - within)
        .filter(Q(token__isnull=False) | Q(pidx__isnull=False))
        .filter(updated_at__lt=DbNow() - RECHECK_FAILED_EVERY)
    )
    return _batch(rows, size, after)


def _batch(
    rows: QuerySet[Payment], size: int, after: tuple[datetime, uuid.UUID] | None
) -> tuple[list[Payment], tuple[datetime, uuid.UUID] | None]:
    rows = rows.filter(_claimable())
    if after is not None:
        created_at, pk = after
        rows = rows.filter(Q(created_at__gt=created_at) | Q(created_at=created_at, pk__gt=pk))
    batch = list(rows.order_by("created_at", "pk")[:size])
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
    if payment.status == Status.NEEDS_REVIEW:
        raise KhaltiNeedsReview()
    if payment.status == Status.FAILED:
        raise KhaltiVerificationFailed(payment.failure_reason or None)
    raise KhaltiInProgress(_WAITING if payment.order_claim is None else None)


def _claim_order(
    client: KhaltiClient,
    product_identity: str,
    order: KhaltiOrder,
    *,
    reuse: Callable[[Payment], bool] | None = None,
    **fields: Any,
) -> tuple[Payment, bool]:
    """Insert (and so claim) a new payment for the order; or the row that beat us to it.

    The insert claims the order (``order_claim``, on the order's canonical
    reference) and, for the widget, the token (``token_claim``). When the order
    is taken by a pending payment, that payment is settled with Khalti first (if
    no one else is at it), and an ePayment link the buyer has not paid is
    superseded: only once the holder let go does the new one go on. ``reuse``
    may accept the holder as the answer (the same buyer's link, still good). A
    widget payment that must wait is stored waiting for the order (its token is
    never dropped) and :class:`KhaltiInProgress` raised. Returns the payment and
    whether it was created.
    """
    token = fields.get("token_claim")
    key = order_key(order.reference)
    for _attempt in range(3):
        try:
            with transaction.atomic(durable=True):
                payment = Payment.objects.create(
                    product_identity=product_identity,
                    order_reference=order.reference,
                    amount=order.amount,
                    order_claim=key,
                    claimed_at=DbNow(),
                    attempts=1,
                    **fields,
                )
            _read_later(payment, "claimed_at")
            return payment, True
        except IntegrityError:
            pass  # The same token inserted concurrently, or the order is taken.
        raced = Payment.objects.filter(token_claim=token).first() if token else None
        if raced is not None:
            return raced, False
        holder = Payment.objects.filter(order_claim=key).first()
        if holder is None:
            continue  # the holder failed and let go of the order in between
        if reuse is not None and reuse(holder):
            return holder, False
        if not _free_order(client, holder, settle_widget=True):
            break
    if token:
        _wait_for_order(product_identity, order, **fields)
    raise KhaltiInProgress(
        _("Another payment for this order is being confirmed. Try again shortly.")
    )


def _free_order(client: KhaltiClient, holder: Payment, *, settle_widget: bool) -> bool:
    """Whether ``holder`` let go of its order, once asked about.

    A pending holder nobody else is at is settled with Khalti (a widget one
    only with ``settle_widget``); an ePayment link that Khalti says is only
    started (nobody is paying it) is superseded: failed without a signal (should
    Khalti complete it after all, the failed re-check verifies it if the order
    is still unpaid, else makes it ``needs_review``). Raises :class:`KhaltiAlreadyPaid` when the holder paid the
    order (and holds it still: one refunded before it was verified let it go;
    one that paid it and then needed review, over a refund, holds it).
    """
    epayment = holder.flow == Payment.Flow.EPAYMENT
    if holder.status == Status.PENDING and (epayment or settle_widget) and claim(holder):
        with contextlib.suppress(KhaltiUnavailable):
            _settle(client, holder, _supersede if epayment else _ask_khalti)
    else:
        holder.refresh_from_db()
    if holder.order_claim is not None and (
        holder.status in Payment.PAID_STATUSES or holder.verified_at is not None
    ):
        raise KhaltiAlreadyPaid()  # (verified_at: it paid the order, then needed review)
    return holder.order_claim is None


def _wait_for_order(product_identity: str, order: KhaltiOrder, **fields: Any) -> NoReturn:
    """Store a widget payment whose order another payment holds, and raise
    :class:`KhaltiInProgress`: the buyer's token is kept, and the payment takes
    the order (:func:`_take_order`) once that payment lets go of it.
    """
    with contextlib.suppress(IntegrityError), transaction.atomic(durable=True):
        # order_claim NULL: pending, waiting for its order. (A concurrent insert
        # of the same token already stored it.)
        Payment.objects.create(
            product_identity=product_identity,
            order_reference=order.reference,
            amount=order.amount,
            **fields,
        )
    raise KhaltiInProgress(_WAITING)


#: What a buyer whose widget payment waits for its order is told.
_WAITING = gettext_lazy(
    "Your payment was received and waits while another payment for this order is "
    "confirmed. Try again in a moment."
)


def _take_order(client: KhaltiClient, payment: Payment) -> bool:
    """A claimed widget payment stored waiting for its order takes the order's
    claim, before Khalti may be asked to verify it; True when it holds it.

    The payment holding the order is asked about first (an unpaid ePayment link
    is superseded; a widget payment is left to its own settling, so this claim
    makes at most one call more). While it holds on, this payment's claim is
    released and it waits on. When it paid the order, this one fails without a
    signal: it was never verified, so Khalti moved none of its money.
    """
    key = order_key(payment.order_reference)
    for _attempt in range(2):
        try:
            with transaction.atomic():
                took = (
                    Payment.objects.filter(_held(payment), pk=payment.pk, status=Status.PENDING)
                    .filter(order_claim__isnull=True)
                    .update(order_claim=key, updated_at=DbNow())
                )
        except IntegrityError:
            holder = Payment.objects.filter(order_claim=key).first()
        else:
            if took:
                payment.order_claim = key
            return bool(took)  # else: no longer ours (taken over after going stale)
        try:
            if holder is not None and not _free_order(client, holder, settle_widget=False):
                break
        except KhaltiAlreadyPaid:
            _fail(
                payment,
                _(
                    "Another payment paid this order first. This one was never verified, "
                    "so Khalti moved none of its money."
                ),
                notify=False,
            )
            return False
    _release(payment)
    return False


# --- claims ----------------------------------------------------------------------


def claim(payment: Payment, status: str = Status.PENDING) -> bool:
    """Take a payment in ``status`` to call Khalti about it; True for the one winner.

    ``payment`` must be as the database has it: a copy older than the last
    claim wins nothing. The claim's time is the database's, so hosts whose
    clocks differ agree on when a claim is stale.
    """
    # Durable: a claim inside a caller's transaction would not be seen by other
    # workers before Khalti is called (Django raises RuntimeError instead).
    try:
        with transaction.atomic(durable=True):
            won = (
                Payment.objects.filter(pk=payment.pk, status=status, attempts=payment.attempts)
                .filter(_claimable())
                .update(claimed_at=DbNow(), attempts=F("attempts") + 1, updated_at=DbNow())
            )
    except OperationalError as exc:
        if not _deadlocked(exc):
            raise
        # Claims racing at MariaDB's REPEATABLE READ: the deadlock's victim lost
        # (the other claim goes on), as a guarded UPDATE that matched nothing.
        logger.info("Payment %s: a claim lost a deadlock to another.", payment.pk)
        won = 0
    if won:
        payment.attempts += 1
        _read_later(payment, "claimed_at", "updated_at")
    return bool(won)


def stale_since() -> CombinedExpression:
    """On the database's clock, the time before which a claim (or a refund's call)
    can no longer be in flight: ``now - stale_after``.
    """
    return DbNow() - timedelta(seconds=khalti_settings.stale_after)


def _claimable() -> Q:
    """Nobody holds the payment, or its holder's claim is stale (the worker died)."""
    return Q(claimed_at__isnull=True) | Q(claimed_at__lt=stale_since())


def _held(payment: Payment) -> Q:
    """The row still carries this worker's claim: the claim it won (its generation,
    ``attempts``), not released, not taken over.
    """
    return Q(attempts=payment.attempts, claimed_at__isnull=False)


def _read_later(payment: Payment, *names: str) -> None:
    """Forget fields the database just set from its own clock: read on next access."""
    for name in names:
        payment.__dict__.pop(name, None)


def _release(payment: Payment, status: str = Status.PENDING) -> None:
    """Let go of a claim after an unknown outcome, so a retry need not wait."""
    try:
        Payment.objects.filter(_held(payment), pk=payment.pk, status=status).update(
            claimed_at=None, updated_at=DbNow()
        )
    except DatabaseError:
        logger.exception("Could not release the claim on payment %s.", payment.pk)


def _settle(
    client: KhaltiClient, payment: Payment, ask: Callable[[KhaltiClient, Payment], None]
) -> Payment:
    """Call Khalti through ``ask`` while holding the claim, then record its answer."""
    try:
        ask(client, payment)
    except KhaltiUnavailable:
        _release(payment, status=payment.status)
        raise
    except DatabaseError as exc:
        # Khalti answered but we could not record it: the claim goes stale and a
        # resubmission or reconciliation asks Khalti again.
        logger.exception("Could not record Khalti's answer for payment %s.", payment.pk)
        raise KhaltiUnavailable(
            _("The payment could not be recorded yet. It is pending; try again shortly.")
        ) from exc
    return payment


# --- Khalti's answers, per flow ----------------------------------------------------
#
# Each function below is called with the payment claimed, asks Khalti, and
# settles the payment from the client's outcome (never from Khalti's spelling).
# An outcome that proves nothing leaves the payment as it is, claim released.


def _verify(client: KhaltiClient, payment: Payment) -> None:
    """Verify at Khalti (this moves the buyer's money), then settle from the answer.

    A refusal (HTTP 400, or a record that is not completed) is never final by
    itself: it may be Khalti refusing to repeat what an earlier attempt, whose
    answer was lost, did (or one delivery of a request sent twice). The
    read-only status endpoint decides: only its proof that nothing moved fails
    the payment.
    """
    try:
        record = client.verify(payment.token or "", payment.amount)
    except KhaltiRejected as exc:
        logger.info(
            "Khalti refused to verify payment %s (%s); asking its status.", payment.pk, exc.detail
        )
        _ask_status(client, payment, refusal=str(exc.detail))
        return
    if record.outcome is KhaltiOutcome.FAILED:
        logger.info(
            "Khalti's record of payment %s is %r; asking its status.", payment.pk, record.state
        )
        _ask_status(client, payment, refusal=record.state)
        return
    _record_transaction(payment, record)


def _ask_khalti(client: KhaltiClient, payment: Payment) -> None:
    """Settle a claimed pending payment from Khalti's read-only answer for its flow
    (a widget payment waiting for its order takes the order first).
    """
    if payment.order_claim is None and not _take_order(client, payment):
        return
    if payment.flow == Payment.Flow.EPAYMENT:
        _lookup(client, payment)
    else:
        _ask_status(client, payment)


def _recheck(client: KhaltiClient, payment: Payment) -> None:
    """Read-only: whether Khalti completed a payment we recorded failed."""
    if payment.flow == Payment.Flow.EPAYMENT:
        try:
            answer = _looked_up(client, payment)
        except KhaltiRejected:
            return  # Khalti no longer knows it: nothing completed, it stays failed
        outcome, fields = answer.outcome, _lookup_fields(answer)
        received = answer.total_amount
    else:
        status = _status_of(client, payment)
        outcome, fields, received = status.outcome, {"khalti_response": status.raw}, None
        if outcome is KhaltiOutcome.PAID:
            tied = _tied_record(client, payment, status)
            if tied is None:
                return
            fields, received = tied, payment.amount
    if outcome is KhaltiOutcome.PARTIALLY_REFUNDED:
        _needs_review(
            payment,
            _(
                "Khalti reports a payment recorded failed as partially refunded: part of it "
                "was paid."
            ),
            source=Status.FAILED,
            **fields,
        )
    elif outcome is not KhaltiOutcome.PAID:
        if outcome is KhaltiOutcome.AWAITING_VERIFICATION:
            logger.warning(
                "Khalti holds the buyer's confirmation of payment %s, recorded failed; "
                "it is not verified again. Check it in Khalti's dashboard.",
                payment.pk,
            )
        return
    elif received is None:
        logger.warning("Khalti's lookup for %s is paid without an amount.", payment.pidx)
        raise KhaltiBadResponse()
    else:
        _completed_late(client, payment, received, fields)


def _completed_late(
    client: KhaltiClient, payment: Payment, received: int, fields: dict[str, Any]
) -> None:
    """Khalti completed a payment we recorded failed: verified if the order is still
    free (an ePayment link holding it that nobody paid is superseded: money that
    moved wins over a link) and the amount is the order's, else needs review.
    """
    idx = fields.get("idx")
    if idx and Payment.objects.filter(idx=idx).exclude(pk=payment.pk).exists():
        _not_this_payments(payment, idx, received, fields, source=Status.FAILED)
        return
    if received != payment.amount:
        reason = _(
            "Khalti completed this payment after it was recorded failed, for %(got)s paisa; "
            "the order is for %(want)s paisa."
        ) % {"got": received, "want": payment.amount}
    else:
        try:
            changed = _verify_late(client, payment, received, fields)
        except KhaltiAlreadyPaid:
            changed = False
        if changed:
            logger.warning(
                "Khalti completed payment %s after it was recorded failed; it is verified "
                "now (the order was still unpaid).",
                payment.pk,
            )
            return
        if payment.status != Status.FAILED:
            return  # another worker settled it meanwhile
        reason = _(
            "Khalti completed this payment after it was recorded failed, and another "
            "payment paid the order meanwhile."
        )
    _needs_review(payment, reason, source=Status.FAILED, received_amount=received, **fields)


def _verify_late(
    client: KhaltiClient, payment: Payment, received: int, fields: dict[str, Any]
) -> bool:
    """Verify a failed payment Khalti completed, taking its order back: the order
    is free, or held by an ePayment link that, looked up, nobody paid (it is
    superseded). True when this call verified it, False when another worker
    settled it meanwhile.

    Raises :class:`KhaltiAlreadyPaid` when another payment paid the order (or
    holds the payment's token), and :class:`KhaltiUnavailable` while the
    payment holding the order cannot be settled yet (Khalti holds it, cannot be
    asked, or another worker is at it): the payment then stays failed, and the
    next re-check (a reload of the return page, ``khalti_reconcile``) tries again.
    """
    key = order_key(payment.order_reference)
    for _attempt in range(3):
        try:
            return _transition(
                payment,
                Status.VERIFIED,
                source=Status.FAILED,
                held=True,
                order_claim=key,
                token_claim=payment.token,
                received_amount=received,
                failure_reason="",
                **fields,
            )
        except IntegrityError:
            pass  # another payment holds the order (or the token) now
        holder = Payment.objects.filter(order_claim=key).first()
        if holder is None:
            if Payment.objects.filter(token_claim=payment.token).exclude(pk=payment.pk).exists():
                raise KhaltiAlreadyPaid()  # its token is bound to a live payment now
            continue  # the holder let go of the order in between
        if not _free_order(client, holder, settle_widget=False):
            break
    logger.warning(
        "Khalti completed payment %s after it was recorded failed; the payment holding its "
        "order cannot be settled yet, so it is re-checked later.",
        payment.pk,
    )
    raise KhaltiUnavailable()


def _status_of(client: KhaltiClient, payment: Payment) -> KhaltiStatus:
    try:
        return client.status(payment.token or "", payment.amount)
    except KhaltiRejected as exc:
        # A readable refusal from the status endpoint (no state) says nothing
        # sure about the payment: it stays as it is.
        raise KhaltiUnavailable() from exc


def _ask_status(client: KhaltiClient, payment: Payment, *, refusal: str = "") -> None:
    """Settle from Khalti's status answer. After verify's ``refusal``, a payment
    awaiting verification is not verified again (it stays pending), and a failed
    status answer is the proof that fails it.
    """
    answer = _status_of(client, payment)
    outcome = answer.outcome
    if outcome is KhaltiOutcome.AWAITING_VERIFICATION and not refusal:
        # The buyer paid and Khalti waits for us: now verification is due.
        _verify(client, payment)
    elif outcome is KhaltiOutcome.PAID:
        fields = _tied_record(client, payment, answer)
        if fields is not None:
            _verified(payment, payment.amount, fields)
    elif outcome is KhaltiOutcome.FAILED:
        found = {"state": answer.state, "detail": answer.detail, "refusal": refusal}
        if refusal:
            reason = (
                _(
                    "Khalti refused the payment (%(refusal)s) and reports it as %(state)s: "
                    "%(detail)s"
                )
                % found
            )
        else:
            reason = _("Khalti reports the payment as %(state)s: %(detail)s") % found
        _fail(payment, reason, answer.raw)
    elif outcome in (KhaltiOutcome.REFUNDED, KhaltiOutcome.PARTIALLY_REFUNDED) and (
        _token_is_an_idx(client, payment)
    ):
        # The status of a (refunded) transaction, asked by its idx: nothing of this
        # payment's moved.
        _fail(
            payment,
            _("The token given is a Khalti transaction id, not a payment token."),
            answer.raw,
        )
    elif outcome is KhaltiOutcome.REFUNDED:
        _refunded_before_verified(payment, khalti_response=answer.raw)
    elif outcome is KhaltiOutcome.PARTIALLY_REFUNDED:
        _needs_review(
            payment,
            _(
                "Khalti reports the payment partially refunded before it was verified: part "
                "of it was paid."
            ),
            khalti_response=answer.raw,
        )
    else:
        # Initiated, awaiting a verification that was just refused, or a state we
        # do not know: not ours to decide yet.
        unusual = outcome in (KhaltiOutcome.UNKNOWN, KhaltiOutcome.AWAITING_VERIFICATION)
        log = logger.warning if unusual else logger.info
        log("Khalti reports payment %s as %r; it stays pending.", payment.pk, answer.state)
        _release(payment)


def _tied_record(
    client: KhaltiClient, payment: Payment, answer: KhaltiStatus
) -> dict[str, Any] | None:
    """What to record of a payment the status endpoint calls paid, if its answer can be
    tied to this payment; otherwise the payment needs review, and None is returned.

    The status endpoint answers for a token *or an idx*, and names no transaction.
    Its "paid" is this payment's only if Khalti's transaction records say so:

    1. the token is no transaction's idx (Khalti's record of it, asked by the token,
       is "not found"; were it found under its own name, the "token" was one
       payment's id presented as another's token);
    2. Khalti's record of the ``idx`` the answer gives, or else the one the buyer's
       page reported (``claimed_idx``), is completed, for this amount, and no other
       payment's.

    Raises :class:`KhaltiUnavailable` when a record could not be fetched.
    """
    token = payment.token or ""
    fields: dict[str, Any] = {"khalti_response": answer.raw}
    as_idx = _record_or_none(client, token)
    record: KhaltiTransaction | None = None
    if as_idx is not None and as_idx.idx == token:
        problem = _("The token given is a Khalti transaction id, not a payment token.")
    else:
        # Were the token found (Khalti resolving it to its transaction), that record
        # ties the answer itself; else the idx Khalti or the page named must.
        idx = as_idx.idx if as_idx is not None else answer.idx or payment.claimed_idx or ""
        record = as_idx if as_idx is not None else _record_or_none(client, idx) if idx else None
        if idx and record is None:
            # Not found (yet): a record may lag behind the status. Nothing is decided.
            logger.warning(
                "Khalti reports payment %s paid but has no transaction %s (yet); it stays pending.",
                payment.pk,
                idx,
            )
            raise KhaltiUnavailable()
        problem = _record_problem(payment, idx, record)
    if problem or record is None:
        _needs_review(payment, problem, source=payment.status, **fields)
        return None
    return {
        **fields,
        "idx": record.idx,
        "fee_amount": record.fee_amount,
        "mobile": record.mobile,
    }


def _token_is_an_idx(client: KhaltiClient, payment: Payment) -> bool:
    """Whether Khalti knows a transaction whose idx is this payment's "token"."""
    record = _record_or_none(client, payment.token or "")
    return record is not None and record.idx == payment.token


def _record_or_none(client: KhaltiClient, idx: str) -> KhaltiTransaction | None:
    """Khalti's transaction record of ``idx``; None when Khalti knows no such transaction."""
    try:
        return client.transaction(idx)
    except KhaltiRejected:
        return None


def _record_problem(payment: Payment, idx: str, record: KhaltiTransaction | None) -> str:
    """Why a transaction record does not prove this payment paid; "" when it does."""
    if not idx:
        return _(
            "Khalti reports the token paid, but names no transaction to tie it to this payment."
        )
    if record is None or record.idx != idx:
        return _("Khalti has no transaction %(idx)s to tie this payment to.") % {"idx": idx}
    if record.idx == payment.token:
        return _("The token given is a Khalti transaction id, not a payment token.")
    if record.outcome is not KhaltiOutcome.PAID or record.amount != payment.amount:
        return _(
            "Khalti's transaction %(idx)s is %(state)s for %(got)s paisa, not this payment "
            "of %(want)s paisa."
        ) % {"idx": idx, "state": record.state, "got": record.amount, "want": payment.amount}
    if Payment.objects.filter(idx=idx).exclude(pk=payment.pk).exists():
        return _("Khalti's transaction %(idx)s is another payment's.") % {"idx": idx}
    return ""


#: How long after its link expired a Khalti answer of "not found" or "Initiated"
#: means the buyer can no longer pay: no money can move on a dead link.
EXPIRY_MARGIN = timedelta(minutes=15)


def _link_dead(payment: Payment) -> bool:
    """Whether the payment's link expired (past :data:`EXPIRY_MARGIN`), on the database's clock."""
    expiry = Coalesce("expires_at", F("created_at") + timedelta(minutes=60))
    return (
        Payment.objects.filter(pk=payment.pk)
        .annotate(expiry=expiry)
        .filter(expiry__lt=DbNow() - EXPIRY_MARGIN)
        .exists()
    )


def _looked_up(client: KhaltiClient, payment: Payment) -> KhaltiLookup:
    """Khalti's lookup of the payment's pidx; an answer about another pidx is unknown."""
    answer = client.lookup(payment.pidx or "")
    if answer.pidx != payment.pidx:
        logger.warning("Khalti's lookup for %s answered about another pidx.", payment.pidx)
        raise KhaltiBadResponse()
    return answer


def _lookup_fields(answer: KhaltiLookup) -> dict[str, Any]:
    fields: dict[str, Any] = {"khalti_response": answer.raw}
    if answer.transaction_id:
        fields["idx"] = answer.transaction_id  # what refunds need
    if answer.fee is not None:
        fields["fee_amount"] = answer.fee
    return fields


def _supersede(client: KhaltiClient, payment: Payment) -> None:
    """Settle an ePayment by lookup; a link Khalti says is only started is
    superseded (failed without a signal: the buyer paid nothing on it yet).
    """
    _lookup(client, payment, supersede=True)


def _lookup(client: KhaltiClient, payment: Payment, *, supersede: bool = False) -> None:
    if not payment.pidx:
        # Its initiation never finished: the buyer was never given a payment
        # link, so no money can have moved.
        _fail(payment, _("The payment was never started with Khalti."), notify=False)
        return
    try:
        answer = _looked_up(client, payment)
    except KhaltiRejected as exc:
        if _link_dead(payment):
            _fail(
                payment,
                _("Khalti does not know this payment (%(detail)s) and its link expired.")
                % {"detail": exc.detail},
                exc.body,
            )
            return
        # "Not found" for a live pidx Khalti gave us says nothing sure.
        raise KhaltiUnavailable() from exc
    outcome = answer.outcome
    fields = _lookup_fields(answer)
    if outcome is KhaltiOutcome.PAID and answer.total_amount is None:
        logger.warning("Khalti's lookup for %s is Completed without an amount.", payment.pidx)
        raise KhaltiBadResponse()
    if outcome is KhaltiOutcome.PAID and answer.total_amount == payment.amount:
        _verified(payment, answer.total_amount, fields)
    elif outcome is KhaltiOutcome.PAID:
        reason = _("Khalti's payment is for %(got)s paisa, the order is for %(want)s paisa.") % {
            "got": answer.total_amount,
            "want": payment.amount,
        }
        _needs_review(payment, reason, received_amount=answer.total_amount, **fields)
    elif outcome is KhaltiOutcome.FAILED or (outcome is KhaltiOutcome.OPEN and _link_dead(payment)):
        _fail(
            payment,
            _("Khalti reports the payment as %(status)s.") % {"status": answer.status},
            **fields,
        )
    elif outcome is KhaltiOutcome.REFUNDED:
        _refunded_before_verified(payment, **fields)
    elif outcome is KhaltiOutcome.PARTIALLY_REFUNDED:
        _needs_review(
            payment,
            _(
                "Khalti reports the payment partially refunded before it was verified: part "
                "of it was paid."
            ),
            **fields,
        )
    elif supersede and outcome is KhaltiOutcome.OPEN and not answer.transaction_id:
        logger.info("ePayment %s was superseded by another payment for its order.", payment.pk)
        _fail(
            payment,
            _(
                "Superseded by another payment for this order before anything was paid on "
                "this link."
            ),
            notify=False,
            **fields,
        )
    else:
        # Pending (hold: do not fulfil, do not fail), Initiated, or unknown.
        log = logger.warning if outcome is KhaltiOutcome.UNKNOWN else logger.info
        log("Khalti reports ePayment %s as %r; it stays pending.", payment.pk, answer.status)
        _release(payment)


def _refunded_before_verified(payment: Payment, **fields: Any) -> None:
    """A pending payment Khalti reports paid and then all refunded, outside this app.

    The shop never fulfilled the order and no money stayed with it: the order
    is let go (a new payment may pay it) and ``payment_refunded`` tells the shop,
    with ``payment.verified_at`` None.
    """
    changed = _recording_idx_if_free(
        payment,
        Status.REFUNDED,
        held=True,
        refunded_amount=payment.amount,
        refund_amount=payment.amount,
        order_claim=None,
        **fields,
    )
    if changed:
        logger.warning(
            "Khalti reports payment %s refunded before it was verified; the order is free "
            "to be paid again.",
            payment.pk,
        )


def _record_transaction(payment: Payment, record: KhaltiTransaction) -> None:
    """Settle a payment from the transaction record our own verify call returned."""
    fields: dict[str, Any] = {
        "idx": record.idx,
        "fee_amount": record.fee_amount,
        "mobile": record.mobile,
        "khalti_response": record.raw,
    }
    outcome = record.outcome
    if outcome in (KhaltiOutcome.PAID, KhaltiOutcome.REFUNDED) and record.idx == payment.token:
        _not_this_payments(payment, record.idx, record.amount, fields)
    elif outcome is KhaltiOutcome.REFUNDED:
        # Paid, then refunded before we verified it: not paid for the shop.
        _refunded_before_verified(payment, **fields)
    elif outcome is KhaltiOutcome.PAID and record.amount != payment.amount:
        _needs_review(
            payment,
            _("Khalti's record is for %(got)s paisa, the order is for %(want)s paisa.")
            % {"got": record.amount, "want": payment.amount},
            received_amount=record.amount,
            **fields,
        )
    elif outcome is KhaltiOutcome.PAID:
        _verified(payment, record.amount, fields)
    else:
        # A record not (yet) completed, or in a state we do not know: whether the
        # money moved is not known. Pending; a retry or reconcile asks status. (A
        # failed record never comes here: _verify asks status about it.)
        logger.warning(
            "Khalti answered the verification of payment %s with a record in state %r; "
            "it stays pending.",
            payment.pk,
            record.state,
        )
        raise KhaltiBadResponse()


def _verified(payment: Payment, received: int, fields: dict[str, Any]) -> None:
    """Verify a pending payment Khalti completed, unless its ``idx`` is another
    payment's (the unique column says so): then it needs review.
    """
    try:
        _transition(payment, Status.VERIFIED, received_amount=received, **fields)
    except IntegrityError:
        _not_this_payments(payment, fields.get("idx"), received, fields)


def _not_this_payments(
    payment: Payment,
    idx: str | None,
    received: int | None,
    fields: dict[str, Any],
    source: str = Status.PENDING,
) -> None:
    """Khalti answered with a transaction that is another payment's (or the token
    itself): the answer is not this payment's, so it needs review.
    """
    _needs_review(
        payment,
        _(
            "Khalti's answer names transaction %(idx)s, which is another payment's (or the "
            "token itself)."
        )
        % {"idx": idx},
        source=source,
        received_amount=received,
        **{name: value for name, value in fields.items() if name != "idx"},
    )


def _fail(
    payment: Payment, reason: str, raw: Any = None, notify: bool = True, **fields: Any
) -> bool:
    """Fail a payment this worker still holds: Khalti proved no money moved.

    A worker whose claim went stale and was taken over must not fail the
    payment: its successor may have seen Khalti complete it. (Verifying needs
    no such guard: Khalti's completed record is proof whoever brings it.) The
    order and the token are let go: a new payment may pay the order, and the
    token may be bound again (Khalti refused it).
    """
    if raw is not None:
        fields.setdefault("khalti_response", raw)
    fields.pop("idx", None)  # no money moved: no transaction of this payment's to hold
    return _transition(
        payment,
        Status.FAILED,
        held=True,
        notify=notify,
        failure_reason=reason,
        order_claim=None,
        token_claim=None,
        **fields,
    )


def _recording_idx_if_free(payment: Payment, to: str, **fields: Any) -> bool:
    """:func:`_transition`, with Khalti's ``idx`` recorded only if it is no other
    payment's (a unique column): a settlement that does not pay the order must not
    fail on an id that is not this payment's to hold.
    """
    try:
        return _transition(payment, to, **fields)
    except IntegrityError:
        if not fields.get("idx"):
            raise
        logger.warning(
            "Khalti named transaction %s, another payment's, for payment %s; not recorded.",
            fields.pop("idx"),
            payment.pk,
        )
        return _transition(payment, to, **fields)


def _needs_review(
    payment: Payment, reason: str, *, source: str = Status.PENDING, **fields: Any
) -> bool:
    """Money moved that the shop must not honour: hold the payment for a person.

    Like failing, only by the worker that holds the claim. The order is let go
    (this payment does not pay it); the token stays bound.
    """
    changed = _recording_idx_if_free(
        payment,
        Status.NEEDS_REVIEW,
        source=source,
        held=True,
        failure_reason=reason,
        order_claim=None,
        **fields,
    )
    if changed:
        logger.error(
            "Khalti payment %s (order %s) needs review: %s",
            payment.pk,
            payment.order_reference,
            reason,
        )
    return changed


# --- ePayment flow ---------------------------------------------------------------------

#: Khalti's smallest ePayment, in paisa (Rs 10).
MIN_EPAYMENT_AMOUNT = 1000


def epayment_order(request: HttpRequest | Request | None, product_identity: str) -> KhaltiOrder:
    """The order an ePayment would be started for: the resolver's (an order it
    hides is :class:`KhaltiUnknownOrder`, whatever its payments), of at least
    Khalti's minimum (else :class:`KhaltiAmountTooSmall`).
    """
    order = resolve_order(request, product_identity)
    if order.amount < MIN_EPAYMENT_AMOUNT:
        raise KhaltiAmountTooSmall()
    return order


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
    expected = order.amount
    payment, created = _claim_order(
        client,
        product_identity,
        order,
        flow=Payment.Flow.EPAYMENT,
        purchase_order_name=product_name,
        started_by=buyer,
        reuse=lambda holder: (
            bool(buyer) and holder.started_by == buyer and _link_still_good(holder, expected)
        ),
    )
    if not created:
        return payment
    try:
        started = client.initiate(
            return_url=return_url,
            website_url=website_url,
            amount=expected,
            purchase_order_id=order.reference,
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
    except KhaltiUnavailable as exc:
        # Whatever Khalti made of it, the buyer never got a link to pay.
        if not _fail(payment, _("Khalti could not be reached to start the payment."), notify=False):
            raise  # taken over meanwhile (a claim gone stale): it is pending, as exc says
        raise type(exc)(
            _("Khalti could not be reached, so the payment was not started. Try again shortly.")
        ) from None
    fields = {
        "pidx": started.pidx,
        "payment_url": started.payment_url,
        # Khalti's expiry; else Khalti's documented hour, on the database's clock.
        "expires_at": started.expires_at or DbNow() + timedelta(minutes=60),
        "khalti_response": started.raw,
    }
    # The pidx is a fact about this row, stored whatever became of it meanwhile...
    Payment.objects.filter(pk=payment.pk).update(updated_at=DbNow(), **fields)
    # ...but the link goes to the buyer only if the row is still ours and pending.
    still_ours = Payment.objects.filter(
        _held(payment), pk=payment.pk, status=Status.PENDING
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
    (the buyer may have paid after all: :func:`recheck_failed`). Returns the
    payment as it stands afterwards (still pending if Khalti says so, or
    another worker is settling it right now).
    Raises :class:`KhaltiUnknownPayment` for a pidx we never started and
    :class:`KhaltiUnavailable` when Khalti could not be asked.
    """
    payment = (
        Payment.objects.filter(pidx=pidx, flow=Payment.Flow.EPAYMENT)
        .annotate(undelivered=_due_exists())
        .first()
    )
    if payment is None:
        raise KhaltiUnknownPayment()
    if payment.status in (Status.PENDING, Status.FAILED):
        payment = reconcile(payment)  # an ePayment: settled (or re-checked) by lookup
    deliver_due(payment)  # what a dead worker or a raising receiver left undelivered
    return payment


# --- refunds -------------------------------------------------------------------------


def refund_payment(
    payment: Payment,
    amount: int | None = None,
    mobile: str | None = None,
    by: _AnyUser | None = None,
    refunded_before: int | None = None,
) -> Refund:
    """Give ``amount`` paisa of a confirmed payment back to the buyer (all that remains
    without ``amount``); ``mobile`` is the Khalti id to refund to, which Khalti
    wants for bank-funded payments; ``by`` is the user asking, who needs the
    ``django_khalti.refund_payment`` permission. ``refunded_before``: what the
    person asking saw refunded already; checked under the payment's row lock
    (:class:`KhaltiRefundConflict` if another refund changed it meanwhile).

    One refund of a payment is in flight at a time. Khalti refusing raises
    :class:`KhaltiRefundFailed` and nothing is refunded, unless Khalti's status
    shows the payment refunded after all ("already refunded": the refund is
    then recorded as succeeded). An unknown outcome raises
    :class:`KhaltiRefundUnknown` (a :class:`KhaltiUnavailable`) and leaves the
    refund pending: money may have moved, so no other refund of the payment
    starts until :func:`reconcile_refund` (or ``khalti_reconcile``, or a
    person in the admin) has settled it. A success that could not be recorded
    as such raises too: :class:`KhaltiRefundConflict` when the refund was
    recorded failed meanwhile (the payment then needs review),
    :class:`KhaltiRefundUnknown` when the database failed.

    ``payment`` is left as it is (it may be a receiver's copy, which other
    receivers share); the returned refund's ``payment`` is the payment as it
    stands afterwards.
    """
    if by is not None and not by.has_perm("django_khalti.refund_payment"):
        raise PermissionDenied
    client = KhaltiClient.from_settings()
    refund, locked = _claim_refund(payment, amount, mobile or "", by, refunded_before)
    # Nothing refunded before, all of it now: Khalti's full refund (an empty body).
    whole = locked.refunded_amount == 0 and refund.amount == locked.paid_amount
    try:
        answer = client.refund(
            locked.idx or "", amount=None if whole else refund.amount, mobile=mobile or None
        )
    except KhaltiRejected as exc:
        return _refused_refund(client, refund, exc)
    except KhaltiUnavailable as exc:
        unknown = KhaltiRefundUnknown()
        Refund.objects.filter(pk=refund.pk).update(failure_reason=str(unknown.detail))
        raise unknown from exc
    except KhaltiConfigurationError:
        # Refused before anything was sent (the key cannot go into a header).
        _settle_refund(refund, succeeded=False, raw=None, reason=_("Not sent: misconfigured."))
        raise
    try:
        recorded = _settle_refund(refund, succeeded=True, raw=answer)
    except DatabaseError as exc:
        logger.exception("Khalti refunded %s, which could not be recorded.", refund.pk)
        raise KhaltiRefundUnknown(
            _(
                "Khalti refunded it, but that could not be recorded: the refund stays pending "
                "until khalti_reconcile settles it. Do not refund it again meanwhile."
            )
        ) from exc
    if not recorded:
        raise KhaltiRefundConflict(
            _(
                "Khalti refunded Rs %(amount)s, but the refund had been recorded failed "
                "meanwhile: the payment needs review."
            )
            % {"amount": rupees(refund.amount)}
        )
    return _refreshed(refund)


def _refused_refund(client: KhaltiClient, refund: Refund, exc: KhaltiRejected) -> Refund:
    """Khalti refused a refund: failed, unless its status shows the money back anyway
    ("already refunded": by the dashboard, or by an earlier call whose answer was lost).
    """
    try:
        # Only "Refunded" for all that remained proves it: "Partially refunded"
        # may be an earlier refund's doing, and Khalti just refused this one.
        proof = _refund_proof(client, refund, partial_proves=False)
    except KhaltiUnavailable:
        proof = None
    if proof is not None and proof[0] is True:
        logger.warning(
            "Khalti refused refund %s (%s) but shows the payment refunded: recorded succeeded.",
            refund.pk,
            exc.detail,
        )
        if not _settle_refund(refund, succeeded=True, raw=proof[1]):
            raise KhaltiRefundConflict() from exc
        return _refreshed(refund)
    if proof is None and "already" in str(exc.detail).lower():
        # "Already refunded", and the status cannot tell by what: a person decides.
        unknown = KhaltiRefundUnknown(
            _("Khalti says it is already refunded: %(detail)s") % {"detail": exc.detail}
        )
        Refund.objects.filter(pk=refund.pk).update(failure_reason=str(unknown.detail))
        raise unknown from exc
    if not _settle_refund(
        refund, succeeded=False, raw=exc.body, reason=str(exc.detail), refusal=True
    ):
        # Settled meanwhile (a person found it refunded): Khalti refusing this call
        # says nothing against that. The message says what is stored.
        raise KhaltiRefundConflict(
            _(
                "Khalti refused this call (%(detail)s), but the refund was recorded %(status)s meanwhile."
            )
            % {"detail": exc.detail, "status": Refund.Status(_recorded(refund)).label}
        ) from exc
    raise KhaltiRefundFailed(_("Khalti refused the refund: %s") % exc.detail) from exc


def _recorded(refund: Refund) -> str:
    return str(Refund.objects.values_list("status", flat=True).get(pk=refund.pk))


def _refreshed(refund: Refund) -> Refund:
    refund.refresh_from_db()
    refund.payment = Payment.objects.get(pk=refund.payment_id)
    return refund


def reconcile_refund(refund: Refund) -> Refund:
    """Settle a refund whose outcome was unknown, from the payment's state at Khalti.

    A refund younger than the claim timeout (on the database's clock) may still
    be in flight and is left alone. Raises :class:`KhaltiUnavailable` when
    Khalti could not be asked.
    """
    in_flight = Refund.objects.filter(pk=refund.pk, created_at__gt=stale_since())
    if refund.status != Refund.Status.PENDING or in_flight.exists():
        return refund
    proof = _refund_proof(KhaltiClient.from_settings(), refund)
    if proof is not None:
        _settle_refund(
            refund,
            succeeded=proof[0],
            raw=proof[1],
            reason="" if proof[0] else _("Khalti shows the payment complete and not refunded."),
        )
    refund.refresh_from_db()
    return refund


def _refund_proof(
    client: KhaltiClient, refund: Refund, *, partial_proves: bool = True
) -> tuple[bool, Any] | None:
    """What Khalti's state of the payment proves of ``refund``: ``(True, answer)``
    refunded, ``(False, answer)`` not, None when it cannot tell. With
    ``partial_proves`` False, "Partially refunded" proves nothing. Raises
    :class:`KhaltiUnavailable` when Khalti could not be asked.
    """
    payment = Payment.objects.get(pk=refund.payment_id)
    try:
        if payment.flow == Payment.Flow.EPAYMENT:
            looked_up = client.lookup(payment.pidx or "")
            state, outcome, raw = looked_up.status, looked_up.outcome, looked_up.raw
        else:
            # Khalti knows a payment by the amount paid (a payment that needs
            # review may have been paid for another amount than the order's).
            status = client.status(payment.token or "", payment.paid_amount)
            state, outcome, raw = status.state, status.outcome, status.raw
    except KhaltiRejected as exc:
        raise KhaltiUnavailable() from exc
    remaining = payment.paid_amount - payment.refunded_amount
    first = payment.refunded_amount == 0
    # Settle only on an answer that proves what became of *this* refund.
    if (outcome is KhaltiOutcome.REFUNDED and refund.amount == remaining) or (
        partial_proves
        and outcome is KhaltiOutcome.PARTIALLY_REFUNDED
        and first
        and refund.amount < remaining
    ):
        return True, raw
    if outcome is KhaltiOutcome.PAID and first:
        return False, raw
    # E.g. "Partially refunded" after an earlier partial refund: Khalti's state
    # cannot tell whether this one went through. A person decides (admin:
    # "Resolve unknown refund"), after a look at Khalti's dashboard.
    logger.warning(
        "Refund %s of payment %s stays pending: Khalti says %r, which does not tell "
        "whether this refund went through.",
        refund.pk,
        payment.pk,
        state,
    )
    return None


def resolve_refund(refund: Refund, *, succeeded: bool, by: _AnyUser, note: str = "") -> Refund:
    """Record what a person found in Khalti's dashboard about a refund of unknown outcome.

    For the cases Khalti's API cannot settle. ``by`` needs the
    ``django_khalti.refund_payment`` permission. Raises
    :class:`KhaltiRefundConflict` when the refund was settled otherwise
    meanwhile (Khalti's answer stands over a person's).
    """
    if not by.has_perm("django_khalti.refund_payment"):
        raise PermissionDenied
    reason = "" if succeeded else (note or _("Not refunded, as checked in Khalti's dashboard."))
    _settle_refund(
        refund,
        succeeded=succeeded,
        raw={"resolved_by": str(by), "note": note},
        reason=reason,
        by_person=True,
    )
    refund.refresh_from_db()
    return refund


def _claim_refund(
    payment: Payment,
    amount: int | None,
    mobile: str,
    by: _AnyUser | None,
    refunded_before: int | None = None,
) -> tuple[Refund, Payment]:
    """Record a pending refund under the payment's row lock, after checking it is due.

    Returns the refund and the payment row as it was under the lock.
    """
    with transaction.atomic(durable=True):
        locked = Payment.objects.select_for_update().get(pk=payment.pk)
        if refunded_before is not None and locked.refunded_amount != refunded_before:
            raise KhaltiRefundConflict(
                _("It was refunded meanwhile (Rs %(now)s so far): review it again.")
                % {"now": rupees(locked.refunded_amount)}
            )
        remaining = locked.refundable_amount
        if locked.status not in Payment.REFUNDABLE_STATUSES or not locked.idx or not remaining:
            raise KhaltiNotRefundable()
        if amount is None:
            amount = remaining
        if locked.status == Status.NEEDS_REVIEW and amount != remaining:
            raise KhaltiInvalidRefundAmount(
                _("A payment that needs review is refunded whole: %(remaining)s paisa.")
                % {"remaining": remaining}
            )
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


def _settle_refund(
    refund: Refund,
    *,
    succeeded: bool,
    raw: Any,
    reason: str = "",
    by_person: bool = False,
    refusal: bool = False,
) -> bool:
    """Record a refund's outcome and, if money went back, the payment's new status.

    Returns whether the refund now stands as this answer says: True when this
    call settled it (or it was settled the same way before). When it was
    settled otherwise meanwhile, Khalti's answer outranks a person's: a person
    (``by_person``) gets :class:`KhaltiRefundConflict`. An answer from Khalti
    that contradicts what was recorded is logged at WARNING and stands: the
    refund takes it, the payment's refunded total follows it, and the payment
    moves to ``needs_review`` with Khalti's answer (False). Refunds do not
    un-happen: "not refunded" overturns only a person's "refunded", never one
    Khalti's own answer proved (an older answer arriving last), and a
    ``refusal`` of one call overturns nothing.
    """
    outcome = Refund.Status.SUCCEEDED if succeeded else Refund.Status.FAILED
    with transaction.atomic():
        payment = Payment.objects.select_for_update().get(pk=refund.payment_id)
        settled = Refund.objects.filter(pk=refund.pk, status=Refund.Status.PENDING).update(
            status=outcome,
            claim=None,
            settled_at=DbNow(),
            khalti_response=raw,
            failure_reason=reason,
        )
        if settled and succeeded:
            total = payment.refunded_amount + refund.amount
            _transition(
                payment,
                Status.REFUNDED if total >= payment.paid_amount else Status.PARTIALLY_REFUNDED,
                source=payment.status,
                refunded_amount=total,
                refund_amount=refund.amount,
            )
        if settled:
            return True
        row = Refund.objects.get(pk=refund.pk)
        recorded = row.status
        if recorded == outcome:
            return True
        by_a_person = isinstance(row.khalti_response, dict) and "resolved_by" in row.khalti_response
        if not by_person and not succeeded and (refusal or not by_a_person):
            logger.warning(
                "Khalti's answer on refund %s of payment %s (%s) does not overturn what was "
                "recorded (%s): %s.",
                refund.pk,
                payment.pk,
                outcome,
                recorded,
                "a refusal of one call" if refusal else "Khalti's own proof of the refund",
            )
            return False
        if by_person:
            raise KhaltiRefundConflict(
                _("This refund was already recorded %(status)s, from Khalti's answer.")
                % {"status": Refund.Status(recorded).label}
            )
        logger.warning(
            "Khalti's answer on refund %s of payment %s (%s) contradicts what was recorded "
            "(%s): Khalti's stands, and the payment needs review.",
            refund.pk,
            payment.pk,
            outcome,
            recorded,
        )
        why = _(
            "Khalti's answer on a refund of Rs %(amount)s (%(khalti)s) contradicts what was "
            "recorded (%(recorded)s)."
        ) % {
            "amount": rupees(refund.amount),
            "khalti": Refund.Status(outcome).label,
            "recorded": Refund.Status(recorded).label,
        }
        Refund.objects.filter(pk=refund.pk, status=recorded).update(
            status=outcome, khalti_response=raw, failure_reason=why
        )
        change = refund.amount if succeeded else -refund.amount
        _transition(
            payment,
            Status.NEEDS_REVIEW,
            source=payment.status,
            failure_reason=why,
            khalti_response=raw,
            refunded_amount=max(0, payment.refunded_amount + change),
        )
        return False


# --- the one choke point ------------------------------------------------------------

_SIGNALS: dict[str, SignalDelivery.Signal] = {
    Status.VERIFIED: SignalDelivery.Signal.VERIFIED,
    Status.FAILED: SignalDelivery.Signal.FAILED,
    Status.REFUNDED: SignalDelivery.Signal.REFUNDED,
    Status.PARTIALLY_REFUNDED: SignalDelivery.Signal.REFUNDED,
    Status.NEEDS_REVIEW: SignalDelivery.Signal.NEEDS_REVIEW,
}
_RECEIVERS: dict[str, Signal] = {
    SignalDelivery.Signal.VERIFIED: payment_verified,
    SignalDelivery.Signal.FAILED: payment_failed,
    SignalDelivery.Signal.REFUNDED: payment_refunded,
    SignalDelivery.Signal.NEEDS_REVIEW: payment_needs_review,
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
    the row and, in the same transaction, writes the signal to the outbox
    (unless ``notify`` is False), delivered after the commit. The others see
    the row as the winner left it, and a loser that wanted another status logs
    it at WARNING. With ``held``, the row must also still carry this worker's
    claim.
    """
    stamps = {"updated_at": DbNow(), **({"verified_at": DbNow()} if to == Status.VERIFIED else {})}
    values: dict[str, Any] = {"status": to, "claimed_at": None, **fields}
    for attempt in range(1, DEADLOCK_RETRIES + 1):
        try:
            with transaction.atomic():
                rows = Payment.objects.filter(pk=payment.pk, status=source)
                if held:
                    rows = rows.filter(_held(payment))
                changed = rows.update(**values, **stamps)
                if changed:
                    for name, value in values.items():
                        setattr(payment, name, value)
                    # The database's clock set these (the failed re-check spacing reads
                    # updated_at): read back for the signal's snapshot, else when used.
                    _read_later(payment, *stamps)
                    if notify:
                        payment.refresh_from_db(fields=list(stamps))
                        _announce(to, payment, refund_amount)
            break
        except OperationalError as exc:
            # Two settlements of one row at MariaDB's REPEATABLE READ can deadlock;
            # the victim's transaction is gone, so (outside a caller's transaction)
            # it is simply run again: its guarded UPDATE then sees the winner's row.
            if attempt == DEADLOCK_RETRIES or transaction.get_connection().in_atomic_block:
                raise
            if not _deadlocked(exc):
                raise
            logger.info("Payment %s: a deadlock settling it; trying again.", payment.pk)
    if not changed:
        payment.refresh_from_db()
    if not changed and payment.status != to:
        logger.warning(
            "Payment %s was not moved from %s to %s: it is %s (settled meanwhile).",
            payment.pk,
            source,
            to,
            payment.status,
        )
    return bool(changed)


#: How many times a status change that lost a deadlock is tried again.
DEADLOCK_RETRIES = 3


def _deadlocked(exc: OperationalError) -> bool:
    """Whether the database chose this transaction as a deadlock's victim (MySQL
    and MariaDB: error 1213; PostgreSQL: SQLSTATE 40P01).
    """
    cause = exc.__cause__
    sqlstate = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
    return sqlstate == "40P01" or (bool(exc.args) and exc.args[0] == 1213)


def _announce(status: str, payment: Payment, refund_amount: int | None) -> None:
    """Write the signal for ``payment``'s new ``status`` to the outbox (inside the
    status change's transaction), and deliver it once that commits.
    """
    arguments: dict[str, Any] = {}
    if status in (Status.FAILED, Status.NEEDS_REVIEW):
        arguments["reason"] = payment.failure_reason
    if status in (Status.REFUNDED, Status.PARTIALLY_REFUNDED):
        arguments["amount"] = refund_amount
    # The first attempt is this worker's, after the commit: counted already, so
    # that if the worker dies before it ends, it is delivered again after the grace.
    delivery = SignalDelivery.objects.create(
        payment=payment,
        signal=_SIGNALS[status],
        snapshot=snapshot_of(payment),
        arguments=arguments,
        attempts=1,
        next_attempt_at=DbNow() + _retry_wait(1),
    )
    transaction.on_commit(lambda: deliver(delivery, first=True))


# --- delivering signals: at least once ------------------------------------------------

#: The longest wait between two deliveries of a signal whose receivers keep raising.
MAX_RETRY_INTERVAL = timedelta(hours=1)


def _retry_wait(attempt: int) -> timedelta:
    """How long after attempt number ``attempt`` begins the next may: the grace
    period, doubled for each attempt after the first, at most
    :data:`MAX_RETRY_INTERVAL` (or the grace period, if longer).
    """
    grace = timedelta(seconds=float(khalti_settings.SIGNAL_GRACE_PERIOD))
    wait: timedelta = grace * 2 ** min(attempt - 1, 20)
    return min(wait, max(grace, MAX_RETRY_INTERVAL))


def deliver(delivery: SignalDelivery, *, first: bool = False, now: bool = False) -> bool | None:
    """Send ``delivery``'s signal to the shop's receivers; True when they all ran
    without raising (the delivery is then marked delivered), False when one
    raised, None when this call did not take it.

    Delivery is at least once: each attempt is counted, and the next one
    scheduled (see :func:`_retry_wait`), *before* the receivers run, so a
    worker killed mid-delivery leaves it to be delivered again. ``first`` is
    the status change's own worker, after the commit (its attempt was counted
    with the outbox row); otherwise the delivery runs only when due, or when a
    person asks (``now``: at once, unless an attempt is still running), and of
    concurrent deliverers only one runs it (None for the others). A receiver
    that raises is logged at ERROR with the payment's id; the error is stored
    on the delivery.
    Receivers get :attr:`~django_khalti.models.SignalDelivery.payment_as_it_was`.
    """
    if not first and not _take(delivery, due=not now):
        return None
    payment = delivery.payment_as_it_was
    errors = []
    signal = _RECEIVERS[delivery.signal]
    for receiver, result in signal.send_robust(
        sender=Payment, payment=payment, **delivery.arguments
    ):
        if isinstance(result, Exception):
            name = getattr(receiver, "__qualname__", repr(receiver))
            logger.error(
                "A receiver of %s, %s, raised for payment %s; it is delivered again later.",
                delivery.signal,
                name,
                payment.pk,
                exc_info=result,
            )
            errors.append(f"{name}: {type(result).__name__}: {result}"[:1000])
    outcome: dict[str, Any] = (
        {"last_error": "\n".join(errors)}
        if errors
        else {"delivered_at": DbNow(), "next_attempt_at": None, "last_error": ""}
    )
    outcome["attempts_finished"] = delivery.attempts
    try:
        SignalDelivery.objects.filter(pk=delivery.pk, attempts=delivery.attempts).update(**outcome)
    except DatabaseError:
        # Not marked delivered: it is delivered again, which receivers allow for.
        logger.exception(
            "Could not record the delivery of %s for payment %s.", delivery.signal, payment.pk
        )
    return not errors


def _take(delivery: SignalDelivery, *, due: bool) -> bool:
    """Count an attempt at ``delivery`` and schedule the next; True for the one taker.

    Due, or (``due`` False: a person asking) no attempt running: the last one
    finished. An attempt that never finished (its worker died) is due once its
    wait is over.
    """
    rows = SignalDelivery.objects.filter(
        pk=delivery.pk, attempts=delivery.attempts, next_attempt_at__isnull=False
    )
    ended = Q(next_attempt_at__lte=DbNow())
    rows = rows.filter(ended if due else ended | Q(attempts_finished=F("attempts")))
    attempt = delivery.attempts + 1
    try:
        won = rows.update(attempts=attempt, next_attempt_at=DbNow() + _retry_wait(attempt))
    except DatabaseError:
        logger.exception(
            "Could not take %s of payment %s to deliver.", delivery.signal, delivery.payment_id
        )
        return False
    if won:
        delivery.attempts = attempt
    return bool(won)


def due_deliveries(limit: int = 1000, payment: Payment | None = None) -> list[SignalDelivery]:
    """Undelivered signals whose next attempt is due, oldest first."""
    rows = SignalDelivery.objects.filter(next_attempt_at__lte=DbNow())
    if payment is not None:
        rows = rows.filter(payment=payment)
    return list(rows.order_by("created_at", "pk")[:limit])


def _due_exists() -> Exists:
    """Annotation ``undelivered``: the payment has a signal due to be delivered again."""
    return Exists(
        SignalDelivery.objects.filter(payment=OuterRef("pk"), next_attempt_at__lte=DbNow())
    )


def deliver_due(payment: Payment) -> None:
    """Deliver again what is due of ``payment``'s signals (a resubmission of it).

    Nothing is read when ``payment`` was read with :func:`_due_exists` as
    ``undelivered`` and has none.
    """
    if getattr(payment, "undelivered", True) is False:
        return
    try:
        due = due_deliveries(payment=payment)
    except DatabaseError:
        logger.exception("Could not read the undelivered signals of payment %s.", payment.pk)
        return
    for delivery in due:
        deliver(delivery)
