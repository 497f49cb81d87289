"""The forms of the refund and resolve-refund confirmation pages, and of the CSV export."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any, ClassVar

from django import forms
from django.core import signing
from django.utils.translation import gettext_lazy as _

#: The keys every payment's state on a page has (see :mod:`.seen`).
_STATE_KEYS = {"name", "status", "refunded", "refunds"}


class _ConfirmationForm(forms.Form):
    """A confirmation page's form, carrying, signed, what the page showed of each of its
    payments (:mod:`.seen`): the submit acts only on payments still as they were shown.
    """

    #: One salt for each page: what one page showed is not taken back by another.
    salt: ClassVar[str]
    #: What the page showed, by payment id; a submit without it (or with one the
    #: page did not sign) is refused.
    shown = forms.CharField(widget=forms.HiddenInput)

    @classmethod
    def sign(cls, states: dict[str, dict[str, Any]]) -> str:
        """What the page shows, for its ``shown`` field."""
        return signing.dumps(states, salt=cls.salt, compress=True)

    def clean_shown(self) -> dict[str, dict[str, Any]]:
        """What the page showed, as it signed it."""
        try:
            states = signing.loads(self.cleaned_data["shown"], salt=self.salt)
        except signing.BadSignature:
            states = None
        if not isinstance(states, dict) or not all(
            isinstance(state, dict) and state.keys() >= _STATE_KEYS for state in states.values()
        ):
            raise forms.ValidationError(
                _("This page cannot be read back: open it again."), code="unreadable"
            )
        return states


class RefundForm(_ConfirmationForm):
    """The Refund action's confirmation page: an amount in rupees (empty: all that remains)."""

    salt = "django_khalti.admin.refund"

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

    def amount_paisa(self) -> int | None:
        """The amount asked for, in paisa; None to refund all that remains."""
        amount = self.cleaned_data["amount"]
        return None if amount is None else int(amount * 100)


class ResolveRefundForm(_ConfirmationForm):
    """What a person found in Khalti's dashboard about a refund of unknown outcome."""

    salt = "django_khalti.admin.resolve_refund"

    outcome = forms.ChoiceField(
        label=_("What Khalti's dashboard shows"),
        choices=[
            ("succeeded", _("The money went back to the buyer")),
            ("failed", _("Nothing was refunded")),
        ],
        widget=forms.RadioSelect,
    )
    note = forms.CharField(label=_("Note"), max_length=500, required=False)


#: A day, as the browser's date picker reads and writes it (ISO 8601).
_DAY = forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d")


#: The days the export can be asked for: no payment was made through Khalti before the
#: first, and the calendar (and a day after it, where a period ends) holds the last.
FIRST_DAY = date(2010, 1, 1)
LAST_DAY = date(9000, 12, 31)


class ExportForm(forms.Form):
    """The CSV export's period: from one day to another, both included (days on the
    shop's time zone).
    """

    start = forms.DateField(label=_("From"), widget=_DAY)
    end = forms.DateField(label=_("To (included)"), widget=_DAY)

    def clean(self) -> dict[str, Any]:
        """Refused when the period ends before it starts, or reaches past the days a
        payment can be of (:data:`FIRST_DAY` to :data:`LAST_DAY`), before anything is sent.
        """
        cleaned = super().clean() or {}
        start: date | None = cleaned.get("start")
        end: date | None = cleaned.get("end")
        if start and end and end < start:
            raise forms.ValidationError(_("The period ends before it starts."), code="backwards")
        if any(day and not FIRST_DAY <= day <= LAST_DAY for day in (start, end)):
            raise forms.ValidationError(
                _("Choose days from %(first)s to %(last)s.")
                % {"first": FIRST_DAY.isoformat(), "last": LAST_DAY.isoformat()},
                code="out_of_range",
            )
        return cleaned
