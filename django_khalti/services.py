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

import logging
from datetime import timedelta
from typing import Any

from django.core.exceptions import ObjectDoesNotExist, ValidationError
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import F, Q
from django.dispatch import Signal
from django.utils import timezone
from django.utils.translation import gettext as _

from .client import KhaltiClient, KhaltiTransaction
from .conf import khalti_settings
from .exceptions import (
    KhaltiAlreadyPaid,
    KhaltiAmountMismatch,
    KhaltiConfigurationError,
    KhaltiInProgress,
    KhaltiRejected,
    KhaltiTokenUsed,
    KhaltiUnavailable,
    KhaltiUnknownOrder,
    KhaltiVerificationFailed,
)
from .models import Payment
from .signals import payment_failed, payment_verified

logger = logging.getLogger(__name__)

Status = Payment.Status


# --- the shop's truth ---------------------------------------------------------


def expected_amount(request: Any, product_identity: str) -> int:
    """The amount in paisa the shop expects for this order, from its resolver."""
    resolver = khalti_settings.AMOUNT_RESOLVER
    if not callable(resolver):
        raise KhaltiConfigurationError("KHALTI['AMOUNT_RESOLVER'] must name a callable.")
    try:
        amount = resolver(request, product_identity)
    except (ObjectDoesNotExist, ValidationError, ValueError):
        # A malformed reference (``int("abc")``, a bad UUID) is an unknown order.
        logger.info("The amount resolver found no order for %r.", product_identity, exc_info=True)
        amount = None
    if amount is None:
        raise KhaltiUnknownOrder()
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise KhaltiConfigurationError(
            f"KHALTI['AMOUNT_RESOLVER'] must return a positive int (paisa) or None, "
            f"not {amount!r}."
        )
    return amount


# --- widget flow ----------------------------------------------------------------


def verify_payment(request: Any, *, token: str, amount: int, product_identity: str) -> Payment:
    """Verify a widget payment for ``product_identity`` exactly once.

    Returns the verified :class:`Payment` (also when it was verified before).
    Raises a :class:`~django_khalti.exceptions.KhaltiError` for every refusal,
    and :class:`~django_khalti.exceptions.KhaltiUnavailable` when Khalti's
    answer is unknown (the payment then stays pending).
    """
    payment = Payment.objects.filter(token=token).first()
    created = False
    if payment is None:
        expected = _expected_for_new_payment(request, product_identity)
        if amount != expected:
            raise KhaltiAmountMismatch()
        payment, created = _payment_for_token(token, product_identity, expected)
    # A token is bound to the order and amount it was first verified for. The
    # amount stored is the shop's, so a known token needs no resolver.
    if payment.product_identity != product_identity or payment.amount != amount:
        raise KhaltiTokenUsed()
    if created:
        return _verified_or_raise(_settle(payment, _verify))
    if payment.status == Status.PENDING:
        if _claim(payment):
            # An earlier attempt may have reached Khalti: ask before verifying again.
            return _verified_or_raise(_settle(payment, _ask_status))
        payment.refresh_from_db()
    return _verified_or_raise(payment)


def _expected_for_new_payment(request: Any, product_identity: str) -> int:
    """The shop's amount; a paid order the resolver no longer knows is ``already_paid``."""
    try:
        return expected_amount(request, product_identity)
    except KhaltiUnknownOrder:
        if Payment.objects.filter(order_claim=product_identity).exclude(status=Status.PENDING).exists():
            raise KhaltiAlreadyPaid() from None
        raise


def reconcile(payment: Payment) -> Payment:
    """Settle a pending payment from what Khalti says of it now.

    Returns the payment as it stands afterwards: still pending when Khalti
    cannot tell yet, or when another worker holds it right now. Raises
    :class:`~django_khalti.exceptions.KhaltiUnavailable` when Khalti could not
    be asked.
    """
    if payment.status == Status.PENDING and _claim(payment):
        return _settle(payment, _ask_status)
    payment.refresh_from_db()
    return payment


def _verified_or_raise(payment: Payment) -> Payment:
    if payment.status == Status.VERIFIED:
        return payment
    if payment.status == Status.FAILED:
        raise KhaltiVerificationFailed(payment.failure_reason or None)
    raise KhaltiInProgress()


def _payment_for_token(token: str, product_identity: str, amount: int) -> tuple[Payment, bool]:
    """Insert (and so claim) the payment for a new token; or the row that beat us to it."""
    for _attempt in range(3):
        try:
            with transaction.atomic():
                payment = Payment.objects.create(
                    token=token,
                    product_identity=product_identity,
                    amount=amount,
                    order_claim=product_identity,
                    claimed_at=timezone.now(),
                    attempts=1,
                )
            return payment, True
        except IntegrityError:
            pass  # The same token inserted concurrently, or the order is taken.
        raced = Payment.objects.filter(token=token).first()
        if raced is not None:
            return raced, False
        holder = Payment.objects.filter(order_claim=product_identity).first()
        if holder is not None:
            if holder.status == Status.PENDING:
                raise KhaltiInProgress(
                    _("Another payment for this order is being confirmed. Try again shortly.")
                )
            raise KhaltiAlreadyPaid()
        # The holder failed and let go of the order in between: try again.
    raise KhaltiInProgress()


def _claim(payment: Payment) -> bool:
    """Take a pending payment to call Khalti about it; True for the one winner."""
    now = timezone.now()
    stale = now - timedelta(seconds=khalti_settings.stale_after)
    won = (
        Payment.objects.filter(pk=payment.pk, status=Status.PENDING)
        .filter(Q(claimed_at__isnull=True) | Q(claimed_at__lt=stale))
        .update(claimed_at=now, attempts=F("attempts") + 1, updated_at=now)
    )
    if won:
        payment.claimed_at = now
    return bool(won)


def _release(payment: Payment) -> None:
    """Let go of a claim after an unknown outcome, so a retry need not wait."""
    try:
        Payment.objects.filter(
            pk=payment.pk, status=Status.PENDING, claimed_at=payment.claimed_at
        ).update(claimed_at=None, updated_at=timezone.now())
    except DatabaseError:
        logger.exception("Could not release the claim on payment %s.", payment.pk)


def _settle(payment: Payment, ask: Any) -> Payment:
    """Call Khalti through ``ask`` while holding the claim, then record its answer."""
    client = KhaltiClient.from_settings()
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
        record = client.verify(payment.token, payment.amount)
    except KhaltiRejected as exc:
        _fail(payment, _("Khalti rejected the payment: %s") % exc.detail, exc.body)
        return
    _record_transaction(payment, record)


def _ask_status(client: KhaltiClient, payment: Payment) -> None:
    try:
        answer = client.status(payment.token, payment.amount)
    except KhaltiRejected as exc:
        # A refusal from the status endpoint says nothing sure about the payment.
        raise KhaltiUnavailable() from exc
    state = answer.state.strip().lower()
    if state == "confirmed":
        # The buyer paid and Khalti waits for us: now verification is due.
        _verify(client, payment)
    elif state == "complete":
        idx = answer.raw.get("idx")
        _transition(
            payment,
            Status.VERIFIED,
            idx=idx if isinstance(idx, str) and idx else payment.idx,
            khalti_response=answer.raw,
        )
    elif state in ("error", "failed"):
        _fail(payment, _("Khalti reports the payment as %(state)s: %(detail)s")
              % {"state": answer.state, "detail": answer.detail}, answer.raw)
    else:
        # Initiated, or a state we do not know: not ours to decide yet.
        logger.info("Khalti reports payment %s as %r; it stays pending.", payment.pk, answer.state)
        _release(payment)


def _record_transaction(payment: Payment, record: KhaltiTransaction) -> None:
    fields = {
        "idx": record.idx,
        "fee_amount": record.fee_amount,
        "mobile": record.mobile,
        "khalti_response": record.raw,
    }
    if record.state != "Completed":
        _fail(payment, _("Khalti's record is %(state)s, not Completed.") % {"state": record.state},
              **fields)
    elif record.amount != payment.amount:
        _fail(
            payment,
            _("Khalti's record is for %(got)s paisa, the order is for %(want)s paisa.")
            % {"got": record.amount, "want": payment.amount},
            **fields,
        )
    else:
        _transition(payment, Status.VERIFIED, **fields)


def _fail(payment: Payment, reason: str, raw: Any = None, **fields: Any) -> None:
    if raw is not None:
        fields.setdefault("khalti_response", raw)
    _transition(payment, Status.FAILED, failure_reason=reason, order_claim=None, **fields)


# --- the one choke point ------------------------------------------------------------

_SIGNALS: dict[str, Signal] = {Status.VERIFIED: payment_verified, Status.FAILED: payment_failed}


def _transition(payment: Payment, to: str, *, source: str = Status.PENDING, **fields: Any) -> bool:
    """Move ``payment`` from ``source`` to ``to``; True if this call made the change.

    The ``UPDATE`` is guarded by the current status, so of any number of
    concurrent callers exactly one changes the row and queues the signal.
    The others see the row as the winner left it.
    """
    now = timezone.now()
    values = {"status": to, "claimed_at": None, "updated_at": now, **fields}
    if to == Status.VERIFIED:
        values["verified_at"] = now
    with transaction.atomic():
        changed = Payment.objects.filter(pk=payment.pk, status=source).update(**values)
        if changed:
            for name, value in values.items():
                setattr(payment, name, value)
            _send_on_commit(to, payment)
    if not changed:
        payment.refresh_from_db()
    return bool(changed)


def _send_on_commit(status: str, payment: Payment) -> None:
    signal = _SIGNALS.get(status)
    if signal is None:
        return
    kwargs: dict[str, Any] = {"payment": payment}
    if status == Status.FAILED:
        kwargs["reason"] = payment.failure_reason

    def send() -> None:
        for receiver, result in signal.send_robust(sender=Payment, **kwargs):
            if isinstance(result, Exception):
                logger.error(
                    "A receiver of %s failed for payment %s: %r",
                    status, payment.pk, receiver, exc_info=result,
                )

    transaction.on_commit(send)
