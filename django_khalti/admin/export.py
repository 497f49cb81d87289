"""The accountants' CSV: the payments where money moved in a period, one row each.

:class:`ExportView` shows the period's form at ``admin:django_khalti_payment_export``
(see ``PaymentAdmin.get_urls``) to users who may view payments, from the first of
this month to today by default; submitted (``?start=YYYY-MM-DD&end=YYYY-MM-DD``, both
days included) it streams ``khalti-payments-<start>-to-<end>.csv``, read from the
database a chunk at a time.

Which payments, the day each counts on, and what "amount" (money in), "fee",
"refunded" and "net" are: :mod:`.money`, as on the overview. Days are on the current
time zone (``TIME_ZONE``, or one activated for the request). Amounts are rupees with
two decimals and no thousands separator (``1234.56``); a fee Khalti has not told is
an empty cell (and 0 in the net); the status is the payment's (``verified``,
``partially_refunded``, ...). The file is UTF-8 with a byte-order mark, so that
spreadsheet programs read it as such. A cell of text (the order, Khalti's id) that a
spreadsheet would take for a formula gets a leading apostrophe.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import date, timedelta, tzinfo
from typing import Any

from django.http import HttpRequest, HttpResponseBase, StreamingHttpResponse
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from ..models import Payment
from .forms import ExportForm
from .money import DATED, MONEY_IN, midnight, moved_between, net, plain_rupees
from .pages import PaymentsPage

#: The file's columns.
HEADER = ["date", "order", "amount", "fee", "refunded", "net", "status", "khalti_idx"]
#: What a spreadsheet reads a cell starting with as a formula (or a command).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
#: How many payments are read from the database at a time.
CHUNK = 500


def guarded(text: str) -> str:
    """``text`` as a CSV cell a spreadsheet shows as text: a leading apostrophe when it
    would start a formula.
    """
    return f"'{text}" if text.startswith(FORMULA_STARTS) else text


def filename(start: date, end: date) -> str:
    """``khalti-payments-2026-12-01-to-2026-12-07.csv``."""
    return f"khalti-payments-{start.isoformat()}-to-{end.isoformat()}.csv"


def rows(start: date, end: date, zone: tzinfo) -> Iterator[list[str]]:
    """One row a payment where money moved from ``start`` to ``end`` (both included, on
    ``zone``), in the order they count, read a chunk at a time.
    """
    payments = (
        Payment.objects.filter(moved_between(midnight(start), midnight(end + timedelta(days=1))))
        .annotate(dated=DATED, money_in=MONEY_IN)
        .order_by("dated", "pk")
        .values_list(
            "dated", "order_reference", "money_in", "fee_amount", "refunded_amount", "status", "idx"
        )
    )
    for dated, order, money_in, fee, refunded, status, idx in payments.iterator(CHUNK):
        yield [
            timezone.localdate(dated, zone).isoformat(),
            guarded(order),
            plain_rupees(money_in),
            "" if fee is None else plain_rupees(fee),
            plain_rupees(refunded),
            plain_rupees(net(money_in, fee, refunded)),
            status,
            guarded(idx or ""),
        ]


class _Line:
    """What ``csv.writer`` writes to: each row handed back as its line."""

    def write(self, line: str) -> str:
        return line


def csv_lines(start: date, end: date, zone: tzinfo) -> Iterator[str]:
    """The file, line by line: the byte-order mark and the header, then the rows."""
    writer = csv.writer(_Line())
    yield "\ufeff" + writer.writerow(HEADER)
    for row in rows(start, end, zone):
        yield writer.writerow(row)


class ExportView(PaymentsPage):
    """The CSV export, for users who may view payments (others: 403): the period's
    form, or (submitted and valid) the file.
    """

    template_name = "admin/django_khalti/payment/export.html"
    title = _("Export payments as CSV")

    def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        """The file for a valid period submitted; else the form (with its errors)."""
        if "start" not in request.GET and "end" not in request.GET:
            today = timezone.localdate()
            form = ExportForm(initial={"start": today.replace(day=1), "end": today})
            return self.render_to_response(self.get_context_data(form=form))
        form = ExportForm(request.GET)
        if not form.is_valid():
            return self.render_to_response(self.get_context_data(form=form))
        start, end = form.cleaned_data["start"], form.cleaned_data["end"]
        response = StreamingHttpResponse(
            csv_lines(start, end, timezone.get_current_timezone()),
            content_type="text/csv; charset=utf-8",
        )
        response["Content-Disposition"] = f'attachment; filename="{filename(start, end)}"'
        return response

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        """The admin's context, the form and the time zone the days are on."""
        return super().get_context_data(
            time_zone=timezone.get_current_timezone_name(), header=HEADER, **kwargs
        )
