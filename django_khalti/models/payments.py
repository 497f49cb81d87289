"""The ``Payment`` record (one row per Khalti payment attempt), its refunds and its signals.

Status changes happen only in :mod:`django_khalti.services`. Nothing here
calls Khalti.
"""

from __future__ import annotations

import copy
import hashlib
import json
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, cast

from django.conf import settings
from django.core import serializers
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.db.models import Case, Exists, F, OuterRef, Q, Value, When
from django.db.models.functions import Coalesce, Now
from django.db.models.lookups import GreaterThan
from django.utils.translation import gettext_lazy as _

from ..conf import khalti_settings
from ..deletion import PROTECT_UNDELIVERED, KeptModel, KeptQuerySet
from ..exceptions import KhaltiPaymentAsSent


class DbNow(Now):
    """The database server's clock, in UTC on every backend: the one clock that
    claims and ages are read on, whichever host asks (MySQL's ``CURRENT_TIMESTAMP``
    is in the session's time zone; its ``UTC_TIMESTAMP`` is not).
    """

    def as_mysql(self, compiler: Any, connection: Any, **extra_context: Any) -> Any:
        """``UTC_TIMESTAMP(6)``: Django stores datetimes in UTC on MySQL and MariaDB."""
        return self.as_sql(compiler, connection, template="UTC_TIMESTAMP(6)", **extra_context)

    def as_sqlite(self, compiler: Any, connection: Any, **extra_context: Any) -> Any:
        """Microseconds, as Django writes a datetime on SQLite: SQLite compares the
        text, and its own ``%f`` (milliseconds) sorts before Django's ``.123000`` for
        the same instant, so a batch's cursor would skip the rows of its last millisecond.
        """
        template = "STRFTIME('%%%%Y-%%%%m-%%%%d %%%%H:%%%%M:%%%%f000', 'NOW')"
        return self.as_sql(compiler, connection, template=template, **extra_context)


#: How long after its link expired a Khalti answer of "not found" or "initiated"
#: means the buyer can no longer pay: no money can move on a dead link.
LINK_EXPIRY_MARGIN = timedelta(minutes=15)


def link_dead() -> Q:
    """An ePayment's link expired (its ``expires_at``, else Khalti's documented hour
    from its creation) more than :data:`LINK_EXPIRY_MARGIN` ago, on the database's clock.
    """
    expiry = Coalesce("expires_at", F("created_at") + timedelta(minutes=60))
    return Q(GreaterThan(DbNow() - LINK_EXPIRY_MARGIN, expiry))


class PaymentQuerySet(KeptQuerySet["Payment"]):
    """``Payment.objects``: payments by status and by order; what may be deleted."""

    rule = _("Only a failed payment whose signals were all delivered may be deleted.")
    purge = (
        "To purge old failed payments: Payment.objects.deletable().filter(created_at__lt=...)"
        ".delete() (see the docs: reference, models, Deleting)."
    )
    reasons = {
        "undelivered": _("a signal to the shop is not delivered yet"),
        "claimed": _("Khalti is being asked about it right now"),
        "link_open": _("its Khalti payment link can still be paid"),
    }

    def kept_because(self) -> Case:
        """Why a payment must not be deleted: it is not failed (it holds its order and
        token, or money moved or may still), a signal of it has not reached the shop,
        a re-check is asking Khalti about it right now, or it is an ePayment whose link
        the buyer can still pay (superseded or cancelled, the link stays open at
        Khalti: a buyer who pays it comes back to a payment the app must still hold).
        """
        undelivered = SignalDelivery.objects.filter(
            payment=OuterRef("pk"), delivered_at__isnull=True
        )
        claimed = Q(claimed_at__gte=DbNow() - timedelta(seconds=khalti_settings.stale_after))
        return Case(
            When(~Q(status=Payment.Status.FAILED), then=F("status")),
            When(Exists(undelivered), then=Value("undelivered")),
            When(claimed, then=Value("claimed")),
            When(Q(pidx__isnull=False) & ~link_dead(), then=Value("link_open")),
            default=Value(""),
            output_field=models.CharField(),
        )

    def why(self, code: str) -> str:
        """Why a payment is kept: its status, or one of :attr:`reasons`."""
        if code in Payment.Status.values:
            return _("it is %(status)s") % {"status": str(Payment.Status(code).label).lower()}
        return super().why(code)

    def bulk_update(self, objs: Iterable[Payment], *args: Any, **kwargs: Any) -> int:
        """Django's ``bulk_update``; a signal receiver's copy among ``objs`` is refused,
        as its ``save()`` is.
        """
        objs = _none_a_receivers_copy(objs, "saved")
        return super().bulk_update(objs, *args, **kwargs)

    def bulk_create(self, objs: Iterable[Payment], *args: Any, **kwargs: Any) -> list[Payment]:
        """Django's ``bulk_create``; a signal receiver's copy among ``objs`` is refused
        (with ``update_conflicts`` it would write the row back).
        """
        objs = _none_a_receivers_copy(objs, "saved")
        return super().bulk_create(objs, *args, **kwargs)

    def pending(self) -> PaymentQuerySet:
        """Payments awaiting Khalti's answer."""
        return self.filter(status=Payment.Status.PENDING)

    def verified(self) -> PaymentQuerySet:
        """Payments Khalti confirmed and nothing was refunded of."""
        return self.filter(status=Payment.Status.VERIFIED)

    def paid(self) -> PaymentQuerySet:
        """Payments Khalti confirmed and that paid their order, refunded since or not
        (not one refunded before it was verified, nor one that needed review).
        """
        return self.filter(status__in=Payment.PAID_STATUSES, verified_at__isnull=False)

    def needs_review(self) -> PaymentQuerySet:
        """Payments where money moved that the shop must not honour: a person decides."""
        return self.filter(status=Payment.Status.NEEDS_REVIEW)

    def for_order(self, reference: str) -> PaymentQuerySet:
        """Every payment attempt for the order ``reference`` (the resolver's canonical
        reference, or the one the browser gave), whatever its status.
        """
        return self.filter(
            models.Q(order_reference=reference) | models.Q(product_identity=reference)
        )


def _none_a_receivers_copy(objs: Iterable[Payment], action: str) -> list[Payment]:
    """``objs`` as a list, once none of them is a signal receiver's copy."""
    payments = list(objs)
    for payment in payments:
        payment._refuse_a_receivers_copy(action)
    return payments


class Payment(KeptModel):
    """One payment attempt through Khalti, widget or ePayment, and what Khalti said of it.

    ``amount`` is the shop's (from its resolver), in paisa. ``status`` changes only
    in :mod:`django_khalti.services`; the row also records Khalti's ids, fee,
    masked payer mobile, its last answer and why a payment failed. Only a failed
    payment whose signals were all delivered may be deleted (:mod:`django_khalti.deletion`).
    """

    class Status(models.TextChoices):
        """Where a payment stands: pending until Khalti's answer settles it."""

        PENDING = "pending", _("Pending")
        VERIFIED = "verified", _("Verified")
        FAILED = "failed", _("Failed")
        REFUNDED = "refunded", _("Refunded")
        PARTIALLY_REFUNDED = "partially_refunded", _("Partially refunded")
        #: Money moved, but the shop must not honour it: Khalti completed it for
        #: another amount, after it was recorded failed, for an order already paid,
        #: or with nothing that ties its answer to this payment. A person decides
        #: (usually: refund it). Never counted as paid.
        NEEDS_REVIEW = "needs_review", _("Needs review")

    #: Statuses of a payment Khalti confirmed: the order was paid.
    PAID_STATUSES = (Status.VERIFIED, Status.PARTIALLY_REFUNDED, Status.REFUNDED)
    #: Statuses from which money can still go back to the buyer.
    REFUNDABLE_STATUSES = (Status.VERIFIED, Status.PARTIALLY_REFUNDED, Status.NEEDS_REVIEW)

    class Flow(models.TextChoices):
        """How the buyer paid: Khalti's widget (token) or its ePayment (pidx)."""

        WIDGET = "widget", _("Widget (KPG-1)")
        EPAYMENT = "epayment", _("ePayment (KPG-2)")

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    flow = models.CharField(
        _("flow"), max_length=16, choices=Flow.choices, default=Flow.WIDGET, db_index=True
    )
    #: The widget's token (widget flow only). A token is on one live payment at a
    #: time (``token_claim``); payments that failed keep it for the record.
    token = models.CharField(  # noqa: DJ001 (NULL: an ePayment has none)
        _("token"), max_length=255, null=True, blank=True, db_index=True
    )
    #: Khalti's payment id (ePayment flow only).
    pidx = models.CharField(_("pidx"), max_length=255, unique=True, null=True, blank=True)
    #: The order's reference as the buyer's page gave it.
    product_identity = models.CharField(_("product identity"), max_length=255, db_index=True)
    #: The order's reference as the shop's resolver names it (canonical): what the
    #: order claim is on, and what receivers should look the order up by.
    order_reference = models.CharField(_("order reference"), max_length=255, db_index=True)
    #: What the shop expects for the order, in paisa (its resolver's amount).
    amount = models.PositiveBigIntegerField(_("amount (paisa)"))
    purchase_order_name = models.CharField(_("purchase order name"), max_length=255, blank=True)
    payment_url = models.URLField(_("Khalti payment URL"), max_length=1000, blank=True)
    expires_at = models.DateTimeField(_("payment link expires"), null=True, blank=True)
    #: Who started the ePayment link: a keyed hash of the buyer's user or session
    #: (never the session key itself), so an open link is handed back only to
    #: the buyer it was made for. Empty when the buyer could not be told apart.
    started_by = models.CharField(max_length=64, blank=True, editable=False)
    status = models.CharField(
        _("status"), max_length=32, choices=Status.choices, default=Status.PENDING, db_index=True
    )

    # What Khalti told us.
    #: Khalti's transaction id: the widget record's ``idx``, or ePayment
    #: lookup's ``transaction_id``. Refunds use it.
    idx = models.CharField(
        _("Khalti transaction id"), max_length=255, unique=True, null=True, blank=True
    )
    #: The ``idx`` the widget handed the buyer's page: the browser's word, used
    #: only to find Khalti's record when Khalti's status answer names none, and
    #: copied to ``idx`` only once that record matches.
    claimed_idx = models.CharField(max_length=255, blank=True, editable=False, db_index=True)
    #: What Khalti says the buyer paid, in paisa, once it says the money moved
    #: (the same as ``amount`` unless the payment needs review).
    received_amount = models.PositiveBigIntegerField(_("received (paisa)"), null=True, blank=True)
    fee_amount = models.PositiveBigIntegerField(_("fee (paisa)"), null=True, blank=True)
    mobile = models.CharField(_("payer mobile (masked by Khalti)"), max_length=32, blank=True)
    khalti_response = models.JSONField(_("Khalti's last answer"), null=True, blank=True)
    failure_reason = models.TextField(_("failure reason"), blank=True)
    refunded_amount = models.PositiveBigIntegerField(_("refunded (paisa)"), default=0)

    #: The database's time (:class:`DbNow`): ages are measured on the clock claims use.
    created_at = models.DateTimeField(_("created"), db_default=DbNow(), db_index=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)
    verified_at = models.DateTimeField(_("verified"), null=True, blank=True)

    # Bookkeeping for exactly-once (see services.py).
    #: ``order_key(order_reference)`` while this payment is pending or paid, NULL
    #: once it failed, needs review or was refunded before it was verified (and
    #: while a pending widget payment waits for another payment to let go of
    #: its order, ``services._take_order``): a
    #: unique column, so one order has at most one live payment on every database
    #: (NULLs never collide).
    order_claim = models.CharField(  # noqa: DJ001 (NULL is what lets failed payments not collide)
        max_length=64, unique=True, null=True, editable=False
    )
    #: ``token`` unless the payment failed (Khalti refused it: no money moved),
    #: NULL then: unique, so a token is bound to one order and amount, and only a
    #: token Khalti refused may be bound again (a replayed token cannot lock its
    #: buyer out).
    token_claim = models.CharField(  # noqa: DJ001 (NULL is what lets failed payments not collide)
        max_length=255, unique=True, null=True, editable=False
    )
    #: When a worker took this payment to call Khalti, on the database's clock;
    #: NULL when nobody holds it.
    claimed_at = models.DateTimeField(_("claimed"), null=True, blank=True, editable=False)
    #: When a worker last took this payment to ask Khalti about it, on the
    #: database's clock; kept when the claim is let go. A new claim waits until
    #: ``KHALTI["ASK_SPACING"]`` has passed since, whoever asks.
    last_asked_at = models.DateTimeField(
        _("last asked Khalti"), null=True, blank=True, editable=False
    )
    #: How many times a worker has taken this payment to call Khalti: also the
    #: claim's generation, which a holder's writes are guarded by.
    attempts = models.PositiveIntegerField(_("attempts"), default=0, editable=False)
    #: How many times its status changed: each change counts it up, in the same
    #: guarded ``UPDATE``, and its signal carries the count as
    #: :attr:`SignalDelivery.sequence`, the order the shop hears of its changes in.
    status_changes = models.PositiveIntegerField(
        _("status changes"), default=0, db_default=0, editable=False
    )

    objects = PaymentQuerySet.as_manager()

    #: On a receiver's copy (:attr:`SignalDelivery.payment_as_it_was`), the signal
    #: it was sent with: such a copy can be neither saved nor deleted.
    _sent_with: str = ""

    class Meta:
        """Newest first; permission ``refund_payment``; the admin's mobile search and the
        overview's chart indexed.
        """

        verbose_name = _("Khalti payment")
        verbose_name_plural = _("Khalti payments")
        ordering = ["-created_at"]
        permissions = [("refund_payment", _("Can refund Khalti payments"))]
        indexes = [
            # The admin's search by the payer's (masked) mobile, as Khalti shows it
            # (the other searched columns are indexed as unique or db_index).
            models.Index(fields=["mobile"], name="khalti_payment_mobile_idx"),
            # The admin overview's daily chart: what was verified in the last 30 days.
            models.Index(fields=["verified_at"], name="khalti_payment_verified_idx"),
        ]

    def __str__(self) -> str:
        return _("%(order)s · Rs %(amount)s · %(status)s") % {
            "order": self.product_identity,
            "amount": self.amount_rupees,
            "status": self.get_status_display(),
        }

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Save; a new row keeps the claims' invariants even when made by hand (a
        fixture, a data migration): the reference given is canonical unless the
        resolver said otherwise, and a token is bound unless the payment failed.
        A receiver's copy of the payment as it was is refused.
        """
        self._refuse_a_receivers_copy("saved")
        if self._state.adding:
            self.order_reference = self.order_reference or self.product_identity
            if self.token_claim is None and self.token and self.status != self.Status.FAILED:
                self.token_claim = self.token
        super().save(*args, **kwargs)
        _read_db_default(self)

    def save_base(self, *args: Any, **kwargs: Any) -> None:
        """What ``save()`` writes with, refused too for a receiver's copy (called
        directly, or through ``Model.save(payment)``).
        """
        self._refuse_a_receivers_copy("saved")
        super().save_base(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        """Delete; a receiver's copy of the payment as it was is refused."""
        self._refuse_a_receivers_copy("deleted")
        return super().delete(*args, **kwargs)

    def _refuse_a_receivers_copy(self, action: str) -> None:
        """Raise :class:`~django_khalti.exceptions.KhaltiPaymentAsSent` on a receiver's
        copy: written back, it would rewind the row to what the signal announced.
        """
        if self._sent_with:
            raise KhaltiPaymentAsSent(self, self._sent_with, action)

    @property
    def amount_rupees(self) -> str:
        """The amount for display: paisa as rupees with two decimals."""
        return rupees(self.amount)

    @property
    def refundable_rupees(self) -> str:
        """What can still be refunded, in rupees for display."""
        return rupees(self.refundable_amount)

    @property
    def paid_amount(self) -> int:
        """What the buyer paid at Khalti: Khalti's amount when it told us, else the order's."""
        return self.amount if self.received_amount is None else self.received_amount

    @property
    def refundable_amount(self) -> int:
        """Paisa that can still be refunded: 0 unless Khalti confirmed the money
        moved and named its transaction (a payment refunded outside the app
        before we verified it has an unknown refunded amount).
        """
        if self.status == self.Status.NEEDS_REVIEW:
            return max(self.paid_amount - self.refunded_amount, 0) if self.idx else 0
        if self.status not in self.REFUNDABLE_STATUSES or self.verified_at is None:
            return 0
        return max(self.amount - self.refunded_amount, 0)


class RefundQuerySet(KeptQuerySet["Refund"]):
    """``Refund.objects``: what may be deleted."""

    rule = _("Only a settled refund of a failed payment may be deleted.")
    reasons = {
        "pending": _("Khalti's answer on it is awaited or unknown: the money may have moved"),
        "payment": _("it records money of a payment that is kept"),
    }

    def kept_because(self) -> Case:
        """Why a refund must not be deleted: its outcome is not known, or its payment
        is not failed (the refund is part of that payment's record of money).
        """
        return Case(
            When(status=Refund.Status.PENDING, then=Value("pending")),
            When(~Q(payment__status=Payment.Status.FAILED), then=Value("payment")),
            default=Value(""),
            output_field=models.CharField(),
        )


class Refund(KeptModel):
    """One request to give money back to the buyer, and what Khalti said of it."""

    class Status(models.TextChoices):
        """A refund waits for Khalti's answer (pending), then succeeded or failed."""

        PENDING = "pending", _("Pending")
        SUCCEEDED = "succeeded", _("Succeeded")
        FAILED = "failed", _("Failed")

    class Origin(models.TextChoices):
        """Who made the refund: this app (the admin, ``refund_payment``), or somebody at
        Khalti, outside the app (its merchant dashboard), found by a ledger walk.
        """

        APP = "app", _("This app")
        KHALTI = "khalti", _("Khalti, outside the app")

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    payment = models.ForeignKey(
        Payment, on_delete=models.PROTECT, related_name="refunds", verbose_name=_("payment")
    )
    #: :attr:`Origin.KHALTI` for a refund made outside the app (in Khalti's dashboard)
    #: that a ledger walk found: recorded succeeded, with the ledger's record as its answer.
    origin = models.CharField(
        _("made by"), max_length=16, choices=Origin.choices, default=Origin.APP, db_default="app"
    )
    amount = models.PositiveBigIntegerField(_("amount (paisa)"))
    mobile = models.CharField(_("refund to Khalti id"), max_length=32, blank=True)
    status = models.CharField(
        _("status"), max_length=16, choices=Status.choices, default=Status.PENDING
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("requested by"),
    )
    khalti_response = models.JSONField(_("Khalti's answer"), null=True, blank=True)
    failure_reason = models.TextField(_("failure reason"), blank=True)
    created_at = models.DateTimeField(_("requested"), db_default=DbNow())
    settled_at = models.DateTimeField(_("settled"), null=True, blank=True)
    #: When Khalti was last asked again, read-only, about a refund recorded failed
    #: (it may apply a refund after its answer came too late): spaces those re-checks.
    rechecked_at = models.DateTimeField(_("re-checked"), null=True, blank=True, editable=False)
    #: The payment's id while this refund is pending, NULL once settled: a unique
    #: column, so a payment has at most one refund in flight on every database.
    claim = models.UUIDField(unique=True, null=True, editable=False)

    objects = RefundQuerySet.as_manager()

    class Meta:
        """Oldest first: the payment's refund history in order."""

        verbose_name = _("Khalti refund")
        verbose_name_plural = _("Khalti refunds")
        ordering = ["created_at"]

    def __str__(self) -> str:
        return _("Rs %(amount)s · %(status)s") % {
            "amount": rupees(self.amount),
            "status": self.get_status_display(),
        }

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Save; ``created_at`` is the database's time."""
        super().save(*args, **kwargs)
        _read_db_default(self)


class SignalDeliveryQuerySet(KeptQuerySet["SignalDelivery"]):
    """``SignalDelivery.objects``: what may be deleted."""

    rule = _("Only a signal delivered to the shop may be deleted.")
    reasons = {"undelivered": _("it is not delivered to the shop yet")}

    def kept_because(self) -> Case:
        """Why a delivery must not be deleted: the shop has not had the signal yet."""
        return Case(
            When(delivered_at__isnull=True, then=Value("undelivered")),
            default=Value(""),
            output_field=models.CharField(),
        )


class SignalDelivery(KeptModel):
    """A signal to deliver to the shop's receivers: the outbox.

    Written in the transaction that changes the payment's status, so the change
    and its announcement commit together. Marked delivered only once every
    receiver ran without raising; until then ``khalti_reconcile``, a
    resubmission of the payment, or a person in the admin delivers it again,
    after :data:`~django_khalti.conf` ``SIGNAL_GRACE_PERIOD`` and then less and
    less often (see ``services.deliver``). Receivers therefore get a signal at
    least once, and must be idempotent.
    """

    class Signal(models.TextChoices):
        """The signal announced: one per status a payment can change to."""

        VERIFIED = "payment_verified", "payment_verified"
        FAILED = "payment_failed", "payment_failed"
        REFUNDED = "payment_refunded", "payment_refunded"
        NEEDS_REVIEW = "payment_needs_review", "payment_needs_review"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    #: Deleted with its payment once delivered; until then it protects its payment.
    payment = models.ForeignKey(
        Payment,
        on_delete=PROTECT_UNDELIVERED,
        related_name="signal_deliveries",
        verbose_name=_("payment"),
    )
    signal = models.CharField(_("signal"), max_length=32, choices=Signal.choices)
    #: The payment's fields as the status change left them (``django.core.serializers``'
    #: python form): what every delivery gives the receivers, however the payment changed since.
    snapshot = models.JSONField(_("payment as it was"), encoder=DjangoJSONEncoder)
    #: ``reason`` (failed, needs review) or ``amount`` (refunded): the signal's other arguments.
    arguments = models.JSONField(_("arguments"), default=dict, blank=True)
    created_at = models.DateTimeField(_("created"), db_default=DbNow())
    #: When it may be delivered (again), on the database's clock; NULL once delivered.
    next_attempt_at = models.DateTimeField(_("next attempt"), null=True, blank=True, db_index=True)
    delivered_at = models.DateTimeField(_("delivered"), null=True, blank=True)
    attempts = models.PositiveIntegerField(_("attempts"), default=0)
    #: Attempts that ran to their end (every receiver called): fewer than
    #: ``attempts`` while one is running, or after its worker died.
    attempts_finished = models.PositiveIntegerField(_("attempts finished"), default=0)
    last_error = models.TextField(_("last error"), blank=True)
    #: The payment's :attr:`~Payment.status_changes` after the change this announces:
    #: a payment's signals are delivered in this order, each only once every
    #: earlier one was (0: written before dj-khalti counted, ordered by ``created_at``).
    sequence = models.PositiveIntegerField(_("sequence"), default=0, db_default=0)
    #: Not stored: whether the change this announces left ``pending``, set by the
    #: change's own worker (``services.writes``). With ``sequence`` 1, that makes it
    #: the payment's first signal (``services.outbox``).
    left_pending = False

    objects = SignalDeliveryQuerySet.as_manager()

    class Meta:
        """Newest first."""

        verbose_name = _("signal delivery")
        verbose_name_plural = _("signal deliveries")
        ordering = ["-created_at"]

    def __str__(self) -> str:
        state = _("delivered") if self.delivered_at else _("not delivered")
        return f"{self.signal} · {state}"

    @property
    def payment_as_it_was(self) -> Payment:
        """A fresh :class:`Payment` built from :attr:`snapshot`, each time it is read:
        one receiver's own copy, down to the record of Khalti's answer (a receiver
        that changes ``payment.khalti_response`` in place changes no one else's).
        It refuses ``save()`` and ``delete()``.
        """
        (item,) = serializers.deserialize("python", [copy.deepcopy(self.snapshot)])
        payment = cast(Payment, item.object)
        payment._state.adding = False
        payment._state.db = self._state.db
        payment._sent_with = self.signal
        return payment


class _SnapshotEncoder(DjangoJSONEncoder):
    """Django's encoder, but a time keeps its microseconds (Django's cuts them to
    milliseconds): a delivery again reads the times the row had, as the first did.
    """

    def default(self, o: Any) -> Any:
        if isinstance(o, datetime):
            return o.isoformat()
        return super().default(o)


def snapshot_of(payment: Payment) -> dict[str, Any]:
    """``payment`` in the form :attr:`SignalDelivery.snapshot` stores, as it reads back:
    the first delivery (handed this) and every later one (handed the row's) hand over
    one payment, and this shares nothing (Khalti's record) with ``payment``.
    """
    (data,) = serializers.serialize("python", [payment])
    return cast(dict[str, Any], json.loads(json.dumps(data, cls=_SnapshotEncoder)))


def _read_db_default(instance: models.Model) -> None:
    """After an insert on a database that returns no columns (MySQL): read ``created_at``."""
    if not isinstance(getattr(instance, "created_at", None), datetime):
        instance.refresh_from_db(fields=["created_at"])


def order_key(reference: str) -> str:
    """The value of ``Payment.order_claim`` for an order: a digest of its canonical
    reference (the resolver's, see :class:`~django_khalti.orders.KhaltiOrder`).

    A digest, so that the claim compares bytes whatever the database's collation.
    Two spellings of one order ("5" and "05", "abc" and "ABC") are one claim only
    when the resolver names the order's canonical reference.
    """
    return hashlib.sha256(reference.encode()).hexdigest()


def rupees(paisa: int) -> str:
    """Paisa as rupees for display: ``123456`` → ``"1,234.56"``."""
    whole, rest = divmod(paisa, 100)
    return f"{whole:,}.{rest:02d}"
