"""The payments' admin: the changelist a support desk searches, and a payment's page,
read-only, with its refunds and signals, and the changelist's actions that apply to it
as buttons.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.utils import flatten_fieldsets, quote, unquote
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase, HttpResponseRedirect
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from .. import services
from ..models import Payment, rupees
from .actions import recheck, refund, resolve_refund
from .deletion import delete_selected
from .export import ExportView
from .ledger import LedgerView
from .overview import OverviewView
from .permissions import PaymentAdminBase
from .records import DeliveryInline, RefundInline, UndeliveredFilter, pretty_json
from .views import RefundView, ResolveRefundView

#: The changelist's actions a payment's page offers as buttons, when they apply to it.
PAGE_ACTIONS = ("recheck", "refund", "resolve_refund")

#: The colour of each status badge in the changelist.
STATUS_COLOURS: dict[str, str] = {
    Payment.Status.PENDING: "#b26a00",
    Payment.Status.VERIFIED: "#1e7e34",
    Payment.Status.FAILED: "#c62828",
    Payment.Status.REFUNDED: "#5e35b1",
    Payment.Status.PARTIALLY_REFUNDED: "#7e57c2",
    Payment.Status.NEEDS_REVIEW: "#ad1457",
}


class PaymentAdmin(PaymentAdminBase):
    """The payments' admin: read-only records, searched by Khalti's ids, with three actions.

    "Re-check with Khalti" (``change_payment`` permission), "Refund with Khalti…"
    and "Resolve an unknown refund by hand…" (``refund_payment`` permission).
    Nobody adds or edits a payment; only a superuser deletes one, and only one
    that may go (see :mod:`.permissions` and :mod:`.deletion`).
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
    actions = [recheck, refund, resolve_refund, delete_selected]
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

    @transaction.non_atomic_requests
    def page_action_view(self, request: HttpRequest, object_id: str) -> HttpResponseBase:
        """A payment page's button: the changelist's action, taken for this one payment
        as on the changelist (a confirmation page shown in place posts back here), then
        back to the payment's page. Outside ``ATOMIC_REQUESTS``, as the changelist.
        """
        payment = self.get_object(request, unquote(object_id))
        if payment is None:
            raise Http404
        page = reverse(
            f"{self.admin_site.name}:django_khalti_payment_change", args=[quote(payment.pk)]
        )
        if request.method != "POST":
            return HttpResponseRedirect(page)
        action = request.POST.get("action")
        if action not in PAGE_ACTIONS or action not in self.get_actions(request):
            raise PermissionDenied
        data = request.POST.copy()
        # The action checked, and this payment, whatever else was posted (the changelist
        # runs the posted actions' "index"-th, not the one checked here).
        data.setlist("action", [action])
        data.setlist(ACTION_CHECKBOX_NAME, [str(payment.pk)])
        data.pop("select_across", None)
        request.POST = data  # type: ignore[assignment]
        response = self.changelist_view(request)
        if isinstance(response, HttpResponseRedirect) and response.url == request.get_full_path():
            return HttpResponseRedirect(page)  # the action is done: back to the payment
        return response

    def page_actions(self, request: HttpRequest, payment: Payment) -> list[tuple[str, str]]:
        """The changelist's actions (:data:`PAGE_ACTIONS`) the user may take that apply to
        ``payment``, as (name, label): what its page offers as buttons.

        Re-check applies to what a re-check of this payment would ask Khalti about;
        refund, to a payment with something refundable; resolving, to a refund of
        unknown outcome.
        """
        allowed = self.get_actions(request)
        selection = Payment.objects.filter(pk=payment.pk)
        unknown = services.refunds_awaiting_outcome().filter(payment=payment)
        applies = {
            "recheck": lambda: (
                bool(
                    services.reconcile_due(
                        selection, dry_run=True, deliver_signals=False
                    ).would_check
                )
                or unknown.exists()
            ),
            "refund": lambda: payment.refundable_amount > 0,
            "resolve_refund": unknown.exists,
        }
        return [
            (name, _description(allowed[name]))
            for name in PAGE_ACTIONS
            if name in allowed and applies[name]()
        ]

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Payment | None = None,
    ) -> HttpResponse:
        """The payment's page, with its buttons (:meth:`page_actions`)."""
        if obj is not None:
            context["payment_actions"] = self.page_actions(request, obj)
            context["action_checkbox_name"] = ACTION_CHECKBOX_NAME
        return super().render_change_form(request, context, add, change, form_url, obj)

    def get_urls(self) -> list[URLPattern]:
        """The admin's URLs, the overview's (:mod:`.overview`), the ledger's
        (:mod:`.ledger`), the CSV export's (:mod:`.export`), the confirmation
        pages' own (each outside ``ATOMIC_REQUESTS``, see :mod:`.views`), and where a
        payment's page posts its buttons (:meth:`page_action_view`).
        """
        info = self.opts.app_label, self.opts.model_name
        return [
            path(
                "<path:object_id>/action/",
                self.admin_site.admin_view(self.page_action_view),
                name="{}_{}_page_action".format(*info),
            ),
            path(
                "overview/",
                self.admin_site.admin_view(OverviewView.as_view(model_admin=self)),
                name="{}_{}_overview".format(*info),
            ),
            path(
                "ledger/",
                self.admin_site.admin_view(LedgerView.as_view(model_admin=self)),
                name="{}_{}_ledger".format(*info),
            ),
            path(
                "export/",
                self.admin_site.admin_view(ExportView.as_view(model_admin=self)),
                name="{}_{}_export".format(*info),
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


def _description(action: Any) -> str:
    """An action's description, from Django's ``Action`` (6.1; indexing it is
    deprecated) or the ``(func, name, description)`` tuple before it.
    """
    return str(action.description if hasattr(action, "description") else action[2])
