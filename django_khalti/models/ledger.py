"""Ledger walks: Khalti's merchant transaction list, read and set beside the payments here.

A :class:`LedgerWalk` is one reading of Khalti's list from a day on
(``khalti_reconcile --ledger --since DATE``); each record it read is a
:class:`LedgerEntry`, with what the walk decided of it. A payment verified here
that the list lacks is an entry too (:attr:`LedgerEntry.Kind.MISSING`). The
walk itself lives in :mod:`django_khalti.services.ledger`; nothing here calls Khalti.
"""

from __future__ import annotations

import uuid

from django.db import models
from django.utils.translation import gettext_lazy as _

from .payments import DbNow, Payment


class LedgerWalkQuerySet(models.QuerySet["LedgerWalk"]):
    """``LedgerWalk.objects``: the walks that ran to their end."""

    def finished(self) -> LedgerWalkQuerySet:
        """Walks that read Khalti's list to its end."""
        return self.filter(status=LedgerWalk.Status.FINISHED)


class LedgerWalk(models.Model):
    """One walk of Khalti's merchant transaction list, page by page, and how far it got.

    A walk that Khalti's outage (or a dying worker) stopped keeps its place
    (:attr:`next_page`) and the records it read: the next walk for the same day
    resumes it, and reads no record twice into it.
    """

    class Status(models.TextChoices):
        """Running, interrupted (to be resumed), or finished (read to the list's end)."""

        RUNNING = "running", _("Running")
        INTERRUPTED = "interrupted", _("Interrupted")
        FINISHED = "finished", _("Finished")

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    #: The first moment walked: records Khalti made before it are passed over.
    since = models.DateTimeField(_("since"))
    status = models.CharField(
        _("status"), max_length=16, choices=Status.choices, default=Status.RUNNING, db_index=True
    )
    #: The page of Khalti's list to read next (a resumed walk starts there).
    next_page = models.PositiveIntegerField(_("next page"), default=1)
    #: What Khalti's last page read said of the whole list.
    total_pages = models.PositiveIntegerField(_("pages at Khalti"), null=True, blank=True)
    total_records = models.PositiveIntegerField(_("records at Khalti"), null=True, blank=True)
    pages_read = models.PositiveIntegerField(_("pages read"), default=0)
    #: Records read once each (a record seen again on a later page is not counted again).
    records_read = models.PositiveIntegerField(_("records read"), default=0)
    #: Entries that are not :attr:`LedgerEntry.Kind.MATCHED`.
    differences = models.PositiveIntegerField(_("differences"), default=0)
    #: Why the walk stopped, when it did not finish (never Khalti's key or a payer's details).
    last_error = models.TextField(_("last error"), blank=True)
    #: Whether every page was read: what is left is the check for payments the list lacked.
    read_to_end = models.BooleanField(_("read to the end"), default=False)
    #: How many times the walk was taken up again after it stopped.
    resumed = models.PositiveIntegerField(_("times resumed"), default=0)
    started_at = models.DateTimeField(_("started"), db_default=DbNow(), db_index=True)
    finished_at = models.DateTimeField(_("finished"), null=True, blank=True)
    #: When the worker walking it last wrote a page, on the database's clock; NULL when
    #: nobody walks it. A walk whose holder fell silent may be taken over.
    claimed_at = models.DateTimeField(_("claimed"), null=True, blank=True, editable=False)
    #: The claim of the worker walking it: one that finds another's here stops.
    holder = models.UUIDField(null=True, blank=True, editable=False)

    objects = LedgerWalkQuerySet.as_manager()

    class Meta:
        """Newest first."""

        verbose_name = _("ledger walk")
        verbose_name_plural = _("ledger walks")
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return _("Ledger since %(since)s · %(status)s") % {
            "since": f"{self.since:%Y-%m-%d %H:%M}",
            "status": self.get_status_display(),
        }


class LedgerEntry(models.Model):
    """One record of Khalti's list as a walk read it (or a payment the list lacked),
    and what the walk decided of it.
    """

    class Kind(models.TextChoices):
        """What the record says beside the payment here."""

        #: Khalti's record and the payment agree.
        MATCHED = "matched", _("Matches")
        #: Refunded at Khalti, outside the app: recorded here as a refund, the
        #: payment refunded (``payment_refunded``).
        REFUNDED_AT_KHALTI = "refunded_at_khalti", _("Refunded at Khalti")
        #: No payment here has this transaction id: another channel on the same
        #: merchant, or money a person must look at. Never attached to a payment.
        FOREIGN = "foreign", _("Foreign: no payment here")
        #: Khalti's record is for another amount: the payment needs review.
        AMOUNT_DIFFERS = "amount_differs", _("Another amount at Khalti")
        #: Khalti's record is in a state that contradicts the payment here (not
        #: paid, or refunded less than recorded here).
        STATE_DIFFERS = "state_differs", _("Another state at Khalti")
        #: The payment was verified here in the walked days, and Khalti's list
        #: and its record of the transaction lack it: the payment needs review.
        MISSING = "missing", _("Missing at Khalti")
        #: Paid at Khalti, but pending, failed or held for review here: for
        #: ``khalti_reconcile`` (or a person) to settle; the walk changes nothing.
        NOT_SETTLED_HERE = "not_settled_here", _("Paid at Khalti, not settled here")
        #: A refund of the payment was awaiting Khalti's answer: looked at again next walk.
        REFUND_IN_FLIGHT = "refund_in_flight", _("Refund in flight")
        #: A record the walk could not read (an unknown shape): reported, never guessed.
        UNREADABLE = "unreadable", _("Unreadable record")

    id = models.BigAutoField(primary_key=True)
    walk = models.ForeignKey(
        LedgerWalk, on_delete=models.CASCADE, related_name="entries", verbose_name=_("walk")
    )
    #: Khalti's transaction id; NULL for a record that names none (unreadable).
    idx = models.CharField(  # noqa: DJ001 (NULL: an unreadable record names no idx)
        _("Khalti transaction id"), max_length=255, null=True, blank=True
    )
    payment = models.ForeignKey(
        Payment,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="ledger_entries",
        verbose_name=_("payment"),
    )
    kind = models.CharField(_("kind"), max_length=32, choices=Kind.choices, db_index=True)
    #: The page of Khalti's list it was read on (NULL: not read there, e.g. missing).
    page = models.PositiveIntegerField(_("page"), null=True, blank=True)
    #: Khalti's word for the record's state and type, as written.
    state = models.CharField(_("state at Khalti"), max_length=64, blank=True)
    type = models.CharField(_("type at Khalti"), max_length=64, blank=True)
    amount = models.PositiveBigIntegerField(_("amount (paisa)"), null=True, blank=True)
    fee_amount = models.PositiveBigIntegerField(_("fee (paisa)"), null=True, blank=True)
    #: What Khalti's record says went back, when it says (paisa).
    refunded_amount = models.PositiveBigIntegerField(
        _("refunded at Khalti (paisa)"), null=True, blank=True
    )
    created_on = models.DateTimeField(_("created at Khalti"), null=True, blank=True)
    #: Khalti's record as it was read (for a missing payment: its transaction's
    #: answer, or NULL).
    record = models.JSONField(_("Khalti's record"), null=True, blank=True)
    #: What the walk found and did, for people.
    detail = models.TextField(_("detail"), blank=True)

    class Meta:
        """In the order read; a record once a walk."""

        verbose_name = _("ledger entry")
        verbose_name_plural = _("ledger entries")
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["walk", "idx"], name="khalti_ledger_entry_once"),
        ]

    def __str__(self) -> str:
        return f"{self.idx or '?'} · {self.get_kind_display()}"
