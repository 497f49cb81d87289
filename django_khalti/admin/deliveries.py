"""The signal deliveries' admin: the outbox of the signals sent to the shop's receivers."""

from __future__ import annotations

from typing import Any, ClassVar

from django.contrib import admin
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from ..models import SignalDelivery
from .actions import resend
from .deletion import delete_selected
from .permissions import DeliveryAdminBase
from .records import UndeliveredFilter, pretty_json


class SignalDeliveryAdmin(DeliveryAdminBase):
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
    actions = [resend, delete_selected]
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
