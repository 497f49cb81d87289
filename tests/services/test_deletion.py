"""Nobody deletes money: a shop's own ``delete()``, a queryset's, a cascade, or a delete
racing a re-check. Only a failed payment whose signals were all delivered may go (with
its delivered signals); a refund of a payment that is kept, or one whose outcome is
unknown, stays; an undelivered signal stays. What is refused raises
``KhaltiProtectedError`` (a ``ProtectedError``), names the rule and how to purge, and
deletes nothing."""

import re
import textwrap
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection, connections, models, transaction
from django.db.models import F, ProtectedError
from django.db.models.deletion import Collector
from django.utils import timezone

from django_khalti.conf import khalti_settings
from django_khalti.deletion import PROTECT_UNDELIVERED
from django_khalti.exceptions import KhaltiProtectedError
from django_khalti.models import (
    DbNow,
    LedgerEntry,
    Payment,
    Refund,
    SignalDelivery,
    order_key,
    snapshot_of,
)

pytestmark = pytest.mark.django_db

Status = Payment.Status
MODELS_PAGE = Path(__file__).resolve().parents[2] / "docs" / "reference" / "models.rst"
#: What every refused payment's error says: the rule, and how to purge.
RULE = "Only a failed payment whose signals were all delivered may be deleted."
PURGE = "Payment.objects.deletable().filter(created_at__lt=...).delete()"
#: Statuses of a payment that holds its order and token, or whose money moved.
KEPT_STATUSES = [s for s in Status.values if s != Status.FAILED]


def payment(n, status=Status.FAILED, **fields):
    """Payment ``n`` in ``status``, as the app leaves one: a live one holds its order
    and names its transaction; a refunded one gave back all, a partly refunded Rs 4.
    """
    live = status != Status.FAILED
    return Payment.objects.create(
        token=f"tok-{n}",
        product_identity=f"ORD-{n}",
        amount=1000,
        status=status,
        idx=f"idx-{n}" if live else None,
        order_claim=order_key(f"ORD-{n}") if live else None,
        verified_at=timezone.now() if status in Payment.PAID_STATUSES else None,
        refunded_amount={"refunded": 1000, "partially_refunded": 400}.get(status, 0),
        **fields,
    )


def signal(of, delivered=True, name=SignalDelivery.Signal.FAILED):
    """A signal of ``of`` in the outbox, delivered to the shop already or not."""
    now = timezone.now()
    return SignalDelivery.objects.create(
        payment=of,
        signal=name,
        snapshot=snapshot_of(of),
        delivered_at=now if delivered else None,
        next_attempt_at=None if delivered else now,
    )


def survives(*rows):
    for row in rows:
        assert type(row).objects.filter(pk=row.pk).exists(), f"{row} was deleted"


# --- payments ------------------------------------------------------------------------


@pytest.mark.parametrize("status", KEPT_STATUSES)
def test_a_payment_that_is_not_failed_is_never_deleted(status):
    row = payment(1, status)
    delivered = signal(row, name=SignalDelivery.Signal.VERIFIED)
    for delete in [
        row.delete,
        Payment.objects.filter(pk=row.pk).delete,
        Payment.objects.all().delete,
    ]:
        with pytest.raises(KhaltiProtectedError) as refused:
            delete()
        assert isinstance(refused.value, ProtectedError)  # what a Django developer catches
        message = str(refused.value)
        assert f"{row} (it is {Status(status).label.lower()})" in message
        assert RULE in message
        assert PURGE in message
        assert refused.value.protected_objects == {row}
    survives(row, delivered)
    row.refresh_from_db()
    assert row.token_claim == "tok-1"  # the same token cannot be taken again
    assert row.order_claim == (order_key("ORD-1") if row.order_claim else None)


def test_a_failed_payment_goes_once_every_signal_of_it_was_delivered():
    row = payment(1)
    undelivered = signal(row, delivered=False)
    with pytest.raises(KhaltiProtectedError, match=r"a signal to the shop is not delivered yet"):
        row.delete()
    with pytest.raises(KhaltiProtectedError):
        Payment.objects.filter(status=Status.FAILED).delete()
    survives(row, undelivered)

    SignalDelivery.objects.filter(pk=undelivered.pk).update(
        delivered_at=timezone.now(), next_attempt_at=None
    )
    assert Payment.objects.filter(status=Status.FAILED).delete() == (
        2,
        {"django_khalti.SignalDelivery": 1, "django_khalti.Payment": 1},
    )
    assert not SignalDelivery.objects.exists()


def test_a_mixed_delete_deletes_nothing_and_names_each_row_kept_and_why():
    gone, verified, waiting = payment(1), payment(2, Status.VERIFIED), payment(3)
    signal(waiting, delivered=False)
    with pytest.raises(KhaltiProtectedError) as refused:
        Payment.objects.all().delete()
    assert sorted((row.pk, why) for row, why in refused.value.kept) == sorted(
        [(verified.pk, "it is verified"), (waiting.pk, "a signal to the shop is not delivered yet")]
    )
    survives(gone, verified, waiting)
    # deletable() is what may go, and deleting it is allowed.
    assert list(Payment.objects.deletable()) == [gone]
    assert Payment.objects.deletable().delete()[0] == 1
    survives(verified, waiting)
    # Nothing to delete is no refusal, as with Django's own delete().
    assert Payment.objects.deletable().delete() == Payment.objects.none().delete() == (0, {})


def test_a_failed_payment_being_rechecked_right_now_is_kept():
    row = payment(1)
    Payment.objects.filter(pk=row.pk).update(claimed_at=DbNow(), attempts=F("attempts") + 1)
    with pytest.raises(KhaltiProtectedError, match="Khalti is being asked about it right now"):
        row.delete()
    survives(row)
    # A claim its worker abandoned (older than the claim timeout) keeps nothing.
    stale = timezone.now() - timedelta(seconds=khalti_settings.stale_after + 60)
    Payment.objects.filter(pk=row.pk).update(claimed_at=stale)
    row.delete()
    assert not Payment.objects.exists()


# --- refunds and signals ---------------------------------------------------------------


def test_a_refund_of_a_kept_payment_or_of_unknown_outcome_is_never_deleted():
    paid = payment(1, Status.PARTIALLY_REFUNDED)
    settled = Refund.objects.create(payment=paid, amount=400, status=Refund.Status.SUCCEEDED)
    unknown = Refund.objects.create(payment=paid, amount=600, claim=paid.pk)
    for refund, why in [
        (settled, "it records money of a payment that is kept"),
        (unknown, "Khalti's answer on it is awaited or unknown: the money may have moved"),
    ]:
        with pytest.raises(KhaltiProtectedError, match=re.escape(why)):
            refund.delete()
        with pytest.raises(KhaltiProtectedError, match="Only a settled refund of a failed payment"):
            Refund.objects.filter(pk=refund.pk).delete()
    survives(paid, settled, unknown)
    # The payment is kept by its own rule too (and by PROTECT, beneath).
    with pytest.raises(KhaltiProtectedError):
        paid.delete()


def test_an_undelivered_signal_is_never_deleted():
    row = payment(1, Status.VERIFIED)
    undelivered = signal(row, delivered=False, name=SignalDelivery.Signal.VERIFIED)
    delivered = signal(row, name=SignalDelivery.Signal.VERIFIED)
    for delete in [undelivered.delete, SignalDelivery.objects.all().delete]:
        with pytest.raises(KhaltiProtectedError, match="it is not delivered to the shop yet"):
            delete()
    survives(undelivered, delivered)
    delivered.delete()  # the record of a signal the shop had may go
    survives(undelivered)


# --- cascades: Django's Collector never calls a cascaded row's delete() ----------------


def test_a_cascade_never_deletes_an_undelivered_signal():
    # Deleting a payment by the Collector, around Payment.delete() (as a subclass's
    # or a parent's delete would): the foreign key itself protects what is undelivered.
    row = payment(1)
    undelivered = signal(row, delivered=False)
    collector = Collector(using="default")
    with pytest.raises(ProtectedError, match=r"SignalDelivery\.payment") as protected:
        collector.collect([row])
    assert protected.value.protected_objects == {undelivered}
    survives(row, undelivered)
    # Once delivered, it cascades with its payment, as before.
    SignalDelivery.objects.filter(pk=undelivered.pk).update(delivered_at=timezone.now())
    collector = Collector(using="default")
    collector.collect([row])
    collector.delete()
    assert not SignalDelivery.objects.exists()


def test_every_relation_to_a_record_of_money_protects_it():
    # Nothing deletes a payment, refund or delivery by a cascade: what points at a
    # payment protects it, and these rows point at nothing that cascades to them.
    fields = [
        (rel.related_model, rel.field.name, rel.on_delete) for rel in Payment._meta.related_objects
    ]
    assert sorted(fields, key=str) == sorted(
        [
            (Refund, "payment", models.PROTECT),
            (SignalDelivery, "payment", PROTECT_UNDELIVERED),
            # A ledger walk's reading of Khalti's books, no record of money: it keeps
            # Khalti's idx and record, and lets a deletable (failed) payment go.
            (LedgerEntry, "payment", models.SET_NULL),
        ],
        key=str,
    )
    for model in (Payment, Refund, SignalDelivery):
        for field in model._meta.concrete_fields:
            if field.remote_field is not None and field.related_model is not Payment:
                assert field.remote_field.on_delete is models.SET_NULL, field


# --- a delete racing a re-check --------------------------------------------------------


@pytest.mark.concurrency
@pytest.mark.django_db(transaction=True)
def test_a_delete_waits_for_a_recheck_claiming_the_payment_and_then_keeps_it():
    # A re-check claims a failed payment to ask Khalti whether it completed after all
    # (state.claim's UPDATE), while a person deletes it. The delete must see the claim
    # as it commits, not the row as it was: else the re-check's answer (money moved)
    # would find no row.
    if connection.vendor == "sqlite":
        pytest.skip("SQLite serialises writers: no row to race for")
    row = payment(1)
    claimed, release = threading.Event(), threading.Event()
    outcome: dict[str, list[str]] = {}

    def recheck_claims():
        try:
            with transaction.atomic():
                Payment.objects.filter(pk=row.pk).update(
                    claimed_at=DbNow(), attempts=F("attempts") + 1
                )
                claimed.set()
                release.wait(timeout=10)
        finally:
            connections.close_all()

    def person_deletes():
        try:
            Payment.objects.get(pk=row.pk).delete()
            outcome["deleted"] = []
        except KhaltiProtectedError as refused:
            outcome["refused"] = [why for _row, why in refused.kept]
        finally:
            connections.close_all()

    recheck = threading.Thread(target=recheck_claims)
    recheck.start()
    assert claimed.wait(timeout=10)
    person = threading.Thread(target=person_deletes)
    person.start()
    person.join(timeout=0.5)  # it waits for the claim's row lock
    release.set()
    recheck.join(timeout=10)
    person.join(timeout=10)
    assert outcome == {"refused": ["Khalti is being asked about it right now"]}
    survives(row)


# --- the docs' purge ---------------------------------------------------------------------


def test_the_documented_purge_deletes_old_failed_payments_only():
    text = MODELS_PAGE.read_text(encoding="utf-8")
    section = text.split("Purging old failed payments\n", 1)[1]
    code = re.search(r"\.\. code-block:: python\n\n((?:    .*\n|\n)+)", section).group(1)
    old = timezone.now() - timedelta(days=200)
    purged, young, waiting, paid = payment(1), payment(2), payment(3), payment(4, Status.VERIFIED)
    signal(purged)
    signal(waiting, delivered=False)
    Payment.objects.exclude(pk=young.pk).update(created_at=old)

    exec(compile(textwrap.dedent(code), str(MODELS_PAGE), "exec"), {})

    assert not Payment.objects.filter(pk=purged.pk).exists()
    survives(young, waiting, paid)
