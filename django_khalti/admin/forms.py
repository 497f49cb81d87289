"""The forms of the refund and resolve-refund confirmation pages."""

from __future__ import annotations

from decimal import Decimal

from django import forms
from django.utils.translation import gettext_lazy as _


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
    idx = forms.CharField(
        label=_("Khalti transaction id"),
        max_length=255,
        required=False,
        help_text=_(
            'Only for a payment whose transaction id is unknown ("-" above) and that '
            "Khalti's records do not name: the id of its transaction in Khalti's dashboard."
        ),
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
