"""The signal deliveries' admin: the outbox of the signals sent to the shop's receivers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from django.contrib import admin
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from ..models import SignalDelivery
from .actions import resend
from .records import UndeliveredFilter, may_see_payments, pretty_json

if TYPE_CHECKING:
    # django-stubs makes the admin classes generic in their model; Django's are not
    # subscriptable at run time.
    _DeliveryAdmin = admin.ModelAdmin[SignalDelivery]
else:
    _DeliveryAdmin = admin.ModelAdmin


class SignalDeliveryAdmin(_DeliveryAdmin):
    """The outbox: every signal sent to the shop's receivers, and what is not delivered yet.

    Read-only; the action "Re-send to the receivers now" (``change_signaldelivery``
    permission) delivers the selected undelivered signals at once, whatever their
    schedule. ``khalti_reconcile`` re-sends them by itself once due.
    """

    list_display = [
        "signal",
        "payment_link",
        "created_at",
        "delivered_at",
        "attempts",
        "next_attempt_at",
        "short_error",
    ]
    list_filter = [UndeliveredFilter, "signal"]
    list_select_related = ["payment"]
    search_fields = ["payment__order_reference__startswith", "payment__token__exact"]
    actions = [resend]
    fields: ClassVar[tuple[str, ...]] = (
        "signal",
        "payment",
        "arguments",
        "created_at",
        "delivered_at",
        "attempts",
        "next_attempt_at",
        "last_error",
        "snapshot_display",
    )
    readonly_fields = fields

    @transaction.non_atomic_requests
    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        """The changelist, where "Re-send to the receivers now" is posted: outside
        ``ATOMIC_REQUESTS``. Each delivery is marked delivered as it goes, for the
        status change a receiver or another worker makes meanwhile to see: else its
        signal waits behind one the request has delivered but not committed, until
        the next ``khalti_reconcile``. And a receiver may refund, whose claim must be
        committed before Khalti is called.
        """
        return super().changelist_view(request, extra_context)

    @admin.display(description=_("payment"), ordering="payment__order_reference")
    def payment_link(self, delivery: SignalDelivery) -> str:
        """The payment, linked to its page."""
        url = reverse("admin:django_khalti_payment_change", args=[delivery.payment_id])
        return format_html('<a href="{}">{}</a>', url, delivery.payment.order_reference)

    @admin.display(description=_("last error"))
    def short_error(self, delivery: SignalDelivery) -> str:
        """The first line of the last error."""
        return delivery.last_error.splitlines()[0][:120] if delivery.last_error else ""

    @admin.display(description=_("payment as it was"))
    def snapshot_display(self, delivery: SignalDelivery) -> str:
        """The payment as the receivers get it, as readable JSON."""
        return pretty_json(delivery.snapshot.get("fields"))

    def has_add_permission(self, request: HttpRequest) -> bool:
        """Never: signals are written with the status changes they announce."""
        return False

    def has_view_permission(self, request: HttpRequest, obj: SignalDelivery | None = None) -> bool:
        """Also only for whoever may see payments: a delivery shows its payment whole."""
        return may_see_payments(request) and super().has_view_permission(request, obj)

    def has_module_permission(self, request: HttpRequest) -> bool:
        """Listed for whoever may view the deliveries (see :meth:`has_view_permission`)."""
        return self.has_view_permission(request) or self.has_change_permission(request)

    def has_change_permission(
        self, request: HttpRequest, obj: SignalDelivery | None = None
    ) -> bool:
        """For the changelist's action only, and for whoever may see payments: a
        delivery's own page is read-only.
        """
        return obj is None and may_see_payments(request) and super().has_change_permission(request)

    def has_delete_permission(
        self, request: HttpRequest, obj: SignalDelivery | None = None
    ) -> bool:
        """Only for superusers: deliveries are part of the audit trail."""
        return bool(request.user.is_superuser)

    def has_resend_permission(self, request: HttpRequest) -> bool:
        """Whether the user may re-send: ``django_khalti.change_signaldelivery``."""
        return bool(request.user.has_perm("django_khalti.change_signaldelivery"))
