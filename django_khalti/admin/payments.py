"""The payments' admin: the changelist a support desk searches, and a payment's page,
read-only, with its refunds and signals.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.contrib.admin.utils import flatten_fieldsets
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, path
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from ..models import Payment, rupees
from .actions import recheck, refund, resolve_refund
from .overview import OverviewView
from .records import DeliveryInline, RefundInline, UndeliveredFilter, pretty_json
from .views import RefundView, ResolveRefundView

if TYPE_CHECKING:
    # django-stubs makes the admin classes generic in their model; Django's are not
    # subscriptable at run time.
    _PaymentAdmin = admin.ModelAdmin[Payment]
else:
    _PaymentAdmin = admin.ModelAdmin

#: The colour of each status badge in the changelist.
STATUS_COLOURS: dict[str, str] = {
    Payment.Status.PENDING: "#b26a00",
    Payment.Status.VERIFIED: "#1e7e34",
    Payment.Status.FAILED: "#c62828",
    Payment.Status.REFUNDED: "#5e35b1",
    Payment.Status.PARTIALLY_REFUNDED: "#7e57c2",
    Payment.Status.NEEDS_REVIEW: "#ad1457",
}


class PaymentAdmin(_PaymentAdmin):
    """The payments' admin: read-only records, searched by Khalti's ids, with three actions.

    "Re-check with Khalti" (``change_payment`` permission), "Refund with Khalti…"
    and "Resolve an unknown refund by hand…" (``refund_payment`` permission).
    Nobody adds or edits a payment; only a superuser deletes one.
    """

    list_display = [
        "order_reference",
        "amount_display",
        "status_badge",
        "flow",
        "idx",
        "mobile",
        "created_at",
        "verified_at",
    ]
    list_filter = ["status", UndeliveredFilter, "flow", "created_at", "verified_at"]
    date_hierarchy = "created_at"
    # Every field is looked up so that an index answers (tests/system/test_performance.py):
    # Khalti's ids and the masked mobile exactly, the order reference by its
    # beginning. "contains" or a case-insensitive lookup (the admin's "=" and "^")
    # would read the whole table on PostgreSQL, where case then matters.
    search_fields = [
        "token__exact",
        "idx__exact",
        "pidx__exact",
        "order_reference__startswith",
        "product_identity__startswith",
        "mobile__exact",
    ]
    show_full_result_count = False
    actions = [recheck, refund, resolve_refund]
    inlines = [RefundInline, DeliveryInline]
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "id",
                    "order_reference",
                    "product_identity",
                    "purchase_order_name",
                    "amount_display",
                    "status",
                    "failure_reason",
                ]
            },
        ),
        (
            _("Khalti"),
            {
                "fields": [
                    "flow",
                    "token",
                    "pidx",
                    "payment_url",
                    "idx",
                    "received_amount",
                    "fee_amount",
                    "mobile",
                    "refunded_display",
                    "raw_response",
                ]
            },
        ),
        (_("Times"), {"fields": ["created_at", "updated_at", "verified_at", "expires_at"]}),
        (
            _("Processing"),
            {"fields": ["claimed_at", "last_asked_at", "attempts"], "classes": ["collapse"]},
        ),
    ]
    #: Every field of the page, none of them editable: payments change only through Khalti.
    readonly_fields = flatten_fieldsets(fieldsets)

    @admin.display(description=_("amount (Rs)"), ordering="amount")
    def amount_display(self, payment: Payment) -> str:
        """The amount in rupees."""
        return payment.amount_rupees

    @admin.display(description=_("refunded (Rs)"))
    def refunded_display(self, payment: Payment) -> str:
        """What was refunded, in rupees."""
        return rupees(payment.refunded_amount)

    @admin.display(description=_("status"), ordering="status")
    def status_badge(self, payment: Payment) -> str:
        """The status as a coloured badge."""
        return format_html(
            '<span class="khalti-status khalti-status-{}" style="background:{};color:#fff;'
            'padding:2px 8px;border-radius:10px;white-space:nowrap">{}</span>',
            payment.status,
            STATUS_COLOURS.get(payment.status, "#666"),
            payment.get_status_display(),
        )

    @admin.display(description=_("Khalti's last answer"))
    def raw_response(self, payment: Payment) -> str:
        """Khalti's last answer, as readable JSON."""
        return pretty_json(payment.khalti_response)

    # --- permissions: an audit trail ---------------------------------------

    def has_add_permission(self, request: HttpRequest) -> bool:
        """Never: payments are made by buyers, through the app."""
        return False

    def has_change_permission(self, request: HttpRequest, obj: Payment | None = None) -> bool:
        """For the changelist's actions only: a payment's own page is read-only."""
        # A payment's page is view-only: saving it would rewrite the row from a
        # stale copy, around the guarded status changes. Changes go through the
        # actions, which is what the change permission is for.
        return obj is None and super().has_change_permission(request)

    def has_delete_permission(self, request: HttpRequest, obj: Payment | None = None) -> bool:
        """Only for superusers: payments are the audit trail."""
        return bool(request.user.is_superuser)

    def has_refund_permission(self, request: HttpRequest) -> bool:
        """Whether the user may refund: ``django_khalti.refund_payment``."""
        return bool(request.user.has_perm("django_khalti.refund_payment"))

    def has_resolve_refund_permission(self, request: HttpRequest) -> bool:
        """Whether the user may resolve refunds: the refund permission."""
        return self.has_refund_permission(request)

    def has_recheck_permission(self, request: HttpRequest) -> bool:
        """Whether the user may re-check payments: ``django_khalti.change_payment``."""
        return bool(request.user.has_perm("django_khalti.change_payment"))

    # --- the views that call Khalti: outside ATOMIC_REQUESTS -------------------

    # Like the API views, what calls Khalti must not run inside the request's
    # transaction (ATOMIC_REQUESTS): each claim is committed before Khalti is
    # called, and settled in a transaction of its own.

    @transaction.non_atomic_requests
    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        """The changelist, where the actions are posted: outside ``ATOMIC_REQUESTS``.

        Django reads the exemption off the view its URL resolves to; ``get_urls``
        wraps this method with :func:`functools.update_wrapper`, which carries the
        mark over (tests/admin/test_atomic_requests.py).
        """
        return super().changelist_view(request, extra_context)

    def get_urls(self) -> list[URLPattern]:
        """The admin's URLs, the overview's (:mod:`.overview`), and the confirmation
        pages' own (each outside ``ATOMIC_REQUESTS``, see :mod:`.views`).
        """
        info = self.opts.app_label, self.opts.model_name
        return [
            path(
                "overview/",
                self.admin_site.admin_view(OverviewView.as_view(model_admin=self)),
                name="{}_{}_overview".format(*info),
            ),
            path(
                "refund/",
                self.admin_site.admin_view(RefundView.as_view(model_admin=self)),
                name="{}_{}_refund".format(*info),
            ),
            path(
                "resolve-refund/",
                self.admin_site.admin_view(ResolveRefundView.as_view(model_admin=self)),
                name="{}_{}_resolve_refund".format(*info),
            ),
            *super().get_urls(),
        ]
