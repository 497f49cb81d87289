"""The ledger page: the last walk of Khalti's merchant transaction list
(``khalti_reconcile --ledger --since DATE``) and what it found that differs from the
payments here.

:func:`last_walk` reads it in three queries whatever the walk's size (the last walk,
its entries counted by kind, the differences listed with their payments) into a plain
:class:`Ledger`; :class:`LedgerView` shows it at ``admin:django_khalti_payment_ledger``
(see ``PaymentAdmin.get_urls``) to users who may view payments. Records that match
(:attr:`LedgerEntry.Kind.MATCHED`) are counted, never listed: they are not differences.
The walk itself is :mod:`django_khalti.services`'; nothing here calls Khalti.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any

from django.db.models import Case, Count, IntegerField, When
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from ..models import LedgerEntry, LedgerWalk, rupees
from .pages import PaymentsPage

if TYPE_CHECKING:
    from django.utils.functional import _StrOrPromise as StrOrPromise

#: How many differences the page lists at most (of the kind chosen).
LIST_LIMIT = 200
#: The kinds of entry that are differences, in the order the page groups them.
DIFFERENCES: list[str] = [kind for kind in LedgerEntry.Kind.values if kind != "matched"]
#: The command that walks (or resumes a walk of) Khalti's list from a day on.
COMMAND = "manage.py khalti_reconcile --ledger --since {day}"


@dataclass(frozen=True)
class Difference:
    """One entry of the walk that is a difference, for display."""

    entry: LedgerEntry

    @staticmethod
    def _rupees(paisa: int | None) -> str:
        return "" if paisa is None else rupees(paisa)

    @property
    def amount(self) -> str:
        """Khalti's amount, in rupees ("" when the record gave none)."""
        return self._rupees(self.entry.amount)

    @property
    def refunded(self) -> str:
        """What Khalti's record says went back, in rupees ("" when it says nothing)."""
        return self._rupees(self.entry.refunded_amount)


@dataclass(frozen=True)
class Ledger:
    """What the ledger page shows: the last walk (None: none ever ran) and its differences."""

    walk: LedgerWalk | None
    #: Each kind of difference, with how many the walk found: (kind, label, count).
    kinds: list[tuple[str, StrOrPromise, int]]
    #: How many records matched a payment here (not listed).
    matched: int
    #: The kind listed, or "" for every difference.
    kind: str
    #: The differences listed (of :attr:`kind`), grouped by kind, at most ``LIST_LIMIT``.
    differences: list[Difference]

    @property
    def found(self) -> int:
        """How many differences of the kind listed (or all of them) the walk found."""
        return sum(
            count for kind, _label, count in self.kinds if kind == self.kind or not self.kind
        )

    @property
    def day(self) -> date:
        """The walk's first day on the current time zone; with none, this month's first."""
        if self.walk is None:
            return timezone.localdate().replace(day=1)
        return timezone.localdate(self.walk.since)

    @property
    def command(self) -> str:
        """The command that walks from :attr:`day` on (and resumes a stopped walk)."""
        return COMMAND.format(day=self.day.isoformat())


def last_walk(kind: str = "", limit: int = LIST_LIMIT) -> Ledger:
    """The last walk begun, its entries counted by kind, and its differences of ``kind``
    (every kind of difference when "") with their payments: three queries.
    """
    walk = LedgerWalk.objects.order_by("-started_at", "-pk").first()
    if walk is None:
        return Ledger(None, [], 0, kind, [])
    counts = dict(
        walk.entries.order_by().values("kind").annotate(n=Count("pk")).values_list("kind", "n")
    )
    listed = walk.entries.filter(kind=kind) if kind else walk.entries.filter(kind__in=DIFFERENCES)
    in_kind_order = Case(
        *(When(kind=name, then=i) for i, name in enumerate(DIFFERENCES)),
        output_field=IntegerField(),
    )
    entries = listed.select_related("payment").order_by(in_kind_order, "pk")[:limit]
    labels = dict(LedgerEntry.Kind.choices)
    return Ledger(
        walk=walk,
        kinds=[(name, labels[name], counts.get(name, 0)) for name in DIFFERENCES],
        matched=counts.get(LedgerEntry.Kind.MATCHED, 0),
        kind=kind,
        differences=[Difference(entry) for entry in entries],
    )


class LedgerView(PaymentsPage):
    """The ledger page, for users who may view payments (others: 403). ``?kind=``
    lists one kind of difference (an unknown kind: every difference).
    """

    template_name = "admin/django_khalti/payment/ledger.html"
    title = _("Ledger: the books beside Khalti's")

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        """The admin's context and the last walk's ledger."""
        kind = self.request.GET.get("kind", "")
        return super().get_context_data(
            ledger=last_walk(kind if kind in DIFFERENCES else ""),
            time_zone=timezone.get_current_timezone_name(),
            limit=LIST_LIMIT,
            **kwargs,
        )
