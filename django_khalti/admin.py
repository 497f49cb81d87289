"""The Payment admin: an audit trail a support desk can live in.

Everything Khalti told us is read-only. Two actions talk to Khalti: "Re-check
with Khalti" settles pending payments (and refunds whose outcome was unknown),
"Refund" gives money back after a confirmation page. The signal deliveries'
page lists what the shop's receivers have not yet taken, and re-sends it.
"""

from __future__ import annotations

import json
from collections import Counter
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.utils import flatten_fieldsets
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, reverse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from . import services
from .exceptions import (
    KhaltiConfigurationError,
    KhaltiError,
    KhaltiRefundUnknown,
    KhaltiUnavailable,
)
from .models import Payment, Refund, SignalDelivery, rupees

if TYPE_CHECKING:
    from django.utils.functional import _StrOrPromise as StrOrPromise

    # django-stubs makes the admin classes generic in their model; Django's are not
    # subscriptable at run time.
    _Inline = admin.TabularInline[Any, Payment]
    _PaymentAdmin = admin.ModelAdmin[Payment]
    _DeliveryAdmin = admin.ModelAdmin[SignalDelivery]
else:
    _Inline = admin.TabularInline
    _PaymentAdmin = admin.ModelAdmin
    _DeliveryAdmin = admin.ModelAdmin

#: The colour of each status badge in the changelist.
STATUS_COLOURS: dict[str, str] = {
    Payment.Status.PENDING: "#b26a00",
    Payment.Status.VERIFIED: "#1e7e34",
    Payment.Status.FAILED: "#c62828",
    Payment.Status.REFUNDED: "#5e35b1",
    Payment.Status.PARTIALLY_REFUNDED: "#7e57c2",
    Payment.Status.NEEDS_REVIEW: "#ad1457",
}


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
    """A payment's refunds, read-only, on its page: who asked, how much, what Khalti said."""

    model = Refund
    # A tuple of names: it types as both a field list and a read-only field list.
    fields: ClassVar[tuple[str, ...]] = (
        "created_at",
        "amount_display",
        "status",
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


class RefundForm(forms.Form):
    """The Refund action's confirmation page: an amount in rupees (empty: all that remains)."""

    amount = forms.DecimalField(
        label=_("Amount (Rs)"),
        min_value=Decimal("0.01"),
        max_digits=17,
        decimal_places=2,
        required=False,
        help_text=_("In rupees, e.g. 400 or 400.50. Leave empty to refund all that remains."),
    )
    mobile = forms.CharField(
        label=_("Refund to Khalti id"),
        max_length=32,
        required=False,
        help_text=_("Only for payments funded from a bank: the buyer's Khalti id (mobile)."),
    )
    #: What had been refunded of the selection when the page was shown: a second
    #: submit of the same page (or a colleague's refund meanwhile) is refused.
    refunded_before = forms.IntegerField(widget=forms.HiddenInput)

    def amount_paisa(self) -> int | None:
        """The amount asked for, in paisa; None to refund all that remains."""
        amount = self.cleaned_data["amount"]
        return None if amount is None else int(amount * 100)


class ResolveRefundForm(forms.Form):
    """What a person found in Khalti's dashboard about a refund of unknown outcome."""

    outcome = forms.ChoiceField(
        label=_("What Khalti's dashboard shows"),
        choices=[
            ("succeeded", _("The money went back to the buyer")),
            ("failed", _("Nothing was refunded")),
        ],
        widget=forms.RadioSelect,
    )
    note = forms.CharField(label=_("Note"), max_length=500, required=False)


#: The most payments one "Re-check with Khalti" asks about: each may take up to
#: TIMEOUT, and a web request must stay short. khalti_reconcile has no limit.
RECHECK_LIMIT = 20


class DeliveryInline(_RecordInline):
    """A payment's signals, read-only, on its page: delivered or not, and why not.
    Re-sending is an action of the signal deliveries' page.
    """

    model = SignalDelivery
    fields: ClassVar[tuple[str, ...]] = (
        "signal",
        "created_at",
        "delivered_at",
        "attempts",
        "next_attempt_at",
        "last_error",
    )
    readonly_fields = fields
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


@admin.register(SignalDelivery)
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
    actions = ["resend"]
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

    @admin.action(description=_("Re-send to the receivers now"), permissions=["resend"])
    def resend(self, request: HttpRequest, queryset: QuerySet[SignalDelivery]) -> None:
        """Deliver the selected undelivered signals now; report how many took."""
        undelivered = list(queryset.filter(next_attempt_at__isnull=False)[:RECHECK_LIMIT])
        if not undelivered:
            self.message_user(
                request, _("The selected signals were all delivered already."), messages.WARNING
            )
            return
        outcomes = [services.deliver(delivery, now=True) for delivery in undelivered]
        delivered, failed = outcomes.count(True), outcomes.count(False)
        if None in outcomes:
            self.message_user(
                request,
                ngettext(
                    "%(n)s signal is being delivered right now: try again in a moment.",
                    "%(n)s signals are being delivered right now: try again in a moment.",
                    outcomes.count(None),
                )
                % {"n": outcomes.count(None)},
                messages.WARNING,
            )
        if delivered:
            self.message_user(
                request,
                ngettext("Delivered %(n)s signal.", "Delivered %(n)s signals.", delivered)
                % {"n": delivered},
                messages.SUCCESS,
            )
        if failed:
            self.message_user(
                request,
                ngettext(
                    "%(n)s signal was not delivered: a receiver raised (see its last error).",
                    "%(n)s signals were not delivered: a receiver raised (see their last error).",
                    failed,
                )
                % {"n": failed},
                messages.ERROR,
            )


@admin.register(Payment)
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
    # Every field is looked up so that an index answers (tests/test_performance.py):
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
    actions = ["recheck", "refund", "resolve_refund"]
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
        (_("Processing"), {"fields": ["claimed_at", "attempts"], "classes": ["collapse"]}),
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

    # --- actions -------------------------------------------------------------

    # The actions call Khalti: like the API views, they must not run inside the
    # request's transaction (ATOMIC_REQUESTS), or claims would not be committed
    # before Khalti is called.
    def get_urls(self) -> list[URLPattern]:
        """The admin's URLs, the changelist (where actions run) outside ``ATOMIC_REQUESTS``."""
        urls = super().get_urls()
        for pattern in urls:
            if (
                getattr(pattern, "name", None)
                == f"{self.opts.app_label}_{self.opts.model_name}_changelist"
            ):
                pattern.callback = transaction.non_atomic_requests(pattern.callback)
        return urls

    @admin.action(description=_("Re-check with Khalti"), permissions=["recheck"])
    def recheck(self, request: HttpRequest, queryset: QuerySet[Payment]) -> None:
        """Ask Khalti about the selected pending payments, failed ones (read-only: did
        Khalti complete it after all?) and refunds of unknown outcome.

        At most :data:`RECHECK_LIMIT` of them per click; stops at the first that
        Khalti does not answer. Reports what became of them as messages.
        """
        # One budget of Khalti calls for payments and refunds together.
        pending = list(
            queryset.filter(status__in=[Payment.Status.PENDING, Payment.Status.FAILED])[
                : RECHECK_LIMIT + 1
            ]
        )
        refunds = list(
            Refund.objects.filter(
                payment__in=queryset, status=Refund.Status.PENDING
            ).select_related("payment")[: RECHECK_LIMIT + 1]
        )
        if len(pending) + len(refunds) > RECHECK_LIMIT:
            pending = pending[:RECHECK_LIMIT]
            refunds = refunds[: RECHECK_LIMIT - len(pending)]
            self.message_user(
                request,
                _(
                    "Only the first %(n)s pending payments were re-checked; run khalti_reconcile "
                    "for more."
                )
                % {"n": RECHECK_LIMIT},
                messages.WARNING,
            )
        counts: Counter[str] = Counter()
        unreachable = 0
        try:
            for payment in pending:
                settled = services.reconcile(payment)
                counts[settled.get_status_display().lower()] += 1
            for refund in refunds:
                outcome = services.reconcile_refund(refund).get_status_display().lower()
                counts[_("refund %(status)s") % {"status": outcome}] += 1
        except KhaltiUnavailable:
            unreachable = 1  # stop at the first: the rest would wait for it too
        except KhaltiConfigurationError as exc:
            self.message_user(request, _("dj-khalti is misconfigured: %s") % exc, messages.ERROR)
            return
        checked = sum(counts.values())
        if not checked and not unreachable:
            self.message_user(
                request, _("None of the selected payments awaits Khalti."), messages.WARNING
            )
            return
        if checked:
            summary = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
            self.message_user(
                request,
                _("Re-checked %(checked)s with Khalti: %(summary)s.")
                % {"checked": checked, "summary": summary},
                messages.SUCCESS,
            )
        if unreachable:
            self.message_user(
                request,
                _("Khalti could not be reached; the payments not re-checked stay pending."),
                messages.ERROR,
            )

    @admin.action(description=_("Refund with Khalti…"), permissions=["refund"])
    def refund(self, request: HttpRequest, queryset: QuerySet[Payment]) -> HttpResponse | None:
        """Refund the selected payments after a confirmation page.

        All that remains of each, or an amount of one payment. Returns the
        confirmation page, or None once the refunds were asked of Khalti (each
        one's outcome is reported as a message).
        """
        payments = list(queryset)
        refunded_before = sum(p.refunded_amount for p in payments)
        confirming = "confirm" in request.POST
        form = RefundForm(
            request.POST if confirming else None, initial={"refunded_before": refunded_before}
        )
        if confirming and form.is_valid():
            amount = form.amount_paisa()
            if form.cleaned_data["refunded_before"] != refunded_before:
                # Shown again with what stands now, so that it can be confirmed anew.
                data = request.POST.copy()
                data["refunded_before"] = str(refunded_before)
                form = RefundForm(data)
                form.is_valid()
                form.add_error(
                    None, _("These payments were refunded meanwhile: review them again.")
                )
            elif amount and len(payments) > 1:
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
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
            "total_refundable": rupees(sum(p.refundable_amount for p in payments)),
        }
        return TemplateResponse(
            request, "admin/django_khalti/payment/refund_confirmation.html", context
        )

    def _refund_one(
        self, request: HttpRequest, payment: Payment, amount: int | None, mobile: str
    ) -> None:
        try:
            refund = services.refund_payment(
                payment,
                amount=amount,
                mobile=mobile or None,
                by=request.user,
                # What this request saw (and checked against the page): under the lock.
                refunded_before=payment.refunded_amount,
            )
        except KhaltiRefundUnknown as exc:
            self.message_user(
                request,
                _("The refund of %(payment)s may have gone through: %(detail)s")
                % {"payment": payment.product_identity, "detail": exc.detail},
                messages.WARNING,
            )
            return
        except KhaltiError as exc:
            self.message_user(
                request,
                _("%(payment)s was not refunded: %(detail)s")
                % {"payment": payment.product_identity, "detail": exc.detail},
                messages.ERROR,
            )
            return
        except KhaltiConfigurationError as exc:
            self.message_user(request, _("dj-khalti is misconfigured: %s") % exc, messages.ERROR)
            return
        self.message_user(
            request,
            _("Refunded Rs %(amount)s of %(payment)s.")
            % {"amount": rupees(refund.amount), "payment": payment.product_identity},
            messages.SUCCESS,
        )

    @admin.action(description=_("Resolve an unknown refund by hand…"), permissions=["refund"])
    def resolve_refund(
        self, request: HttpRequest, queryset: QuerySet[Payment]
    ) -> HttpResponse | None:
        """For a refund Khalti's API cannot settle: a person records what the dashboard shows."""
        # A refund younger than the claim timeout may still be in flight: not yet.
        refunds = list(services.refunds_awaiting_outcome().filter(payment__in=queryset))
        if not refunds:
            self.message_user(
                request,
                _("None of the selected payments has a refund of unknown outcome."),
                messages.WARNING,
            )
            return None
        confirming = "confirm" in request.POST
        form = ResolveRefundForm(request.POST if confirming else None)
        if confirming and form.is_valid():
            resolved = 0
            for refund in refunds:
                try:
                    services.resolve_refund(
                        refund,
                        succeeded=form.cleaned_data["outcome"] == "succeeded",
                        by=request.user,
                        note=form.cleaned_data["note"],
                    )
                    resolved += 1
                except KhaltiError as exc:  # settled from Khalti's answer meanwhile
                    self.message_user(
                        request,
                        _("%(payment)s: %(detail)s")
                        % {"payment": refund.payment.order_reference, "detail": exc.detail},
                        messages.ERROR,
                    )
            if resolved:
                self.message_user(
                    request,
                    ngettext("Resolved %(n)s refund.", "Resolved %(n)s refunds.", resolved)
                    % {"n": resolved},
                    messages.SUCCESS,
                )
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": _("Resolve an unknown refund"),
            "opts": self.model._meta,
            "refunds": refunds,
            "form": form,
            "payments": [refund.payment for refund in refunds],
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/django_khalti/payment/resolve_refund.html", context)
