"""The confirmation pages of "Refund with Khalti…" and "Resolve an unknown refund by
hand…", as admin views of their own (after dj-stripe's ``admin/views.py``).

Each is a :class:`~django.views.generic.FormView` over a selection of payments,
reached two ways that show the same page and do the same thing:

- from the changelist's action (:mod:`.actions`), which renders it in place: the
  page's form posts back to the changelist with the action and the selection;
- at its own URL (``admin:django_khalti_payment_refund`` and
  ``admin:django_khalti_payment_resolve_refund``, see ``PaymentAdmin.get_urls``),
  with the selection as ``_selected_action`` in the query string or the form.

Each acts only on what it showed: the page's form carries, signed, the state of
each payment on it (:mod:`.seen`), and a submit is refused, saying what
changed, when any of them is no longer so; the services check it again under
the payment's row lock.

The refund permission is checked on both ways. The views call Khalti and hold
their own short transactions around it, so they are exempt from
``ATOMIC_REQUESTS`` here, where they are defined (the changelist is exempted on
``PaymentAdmin.changelist_view``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from django.contrib import messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseBase, HttpResponseRedirect
from django.urls import reverse
from django.utils.decorators import method_decorator
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext
from django.views.generic import FormView

from .. import services
from ..exceptions import KhaltiConfigurationError, KhaltiError, KhaltiRefundUnknown
from ..models import Payment, rupees
from . import seen
from .forms import RefundForm, ResolveRefundForm, _ConfirmationForm

if TYPE_CHECKING:
    from django.utils.functional import _StrOrPromise as StrOrPromise

    from .permissions import PaymentAdminBase

_FormT = TypeVar("_FormT", bound=_ConfirmationForm)

if TYPE_CHECKING:
    _FormView = FormView
else:
    # django-stubs makes FormView generic in its form; Django's is not subscriptable.
    class _FormView(FormView, Generic[_FormT]):
        pass


class _ConfirmationView(_FormView[_FormT]):
    """A confirmation page over the selected payments, for users who may refund.

    Choosing the action shows the page (its form unbound); the page's "confirm"
    button posts the form. It acts (:meth:`act`) only when the payments it is about
    are as the page showed them; otherwise it says what changed and shows them
    again as they stand. Once done, back to :attr:`success_url`: where the action
    was chosen (the changelist, its filters kept), else the changelist.
    """

    #: The ``PaymentAdmin`` the view belongs to (``as_view(model_admin=...)``).
    model_admin: PaymentAdminBase | None = None
    #: The selected payments, when the action hands them over; else read from the request.
    queryset: QuerySet[Payment] | None = None
    title: ClassVar[StrOrPromise]
    form_class: type[_FormT]
    #: The selected payments as they stand, and those of them the page is about (set
    #: by :meth:`prepare`).
    selection: list[Payment]
    payments: list[Payment]

    @method_decorator(transaction.non_atomic_requests)
    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        """Refused (403) without the refund permission; else the page, or its outcome."""
        admin = self.admin
        if not (
            admin.has_view_or_change_permission(request) and admin.has_refund_permission(request)
        ):
            raise PermissionDenied
        queryset = self.queryset if self.queryset is not None else self.selected(request)
        if queryset is None:  # nothing selected at the view's own URL: nothing to confirm
            return HttpResponseRedirect(self.get_success_url())
        self.prepare(queryset)
        if "confirm" not in request.POST:
            nothing_to_do = self.nothing_to_show()
            if nothing_to_do is not None:
                return nothing_to_do
        return super().dispatch(request, *args, **kwargs)

    def selected(self, request: HttpRequest) -> QuerySet[Payment] | None:
        """At the view's own URL: the payments selected in its query string or its form."""
        selected = request.POST.getlist(ACTION_CHECKBOX_NAME) or request.GET.getlist(
            ACTION_CHECKBOX_NAME
        )
        if not selected:
            return None
        try:
            return self.admin.get_queryset(request).filter(pk__in=selected)
        except ValidationError:  # not a payment's id
            return None

    @classmethod
    def in_place(
        cls, model_admin: PaymentAdminBase, request: HttpRequest, queryset: QuerySet[Payment]
    ) -> HttpResponseBase:
        """The page for the changelist's action: shown in place (its form posts back to the
        changelist), then back to the changelist, its filters kept, once done.
        """
        view = cls.as_view(
            model_admin=model_admin, queryset=queryset, success_url=request.get_full_path()
        )
        return view(request)

    @property
    def admin(self) -> PaymentAdminBase:
        """The view's ``PaymentAdmin``."""
        assert self.model_admin is not None, "as_view(model_admin=...)"
        return self.model_admin

    def prepare(self, queryset: QuerySet[Payment]) -> None:
        """Read the selection, and what the page is about, as they stand."""
        raise NotImplementedError

    def nothing_to_show(self) -> HttpResponseBase | None:
        """Where to go instead of showing the page, when it has nothing to show."""
        return None

    def states_of(self, payments: list[Payment]) -> dict[str, seen.State]:
        """What the page shows of each of ``payments``: the states its submit checks."""
        return seen.states_of(payments)

    def get_initial(self) -> dict[str, Any]:
        """What the page shows of its payments, signed."""
        return {"shown": self.form_class.sign(self.states_of(self.payments))}

    def get_form_kwargs(self) -> dict[str, Any]:
        """The form, bound only to the page's own submit (not to the action's choice)."""
        kwargs = super().get_form_kwargs()
        if "confirm" not in self.request.POST:
            kwargs.pop("data", None)
            kwargs.pop("files", None)
        return kwargs

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        """The page's submit; the action's choice (no "confirm") shows the page."""
        if "confirm" not in request.POST:
            return self.get(request, *args, **kwargs)
        return super().post(request, *args, **kwargs)

    def form_valid(self, form: _FormT) -> HttpResponse:
        """Act, if the payments are as the page showed them; else say what changed."""
        shown = form.cleaned_data["shown"]
        now = self.states_of(
            [p for p in self.selection if str(p.pk) in shown or p in self.payments]
        )
        changed = seen.changes(shown, now)
        if changed:
            return self.refuse(changed)
        return self.act(form, shown)

    def act(self, form: _FormT, shown: dict[str, seen.State]) -> HttpResponse:
        """Do what the page asks of the payments it showed (``shown``, as they still are)."""
        raise NotImplementedError

    def refuse(self, changed: list[str]) -> HttpResponse:
        """Nothing done: say what changed, and show the page again as things stand now
        (back to the list when it has nothing left to show).
        """
        self.message(_("Nothing was done: review these payments again."), messages.ERROR)
        for line in changed:
            self.message(line, messages.ERROR)
        if not self.payments:
            return HttpResponseRedirect(self.get_success_url())
        form = self.form_class(initial=self.get_initial())
        return self.render_to_response(self.get_context_data(form=form))

    def get_success_url(self) -> str:
        """Where the action was chosen, else the changelist."""
        site = self.admin.admin_site.name
        return str(self.success_url or reverse(f"{site}:django_khalti_payment_changelist"))

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        """The admin's context, the page's title, and the selection's hidden fields."""
        return super().get_context_data(
            **self.admin.admin_site.each_context(self.request),
            title=self.title,
            opts=Payment._meta,
            action_checkbox_name=ACTION_CHECKBOX_NAME,
            **kwargs,
        )

    def message(self, message: StrOrPromise, level: int) -> None:
        """Tell the user, as the admin's actions do."""
        self.admin.message_user(self.request, message, level)


class RefundView(_ConfirmationView[RefundForm]):
    """Refund the selected payments: all that remains of each, or an amount of one.

    Refused as a whole if any of them changed since the page was shown (a
    second submit of the same page, a colleague's refund, a re-check
    meanwhile). Each payment's outcome is reported as a message. The page says
    of each payment whose ``payment_verified`` has not reached the shop yet,
    with the delivery's last error.
    """

    form_class = RefundForm
    template_name = "admin/django_khalti/payment/refund_confirmation.html"
    title = _("Refund with Khalti")

    def prepare(self, queryset: QuerySet[Payment]) -> None:
        """The payments, each with its undelivered ``payment_verified`` (or None)."""
        self.selection = self.payments = list(queryset)
        self.unheard = seen.unheard_verified(self.payments)
        for payment in self.payments:
            payment.unheard_verified = self.unheard.get(payment.pk)  # type: ignore[attr-defined]

    def states_of(self, payments: list[Payment]) -> dict[str, seen.State]:
        """Their states, with whether ``payment_verified`` has reached the shop."""
        return seen.states_of(payments, unheard=self.unheard)

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        """The payments to refund, and what of them may be refunded in rupees."""
        return super().get_context_data(
            payments=self.payments,
            total_refundable=rupees(sum(p.refundable_amount for p in self.payments)),
            **kwargs,
        )

    def act(self, form: RefundForm, shown: dict[str, seen.State]) -> HttpResponse:
        """Ask Khalti for each refund, unless the amount is ambiguous."""
        amount = form.amount_paisa()
        if amount and len(self.payments) > 1:
            form.add_error("amount", _("A partial amount refunds one payment at a time."))
            return self.form_invalid(form)
        idx = form.cleaned_data["idx"].strip()
        if idx and len(self.payments) > 1:
            form.add_error("idx", _("A transaction id is given for one payment at a time."))
            return self.form_invalid(form)
        for payment in self.payments:
            self.refund_one(
                payment, amount, form.cleaned_data["mobile"], shown[str(payment.pk)], idx
            )
        return HttpResponseRedirect(self.get_success_url())

    def refund_one(
        self, payment: Payment, amount: int | None, mobile: str, shown: seen.State, idx: str = ""
    ) -> None:
        """Refund one payment, if it is still as ``shown``; report its outcome as a message."""
        names = {"payment": payment.product_identity}
        try:
            refund = services.refund_payment(
                payment,
                amount=amount,
                mobile=mobile or None,
                by=self.request.user,
                # What the page showed: checked again under the payment's row lock.
                refunded_before=shown["refunded"],
                status_before=shown["status"],
                idx=idx or None,
            )
        except KhaltiRefundUnknown as exc:  # the money may have moved: not "not refunded"
            text = _("The refund of %(payment)s may have gone through: %(detail)s")
            self.message(text % {**names, "detail": exc.detail}, messages.WARNING)
        except KhaltiError as exc:
            self.message(
                _("%(payment)s was not refunded: %(detail)s") % {**names, "detail": exc.detail},
                messages.ERROR,
            )
        except KhaltiConfigurationError as exc:
            self.message(_("dj-khalti is misconfigured: %s") % exc, messages.ERROR)
        else:
            amount_refunded = {**names, "amount": rupees(refund.amount)}
            text = _("Refunded Rs %(amount)s of %(payment)s.")
            self.message(text % amount_refunded, messages.SUCCESS)


class ResolveRefundView(_ConfirmationView[ResolveRefundForm]):
    """For a refund Khalti's API cannot settle: a person records what the dashboard shows.

    The person's word is on the refunds the page showed, and on their payments as
    it showed them: refused as a whole if any of them changed meanwhile.
    """

    form_class = ResolveRefundForm
    template_name = "admin/django_khalti/payment/resolve_refund.html"
    title = _("Resolve an unknown refund")

    def prepare(self, queryset: QuerySet[Payment]) -> None:
        """The selection's refunds of unknown outcome, and their payments."""
        self.selection = list(queryset)
        # (A refund still in flight is not awaiting an outcome yet.)
        self.refunds = list(services.refunds_awaiting_outcome().filter(payment__in=queryset))
        self.payments = [refund.payment for refund in self.refunds]
        for payment in self.payments:
            # What was refunded before: what Khalti's dashboard shows besides this refund.
            payment.refunded_rupees = rupees(payment.refunded_amount)  # type: ignore[attr-defined]

    def nothing_to_show(self) -> HttpResponseBase | None:
        """Back with a warning when none of the selection has a refund of unknown outcome."""
        if self.refunds:
            return None
        self.message(
            _("None of the selected payments has a refund of unknown outcome."), messages.WARNING
        )
        return HttpResponseRedirect(self.get_success_url())

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        """The refunds to resolve, and their payments (the selection to post back)."""
        return super().get_context_data(refunds=self.refunds, payments=self.payments, **kwargs)

    def act(self, form: ResolveRefundForm, shown: dict[str, seen.State]) -> HttpResponse:
        """Settle each refund the page showed as the person found it; report how many were."""
        resolved = 0
        for refund in self.refunds:
            payment = shown[str(refund.payment_id)]
            try:
                services.resolve_refund(
                    refund,
                    succeeded=form.cleaned_data["outcome"] == "succeeded",
                    by=self.request.user,
                    note=form.cleaned_data["note"],
                    # What the page showed: checked again under the payment's row lock.
                    refunded_before=payment["refunded"],
                    status_before=payment["status"],
                )
                resolved += 1
            except KhaltiError as exc:  # changed meanwhile
                self.message(
                    _("%(payment)s: %(detail)s")
                    % {"payment": refund.payment.order_reference, "detail": exc.detail},
                    messages.ERROR,
                )
        if resolved:
            self.message(
                ngettext("Resolved %(n)s refund.", "Resolved %(n)s refunds.", resolved)
                % {"n": resolved},
                messages.SUCCESS,
            )
        return HttpResponseRedirect(self.get_success_url())
