"""What both admins show of a payment's record: who may see it, Khalti's JSON as
readable HTML, the read-only inlines of a payment's page, and the "not delivered
yet" filter.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, ClassVar

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from ..models import Payment, Refund, SignalDelivery, rupees

if TYPE_CHECKING:
    from django.utils.functional import _StrOrPromise as StrOrPromise

    # django-stubs makes the admin classes generic in their model; Django's are not
    # subscriptable at run time.
    _Inline = admin.TabularInline[Any, Payment]
else:
    _Inline = admin.TabularInline


def may_see_payments(request: HttpRequest) -> bool:
    """Whether the user may view (or change) payments: what their records need."""
    return bool(
        request.user.has_perm("django_khalti.view_payment")
        or request.user.has_perm("django_khalti.change_payment")
    )


def pretty_json(value: object) -> str:
    """A JSON value as indented, escaped HTML (``<pre>``); ``-`` for None."""
    if value is None:
        return "-"
    return format_html(
        "<pre>{}</pre>", json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)
    )


class _RecordInline(_Inline):
    """Part of a payment's record, read-only on its page, for whoever may see the payment."""

    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Payment | None = None) -> bool:
        """Never: these rows are written by the app (an action, a status change)."""
        return False

    def has_change_permission(self, request: HttpRequest, obj: Payment | None = None) -> bool:
        """Never: the record is what happened."""
        return False

    def has_view_permission(self, request: HttpRequest, obj: Payment | None = None) -> bool:
        """For whoever may view or change payments."""
        return may_see_payments(request)


class RefundInline(_RecordInline):
    """A payment's refunds, read-only, on its page: who asked (or whether somebody
    refunded it at Khalti, outside the app), how much, what Khalti said.
    """

    model = Refund
    # A tuple of names: it types as both a field list and a read-only field list.
    fields: ClassVar[tuple[str, ...]] = (
        "created_at",
        "amount_display",
        "status",
        "origin",
        "requested_by",
        "mobile",
        "settled_at",
        "failure_reason",
        "answer",
    )
    readonly_fields = fields
    verbose_name_plural = _("refund history")

    @admin.display(description=_("amount (Rs)"))
    def amount_display(self, refund: Refund) -> str:
        """The refund's amount in rupees."""
        return rupees(refund.amount)

    @admin.display(description=_("Khalti's answer"))
    def answer(self, refund: Refund) -> str:
        """Khalti's answer to the refund, as readable JSON."""
        return pretty_json(refund.khalti_response)


class DeliveryInline(_RecordInline):
    """A payment's signals, read-only, on its page: delivered or not, and why not.
    Re-sending is an action of the signal deliveries' page.
    """

    model = SignalDelivery
    fields = readonly_fields = (
        "signal",
        "created_at",
        "delivered_at",
        "attempts",
        "next_attempt_at",
        "last_error",
    )
    verbose_name_plural = _("signals to the shop")


class UndeliveredFilter(admin.SimpleListFilter):
    """Payments (or deliveries) with a signal the receivers have not taken yet."""

    title = _("signals")
    parameter_name = "signals"

    def lookups(
        self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]
    ) -> list[tuple[str, StrOrPromise]]:
        """One choice: not delivered yet."""
        return [("undelivered", _("not delivered yet"))]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        """Only what has a signal still marked "to deliver"."""
        if self.value() != "undelivered":
            return queryset
        if queryset.model is Payment:
            return queryset.filter(signal_deliveries__next_attempt_at__isnull=False).distinct()
        return queryset.filter(next_attempt_at__isnull=False)
