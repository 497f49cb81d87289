"""``manage.py khalti_reconcile``: settle pending payments by asking Khalti.

Khalti has no webhooks: a payment whose verification timed out, or whose
buyer never came back, stays pending until somebody asks. Run this from cron
every few minutes; several hosts may run it at once, since each payment is
won by one worker (a guarded claim) before Khalti is asked about it. It also
re-checks, read-only, payments that failed recently, in case Khalti completed
them after all, and delivers again the signals a receiver raised on (or a
dying worker left undelivered), once their grace period is over.
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_khalti import services
from django_khalti.exceptions import KhaltiError, KhaltiUnavailable
from django_khalti.models import DbNow, Payment, Refund, SignalDelivery

Status = Payment.Status
logger = logging.getLogger(__name__)

#: The outcomes in the summary line, in order; refunded ones only when there are any.
SUMMARY = [
    (Status.VERIFIED, "verified"),
    (Status.FAILED, "failed"),
    (Status.REFUNDED, "refunded"),
    (Status.PARTIALLY_REFUNDED, "partially refunded"),
    (Status.NEEDS_REVIEW, "need review"),
    (Status.PENDING, "still pending"),
]
#: Shown in the summary only when there are any.
RARE = (Status.REFUNDED, Status.PARTIALLY_REFUNDED, Status.NEEDS_REVIEW)
#: After this many unanswered calls in a row, Khalti is down: stop, so that a
#: cron run does not wait out every timeout in turn.
GIVE_UP_AFTER = 3


class _Calls:
    """What Khalti answered so far: how many calls went unanswered, and how many in a row."""

    def __init__(self) -> None:
        self.unreachable = self.in_a_row = 0

    @property
    def given_up(self) -> bool:
        """Whether Khalti went unanswered :data:`GIVE_UP_AFTER` times in a row."""
        return self.in_a_row >= GIVE_UP_AFTER

    def settle(
        self, settle: Callable[[Any], Any], item: Any, counts: Counter[str], unknown: str
    ) -> None:
        """Count what ``settle(item)`` left it as; ``unknown`` when Khalti did not answer."""
        try:
            counts[settle(item).status] += 1
            self.in_a_row = 0
        except KhaltiUnavailable:
            self.unreachable += 1
            self.in_a_row += 1
            counts[unknown] += 1
        except KhaltiError as exc:
            # Any other refusal concerns this one item: the run goes on.
            logger.error("khalti_reconcile could not settle %r: %s", item, exc, exc_info=exc)
            self.unreachable += 1
            counts[unknown] += 1


def _count(minimum: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        number = int(value)
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}")
        return number

    return parse


class Command(BaseCommand):
    """``khalti_reconcile [--older-than S] [--failed-within DAYS] [--limit N] [--batch-size N]
    [--dry-run] [--payment ID]``.

    Prints a line per batch and a summary; exits with an error (status 1) when
    Khalti could not be reached for some payment or refund, which then stays
    pending for the next run.
    """

    help = "Settle pending Khalti payments (and refunds of unknown outcome) by asking Khalti."

    def add_arguments(self, parser: CommandParser) -> None:
        """The options: ``--older-than``, ``--limit``, ``--batch-size``, ``--dry-run``, ``--payment``."""
        parser.add_argument(
            "--older-than",
            type=_count(0),
            default=120,
            metavar="SECONDS",
            help="Only payments created at least this long ago (default: 120; a fresher "
            "one may still be in flight).",
        )
        parser.add_argument(
            "--failed-within",
            type=_count(0),
            default=7,
            metavar="DAYS",
            help="Also re-check, read-only, payments that failed in the last DAYS days, each "
            "at most once an hour, in case Khalti completed them after all (default: 7; 0: "
            "none).",
        )
        parser.add_argument(
            "--limit",
            type=_count(1),
            metavar="N",
            help="Check at most N payments (and N failed ones, and N refunds).",
        )
        parser.add_argument(
            "--batch-size",
            type=_count(1),
            default=100,
            metavar="N",
            help="Payments read from the database at a time (default: 100).",
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="List what would be checked; ask Khalti nothing, change nothing.",
        )
        parser.add_argument(
            "--payment", metavar="ID", help="Check this one payment, whatever its age."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        """Settle what is pending, oldest first, then refunds of unknown outcome.

        Raises :class:`CommandError` for an unknown ``--payment``, when Khalti did not
        answer :data:`GIVE_UP_AFTER` times in a row, or when it could not be reached
        for some payment or refund.
        """
        older_than = timedelta(seconds=options["older_than"])
        failed_within = timedelta(days=options["failed_within"])
        failed: Iterator[list[Payment]] = iter([])
        one = self._one(options["payment"]) if options["payment"] else None
        if one is not None:
            if one.status == Status.FAILED:
                batches: Iterator[list[Payment]] = iter([])
                failed = iter([[one]])
            else:
                if one.status != Status.PENDING:
                    self.stdout.write(f"payment {one.pk} is {one.status}: nothing to settle")
                batches = iter([[one]])
        else:
            batches = self._batches(
                services.pending_batch, older_than, options["batch_size"], options["limit"]
            )
            if options["failed_within"]:
                failed = self._batches(
                    services.failed_batch, failed_within, options["batch_size"], options["limit"]
                )
        deliveries = services.due_deliveries(options["limit"] or 1000, payment=one)
        if options["dry_run"]:
            return self._dry_run(deliveries, batches, failed)

        calls = _Calls()
        counts: Counter[str] = Counter()
        for number, batch in enumerate(batches, start=1):
            for payment in batch:
                if calls.given_up:
                    break
                if payment.status != Status.PENDING or not services.claim(payment):
                    continue  # settled meanwhile, or another worker holds it
                calls.settle(services.settle_claimed, payment, counts, Status.PENDING)
            self.stdout.write(
                f"batch {number}: {len(batch)} pending payment(s) read; "
                f"so far {self._summary(counts)}"
            )
            if calls.given_up:
                break

        rechecked: Counter[str] = Counter()
        for batch in failed:
            for payment in batch:
                if calls.given_up:
                    break
                calls.settle(services.recheck_failed, payment, rechecked, Status.FAILED)

        refunds: Counter[str] = Counter()
        if not calls.given_up:
            for refund in self._pending_refunds(older_than, options["payment"], options["limit"]):
                calls.settle(services.reconcile_refund, refund, refunds, Refund.Status.PENDING)

        # Signals last: what this run settled is delivered already (after its commit).
        # None: another deliverer took it meanwhile (not a failure).
        delivered = [services.deliver(delivery) for delivery in deliveries]
        undelivered = delivered.count(False)

        self.stdout.write(f"checked {sum(counts.values())}: {self._summary(counts)}")
        if rechecked:
            late = rechecked[Status.VERIFIED] + rechecked[Status.NEEDS_REVIEW]
            self.stdout.write(
                f"failed payments re-checked {sum(rechecked.values())}: "
                f"{rechecked[Status.VERIFIED]} verified, "
                f"{rechecked[Status.NEEDS_REVIEW]} need review, "
                f"{rechecked[Status.FAILED]} still failed"
                + (" (Khalti completed them after they failed)" if late else "")
            )
        if refunds:
            self.stdout.write(
                f"refunds checked {sum(refunds.values())}: "
                + ", ".join(f"{n} {status}" for status, n in sorted(refunds.items()))
            )
        if deliveries:
            self.stdout.write(
                f"signals delivered again {delivered.count(True)}, still undelivered {undelivered}"
            )
        if calls.given_up:
            raise CommandError(
                f"Khalti did not answer {GIVE_UP_AFTER} times in a row: stopped. What was not "
                "checked stays pending for the next run."
            )
        if calls.unreachable:
            raise CommandError(
                f"Khalti could not be reached for {calls.unreachable} payment(s) or refund(s); "
                "they stay pending."
            )
        if undelivered:
            raise CommandError(
                f"{undelivered} signal(s) could not be delivered: a receiver raised (see the "
                "log, or the admin's signal deliveries); they are delivered again later."
            )

    @staticmethod
    def _summary(counts: Counter[str]) -> str:
        return ", ".join(
            f"{counts[status]} {label}"
            for status, label in SUMMARY
            if counts[status] or status not in RARE
        )

    def _batches(
        self, read: Callable[..., Any], since: timedelta, size: int, limit: int | None
    ) -> Iterator[list[Payment]]:
        """Payments from ``read`` (``services.pending_batch`` or ``failed_batch``),
        a batch at a time, oldest first.
        """
        cursor = None
        seen = 0
        while limit is None or seen < limit:
            batch, cursor = read(
                since, size if limit is None else min(size, limit - seen), after=cursor
            )
            seen += len(batch)
            yield batch
            if cursor is None:
                break

    def _pending_refunds(
        self, older_than: timedelta, payment_id: str | None, limit: int | None
    ) -> list[Refund]:
        refunds = Refund.objects.filter(status=Refund.Status.PENDING).select_related("payment")
        if payment_id:
            refunds = refunds.filter(payment_id=payment_id)
        else:
            refunds = refunds.filter(created_at__lte=DbNow() - older_than)
        # A list, not a cursor: no database cursor stays open while Khalti is asked.
        return list(refunds.order_by("created_at")[: limit or 1000])

    def _one(self, pk: str) -> Payment:
        try:
            return Payment.objects.get(pk=pk)
        except (Payment.DoesNotExist, ValidationError, ValueError):
            raise CommandError(f"No Khalti payment with id {pk!r}.") from None

    def _dry_run(self, deliveries: list[SignalDelivery], *batches: Iterator[list[Payment]]) -> None:
        for delivery in deliveries:
            self.stdout.write(
                f"would deliver {delivery.signal} for payment {delivery.payment_id} again "
                f"(attempts so far: {delivery.attempts})"
            )
        count = 0
        for batch in (batch for source in batches for batch in source):
            for payment in batch:
                count += 1
                self.stdout.write(
                    f"would check {payment.pk} {payment.order_reference} "
                    f"Rs {payment.amount_rupees} {payment.status}, "
                    f"created {payment.created_at:%Y-%m-%d %H:%M:%S}"
                )
        self.stdout.write(f"dry run: {count} payment(s) would be checked, nothing changed")
