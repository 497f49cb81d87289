"""The payments' overview: the first questions a support desk asks, on one admin page.

How much came in today, in 7 and in 30 days, and what of it stays once Khalti's fees
and the refunds are taken off; what is stuck pending and for how long;
what needs a person (payments in ``needs_review``, refunds of unknown outcome); and the
amount verified each day of the last 30, as an inline SVG chart (no JavaScript).

:func:`payment_overview` reads it all in a fixed number of queries however many
payments there are (conditional aggregates, one grouped query for the chart, sliced
lists) into a plain :class:`Overview`; :class:`OverviewView` shows it at
``admin:django_khalti_payment_overview`` (see ``PaymentAdmin.get_urls``) to users who
may view payments.

Days are calendar days on the current time zone (``TIME_ZONE``, or one activated for
the request): "today" starts at its local midnight, "7 days" and "30 days" are today
and the 6 or 29 days before it. A payment counts in a period by when it was created,
and in "verified" and the chart by when Khalti confirmed it. The money figures count
the payments where money moved, by the day Khalti confirmed them (:mod:`.money`
says which, and what "money in", "fees", "refunded" and "net" are). Ages are measured
from the instant the page is drawn.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from django.db.models import Aggregate, Count, Q, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from .. import services
from ..models import Payment, Refund, rupees
from .money import DATED, MONEY_IN, Money, midnight, moved_between, signed_rupees
from .pages import PaymentsPage

if TYPE_CHECKING:
    from django.utils.functional import _StrOrPromise as StrOrPromise

#: How many payments (and refunds) each list shows at most, oldest first.
LIST_LIMIT = 20
#: The periods of the figures: (name, label, days before today it starts).
PERIODS: list[tuple[str, StrOrPromise, int]] = [
    ("today", _("Today"), 0),
    ("7_days", _("Last 7 days"), 6),
    ("30_days", _("Last 30 days"), 29),
]
#: Pending payments by age, the oldest first: (label, at least this old, younger than this).
AGES: list[tuple[StrOrPromise, timedelta | None, timedelta | None]] = [
    (_("Over a day"), timedelta(days=1), None),
    (_("1 to 24 hours"), timedelta(hours=1), timedelta(days=1)),
    (_("5 to 60 minutes"), timedelta(minutes=5), timedelta(hours=1)),
    (_("Under 5 minutes"), None, timedelta(minutes=5)),
]


@dataclass(frozen=True)
class Figure:
    """How many payments, and their amount in paisa."""

    count: int = 0
    amount: int = 0

    @property
    def rupees(self) -> str:
        """The amount for display, in rupees."""
        return rupees(self.amount)


@dataclass(frozen=True)
class Period:
    """One period's figures: by status (of the payments created in it), and verified."""

    name: str
    label: StrOrPromise
    #: Its first instant: local midnight.
    since: datetime
    #: Every status, with zeros.
    by_status: dict[str, Figure]
    #: Payments Khalti confirmed in the period (by ``verified_at``) that paid their order.
    verified: Figure
    #: The payments where money moved, counted in the period (:mod:`.money`).
    money: Money

    @property
    def total(self) -> Figure:
        """Every payment created in the period."""
        figures = self.by_status.values()
        return Figure(sum(f.count for f in figures), sum(f.amount for f in figures))


@dataclass(frozen=True)
class Day:
    """One day of the chart: the payments Khalti confirmed that day that paid their order;
    and the money of the payments where money moved that count on that day.
    """

    day: date
    count: int
    amount: int
    money: Money = field(default_factory=Money)

    @property
    def rupees(self) -> str:
        """The amount for display, in rupees."""
        return rupees(self.amount)


_T = TypeVar("_T", Payment, Refund)


def age_text(age: timedelta) -> str:
    """How long something has waited, in its largest whole unit: "5 minutes", "3 hours",
    "40 days" (Django's ``timesince`` is not translated into Nepali).
    """
    if age < timedelta(hours=1):
        minutes = max(int(age.total_seconds() // 60), 0)
        return ngettext("%(n)s minute", "%(n)s minutes", minutes) % {"n": minutes}
    if age < timedelta(days=1):
        hours = int(age.total_seconds() // 3600)
        return ngettext("%(n)s hour", "%(n)s hours", hours) % {"n": hours}
    return ngettext("%(n)s day", "%(n)s days", age.days) % {"n": age.days}


@dataclass(frozen=True)
class Waiting(Generic[_T]):
    """A payment or refund in a list, and how long it has waited."""

    item: _T
    waited: timedelta

    @property
    def age(self) -> str:
        """How long it has waited, for display."""
        return age_text(self.waited)


def _waiting(rows: Iterable[_T], now: datetime) -> list[Waiting[_T]]:
    """Each row with its age: since it was created (a refund: requested)."""
    return [Waiting(row, now - row.created_at) for row in rows]


@dataclass(frozen=True)
class Overview:
    """What the overview page shows, as of :attr:`now`."""

    now: datetime
    periods: list[Period]
    #: Pending payments by age, as (label, figure), youngest first.
    pending_by_age: list[tuple[StrOrPromise, Figure]]
    #: The oldest pending payments, oldest first (at most ``LIST_LIMIT``).
    oldest_pending: list[Waiting[Payment]]
    #: The payments that need review, oldest first (at most ``LIST_LIMIT``), and how many.
    needs_review: list[Waiting[Payment]]
    needs_review_count: int
    #: Refunds of unknown outcome no longer in flight, oldest first, and how many.
    unresolved_refunds: list[Waiting[Refund]]
    unresolved_refund_count: int
    #: The last 30 days, oldest first, today included.
    days: list[Day]

    @property
    def pending(self) -> Figure:
        """Every pending payment."""
        figures = [figure for _label, figure in self.pending_by_age]
        return Figure(sum(f.count for f in figures), sum(f.amount for f in figures))

    @property
    def money_rows(self) -> list[tuple[str, StrOrPromise, list[str]]]:
        """The money as a table: (name, label, rupees per period)."""
        periods = [period.money for period in self.periods]
        return [
            ("in", _("Money in"), [rupees(money.money_in) for money in periods]),
            ("fees", _("Khalti's fees"), [rupees(money.fees) for money in periods]),
            ("refunded", _("Refunded"), [rupees(money.refunded) for money in periods]),
            ("net", _("Net"), [signed_rupees(money.net) for money in periods]),
        ]

    @property
    def status_rows(self) -> list[tuple[StrOrPromise, list[Figure]]]:
        """The figures as a table: (status label, one figure per period)."""
        return [
            (label, [period.by_status[status] for period in self.periods])
            for status, label in Payment.Status.choices
        ]


def _figure(row: Mapping[str, Any], name: str) -> Figure:
    return Figure(row[f"{name}_count"] or 0, row[f"{name}_amount"] or 0)


def payment_overview(now: datetime, limit: int = LIST_LIMIT) -> Overview:
    """The overview as of ``now``, in seven queries whatever the number of payments."""
    today = timezone.localdate(now)
    starts = {name: midnight(today - timedelta(days=back)) for name, _label, back in PERIODS}
    days = _days(today, min(starts.values()))  # 2. the chart and the money, day by day
    counts = _pending_counts(now)  # 3.
    # 4-7. The lists, oldest first, and how many refunds await an outcome.
    oldest_first = ("created_at", "pk")
    refunds = services.refunds_awaiting_outcome().order_by(*oldest_first)
    return Overview(
        now=now,
        periods=_periods(today, starts, _by_status(starts), days),  # 1.
        pending_by_age=[(label, _figure(counts, f"age{i}")) for i, (label, *_) in enumerate(AGES)],
        oldest_pending=_waiting(Payment.objects.pending().order_by(*oldest_first)[:limit], now),
        needs_review=_waiting(Payment.objects.needs_review().order_by(*oldest_first)[:limit], now),
        needs_review_count=counts["needs_review"],
        unresolved_refunds=_waiting(refunds[:limit], now),
        unresolved_refund_count=refunds.count(),
        days=days,
    )


def _by_status(starts: dict[str, datetime]) -> dict[str, Mapping[str, Any]]:
    """Count and sum by status for each period (by when created): one row per status."""
    in_period = {name: Q(created_at__gte=since) for name, since in starts.items()}
    return {
        row["status"]: row
        for row in Payment.objects.filter(created_at__gte=min(starts.values()))
        .values("status")
        .annotate(
            **{f"{name}_count": Count("pk", filter=q) for name, q in in_period.items()},
            **{f"{name}_amount": Sum("amount", filter=q) for name, q in in_period.items()},
        )
        .order_by()
    }


def _periods(
    today: date,
    starts: dict[str, datetime],
    by_status: dict[str, Mapping[str, Any]],
    days: list[Day],
) -> list[Period]:
    """Each period's figures, from the rows by status and the days of the chart."""
    periods = []
    for name, label, back in PERIODS:
        shown = [day for day in days if day.day >= today - timedelta(days=back)]
        statuses = {
            status: _figure(by_status[status], name) if status in by_status else Figure()
            for status in Payment.Status.values
        }
        verified = Figure(sum(d.count for d in shown), sum(d.amount for d in shown))
        money = sum((day.money for day in shown), Money())
        periods.append(Period(name, label, starts[name], statuses, verified, money))
    return periods


def _pending_counts(now: datetime) -> dict[str, Any]:
    """Pending payments by age (:data:`AGES`), and how many need review, in one query."""
    ages: dict[str, Aggregate] = {}
    for i, (_label, at_least, younger_than) in enumerate(AGES):
        q = Q(status=Payment.Status.PENDING)
        if at_least is not None:
            q &= Q(created_at__lte=now - at_least)
        if younger_than is not None:
            q &= Q(created_at__gt=now - younger_than)
        ages[f"age{i}_count"] = Count("pk", filter=q)
        ages[f"age{i}_amount"] = Sum("amount", filter=q)
    return Payment.objects.filter(
        status__in=[Payment.Status.PENDING, Payment.Status.NEEDS_REVIEW]
    ).aggregate(needs_review=Count("pk", filter=Q(status=Payment.Status.NEEDS_REVIEW)), **ages)


def _days(today: date, first: datetime) -> list[Day]:
    """The 30 days to ``today``, oldest first: what was verified each day that paid its
    order (the chart), and the money of the payments where money moved (:mod:`.money`),
    in one grouped query.
    """
    paid = Q(status__in=Payment.PAID_STATUSES, verified_at__isnull=False)
    found = {
        row["day"]: Day(
            row["day"],
            row["verified_count"],
            row["verified_amount"] or 0,
            Money(row["moved"], row["money_in"], row["fees"] or 0, row["refunded"], row["unknown"]),
        )
        for row in Payment.objects.filter(moved_between(first))
        .annotate(day=TruncDate(DATED, tzinfo=timezone.get_current_timezone()))
        .values("day")
        .annotate(
            verified_count=Count("pk", filter=paid),
            verified_amount=Sum("amount", filter=paid),
            moved=Count("pk"),
            money_in=Sum(MONEY_IN),
            fees=Sum("fee_amount"),
            refunded=Sum("refunded_amount"),
            unknown=Count("pk", filter=Q(fee_amount__isnull=True)),
        )
        .order_by("day")
    }
    return [
        found.get(day, Day(day, 0, 0))
        for day in (today - timedelta(days=back) for back in range(29, -1, -1))
    ]


# --- the chart ---------------------------------------------------------------------


#: The chart's geometry, in SVG user units.
BAR, GAP, PLOT_HEIGHT, TOP, BOTTOM, LEFT = 16, 4, 120, 20, 22, 4


def volume_chart(days: list[Day]) -> SafeString:
    """The amount verified each day as an inline SVG bar chart: one bar a day, each
    with its figures as a ``<title>``, the chart's ``<title>`` and ``<desc>`` naming
    what it shows, dates as text under the first, every seventh and the last bar.
    """
    most = max((day.amount for day in days), default=0)
    width = LEFT * 2 + len(days) * (BAR + GAP)
    height = TOP + PLOT_HEIGHT + BOTTOM
    bars, labels = [], []
    for i, day in enumerate(days):
        bar_height = day.amount * PLOT_HEIGHT // most if most else 0
        if day.amount and not bar_height:
            bar_height = 1  # a day with payments is never an empty bar
        x = LEFT + i * (BAR + GAP)
        label = ngettext(
            "%(day)s: Rs %(amount)s verified, %(count)s payment",
            "%(day)s: Rs %(amount)s verified, %(count)s payments",
            day.count,
        ) % {"day": date_format(day.day, "j M Y"), "amount": day.rupees, "count": day.count}
        bars.append(
            (x, TOP + PLOT_HEIGHT - bar_height, BAR, bar_height, day.day.isoformat(), label)
        )
        if (len(days) - 1 - i) % 7 == 0:  # today, and every week back from it
            labels.append((x + BAR // 2, height - 6, date_format(day.day, "j M")))
    total = Figure(sum(d.count for d in days), sum(d.amount for d in days))
    description = ngettext(
        "%(first)s to %(last)s: Rs %(amount)s verified in %(count)s payment; the highest day Rs %(most)s.",
        "%(first)s to %(last)s: Rs %(amount)s verified in %(count)s payments; the highest day Rs %(most)s.",
        total.count,
    ) % {
        "first": date_format(days[0].day, "j M Y") if days else "",
        "last": date_format(days[-1].day, "j M Y") if days else "",
        "amount": total.rupees,
        "count": total.count,
        "most": rupees(most),
    }
    return format_html(
        '<svg class="khalti-volume-chart" xmlns="http://www.w3.org/2000/svg" role="img" '
        'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        'aria-labelledby="khalti-volume-title khalti-volume-desc">'
        '<title id="khalti-volume-title">{title}</title>'
        '<desc id="khalti-volume-desc">{description}</desc>'
        '<text x="{left}" y="12" font-size="10" fill="currentColor">{top_label}</text>'
        '<line x1="{left}" y1="{axis}" x2="{right}" y2="{axis}" stroke="currentColor" stroke-width="1"/>'
        "{bars}{labels}</svg>",
        width=width,
        height=height,
        title=_("Amount verified per day, last 30 days"),
        description=description,
        left=LEFT,
        right=width - LEFT,
        axis=TOP + PLOT_HEIGHT,
        top_label=_("Rs %(amount)s") % {"amount": rupees(most)},
        bars=format_html_join(
            "",
            '<rect class="khalti-bar" x="{}" y="{}" width="{}" height="{}" data-day="{}" '
            'fill="#1e7e34"><title>{}</title></rect>',
            bars,
        ),
        labels=format_html_join(
            "",
            '<text x="{}" y="{}" font-size="9" text-anchor="middle" fill="currentColor">{}</text>',
            labels,
        ),
    )


# --- the page ----------------------------------------------------------------------


class OverviewView(PaymentsPage):
    """The overview page, for users who may view payments (others: 403)."""

    template_name = "admin/django_khalti/payment/overview.html"
    title = _("Payments overview")

    def now(self) -> datetime:
        """The instant the page describes: now."""
        return timezone.now()

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        """The admin's context, the overview, its chart, and what the user may do."""
        overview = payment_overview(self.now())
        return super().get_context_data(
            overview=overview,
            time_zone=timezone.get_current_timezone_name(),
            chart=volume_chart(overview.days),
            may_resolve_refunds=self.admin.has_resolve_refund_permission(self.request),
            **kwargs,
        )
