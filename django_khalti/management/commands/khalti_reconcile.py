"""``manage.py khalti_reconcile``: settle pending payments by asking Khalti.

Khalti has no webhooks: a payment whose verification timed out, or whose
buyer never came back, stays pending until somebody asks. Run this from cron
every few minutes; several hosts may run it at once, since each payment is
won by one worker (a guarded claim) before Khalti is asked about it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from django_khalti import services
from django_khalti.exceptions import KhaltiUnavailable
from django_khalti.models import Payment, Refund

Status = Payment.Status

#: The outcomes in the summary line, in order; refunded ones only when there are any.
SUMMARY = [
    (Status.VERIFIED, "verified"),
    (Status.FAILED, "failed"),
    (Status.REFUNDED, "refunded"),
    (Status.PARTIALLY_REFUNDED, "partially refunded"),
    (Status.PENDING, "still pending"),
]


class Command(BaseCommand):
    help = "Settle pending Khalti payments (and refunds of unknown outcome) by asking Khalti."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than", type=int, default=120, metavar="SECONDS",
            help="Only payments created at least this long ago (default: 120; a fresher "
            "one may still be in flight).",
        )
        parser.add_argument("--limit", type=int, metavar="N", help="Check at most N payments.")
        parser.add_argument("--batch-size", type=int, default=100, metavar="N",
                            help="Payments read from the database at a time (default: 100).")
        parser.add_argument("--dry-run", action="store_true",
                            help="List what would be checked; ask Khalti nothing, change nothing.")
        parser.add_argument("--payment", metavar="ID",
                            help="Check this one payment, whatever its age.")

    def handle(self, *args: Any, **options: Any) -> None:
        cutoff = timezone.now() - timedelta(seconds=options["older_than"])
        if options["payment"]:
            candidates: Iterator[Payment] = iter([self._one(options["payment"])])
        else:
            candidates = self._batches(cutoff, options["batch_size"], options["limit"])
        if options["dry_run"]:
            return self._dry_run(candidates)

        counts: Counter[str] = Counter()
        unreachable = 0
        for payment in candidates:
            if payment.status != Status.PENDING or not services.claim(payment):
                continue  # settled meanwhile, or another worker holds it
            try:
                counts[services.settle_claimed(payment).status] += 1
            except KhaltiUnavailable:
                unreachable += 1
                counts[Status.PENDING] += 1
        refunds = Counter()
        for refund in self._pending_refunds(cutoff, options["payment"]):
            try:
                refunds[services.reconcile_refund(refund).status] += 1
            except KhaltiUnavailable:
                unreachable += 1
                refunds[Refund.Status.PENDING] += 1

        summary = ", ".join(
            f"{counts[status]} {label}" for status, label in SUMMARY
            if counts[status] or status not in (Status.REFUNDED, Status.PARTIALLY_REFUNDED)
        )
        self.stdout.write(f"checked {sum(counts.values())}: {summary}")
        if refunds:
            self.stdout.write(
                f"refunds checked {sum(refunds.values())}: "
                + ", ".join(f"{n} {status}" for status, n in sorted(refunds.items()))
            )
        if unreachable:
            raise CommandError(
                f"Khalti could not be reached for {unreachable} payment(s) or refund(s); "
                "they stay pending."
            )

    def _batches(self, cutoff: datetime, size: int, limit: int | None) -> Iterator[Payment]:
        """Pending payments older than ``cutoff``, read a batch at a time, with progress."""
        cursor = None
        seen = number = 0
        while limit is None or seen < limit:
            batch, cursor = services.pending_batch(
                cutoff, size if limit is None else min(size, limit - seen), after=cursor
            )
            number += 1
            seen += len(batch)
            self.stdout.write(f"batch {number}: {len(batch)} pending payment(s)")
            yield from batch
            if cursor is None:
                break

    def _pending_refunds(self, cutoff: datetime, payment_id: str | None) -> Iterator[Refund]:
        refunds = Refund.objects.filter(status=Refund.Status.PENDING, created_at__lt=cutoff)
        if payment_id:
            refunds = Refund.objects.filter(status=Refund.Status.PENDING, payment_id=payment_id)
        return refunds.select_related("payment").iterator()

    def _one(self, pk: str) -> Payment:
        try:
            return Payment.objects.get(pk=pk)
        except (Payment.DoesNotExist, ValidationError, ValueError):
            raise CommandError(f"No Khalti payment with id {pk!r}.") from None

    def _dry_run(self, candidates: Iterator[Payment]) -> None:
        count = 0
        for payment in candidates:
            count += 1
            self.stdout.write(
                f"would check {payment.pk} {payment.product_identity} Rs {payment.amount_rupees} "
                f"{payment.status}, created {payment.created_at:%Y-%m-%d %H:%M:%S}"
            )
        self.stdout.write(f"dry run: {count} payment(s) would be checked, nothing changed")
