"""The sandbox's records in the admin: what "Khalti" holds, and Khalti's dashboard.

The records are read-only: the sandbox's API makes and changes them. What a merchant
does in Khalti's own dashboard, outside the shop's app, the admin does here (each
guarded as the sandbox's URLs are, :mod:`django_khalti.sandbox.guard`):

- the action *Refund in Khalti's dashboard: all that remains* on the selected
  transactions;
- a transaction's *Refund…* page (its link in the list): all, or an amount, to a
  ``mobile`` for a bank-funded one;
- *Add a transaction of another channel* (the list's button): a foreign transaction,
  in the merchant's transaction list and matching no payment of the shop's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin, messages
from django.db.models import Model, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html

from ..rules.shapes import REFUNDABLE
from . import books
from .guard import refusal, refused
from .models import SandboxEpayment, SandboxTransaction, rupees

if TYPE_CHECKING:
    # django-stubs makes the admin classes generic in their model; Django's are not
    # subscriptable at run time.
    _ModelAdmin = admin.ModelAdmin[Any]
else:
    _ModelAdmin = admin.ModelAdmin


class ReadOnlyAdmin(_ModelAdmin):
    """What "Khalti" holds, for a look behind the curtain; changed only through its API."""

    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        """Nobody adds a record: the sandbox's API makes them."""
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        """Nobody changes a record: the sandbox's API does."""
        return False


class DashboardRefundForm(forms.Form):
    """A refund in Khalti's dashboard: all that remains, or an amount."""

    amount = forms.IntegerField(
        required=False, min_value=1, help_text="Paisa. Leave empty to refund all that remains."
    )
    mobile = forms.CharField(
        required=False, max_length=16, help_text="The Khalti id to refund a bank payment to."
    )


class ForeignTransactionForm(forms.Form):
    """A transaction made through another channel of the merchant."""

    amount = forms.IntegerField(min_value=1, help_text="Paisa (Rs 10 is 1000).")
    funded_by = forms.ChoiceField(
        choices=SandboxTransaction.FundedBy.choices, initial=SandboxTransaction.FundedBy.WALLET
    )
    refunded_amount = forms.IntegerField(
        min_value=0, initial=0, help_text="Paisa refunded already (the amount: Refunded)."
    )
    fee_amount = forms.IntegerField(
        required=False, min_value=0, help_text="Paisa. Leave empty for Khalti's 3 %."
    )
    created_on = forms.DateTimeField(required=False, help_text="Leave empty for now.")


@admin.register(SandboxTransaction)
class SandboxTransactionAdmin(ReadOnlyAdmin):
    """The sandbox's transactions: widget payments, paid ePayments, other channels'."""

    list_display = [
        "idx",
        "kind",
        "product_identity",
        "amount",
        "state",
        "refunded_amount",
        "created_at",
        "dashboard",
    ]
    list_filter = ["kind", "state"]
    search_fields = ["idx", "token", "product_identity"]
    actions = ["refund_in_full"]

    def get_urls(self) -> list[URLPattern]:
        """The dashboard's two pages before the admin's own."""
        view = self.admin_site.admin_view
        return [
            path(
                "<path:object_id>/dashboard-refund/",
                view(self.refund_view),
                name="khalti_sandbox_sandboxtransaction_dashboard_refund",
            ),
            path(
                "foreign/add/",
                view(self.foreign_view),
                name="khalti_sandbox_sandboxtransaction_add_foreign",
            ),
            *super().get_urls(),
        ]

    @admin.display(description="Khalti's dashboard")
    def dashboard(self, row: SandboxTransaction) -> str:
        """A link to the row's refund page, while Khalti would refund it."""
        if row.khalti_state() not in REFUNDABLE:
            return "-"
        url = reverse("admin:khalti_sandbox_sandboxtransaction_dashboard_refund", args=[row.pk])
        return format_html('<a href="{}">Refund…</a>', url)

    @admin.action(description="Refund in Khalti's dashboard: all that remains")
    def refund_in_full(self, request: HttpRequest, queryset: QuerySet[SandboxTransaction]) -> None:
        """Refund each selected transaction in full, as Khalti's dashboard would."""
        reason = refusal()
        if reason is not None:
            self.message_user(request, reason, messages.ERROR)
            return
        done = 0
        for row in queryset:
            answer = books.refund_in_dashboard(row.idx)
            if answer.status == 200:
                done += 1
            else:
                self.message_user(request, _refused_words(row, answer.body), messages.ERROR)
        if done:
            self.message_user(
                request, f"Refunded in full: {done} transaction(s).", messages.SUCCESS
            )

    def refund_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """A refund in Khalti's dashboard: all that remains, or an amount."""
        self._permitted(request)
        reason = refusal()
        if reason is not None:
            return refused("page", request, reason)
        row = get_object_or_404(SandboxTransaction, pk=object_id)
        form = DashboardRefundForm(request.POST if request.method == "POST" else None)
        if form.is_valid():
            data = form.cleaned_data
            answer = books.refund_in_dashboard(row.idx, data["amount"], data["mobile"])
            if answer.status == 200:
                self.message_user(
                    request, f"Refunded in Khalti's dashboard: {row.idx}.", messages.SUCCESS
                )
                return HttpResponseRedirect(self._changelist())
            form.add_error(None, _refused_words(row, answer.body))
        row.refresh_from_db()
        remains = rupees(row.amount - row.refunded_amount)
        title = f"Refund {row.idx} in Khalti's dashboard (Rs {remains} remains)"
        return self._form_page(request, form, title, row)

    def foreign_view(self, request: HttpRequest) -> HttpResponse:
        """Add a transaction made through another channel of the merchant."""
        self._permitted(request)
        reason = refusal()
        if reason is not None:
            return refused("page", request, reason)
        form = ForeignTransactionForm(request.POST if request.method == "POST" else None)
        if form.is_valid():
            try:
                row = books.add_foreign(**form.cleaned_data)
            except ValueError as error:
                form.add_error("amount", str(error))
            else:
                self.message_user(
                    request, f"Added a transaction of another channel: {row.idx}.", messages.SUCCESS
                )
                return HttpResponseRedirect(self._changelist())
        return self._form_page(request, form, "Add a transaction of another channel", None)

    def _permitted(self, request: HttpRequest) -> None:
        if not self.has_view_permission(request):
            raise Http404

    def _changelist(self) -> str:
        return reverse("admin:khalti_sandbox_sandboxtransaction_changelist")

    def _form_page(
        self, request: HttpRequest, form: forms.Form, title: str, row: SandboxTransaction | None
    ) -> TemplateResponse:
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": title,
            "form": form,
            "row": row,
            "changelist_url": self._changelist(),
        }
        status = 400 if form.is_bound else 200
        return TemplateResponse(
            request, "khalti_sandbox/admin/dashboard_form.html", context, status=status
        )


def _refused_words(row: SandboxTransaction, body: dict[str, Any]) -> str:
    """Khalti's refusal of a dashboard refund of ``row``, in words."""
    detail = body.get("detail") or "; ".join(
        f"{name}: {' '.join(map(str, words))}" for name, words in body.items()
    )
    return f"Khalti refuses to refund {row.idx}: {detail}"


@admin.register(SandboxEpayment)
class SandboxEpaymentAdmin(ReadOnlyAdmin):
    """The ePayments merchants started at the sandbox, and what their buyers did."""

    list_display = ["pidx", "purchase_order_id", "amount", "status", "expires_at", "created_at"]
    list_filter = ["status"]
    search_fields = ["pidx", "purchase_order_id"]
