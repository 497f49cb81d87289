"""The ledger walk: Khalti's merchant transaction list, page by page, beside the payments here.

:func:`walk_ledger` is what ``khalti_reconcile --ledger --since DATE`` runs. It
is read-only toward Khalti (the list, and the record of a transaction the list
lacked), and keeps no more than a page in memory. What each record says is
decided in :mod:`.ledger_records`:

- a refund made in Khalti's dashboard is recorded as a :class:`~django_khalti.models.Refund`
  made outside the app, and the payment refunded (``payment_refunded``);
- a record no payment here has is listed as foreign, and attached to none;
- a payment whose money the shop holds and whose record at Khalti is missing, or
  of another amount or state, needs review, with Khalti's record kept;
- each payment's fee is kept as Khalti's record says.

A walk that stops (Khalti down, a worker killed) keeps its place and the records
it read: the next walk for the same ``since`` resumes it. A record is entered once
a walk (one that moves to a later page while the walk runs is read twice, entered
once), and a payment is changed under its row lock after its record is judged again,
so two walks at once change each payment once.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import pairwise

from django.db import IntegrityError
from django.db.models import Exists, F, OuterRef, Q
from django.db.models.expressions import CombinedExpression
from django.utils.translation import gettext as _

from ..client import (
    KhaltiClient,
    KhaltiLedgerPage,
    KhaltiLedgerRecord,
)
from ..exceptions import KhaltiRejected, KhaltiUnavailable
from ..models import DbNow, LedgerEntry, LedgerWalk, Payment
from . import ledger_records as records

logger = logging.getLogger(__name__)

Status = Payment.Status
Kind = LedgerEntry.Kind

#: A walk whose worker wrote nothing for this long is taken over by the next walk.
WALK_STALE_AFTER = timedelta(minutes=5)
#: A stopped walk is resumed by the next for the same day only this soon after it
#: began; a later one starts anew (from the list's head, where new records are).
RESUME_WITHIN = timedelta(hours=12)
#: A payment verified this shortly before the walk began may not be in Khalti's list
#: yet: it is not looked for.
MISSING_AFTER = timedelta(minutes=10)


@dataclass
class LedgerReport:
    """What one :func:`walk_ledger` run did; the walk's totals are on :attr:`walk`."""

    walk: LedgerWalk
    #: Whether this run took up a walk that had stopped.
    resumed: bool = False
    #: The entries this run wrote, by kind.
    kinds: Counter[str] = field(default_factory=Counter)
    #: The payments this run changed, by the status it left them in.
    changed: Counter[str] = field(default_factory=Counter)
    #: Records older than the walk's ``since``, passed over.
    passed_over: int = 0
    #: Why the walk stopped before its end ("" when it finished).
    error: str = ""

    @property
    def finished(self) -> bool:
        """Whether the walk read Khalti's list to its end and looked for what it lacked."""
        return self.walk.status == LedgerWalk.Status.FINISHED

    @property
    def differences(self) -> int:
        """Entries of this run that are not a match."""
        return _differing(self.kinds)


class _TakenOver(Exception):
    """Another worker took the walk over (this one was silent too long)."""


OnPage = Callable[[LedgerReport, KhaltiLedgerPage], None]


def walk_ledger(
    since: datetime, *, restart: bool = False, on_page: OnPage | None = None
) -> LedgerReport:
    """Walk Khalti's transaction list for the records made since ``since``.

    Resumes the walk for the same ``since`` that stopped (unless ``restart``), or
    starts one. ``on_page`` is called after each page. Khalti not answering, or
    answering a page that cannot be read, stops the walk where it is: the report's
    :attr:`~LedgerReport.error` says why, and the next call resumes it.
    """
    client = KhaltiClient.from_settings()
    walk, resumed = _take(since, restart)
    report = LedgerReport(walk, resumed=resumed)
    try:
        if not walk.read_to_end:
            _read_pages(client, report, on_page)
        _find_missing(client, report)
    except KhaltiUnavailable as exc:
        report.error = _("Khalti did not answer (%(error)s).") % {"error": _failure(exc)}
        _stop(walk, report.error)
    except KhaltiRejected as exc:
        report.error = _("Khalti refused the list: %(error)s") % {"error": exc}
        _stop(walk, report.error)
    except _TakenOver:
        report.error = _("Another worker took this walk over.")
    except BaseException:
        _stop(walk, _("Stopped by an error (see the log)."))
        raise
    else:
        _finish(walk)
    walk.refresh_from_db()
    return report


def _failure(exc: KhaltiUnavailable) -> str:
    """What went wrong with a call, for people: its kind and Khalti's HTTP status."""
    status = getattr(exc, "khalti_status", None)
    return type(exc).__name__ + (f", HTTP {status}" if status else "")


def _take(since: datetime, restart: bool) -> tuple[LedgerWalk, bool]:
    """The stopped walk for ``since`` this worker wins (resumed), or a new one.

    Only a walk started within :data:`RESUME_WITHIN` is resumed: an older one would
    never read what came into the list since (at its head), and is left stopped.
    """
    holder = uuid.uuid4()
    silent = Q(claimed_at__isnull=True) | Q(claimed_at__lt=DbNow() - WALK_STALE_AFTER)
    _abandon(silent)
    if not restart:
        stopped = LedgerWalk.objects.filter(
            silent,
            since=since,
            status=LedgerWalk.Status.INTERRUPTED,
            started_at__gte=DbNow() - RESUME_WITHIN,
        )
        for walk in stopped.order_by("-started_at")[:3]:
            won = LedgerWalk.objects.filter(pk=walk.pk, holder=walk.holder).filter(silent)
            if won.update(
                status=LedgerWalk.Status.RUNNING,
                holder=holder,
                claimed_at=DbNow(),
                resumed=F("resumed") + 1,
                last_error="",
                **_counted(walk),
            ):
                walk.refresh_from_db()
                return walk, True
    return LedgerWalk.objects.create(since=since, holder=holder, claimed_at=DbNow()), False


def _abandon(silent: Q) -> None:
    """Walks still marked running whose worker fell silent (it was killed): stopped."""
    LedgerWalk.objects.filter(silent, status=LedgerWalk.Status.RUNNING).update(
        status=LedgerWalk.Status.INTERRUPTED,
        claimed_at=None,
        last_error=_("Its worker stopped without a word (killed?)."),
    )


def _counted(walk: LedgerWalk) -> dict[str, int]:
    """A walk's counts, from its entries: a worker killed between a page's entries and
    its counts left them behind.
    """
    entries = walk.entries.all()
    return {
        "records_read": entries.exclude(kind=Kind.MISSING).count(),
        "differences": entries.exclude(kind=Kind.MATCHED).count(),
    }


def _held(walk: LedgerWalk, **fields: object) -> None:
    """Write ``fields`` to the walk, and that its worker is alive; :class:`_TakenOver`
    when another worker holds it now.
    """
    if not LedgerWalk.objects.filter(pk=walk.pk, holder=walk.holder).update(
        claimed_at=DbNow(), **fields
    ):
        raise _TakenOver


def _read_pages(client: KhaltiClient, report: LedgerReport, on_page: OnPage | None) -> None:
    """Read the list from the walk's next page to its end (or to records older than
    the walk's ``since``, in a list that is newest first).
    """
    walk = report.walk
    number = walk.next_page
    while True:
        page = _page(client, number)
        if page is None:
            break
        made = _read(client, report, page)
        report.kinds += made
        _held(
            walk,
            next_page=number + 1,
            pages_read=F("pages_read") + 1,
            total_pages=page.total_pages,
            total_records=page.total_records,
            **_counted_up(made),
        )
        if on_page is not None:
            on_page(report, page)
        if _last(page, walk.since, made):
            break
        number += 1
    _held(walk, read_to_end=True)
    walk.read_to_end = True


def _last(page: KhaltiLedgerPage, since: datetime, made: Counter[str]) -> bool:
    """Whether ``page`` is the last to read: Khalti says no page follows, or its page
    count ends here, or the rest is older than ``since``; or, when Khalti gives no
    page count, the page brought nothing new (a ``next`` link that never ends).
    """
    if not page.has_next or _older(page, since):
        return True
    if page.total_pages is not None:
        return page.number >= page.total_pages
    return not made


def _page(client: KhaltiClient, number: int) -> KhaltiLedgerPage | None:
    """Page ``number``, or None past the list's end (which moved while walking)."""
    try:
        return client.transactions(number)
    except KhaltiRejected:
        if number == 1:
            raise
        return None


def _older(page: KhaltiLedgerPage, since: datetime) -> bool:
    """Whether the whole page, newest first, is older than ``since``: the rest is too.
    Only a page that shows its order (two times or more, falling) tells.
    """
    times = [record.created_on for record in page.records if record.created_on is not None]
    if len(times) < 2 or len(times) < len(page.records) or page.unreadable:
        return False
    newest_first = all(a >= b for a, b in pairwise(times))
    return newest_first and times[0] > times[-1] and times[0] < since


def _read(client: KhaltiClient, report: LedgerReport, page: KhaltiLedgerPage) -> Counter[str]:
    """Enter the page's records not yet entered in this walk, and make their changes;
    the entries written, by kind.
    """
    walk = report.walk
    fresh = _not_entered(walk, page)
    payments = {p.idx: p for p in Payment.objects.filter(idx__in=[r.idx for r in fresh])}
    in_flight = records.refunds_in_flight(payments.values())
    made: Counter[str] = Counter()
    quiet: list[LedgerEntry] = []
    for record in fresh:
        if record.created_on is not None and record.created_on < walk.since:
            report.passed_over += 1
            continue
        payment = payments.get(record.idx)
        verdict = records.judge(record, payment, in_flight.get(payment.pk) if payment else None)
        if verdict.change and payment is not None:
            verdict = _changed(client, report, record, payment, page.number, verdict)
        else:
            quiet.append(records.entry(walk, record, payment, verdict, page.number))
        made[verdict.kind] += 1
    unread = _unreadable(walk, page, {record.idx for record in fresh})
    made[Kind.UNREADABLE] += len(unread)
    LedgerEntry.objects.bulk_create(quiet + unread, ignore_conflicts=True)
    _keep_fees(fresh, payments)
    return made


def _changed(
    client: KhaltiClient,
    report: LedgerReport,
    record: KhaltiLedgerRecord,
    payment: Payment,
    page: int | None,
    first: records.Verdict,
) -> records.Verdict:
    """Make the change ``record`` calls for on ``payment`` (``first``: what it was
    judged to call for, as read). One that would send it to review is made only on
    Khalti's record of the transaction, asked again: a list read a moment before a
    refund, or lagging behind it, is no proof.
    """
    if first.change == "review":
        record = _asked_again(client, record)
    try:
        verdict = records.record_with_change(report.walk, record, payment, page)
    except IntegrityError:
        # Entered meanwhile, with its change, by another worker on this walk (one that
        # fell silent and was taken over, or took it over): handled, and not again.
        _held(report.walk)
        kind = report.walk.entries.filter(idx=record.idx).values_list("kind", flat=True)
        return records.Verdict(kind.get())
    _count_change(report, payment, verdict)
    _held(report.walk)  # alive: a page of changes, each asking Khalti, may take a while
    return verdict


def _asked_again(client: KhaltiClient, record: KhaltiLedgerRecord) -> KhaltiLedgerRecord:
    """Khalti's record of ``record``'s transaction, asked now; ``record`` when Khalti
    answers for no such transaction, or names another.
    """
    try:
        found = client.transaction(record.idx)
    except KhaltiRejected:
        return record
    return records.as_listed(found) if found.idx == record.idx else record


def _not_entered(walk: LedgerWalk, page: KhaltiLedgerPage) -> list[KhaltiLedgerRecord]:
    """The page's records this walk has not entered (each idx once)."""
    idxs = {record.idx for record in page.records}
    entered = set(walk.entries.filter(idx__in=idxs).values_list("idx", flat=True))
    fresh: dict[str, KhaltiLedgerRecord] = {}
    for record in page.records:
        if record.idx not in entered:
            fresh.setdefault(record.idx, record)
    return list(fresh.values())


def _unreadable(walk: LedgerWalk, page: KhaltiLedgerPage, read: set[str]) -> list[LedgerEntry]:
    """Entries for the page's records that could not be read: each idx once a walk, and
    none for an idx the page also has a readable record of (``read``).
    """
    named = {record.idx for record in page.unreadable if record.idx}
    entered = set(walk.entries.filter(idx__in=named).values_list("idx", flat=True)) | read
    # A record without an idx cannot be told again: entered once a page number (a
    # page read again, after its worker was killed, has its entries already).
    seen_page = walk.entries.filter(page=page.number).exists()
    unread: dict[object, LedgerEntry] = {}
    for position, record in enumerate(page.unreadable):
        if record.idx in entered or (record.idx is None and seen_page):
            continue
        unread.setdefault(record.idx or position, records.unreadable(walk, record, page.number))
    if page.unreadable:
        logger.warning(
            "%s record(s) of Khalti's transaction list page %s could not be read.",
            len(page.unreadable),
            page.number,
        )
    return list(unread.values())


def _differing(made: Counter[str]) -> int:
    """How many of the entries ``made`` (by kind) are not a match."""
    return sum(n for kind, n in made.items() if kind != Kind.MATCHED)


def _counted_up(made: Counter[str]) -> dict[str, CombinedExpression]:
    """The walk's counts raised by the entries ``made``, by kind: every entry but a
    payment missing at Khalti is a record read (as :func:`_counted` counts them).
    """
    return {
        "records_read": F("records_read") + sum(n for k, n in made.items() if k != Kind.MISSING),
        "differences": F("differences") + _differing(made),
    }


def _count_change(report: LedgerReport, payment: Payment, verdict: records.Verdict) -> None:
    """Count the status ``payment`` was left in, when ``verdict`` (made under its row
    lock) changed it.
    """
    if verdict.change:
        status = Payment.objects.filter(pk=payment.pk).values_list("status", flat=True).first()
        report.changed[status or ""] += 1


def _keep_fees(fresh: list[KhaltiLedgerRecord], payments: dict[str | None, Payment]) -> None:
    """Each payment's fee, as Khalti's record says it (where it says)."""
    for record in fresh:
        payment = payments.get(record.idx)
        if (
            payment is not None
            and record.fee_amount is not None
            and record.fee_amount != payment.fee_amount
        ):
            Payment.objects.filter(pk=payment.pk).update(fee_amount=record.fee_amount)


def _find_missing(client: KhaltiClient, report: LedgerReport) -> None:
    """Payments verified here since the walk's ``since`` (up to shortly before it began)
    whose transaction the list lacked: asked about one by one (the list may have moved
    while it was read), and missing when Khalti does not know it either.
    """
    walk = report.walk
    entered = LedgerEntry.objects.filter(walk=walk, idx=OuterRef("idx"))
    lacked = Payment.objects.filter(
        ~Exists(entered),
        status__in=records.HELD_BY_SHOP,
        idx__isnull=False,
        verified_at__gte=walk.since,
        verified_at__lt=walk.started_at - MISSING_AFTER,
    ).order_by("verified_at", "pk")
    for payment in lacked.iterator(chunk_size=100):
        made = Counter([_look_up(client, report, payment)])
        report.kinds += made
        _held(walk, **_counted_up(made))


def _look_up(client: KhaltiClient, report: LedgerReport, payment: Payment) -> str:
    """Khalti's record of ``payment``'s transaction, judged as a record of the list
    (found), or the payment missing at Khalti; the kind entered.
    """
    try:
        found = client.transaction(payment.idx or "")
    except KhaltiRejected as exc:
        verdict = records.missing_with_change(report.walk, payment, exc.body)
    else:
        if found.idx != payment.idx:
            verdict = records.misnamed(report.walk, payment, found.raw)
        else:
            verdict = records.record_with_change(
                report.walk, records.as_listed(found), payment, None
            )
    _count_change(report, payment, verdict)
    return verdict.kind


def _stop(walk: LedgerWalk, why: str) -> None:
    """The walk stops where it is, to be resumed: its place and its entries are kept."""
    LedgerWalk.objects.filter(pk=walk.pk, holder=walk.holder).update(
        status=LedgerWalk.Status.INTERRUPTED, claimed_at=None, last_error=why[:2000]
    )
    logger.warning("The ledger walk %s stopped: %s", walk.pk, why)


def _finish(walk: LedgerWalk) -> None:
    LedgerWalk.objects.filter(pk=walk.pk, holder=walk.holder).update(
        status=LedgerWalk.Status.FINISHED, claimed_at=None, finished_at=DbNow()
    )
