"""The Payment admin: an audit trail a support desk can live in.

Everything Khalti told us is read-only. Two actions talk to Khalti: "Re-check
with Khalti" settles pending payments (and refunds whose outcome was unknown),
"Refund" gives money back after a confirmation page; a payment's page offers
those that apply to it as buttons. The signal deliveries' page lists what the
shop's receivers have not yet taken, and re-sends it. Nothing that records money
is deleted.

Imports point down, from the ModelAdmins to what they are built from:

- :mod:`.payments`: the payments' changelist and change page;
- :mod:`.deliveries`: the signal deliveries' changelist;
- :mod:`.actions`: the actions of both;
- :mod:`.views` and :mod:`.forms`: the refund and resolve-refund confirmation pages;
- :mod:`.overview`: the overview page (today's, 7 and 30 days' figures and money,
  what is stuck pending, what needs a person, the daily volume);
- :mod:`.ledger`: the ledger page (the last walk of Khalti's transaction list, and
  what it found different);
- :mod:`.export`: the accountants' CSV of a period's payments;
- :mod:`.money`: which payments the money figures count, and by which day;
- :mod:`.pages`: the base of those pages (for users who may view payments);
- :mod:`.permissions`: the two ModelAdmins' bases (who may do what), which the
  actions and pages are typed by;
- :mod:`.deletion`: what a superuser may delete, and telling which rows were kept;
- :mod:`.records`: what both show of a payment's record (inlines, filter, JSON).
"""

from django.contrib import admin

from ..models import Payment, SignalDelivery
from .actions import RECHECK_LIMIT
from .deliveries import SignalDeliveryAdmin
from .export import ExportView
from .forms import ExportForm, RefundForm, ResolveRefundForm
from .ledger import LedgerView, last_walk
from .overview import OverviewView, payment_overview
from .payments import STATUS_COLOURS, PaymentAdmin
from .records import DeliveryInline, RefundInline, UndeliveredFilter, may_see_payments, pretty_json
from .views import RefundView, ResolveRefundView

__all__ = [
    "RECHECK_LIMIT",
    "STATUS_COLOURS",
    "DeliveryInline",
    "ExportForm",
    "ExportView",
    "LedgerView",
    "OverviewView",
    "PaymentAdmin",
    "RefundForm",
    "RefundInline",
    "RefundView",
    "ResolveRefundForm",
    "ResolveRefundView",
    "SignalDeliveryAdmin",
    "UndeliveredFilter",
    "last_walk",
    "may_see_payments",
    "payment_overview",
    "pretty_json",
]

admin.site.register(Payment, PaymentAdmin)
admin.site.register(SignalDelivery, SignalDeliveryAdmin)
