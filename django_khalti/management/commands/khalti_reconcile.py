"""``manage.py khalti_reconcile``: settle pending payments by asking Khalti.

Khalti has no webhooks: a payment whose verification timed out, or whose
buyer never came back, stays pending until somebody asks. Run this from cron
every few minutes; several hosts may run it at once, since each payment is
won by one worker (a guarded claim) before Khalti is asked about it. It also
re-checks, read-only, payments that failed recently, in case Khalti completed
them after all, and delivers again the signals a receiver raised on (or a
dying worker left undelivered), once their grace period is over; and refunds
recorded failed, read-only as well, in case Khalti applied them late.

With ``--ledger``, it walks Khalti's merchant transaction list instead (see
:mod:`django_khalti.management.ledger`): the end-of-day check that every rupee
Khalti took or gave back matches a payment here.
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_khalti import services
from django_khalti.exceptions import KhaltiConfigurationError
from django_khalti.management.ledger import SINCE_HELP, LedgerRun
from django_khalti.models import Payment, Refund
from django_khalti.services.reconciliation import GIVE_UP_AFTER, Reconciliation

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


#: The options that are counts: name, least value, default, metavar, help.
COUNTS = [
    (
        "--older-than",
        0,
        120,
        "SECONDS",
        "Only payments created at least this long ago (default: 120; a fresher one may "
        "still be in flight).",
    ),
    (
        "--failed-within",
        0,
        7,
        "DAYS",
        "Also re-check, read-only, failed payments created in the last DAYS days, and "
        "refunds recorded failed requested in them, each at most once an hour, in case "
        "Khalti completed or refunded them after all (default: 7; 0: none).",
    ),
    ("--limit", 1, None, "N", "Check at most N payments (and N failed ones, and N refunds)."),
    ("--batch-size", 1, 100, "N", "Payments read from the database at a time (default: 100)."),
]


def _count(minimum: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        number = int(value)
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}")
        return number

    return parse


class Command(BaseCommand):
    """``khalti_reconcile [--older-than S] [--failed-within DAYS] [--limit N] [--batch-size N]
    [--dry-run] [--payment ID]``, or ``khalti_reconcile --ledger [--since DATE] [--restart]
    [--json]``.

    Prints a line per batch and a summary; exits with an error (status 1) when
    Khalti could not be reached for some payment or refund (which then stays
    pending for the next run), when a signal's receivers raised again, or when
    dj-khalti is misconfigured; with status 2 for a wrong command line.
    """

    help = "Settle pending Khalti payments (and refunds of unknown outcome) by asking Khalti."

    def add_arguments(self, parser: CommandParser) -> None:
        """The options: ``--older-than``, ``--failed-within``, ``--limit``, ``--batch-size``,
        ``--dry-run``, ``--payment``.
        """
        for name, minimum, default, metavar, text in COUNTS:
            parser.add_argument(
                name, type=_count(minimum), default=default, metavar=metavar, help=text
            )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="List what would be checked; ask Khalti nothing, change nothing.",
        )
        parser.add_argument(
            "--payment", metavar="ID", help="Check this one payment, whatever its age."
        )
        ledger = parser.add_argument_group("the ledger walk")
        ledger.add_argument(
            "--ledger",
            action="store_true",
            help="Instead: walk Khalti's merchant transaction list, page by page, and set it "
            "beside the payments here (read-only toward Khalti; resumes a stopped walk).",
        )
        ledger.add_argument("--since", metavar="DATE", default="30d", help=SINCE_HELP)
        ledger.add_argument(
            "--restart",
            action="store_true",
            help="With --ledger: start a new walk, even if one for the same day stopped.",
        )
        ledger.add_argument(
            "--json", action="store_true", help="With --ledger: print one JSON document."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        """Settle what is pending, oldest first, then refunds of unknown outcome
        (:func:`django_khalti.services.reconcile_due`), and print what became of them.

        Raises :class:`CommandError` for an unknown ``--payment``, a broken
        configuration, when Khalti did not answer
        :data:`~django_khalti.services.reconciliation.GIVE_UP_AFTER` times in a row,
        when it could not be reached for some payment or refund, or when a signal
        could not be delivered again.
        """
        if options["ledger"]:
            return self._ledger(options)
        payments = None
        if options["payment"]:
            one = self._one(options["payment"])
            if one.status not in (Status.PENDING, Status.FAILED):
                self.stdout.write(f"payment {one.pk} is {one.status}: nothing to settle")
            payments = Payment.objects.filter(pk=one.pk)
        try:
            report = services.reconcile_due(
                payments,
                older_than=timedelta(seconds=options["older_than"]),
                failed_within=timedelta(days=options["failed_within"]),
                limit=options["limit"],
                batch_size=options["batch_size"],
                dry_run=options["dry_run"],
                on_batch=self._batch_done,
            )
        except KhaltiConfigurationError as exc:
            raise CommandError(f"dj-khalti is misconfigured: {exc}") from None
        if options["dry_run"]:
            return self._dry_run(report)

        self._print(report)
        self._fail_if_unsettled(report)

    def _ledger(self, options: dict[str, Any]) -> None:
        """``--ledger``: the walk of Khalti's list, alone (no other option of reconcile's)."""
        if options["payment"] or options["dry_run"]:
            raise CommandError(
                "--ledger walks Khalti's whole list: not with --payment or --dry-run."
            )
        try:
            LedgerRun(self.stdout, self.stderr, as_json=options["json"])(options)
        except KhaltiConfigurationError as exc:
            raise CommandError(f"dj-khalti is misconfigured: {exc}") from None

    def _print(self, report: Reconciliation) -> None:
        """What became of each kind checked, and of the signals delivered again."""
        checked = self._left(report, "pending", Status.PENDING)
        self.stdout.write(f"checked {sum(checked.values())}: {self._summary(checked)}")
        rechecked = self._left(report, "failed", Status.FAILED)
        if rechecked:
            late = rechecked[Status.VERIFIED] + rechecked[Status.NEEDS_REVIEW]
            self.stdout.write(
                f"failed payments re-checked {sum(rechecked.values())}: "
                f"{rechecked[Status.VERIFIED]} verified, "
                f"{rechecked[Status.NEEDS_REVIEW]} need review, "
                f"{rechecked[Status.FAILED]} still failed"
                + (" (Khalti completed them after they failed)" if late else "")
            )
        refunds = self._left(report, "refunds", Refund.Status.PENDING)
        if refunds:
            self.stdout.write(
                f"refunds checked {sum(refunds.values())}: "
                + ", ".join(f"{n} {status}" for status, n in sorted(refunds.items()))
            )
        again = self._left(report, "failed_refunds", Refund.Status.FAILED)
        if again:
            late = again[Refund.Status.SUCCEEDED]
            self.stdout.write(
                f"failed refunds re-checked {sum(again.values())}: {late} succeeded, "
                f"{again[Refund.Status.FAILED]} still failed"
                + (" (Khalti refunded them after they failed)" if late else "")
            )
        if report.signals_due:
            self.stdout.write(
                f"signals delivered again {report.delivered}, "
                f"still undelivered {report.undelivered}"
            )

    @staticmethod
    def _fail_if_unsettled(report: Reconciliation) -> None:
        """A :class:`CommandError` when something was left as it was: Khalti gave up or
        was unreachable, or a signal stays undelivered.
        """
        if report.given_up:
            raise CommandError(
                f"Khalti did not answer {GIVE_UP_AFTER} times in a row: stopped. What was not "
                "checked stays pending for the next run."
            )
        if report.unreachable:
            raise CommandError(
                f"Khalti could not be reached for {report.unreachable} payment(s) or refund(s); "
                "they stay as they were."
            )
        if report.undelivered:
            raise CommandError(
                f"{report.undelivered} signal(s) could not be delivered: a receiver raised (see "
                "the log, or the admin's signal deliveries); they are delivered again later."
            )

    def _batch_done(self, number: int, read: int, report: Reconciliation) -> None:
        so_far = self._summary(self._left(report, "pending", Status.PENDING))
        self.stdout.write(f"batch {number}: {read} pending payment(s) read; so far {so_far}")

    @staticmethod
    def _left(report: Reconciliation, kind: str, unchanged: str) -> Counter[str]:
        """What the run left the items of ``kind`` as, the unanswered ones ``unchanged``."""
        left: Counter[str] = getattr(report, kind)
        return left + Counter({unchanged: report.unanswered[kind]})

    @staticmethod
    def _summary(counts: Counter[str]) -> str:
        return ", ".join(
            f"{counts[status]} {label}"
            for status, label in SUMMARY
            if counts[status] or status not in RARE
        )

    def _one(self, pk: str) -> Payment:
        try:
            return Payment.objects.get(pk=pk)
        except (Payment.DoesNotExist, ValidationError, ValueError):
            raise CommandError(f"No Khalti payment with id {pk!r}.") from None

    def _dry_run(self, report: Reconciliation) -> None:
        for delivery in report.would_deliver:
            self.stdout.write(
                f"would deliver {delivery.signal} for payment {delivery.payment_id} again "
                f"(attempts so far: {delivery.attempts})"
            )
        for payment in report.would_check:
            self.stdout.write(
                f"would check {payment.pk} {payment.order_reference} "
                f"Rs {payment.amount_rupees} {payment.status}, "
                f"created {payment.created_at:%Y-%m-%d %H:%M:%S}"
            )
        self.stdout.write(
            f"dry run: {len(report.would_check)} payment(s) would be checked, nothing changed"
        )
