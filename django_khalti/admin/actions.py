"""The admin's actions: "Re-check with Khalti", "Refund with Khalti…", "Resolve an
unknown refund by hand…" (payments) and "Re-send to the receivers now" (signal
deliveries).

Each checks its permission through the admin's ``has_<name>_permission``. The
two that need a confirmation render their page (:mod:`.views`) in place. All of
them run in the changelist's request, which is exempt from ``ATOMIC_REQUESTS``
(``PaymentAdmin.changelist_view``): each claim must be committed before Khalti
is called.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponseBase
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from .. import services
from ..exceptions import KhaltiConfigurationError
from ..models import Payment, Refund, SignalDelivery
from .views import RefundView, ResolveRefundView

if TYPE_CHECKING:
    from .permissions import DeliveryAdminBase, PaymentAdminBase

#: The most payments one "Re-check with Khalti" asks about: each may take up to
#: TIMEOUT, and a web request must stay short. khalti_reconcile has no limit.
RECHECK_LIMIT = 20


@admin.action(description=_("Re-check with Khalti"), permissions=["recheck"])
def recheck(
    modeladmin: PaymentAdminBase, request: HttpRequest, queryset: QuerySet[Payment]
) -> None:
    """Ask Khalti about the selected pending payments, failed ones (read-only: did
    Khalti complete it after all?) and refunds of unknown outcome.

    The reconciliation ``khalti_reconcile`` runs (:func:`~django_khalti.services.reconcile_due`),
    for the selection whatever its age: at most :data:`RECHECK_LIMIT` of each per click;
    it stops at the first that Khalti does not answer, and passes over a payment Khalti
    was asked about within :data:`~django_khalti.services.PERSON_SPACING`. Reports
    what became of them as messages.
    """
    try:
        report = services.reconcile_due(
            queryset,
            limit=RECHECK_LIMIT,
            give_up_after=1,
            deliver_signals=False,
            spacing=services.PERSON_SPACING,
        )
    except KhaltiConfigurationError as exc:
        modeladmin.message_user(request, _("dj-khalti is misconfigured: %s") % exc, messages.ERROR)
        return
    if report.limited:
        modeladmin.message_user(
            request,
            _(
                "Only the first %(n)s pending payments were re-checked; run khalti_reconcile "
                "for more."
            )
            % {"n": RECHECK_LIMIT},
            messages.WARNING,
        )
    # A payment another worker is settling right now is still pending, as far as we know.
    payments = report.pending + report.failed + Counter({Payment.Status.PENDING: report.busy})
    counts: Counter[str] = Counter()
    for status, n in payments.items():
        counts[str(Payment.Status(status).label).lower()] += n
    for status, n in report.refunds.items():
        outcome = str(Refund.Status(status).label).lower()
        counts[_("refund %(status)s") % {"status": outcome}] += n
    unreachable = report.unreachable
    checked = sum(counts.values())
    if not checked and not unreachable:
        modeladmin.message_user(
            request, _("None of the selected payments awaits Khalti."), messages.WARNING
        )
        return
    if checked:
        summary = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
        modeladmin.message_user(
            request,
            _("Re-checked %(checked)s with Khalti: %(summary)s.")
            % {"checked": checked, "summary": summary},
            messages.SUCCESS,
        )
    if unreachable:
        modeladmin.message_user(
            request,
            _("Khalti could not be reached; the payments not re-checked stay pending."),
            messages.ERROR,
        )


@admin.action(description=_("Refund with Khalti…"), permissions=["refund"])
def refund(
    modeladmin: PaymentAdminBase, request: HttpRequest, queryset: QuerySet[Payment]
) -> HttpResponseBase:
    """Refund the selected payments after a confirmation page (:class:`.views.RefundView`)."""
    return RefundView.in_place(modeladmin, request, queryset)


@admin.action(description=_("Resolve an unknown refund by hand…"), permissions=["refund"])
def resolve_refund(
    modeladmin: PaymentAdminBase, request: HttpRequest, queryset: QuerySet[Payment]
) -> HttpResponseBase:
    """Record what Khalti's dashboard shows of the selection's refunds of unknown outcome,
    after a confirmation page (:class:`.views.ResolveRefundView`).
    """
    return ResolveRefundView.in_place(modeladmin, request, queryset)


@admin.action(description=_("Re-send to the receivers now"), permissions=["resend"])
def resend(
    modeladmin: DeliveryAdminBase, request: HttpRequest, queryset: QuerySet[SignalDelivery]
) -> None:
    """Deliver the selected undelivered signals now, oldest first, at most
    :data:`RECHECK_LIMIT`; report how many took, and which of the selection were
    not sent: delivered meanwhile, or beyond the limit.
    """
    oldest_first = queryset.filter(next_attempt_at__isnull=False).order_by("created_at", "pk")
    undelivered = list(oldest_first[: RECHECK_LIMIT + 1])
    if not undelivered:
        modeladmin.message_user(
            request, _("The selected signals were all delivered already."), messages.WARNING
        )
        return
    _say_what_is_not_sent(modeladmin, request, queryset, len(undelivered) > RECHECK_LIMIT)
    outcomes = _resend_in_order(undelivered[:RECHECK_LIMIT])
    for level, text in _what_became_of(Counter(outcomes)):
        modeladmin.message_user(request, text, level)


def _what_became_of(counts: Counter[bool | str | None]) -> list[tuple[int, str]]:
    """The messages "Re-send" leaves, from how many signals ended how."""
    said = []
    if counts["waiting"]:
        n = counts["waiting"]
        text = ngettext(
            "%(n)s signal waits for an earlier signal of its payment that was not "
            "delivered yet: select that one too.",
            "%(n)s signals wait for an earlier signal of their payment that was not "
            "delivered yet: select those too.",
            n,
        )
        said.append((messages.WARNING, text % {"n": n}))
    if counts[None]:
        n = counts[None]
        text = ngettext(
            "%(n)s signal is being delivered right now: try again in a moment.",
            "%(n)s signals are being delivered right now: try again in a moment.",
            n,
        )
        said.append((messages.WARNING, text % {"n": n}))
    if counts[True]:
        n = counts[True]
        text = ngettext("Delivered %(n)s signal.", "Delivered %(n)s signals.", n)
        said.append((messages.SUCCESS, text % {"n": n}))
    if counts[False]:
        n = counts[False]
        text = ngettext(
            "%(n)s signal was not delivered: a receiver raised (see its last error).",
            "%(n)s signals were not delivered: a receiver raised (see their last error).",
            n,
        )
        said.append((messages.ERROR, text % {"n": n}))
    return said


def _resend_in_order(undelivered: list[SignalDelivery]) -> list[bool | str | None]:
    """Deliver ``undelivered`` now, each payment's in order (a delivered one goes on
    with the later ones of its payment); for each: True delivered, False a
    receiver raised, "waiting" behind an earlier undelivered signal, None
    being delivered by another worker.
    """
    outcomes: dict[object, bool | str | None] = {}
    for delivery in sorted(undelivered, key=lambda d: (d.sequence, d.created_at)):
        if delivery.pk in outcomes:
            continue  # delivered after an earlier one of its payment
        if services.earlier_undelivered(delivery) is not None:
            outcomes[delivery.pk] = "waiting"
            continue
        run = services.deliver_in_order(delivery, now=True)
        outcomes.update((done.pk, ok) for done, ok in run)
        outcomes.setdefault(delivery.pk, None)
    return list(outcomes.values())


def _say_what_is_not_sent(
    modeladmin: DeliveryAdminBase,
    request: HttpRequest,
    queryset: QuerySet[SignalDelivery],
    limited: bool,
) -> None:
    """Tell the user which of the selected signals "Re-send" leaves: those delivered
    already (perhaps since the list was shown), and those beyond :data:`RECHECK_LIMIT`.
    """
    delivered = queryset.filter(next_attempt_at__isnull=True).count()
    if delivered:
        modeladmin.message_user(
            request,
            _("%(n)s of the selected signals had been delivered already: not sent again.")
            % {"n": delivered},
            messages.WARNING,
        )
    if limited:
        modeladmin.message_user(
            request,
            _("Only the oldest %(n)s undelivered signals were re-sent: select the rest again.")
            % {"n": RECHECK_LIMIT},
            messages.WARNING,
        )
