"""The Payment admin: an audit trail a support desk can live in.

Everything Khalti told us is read-only. Two actions talk to Khalti: "Re-check
with Khalti" settles pending payments (and refunds whose outcome was unknown),
"Refund" gives money back after a confirmation page.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from . import services
from .exceptions import KhaltiError
from .models import Payment, Refund, rupees

#: The colour of each status badge in the changelist.
STATUS_COLOURS = {
    Payment.Status.PENDING: "#b26a00",
    Payment.Status.VERIFIED: "#1e7e34",
    Payment.Status.FAILED: "#c62828",
    Payment.Status.REFUNDED: "#5e35b1",
    Payment.Status.PARTIALLY_REFUNDED: "#7e57c2",
}


def pretty_json(value: Any) -> str:
    if value is None:
        return "-"
    return format_html("<pre>{}</pre>", json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True))


class RefundInline(admin.TabularInline):
    model = Refund
    extra = 0
    can_delete = False
    fields = ["created_at", "amount_display", "status", "requested_by", "mobile", "settled_at",
              "failure_reason", "answer"]
    readonly_fields = fields
    verbose_name_plural = _("refund history")

    @admin.display(description=_("amount (Rs)"))
    def amount_display(self, refund: Refund) -> str:
        return rupees(refund.amount)

    @admin.display(description=_("Khalti's answer"))
    def answer(self, refund: Refund) -> str:
        return pretty_json(refund.khalti_response)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Refunds are part of the payment's record: whoever may see it sees them.
        return bool(
            request.user.has_perm("django_khalti.view_payment")
            or request.user.has_perm("django_khalti.change_payment")
        )


class RefundForm(forms.Form):
    amount = forms.IntegerField(
        label=_("Amount (paisa)"),
        min_value=1,
        required=False,
        help_text=_("Leave empty to refund all that remains. Rs 1 = 100 paisa."),
    )
    mobile = forms.CharField(
        label=_("Refund to Khalti id"),
        max_length=32,
        required=False,
        help_text=_("Only for payments funded from a bank: the buyer's Khalti id (mobile)."),
    )


@admin.register(Payment)
class PaymentAdmin(admin.ModelAdmin):
    list_display = [
        "product_identity", "amount_display", "status_badge", "flow", "idx", "mobile",
        "created_at", "verified_at",
    ]
    list_filter = ["status", "flow", "created_at", "verified_at"]
    date_hierarchy = "created_at"
    search_fields = ["=token", "=idx", "=pidx", "product_identity", "mobile"]
    show_full_result_count = False
    actions = ["recheck", "refund"]
    inlines = [RefundInline]
    fieldsets = [
        (None, {"fields": ["id", "product_identity", "purchase_order_name", "amount_display",
                           "status", "failure_reason"]}),
        (_("Khalti"), {"fields": ["flow", "token", "pidx", "payment_url", "idx", "fee_amount",
                                  "mobile", "refunded_display", "raw_response"]}),
        (_("Times"), {"fields": ["created_at", "updated_at", "verified_at", "expires_at"]}),
        (_("Processing"), {"fields": ["claimed_at", "attempts"], "classes": ["collapse"]}),
    ]
    readonly_fields = [
        "id", "product_identity", "purchase_order_name", "amount_display", "status",
        "failure_reason", "flow", "token", "pidx", "payment_url", "idx", "fee_amount", "mobile",
        "refunded_display", "raw_response", "created_at", "updated_at", "verified_at",
        "expires_at", "claimed_at", "attempts",
    ]

    @admin.display(description=_("amount (Rs)"), ordering="amount")
    def amount_display(self, payment: Payment) -> str:
        return payment.amount_rupees

    @admin.display(description=_("refunded (Rs)"))
    def refunded_display(self, payment: Payment) -> str:
        return rupees(payment.refunded_amount)

    @admin.display(description=_("status"), ordering="status")
    def status_badge(self, payment: Payment) -> str:
        return format_html(
            '<span class="khalti-status khalti-status-{}" style="background:{};color:#fff;'
            'padding:2px 8px;border-radius:10px;white-space:nowrap">{}</span>',
            payment.status,
            STATUS_COLOURS.get(payment.status, "#666"),
            payment.get_status_display(),
        )

    @admin.display(description=_("Khalti's last answer"))
    def raw_response(self, payment: Payment) -> str:
        return pretty_json(payment.khalti_response)

    # --- permissions: an audit trail ---------------------------------------

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Payment | None = None) -> bool:
        # A payment's page is view-only: saving it would rewrite the row from a
        # stale copy, around the guarded status changes. Changes go through the
        # actions, which is what the change permission is for.
        return obj is None and super().has_change_permission(request)

    def has_delete_permission(self, request: HttpRequest, obj: Payment | None = None) -> bool:
        return bool(request.user.is_superuser)

    def has_refund_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("django_khalti.refund_payment"))

    def has_recheck_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("django_khalti.change_payment"))

    # --- actions -------------------------------------------------------------

    @admin.action(description=_("Re-check with Khalti"), permissions=["recheck"])
    def recheck(self, request: HttpRequest, queryset: QuerySet[Payment]) -> None:
        counts: Counter[str] = Counter()
        unreachable = 0
        for payment in queryset.filter(status=Payment.Status.PENDING):
            try:
                counts[services.reconcile(payment).status] += 1
            except KhaltiError:
                unreachable += 1
        for refund in Refund.objects.filter(payment__in=queryset, status=Refund.Status.PENDING):
            try:
                counts["refund " + services.reconcile_refund(refund).status] += 1
            except KhaltiError:
                unreachable += 1
        checked = sum(counts.values())
        if not checked and not unreachable:
            self.message_user(request, _("None of the selected payments awaits Khalti."),
                              messages.WARNING)
            return
        if checked:
            summary = ", ".join(
                f"{n} {status.replace('_', ' ')}" for status, n in sorted(counts.items())
            )
            self.message_user(
                request,
                _("Re-checked %(checked)s with Khalti: %(summary)s.")
                % {"checked": checked, "summary": summary},
                messages.SUCCESS,
            )
        if unreachable:
            self.message_user(
                request,
                ngettext(
                    "Khalti could not be reached for %(n)s payment; it stays pending.",
                    "Khalti could not be reached for %(n)s payments; they stay pending.",
                    unreachable,
                ) % {"n": unreachable},
                messages.ERROR,
            )

    @admin.action(description=_("Refund with Khalti…"), permissions=["refund"])
    def refund(self, request: HttpRequest, queryset: QuerySet[Payment]) -> HttpResponse | None:
        if not self.has_refund_permission(request):
            raise PermissionDenied
        payments = list(queryset)
        form = RefundForm(request.POST if "confirm" in request.POST else None)
        if form.is_bound and form.is_valid():
            amount = form.cleaned_data["amount"]
            if amount and len(payments) > 1:
                form.add_error("amount", _("A partial amount refunds one payment at a time."))
            else:
                for payment in payments:
                    self._refund_one(request, payment, amount, form.cleaned_data["mobile"])
                return None
        context = {
            **self.admin_site.each_context(request),
            "title": _("Refund with Khalti"),
            "opts": self.model._meta,
            "payments": payments,
            "form": form,
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
            "total_refundable": rupees(sum(p.refundable_amount for p in payments)),
        }
        return TemplateResponse(request, "admin/django_khalti/payment/refund_confirmation.html",
                                context)

    def _refund_one(self, request: HttpRequest, payment: Payment, amount: int | None,
                    mobile: str) -> None:
        try:
            refund = services.refund_payment(payment, amount=amount, mobile=mobile or None,
                                             by=request.user)
        except KhaltiError as exc:
            self.message_user(
                request,
                _("%(payment)s was not refunded: %(detail)s") % {"payment": payment.product_identity,
                                                                 "detail": exc.detail},
                messages.ERROR,
            )
            return
        self.message_user(
            request,
            _("Refunded Rs %(amount)s of %(payment)s.") % {"amount": rupees(refund.amount),
                                                           "payment": payment.product_identity},
            messages.SUCCESS,
        )
