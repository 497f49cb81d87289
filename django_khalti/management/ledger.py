"""``khalti_reconcile --ledger``: its options read, the walk run, its progress and result shown.

The walk itself is :func:`django_khalti.services.ledger.walk_ledger`; this module only
reads ``--since``, prints a line per page on a terminal (or one JSON document with
``--json``) and says how the walk ended.
"""

from __future__ import annotations

import json
import re
from datetime import date, datetime, time, timedelta
from typing import Any

from django.core.management.base import CommandError, OutputWrapper
from django.utils import timezone

from ..client import KhaltiLedgerPage
from ..models import LedgerEntry, LedgerWalk
from ..services.ledger import LedgerReport, walk_ledger

#: ``--since``: a date, or a number of days back (``30d``).
SINCE_HELP = (
    "With --ledger: walk Khalti's records made since this day, at midnight on the shop's "
    "time zone: YYYY-MM-DD, or a number of days back, e.g. 30d (today's midnight is 0d). "
    "Default: 30d."
)
#: The earliest ``--since``: before it, Khalti kept no merchant's records.
EARLIEST = date(2010, 1, 1)
#: The differences a JSON report lists at most (the rest are on the admin's ledger page).
JSON_LIMIT = 1000


def since(value: str) -> datetime:
    """``--since`` as the midnight it names, on the current time zone."""
    days = re.fullmatch(r"(\d{1,4})d", value.strip())
    try:
        day = (
            timezone.localdate() - timedelta(days=int(days.group(1)))
            if days
            else date.fromisoformat(value.strip())
        )
    except (ValueError, OverflowError):
        raise CommandError(
            f"--since {value!r}: give a date as YYYY-MM-DD, or days back as e.g. 30d."
        ) from None
    if not EARLIEST <= day <= timezone.localdate():
        raise CommandError(
            f"--since {value!r}: a day from {EARLIEST:%Y-%m-%d} to today, when Khalti's "
            "records can be."
        )
    return timezone.make_aware(datetime.combine(day, time.min))


class LedgerRun:
    """One ``--ledger`` run of the command: progress on ``stdout`` (or JSON), errors raised."""

    def __init__(self, stdout: OutputWrapper, stderr: OutputWrapper, *, as_json: bool) -> None:
        self.stdout, self.stderr, self.as_json = stdout, stderr, as_json

    def __call__(self, options: dict[str, Any]) -> None:
        """Walk, show, and raise :class:`CommandError` when the walk stopped before its end."""
        first = since(options["since"])
        report = walk_ledger(first, restart=options["restart"], on_page=self._page_done)
        if self.as_json:
            self.stdout.write(json.dumps(_as_json(report), indent=2))
        else:
            self._summary(report)
        if report.error:
            raise CommandError(
                f"The ledger walk stopped at page {report.walk.next_page}: {report.error} "
                "Run the same command again to resume it where it stopped."
            )

    def _page_done(self, report: LedgerReport, page: KhaltiLedgerPage) -> None:
        stream = self.stderr if self.as_json else self.stdout
        if self.as_json and not stream.isatty():
            return
        of = f"/{page.total_pages}" if page.total_pages else ""
        stream.write(
            f"page {page.number}{of}: {len(page.records) + len(page.unreadable)} record(s); "
            f"so far {sum(report.kinds.values())} entered, {report.differences} difference(s)"
        )

    def _summary(self, report: LedgerReport) -> None:
        walk = report.walk
        state = "resumed and " if report.resumed else ""
        self.stdout.write(
            f"ledger walk {walk.pk} ({state}{walk.get_status_display().lower()}) since "
            f"{timezone.localtime(walk.since):%Y-%m-%d %H:%M %Z}: {walk.pages_read} page(s), "
            f"{walk.records_read} record(s), {walk.differences} difference(s)"
        )
        if report.passed_over:
            self.stdout.write(f"passed over {report.passed_over} record(s) made before then")
        for kind, label in LedgerEntry.Kind.choices:
            if kind != LedgerEntry.Kind.MATCHED and report.kinds[kind]:
                self.stdout.write(f"  {report.kinds[kind]} {str(label).lower()}")
        for status, count in sorted(report.changed.items()):
            self.stdout.write(f"  {count} payment(s) now {status}")


def _as_json(report: LedgerReport) -> dict[str, Any]:
    """The walk, what this run did, and its differences (at most :data:`JSON_LIMIT`)."""
    walk = report.walk
    differences = walk.entries.exclude(kind=LedgerEntry.Kind.MATCHED).order_by("id")
    return {
        "walk": str(walk.pk),
        "since": walk.since.isoformat(),
        "status": walk.status,
        "finished": walk.status == LedgerWalk.Status.FINISHED,
        "resumed": report.resumed,
        "error": report.error,
        "next_page": walk.next_page,
        "pages_read": walk.pages_read,
        "records_read": walk.records_read,
        "total_pages": walk.total_pages,
        "total_records": walk.total_records,
        "differences": walk.differences,
        "passed_over": report.passed_over,
        "this_run": {"entries": dict(report.kinds), "payments_changed": dict(report.changed)},
        "entries": [
            {
                "kind": entry.kind,
                "idx": entry.idx,
                "payment": str(entry.payment_id) if entry.payment_id else None,
                "amount": entry.amount,
                "fee_amount": entry.fee_amount,
                "refunded_amount": entry.refunded_amount,
                "state": entry.state,
                "page": entry.page,
                "detail": entry.detail,
            }
            for entry in differences[:JSON_LIMIT].iterator()
        ],
    }
