"""Reconciliation: Khalti has no webhooks, so somebody asks.

:func:`reconcile_due` is the one path ``khalti_reconcile`` and the admin's
"Re-check with Khalti" both take: pending payments (settled), recently failed
ones (re-checked read-only), refunds of unknown outcome, and signals left
undelivered. Each payment is won by a claim before Khalti is asked about it, so
several reconcilers may run at once; a payment Khalti was asked about within
``KHALTI["ASK_SPACING"]`` is left for the next run.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import Any

from django.db.models import Q, QuerySet
from django.db.models.functions import Coalesce

from ..client import KhaltiClient
from ..exceptions import KhaltiError, KhaltiUnavailable
from ..models import DbNow, Payment, Refund, SignalDelivery
from .outbox import deliver_in_order, due_deliveries
from .refund_checks import recheck_failed_refund, reconcile_refund, refunds_awaiting_outcome
from .settle import _ask_khalti, _recheck
from .state import _askable, _claimable, _release, _settle, claim

logger = logging.getLogger(__name__)

Status = Payment.Status


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


def recheck_failed(payment: Payment, *, spacing: timedelta | None = None) -> Payment:
    """Ask Khalti, read-only, whether a failed payment was completed after all.

    Khalti may complete a payment after it was recorded failed (an ePayment
    cancelled, then paid; a verification refused, then completed). If it did,
    for the order's amount, and no other payment holds the order, the payment
    is verified (``payment_verified``); otherwise it needs review
    (``payment_needs_review``). Anything else leaves it failed. Nothing is
    verified at Khalti here: only status and lookup are asked. Returns the
    payment as it stands afterwards (as it was, when another worker holds it
    or Khalti was asked about it within ``spacing``: see
    :func:`~.state.claim`); raises :class:`KhaltiUnavailable` when Khalti
    could not be asked.
    """
    _rechecked(payment, spacing=spacing)
    return payment


def _rechecked(payment: Payment, *, spacing: timedelta | None = None) -> bool:
    """:func:`recheck_failed`; True when Khalti was asked now, False when the
    payment is not one to re-check, another worker holds it, or Khalti was asked
    about it within ``spacing`` (``payment`` is then as the database has it).
    """
    client = KhaltiClient.from_settings()
    if payment.status != Status.FAILED or not (payment.token or payment.pidx):
        return False
    if not claim(payment, status=Status.FAILED, spacing=spacing):
        payment.refresh_from_db()
        return False
    try:
        _settle(client, payment, _recheck)
    finally:
        _release(payment, status=Status.FAILED)
    return True


#: After this many unanswered calls in a row, Khalti is down: a reconciliation
#: stops, so that a cron run does not wait out every timeout in turn.
GIVE_UP_AFTER = 3
#: How often a failed payment is re-checked by the reconciliation of what is due.
RECHECK_FAILED_EVERY = timedelta(hours=1)
#: The spacing of a person's explicit re-check (the admin's "Re-check with
#: Khalti"): shorter than ``KHALTI["ASK_SPACING"]``, for a person who asks once
#: and waits for the answer, yet a double click or a script still asks once.
PERSON_SPACING = timedelta(seconds=2)


@dataclass
class Reconciliation:
    """What one :func:`reconcile_due` did (or, in a dry run, would do).

    The counters are by the status each item Khalti answered for was left in; the
    ones it did not answer for stay as they were, counted in :attr:`unanswered`
    by kind (``"pending"``, ``"failed"``, ``"refunds"``, ``"failed_refunds"``).
    """

    #: Pending payments checked.
    pending: Counter[str] = field(default_factory=Counter)
    #: Failed payments re-checked, read-only.
    failed: Counter[str] = field(default_factory=Counter)
    #: Refunds of unknown outcome checked, by the refund's status.
    refunds: Counter[str] = field(default_factory=Counter)
    #: Refunds recorded failed re-checked, read-only, by the refund's status.
    failed_refunds: Counter[str] = field(default_factory=Counter)
    #: How many of each kind Khalti could not be asked about (or refused to tell).
    unanswered: Counter[str] = field(default_factory=Counter)
    #: Pending payments passed over because another worker is settling them right
    #: now, or Khalti was asked about them moments ago (within the spacing).
    busy: int = 0
    #: After how many unanswered calls in a row it stops (see :attr:`given_up`).
    give_up_after: int = GIVE_UP_AFTER
    #: Whether ``limit`` left some due items unchecked.
    limited: bool = False
    #: Signals whose delivery was due again; of them, the ones delivered, and the
    #: ones still undelivered (a receiver raised; the rest another deliverer took).
    signals_due: int = 0
    delivered: int = 0
    undelivered: int = 0
    #: In a dry run: the payments that would be checked, the signals delivered again.
    would_check: list[Payment] = field(default_factory=list)
    would_deliver: list[SignalDelivery] = field(default_factory=list)
    _in_a_row: int = 0

    @property
    def given_up(self) -> bool:
        """Whether Khalti went unanswered :attr:`give_up_after` times in a row: it stopped."""
        return self._in_a_row >= self.give_up_after

    @property
    def unreachable(self) -> int:
        """How many items Khalti could not be asked about: they stay as they were."""
        return sum(self.unanswered.values())

    def _settle(self, settle: Callable[[Any], Any], item: Any, kind: str) -> None:
        """Count what ``settle(item)`` left it as, under ``kind``."""
        try:
            status = settle(item).status
        except KhaltiUnavailable:
            self._in_a_row += 1
            self.unanswered[kind] += 1
        except KhaltiError as exc:
            # Any other refusal concerns this one item: the run goes on.
            logger.error("Reconciliation could not settle %r: %s", item, exc, exc_info=exc)
            self.unanswered[kind] += 1
        else:
            getattr(self, kind)[status] += 1
            self._in_a_row = 0


def reconcile_due(
    payments: QuerySet[Payment] | None = None,
    *,
    older_than: timedelta = timedelta(seconds=120),
    failed_within: timedelta = timedelta(days=7),
    limit: int | None = None,
    batch_size: int = 100,
    give_up_after: int = GIVE_UP_AFTER,
    deliver_signals: bool = True,
    dry_run: bool = False,
    on_batch: Callable[[int, int, Reconciliation], None] | None = None,
    spacing: timedelta | None = None,
) -> Reconciliation:
    """Ask Khalti about what awaits it, and record the answers.

    With ``payments`` None, what is due: pending payments at least ``older_than``
    old (settled), failed payments and refunds recorded failed within
    ``failed_within`` (re-checked read-only, each at most once per
    :data:`RECHECK_FAILED_EVERY`: Khalti may complete a payment, or apply a refund,
    late), refunds of unknown outcome at least ``older_than`` old, and signals
    whose delivery is due again; with ``payments``, all of theirs whatever their
    age. At most ``limit`` of each kind, oldest first, read ``batch_size`` at a
    time (``on_batch(number, read, report so far)`` after each batch of pending
    payments). Stops once Khalti went unanswered ``give_up_after`` times in a row.
    ``deliver_signals`` False leaves signals alone; ``dry_run`` asks Khalti
    nothing and changes nothing. A payment Khalti was asked about within ``spacing``
    (default ``KHALTI["ASK_SPACING"]``) is left for the next run (counted in
    :attr:`Reconciliation.busy` when pending). A broken configuration raises
    :class:`~django_khalti.exceptions.KhaltiConfigurationError` before anything.
    """
    report = Reconciliation(give_up_after=give_up_after)
    pending, failed = _due_payments(payments, older_than, failed_within, spacing)
    refunds, failed_refunds = _due_refunds(payments, older_than, failed_within)
    deliveries = due_deliveries(limit or 1000, payments=payments) if deliver_signals else []
    pending_batches = _batches(pending, batch_size, limit, report)
    failed_batches = _batches(failed, batch_size, limit, report)
    if dry_run:
        report.would_deliver = deliveries
        report.would_check = [p for b in (*pending_batches, *failed_batches) for p in b]
        return report
    KhaltiClient.from_settings()  # a broken configuration fails before anything is asked
    settled = _settle_pending(pending_batches, report, spacing, on_batch)
    # A payment this run failed is not re-checked by it.
    for payment in (p for batch in failed_batches for p in batch if p.pk not in settled):
        if not report.given_up:
            report._settle(partial(recheck_failed, spacing=spacing), payment, "failed")
    _settle_refunds(report, refunds, failed_refunds, limit, spacing)
    _deliver(deliveries, report)
    return report


def _deliver(deliveries: list[SignalDelivery], report: Reconciliation) -> None:
    """Signals last: what this run settled is delivered already (after its commit).
    Each due one, then its payment's later ones as they follow it; one another
    deliverer took meanwhile is no failure.
    """
    runs = [deliver_in_order(delivery) for delivery in deliveries]
    outcomes = [delivered for run in runs for _, delivered in run]
    report.signals_due = len(deliveries) + sum(max(len(run) - 1, 0) for run in runs)
    report.delivered, report.undelivered = outcomes.count(True), outcomes.count(False)


def _due_payments(
    payments: QuerySet[Payment] | None,
    older_than: timedelta,
    failed_within: timedelta,
    spacing: timedelta | None,
) -> tuple[QuerySet[Payment], QuerySet[Payment]]:
    """The pending and the failed payments :func:`reconcile_due` asks about: of
    ``payments`` whatever their age, or else those due (see there).
    """
    if payments is not None:
        return payments.filter(status=Status.PENDING), _recheckable(payments)
    pending = Payment.objects.pending().filter(_claimable(), _askable(spacing))
    pending = pending.filter(created_at__lte=DbNow() - older_than)
    if not failed_within:
        return pending, Payment.objects.none()
    failed = _recheckable(Payment.objects.filter(_claimable()))
    failed = failed.filter(
        created_at__gte=DbNow() - failed_within,
        updated_at__lt=DbNow() - RECHECK_FAILED_EVERY,
    )
    return pending, failed


def _due_refunds(
    payments: QuerySet[Payment] | None, older_than: timedelta, failed_within: timedelta
) -> tuple[QuerySet[Refund], QuerySet[Refund]]:
    """The refunds of unknown outcome and those recorded failed :func:`reconcile_due`
    asks about: of ``payments`` whatever their age, or else those due (see there).
    """
    refunds = refunds_awaiting_outcome()
    failed = Refund.objects.filter(status=Refund.Status.FAILED)
    if payments is not None:
        return refunds.filter(payment__in=payments), failed.filter(payment__in=payments)
    refunds = refunds.filter(created_at__lte=DbNow() - older_than)
    if not failed_within:
        return refunds, failed.none()
    # Re-checked at most once per RECHECK_FAILED_EVERY, the first time that long
    # after they failed.
    last = Coalesce("rechecked_at", "settled_at", "created_at")
    failed = failed.alias(last=last).filter(
        created_at__gte=DbNow() - failed_within, last__lt=DbNow() - RECHECK_FAILED_EVERY
    )
    return refunds, failed


def _settle_pending(
    batches: Iterator[list[Payment]],
    report: Reconciliation,
    spacing: timedelta | None,
    on_batch: Callable[[int, int, Reconciliation], None] | None,
) -> set[Any]:
    """Claim and settle each pending payment of ``batches``, counting in ``report``;
    the ids of those it went through (settled, or found settled meanwhile).
    """
    settled = set()
    for number, batch in enumerate(batches, start=1):
        for payment in batch:
            if report.given_up:
                break
            settled.add(payment.pk)
            if payment.status != Status.PENDING:
                continue  # settled meanwhile
            if not claim(payment, spacing=spacing):
                report.busy += 1  # another worker is at it, or asked moments ago
                continue
            report._settle(_settle_claimed, payment, "pending")
        if on_batch is not None:
            on_batch(number, len(batch), report)
        if report.given_up:
            break
    return settled


def _settle_refunds(
    report: Reconciliation,
    refunds: QuerySet[Refund],
    failed_refunds: QuerySet[Refund],
    limit: int | None,
    spacing: timedelta | None,
) -> None:
    """Settle the refunds of unknown outcome, then re-check those recorded failed
    (both read first: a refund this run fails is not re-checked by it).
    """
    steps: list[tuple[str, Callable[[Refund], Refund], list[Refund]]] = [
        ("refunds", partial(reconcile_refund, spacing=spacing), _oldest(refunds, limit, report)),
        (
            "failed_refunds",
            partial(recheck_failed_refund, spacing=spacing),
            _oldest(failed_refunds, limit, report),
        ),
    ]
    for kind, settle, listed in steps:
        for refund in listed:
            if not report.given_up:
                report._settle(settle, refund, kind)


def _oldest(rows: QuerySet[Refund], limit: int | None, report: Reconciliation) -> list[Refund]:
    """The oldest ``limit`` (else 1000) of ``rows`` (``report.limited`` if some were left)."""
    most = limit or 1000
    oldest = list(rows.select_related("payment").order_by("created_at", "pk")[: most + 1])
    if len(oldest) > most:
        report.limited = True
        oldest.pop()
    return oldest


def _settle_claimed(payment: Payment) -> Payment:
    return _settle(KhaltiClient.from_settings(), payment, _ask_khalti)


def _recheckable(rows: QuerySet[Payment]) -> QuerySet[Payment]:
    """The failed ones among ``rows`` that Khalti could still complete (they have a
    token or a pidx).
    """
    return rows.filter(status=Status.FAILED).filter(Q(token__isnull=False) | Q(pidx__isnull=False))


def _batches(
    rows: QuerySet[Payment], size: int, limit: int | None, report: Reconciliation
) -> Iterator[list[Payment]]:
    """``rows``, oldest first, ``size`` at a time and at most ``limit`` in all
    (``report.limited`` when some were left), each batch read after the last was settled.

    The reads take no row locks: each payment is won with a claim just before it
    is settled, and the claim, not this selection, makes sure no payment is
    settled twice (rows another reconciler holds by a fresh claim are passed
    over, so several reconcilers on several hosts share the work). ``SELECT ...
    FOR UPDATE SKIP LOCKED`` would lock every row MariaDB sorts, not just the
    batch, so a second reconciler read nothing and stopped; and MariaDB 10.5 has
    no ``SKIP LOCKED``.
    """
    seen = 0
    rows = rows.order_by("created_at", "pk")
    after = rows
    while True:
        if limit is not None and seen >= limit:
            report.limited = report.limited or after.exists()
            return
        want = size if limit is None else min(size, limit - seen)
        batch = list(after[:want])
        seen += len(batch)
        yield batch
        if len(batch) < want:
            return
        last = batch[-1]
        after = rows.filter(
            Q(created_at__gt=last.created_at) | Q(created_at=last.created_at, pk__gt=last.pk)
        )
