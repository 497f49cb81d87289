"""Attacks on the settlement (issue 17's hostile review): the settlement, its stamps and its outbox row as
one statement on PostgreSQL (``writes._changed_in_one_statement``), and the claims
committed without a transaction of their own (``writes.committed_at_once``).

Every test runs on whatever DATABASE_URL names; most matter on PostgreSQL.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import DatabaseError, IntegrityError, connection, connections, transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from django_khalti.models import DbNow, Payment, SignalDelivery, order_key
from django_khalti.services import outbox, state, writes
from django_khalti.signals import (
    payment_failed,
    payment_needs_review,
    payment_refunded,
    payment_verified,
)

from ..conftest import transaction_record

Status = Payment.Status
VERIFY_URL = reverse("django_khalti:verify")

HOSTILE = (
    "100% %s %(amount)s %% $1 ? :name '; DROP TABLE django_khalti_payment; -- "
    '"quoted" \\back\\slash {fields,updated_at} नेपाली 🙂 \u2028 \t\n'
)


def pending(token="tok-a", reference="ORD-1", amount=1000, **extra):
    """A pending widget payment, claimed by this worker (as _claim_order leaves it)."""
    payment = Payment.objects.create(
        token=token,
        token_claim=token,
        product_identity=reference,
        order_reference=reference,
        amount=amount,
        order_claim=order_key(reference),
        claimed_at=DbNow(),
        attempts=1,
        **extra,
    )
    return Payment.objects.get(pk=payment.pk)


class Recorder:
    """Connected to all four signals: records (signal, payment, kwargs); raises the
    first ``raises`` times."""

    def __init__(self, raises=0):
        self.raises, self.seen = raises, []
        self.__qualname__ = "Recorder"

    def __call__(self, sender, payment, signal, **kwargs):
        self.seen.append((signal, payment, kwargs))
        if self.raises:
            self.raises -= 1
            raise RuntimeError("receiver down")

    def __enter__(self):
        for s in (payment_verified, payment_failed, payment_refunded, payment_needs_review):
            s.connect(self, sender=Payment, weak=False)
        return self

    def __exit__(self, *exc):
        for s in (payment_verified, payment_failed, payment_refunded, payment_needs_review):
            s.disconnect(self, sender=Payment)


def field_values(payment):
    return {f.attname: f.value_from_object(payment) for f in Payment._meta.concrete_fields}


def redelivered(delivery_pk):
    """What a redelivery (from the stored row) hands the receivers."""
    return SignalDelivery.objects.get(pk=delivery_pk).payment_as_it_was


DATETIMES = tuple(
    f.attname for f in Payment._meta.concrete_fields if f.get_internal_type() == "DateTimeField"
)


def assert_same_payment(first, again, *, ms_fields=DATETIMES):
    a, b = field_values(first), field_values(again)
    for name in a:
        x, y = a[name], b[name]
        if name in ms_fields and x is not None and y is not None:
            # DjangoJSONEncoder keeps milliseconds only (pre-existing, every backend)
            assert abs((x - y).total_seconds()) < 0.001, name
            continue
        assert x == y, f"{name}: first delivery {x!r} != redelivery {y!r}"


# --- 1. the snapshot: first delivery vs redelivery ------------------------------------


@pytest.mark.django_db(transaction=True)
def test_verified_snapshot_first_delivery_equals_redelivery():
    payment = pending(mobile="98" + "%s" * 3)
    raw = {**transaction_record(idx="IDX-S"), "user": {"name": HOSTILE}, "note": HOSTILE}
    with Recorder(raises=1) as rec:
        state._verified(payment, 1000, {"idx": "IDX-S", "khalti_response": raw})
        delivery = SignalDelivery.objects.get()
        row = Payment.objects.get()
        assert row.status == Status.VERIFIED
        [(_, first, kwargs)] = rec.seen
        assert kwargs == {}
        # the in-memory payment is the row
        assert_same_payment(row, payment, ms_fields=())
        # the first delivery's payment is the row
        assert_same_payment(row, first, ms_fields=())
        assert first.verified_at.tzinfo is not None
        assert first.updated_at.tzinfo is not None
        # the redelivery (from the stored JSON, jsonb_set'd times on PostgreSQL) is too
        again = redelivered(delivery.pk)
        assert_same_payment(first, again)
        if connection.vendor == "postgresql":  # jsonb_set'd from RETURNING: exact
            assert again.verified_at == row.verified_at
            assert again.updated_at == row.updated_at
        assert again.verified_at.tzinfo is not None
        assert again.khalti_response == raw
        # and a real redelivery (the receiver raised) gives the receiver that snapshot
        assert outbox.deliver(delivery, now=True) is True
        assert len(rec.seen) == 2
        assert_same_payment(first, rec.seen[1][1])
    assert SignalDelivery.objects.get().delivered_at is not None


@pytest.mark.django_db(transaction=True)
def test_first_delivery_payment_is_bound_to_its_database_like_a_redelivery():
    """Receivers may save/refresh the payment they get: it should know its database
    (``_state.db``) on the first delivery as on a redelivery."""
    payment = pending()
    with Recorder(raises=1) as rec:
        state._verified(payment, 1000, {"idx": "IDX-DB"})
        [(_, first, _)] = rec.seen
        again = redelivered(SignalDelivery.objects.get().pk)
    assert again._state.db == "default"
    assert first._state.db == again._state.db


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("in_atomic", [False, True])
def test_needs_review_with_hostile_reason_and_response_round_trips(in_atomic):
    payment = pending()
    raw = {"state": HOSTILE, "k'ey%": [HOSTILE, 2**62, -1, None, True]}
    with Recorder() as rec:
        if in_atomic:
            with transaction.atomic():
                state._needs_review(payment, HOSTILE, khalti_response=raw, idx="IDX-%s'")
        else:
            state._needs_review(payment, HOSTILE, khalti_response=raw, idx="IDX-%s'")
    row = Payment.objects.get()
    assert (row.status, row.failure_reason, row.khalti_response, row.idx) == (
        Status.NEEDS_REVIEW,
        HOSTILE,
        raw,
        "IDX-%s'",
    )
    delivery = SignalDelivery.objects.get()
    assert delivery.signal == SignalDelivery.Signal.NEEDS_REVIEW
    assert delivery.arguments == {"reason": HOSTILE}
    [(_, first, kwargs)] = rec.seen
    assert kwargs == {"reason": HOSTILE}
    assert_same_payment(first, delivery.payment_as_it_was)
    assert_same_payment(row, delivery.payment_as_it_was)


@pytest.mark.django_db(transaction=True)
def test_failed_carries_reason_and_lets_go_of_order_and_token():
    payment = pending()
    with Recorder() as rec:
        assert state._fail(payment, "no money: " + HOSTILE, raw={"x": HOSTILE}, idx="dropped")
    row = Payment.objects.get()
    assert (row.status, row.order_claim, row.token_claim, row.idx) == (
        Status.FAILED,
        None,
        None,
        None,
    )
    delivery = SignalDelivery.objects.get()
    assert delivery.arguments == {"reason": "no money: " + HOSTILE}
    [(_, first, kwargs)] = rec.seen
    assert kwargs == {"reason": "no money: " + HOSTILE}
    assert_same_payment(first, delivery.payment_as_it_was)
    assert delivery.payment_as_it_was.verified_at is None


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("partial", [False, True])
def test_refund_transitions_carry_amount_and_snapshot_huge_amounts(partial):
    big = 2**63 - 1  # PositiveBigIntegerField's largest
    verified_at = timezone.now()
    payment = Payment.objects.create(
        token="tok-r",
        product_identity="ORD-1",
        order_reference="ORD-1",
        amount=big,
        received_amount=big,
        order_claim=order_key("ORD-1"),
        status=Status.VERIFIED,
        idx="IDX-R",
        verified_at=verified_at,
    )
    payment = Payment.objects.get(pk=payment.pk)
    refund = big - 1 if partial else big
    to = Status.PARTIALLY_REFUNDED if partial else Status.REFUNDED
    with Recorder() as rec:
        assert writes._transition(
            payment, to, source=Status.VERIFIED, refunded_amount=refund, refund_amount=refund
        )
    row = Payment.objects.get()
    assert (row.status, row.refunded_amount, row.verified_at) == (to, refund, verified_at)
    delivery = SignalDelivery.objects.get()
    assert delivery.signal == SignalDelivery.Signal.REFUNDED
    assert delivery.arguments == {"amount": refund}
    [(_, first, kwargs)] = rec.seen
    assert kwargs == {"amount": refund}
    again = delivery.payment_as_it_was
    assert_same_payment(first, again)
    assert (again.amount, again.refunded_amount) == (big, refund)
    if connection.vendor == "postgresql":
        assert again.updated_at == row.updated_at


@pytest.mark.django_db(transaction=True)
def test_no_signal_when_notify_is_false_and_stamps_still_read():
    payment = pending()
    with Recorder() as rec:
        assert state._fail(payment, "superseded", notify=False)
    assert not SignalDelivery.objects.exists()
    assert not rec.seen
    assert payment.updated_at == Payment.objects.get().updated_at


# --- 2. exactly once: real threads -------------------------------------------------------


def race(n, work):
    barrier = threading.Barrier(n)

    def one(i):
        try:
            barrier.wait(timeout=10)
            return work(i)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


@pytest.mark.django_db(transaction=True)
def test_racing_settlements_one_winner_one_outbox_row():
    base = pending()
    n = 10

    def work(i):
        payment = Payment.objects.get(pk=base.pk)
        try:
            if i % 2:
                return ("fail", state._fail(payment, f"reason {i}"))
            return ("verify", writes._transition(payment, Status.VERIFIED, idx=f"IDX-{i}"))
        except IntegrityError:
            return ("integrity", False)

    with Recorder() as rec:
        results = race(n, work)
    winners = [r for r in results if r[1]]
    assert len(winners) == 1, results
    row = Payment.objects.get()
    [delivery] = SignalDelivery.objects.all()
    want = Status.VERIFIED if winners[0][0] == "verify" else Status.FAILED
    assert row.status == want
    assert delivery.payment_as_it_was.status == want
    assert len(rec.seen) == 1


@pytest.mark.django_db(transaction=True)
def test_racing_verifications_naming_the_same_idx_one_wins():
    """Two pending payments, both told by Khalti they are transaction IDX-X: one is
    verified, the other needs review; one signal each, none for a change that did
    not happen."""
    a, b = pending("tok-a", "ORD-A"), pending("tok-b", "ORD-B")

    def work(i):
        payment = Payment.objects.get(pk=(a, b)[i % 2].pk)
        state._verified(payment, 1000, {"idx": "IDX-X", "khalti_response": {"i": i}})
        return payment.status

    with Recorder() as rec:
        statuses = race(2, work)
    assert sorted(statuses) == [Status.NEEDS_REVIEW, Status.VERIFIED]
    rows = {p.pk: p for p in Payment.objects.all()}
    deliveries = list(SignalDelivery.objects.all())
    assert len(deliveries) == 2
    for d in deliveries:
        assert d.payment_as_it_was.status == rows[d.payment_id].status
        assert (
            d.signal
            == {
                Status.VERIFIED: SignalDelivery.Signal.VERIFIED,
                Status.NEEDS_REVIEW: SignalDelivery.Signal.NEEDS_REVIEW,
            }[rows[d.payment_id].status]
        )
    assert len(rec.seen) == 2
    assert Payment.objects.filter(idx="IDX-X").count() == 1


# --- 3. IntegrityError: another payment's idx ----------------------------------------------


def other_with_idx(idx="IDX-TAKEN"):
    return Payment.objects.create(
        token="tok-other",
        product_identity="ORD-9",
        order_reference="ORD-9",
        amount=1000,
        status=Status.VERIFIED,
        idx=idx,
        verified_at=timezone.now(),
    )


def check_needs_review_only(payment, rec):
    row = Payment.objects.get(pk=payment.pk)
    assert row.status == Status.NEEDS_REVIEW
    assert row.idx is None
    assert row.received_amount == 1000
    [delivery] = SignalDelivery.objects.filter(payment=row)
    assert delivery.signal == SignalDelivery.Signal.NEEDS_REVIEW
    assert [s for s, _, _ in rec.seen] == [payment_needs_review]
    assert payment.status == Status.NEEDS_REVIEW
    assert payment.idx is None
    assert_same_payment(rec.seen[0][1], delivery.payment_as_it_was)


@pytest.mark.django_db(transaction=True)
def test_another_payments_idx_outside_a_transaction_needs_review():
    other_with_idx()
    payment = pending()
    with Recorder() as rec:
        state._verified(payment, 1000, {"idx": "IDX-TAKEN", "khalti_response": {"a": 1}})
    check_needs_review_only(payment, rec)


@pytest.mark.django_db(transaction=True)
def test_another_payments_idx_inside_a_callers_transaction_leaves_it_usable():
    other_with_idx()
    payment = pending()
    with Recorder() as rec:
        with transaction.atomic():
            state._verified(payment, 1000, {"idx": "IDX-TAKEN", "khalti_response": {"a": 1}})
            # the caller's transaction is still usable
            assert Payment.objects.count() == 2
            Payment.objects.filter(pk=payment.pk).update(purchase_order_name="after")
            assert not rec.seen  # delivered after the commit only
    check_needs_review_only(payment, rec)
    assert Payment.objects.get(pk=payment.pk).purchase_order_name == "after"


@pytest.mark.django_db
def test_another_payments_idx_inside_testcase_transaction():
    """pytest-django's ``db`` (a TestCase transaction): the savepoint path."""
    other_with_idx()
    payment = pending()
    with Recorder():
        state._verified(payment, 1000, {"idx": "IDX-TAKEN", "khalti_response": {"a": 1}})
        assert Payment.objects.count() == 2
    row = Payment.objects.get(pk=payment.pk)
    assert row.status == Status.NEEDS_REVIEW
    assert SignalDelivery.objects.get(payment=row).signal == SignalDelivery.Signal.NEEDS_REVIEW


@transaction.atomic
def caller_fails_after_the_change(payment):
    assert writes._transition(payment, Status.VERIFIED, idx="IDX-RB")
    raise RuntimeError("caller fails after")


@pytest.mark.django_db(transaction=True)
def test_callers_transaction_rolled_back_takes_the_outbox_row_with_it():
    payment = pending()
    with Recorder() as rec:
        with pytest.raises(RuntimeError, match="caller fails after"):
            caller_fails_after_the_change(payment)
    assert Payment.objects.get().status == Status.PENDING
    assert not SignalDelivery.objects.exists()
    assert not rec.seen


# --- 4. the in-memory payment after an exception -----------------------------------------


@pytest.mark.django_db(transaction=True)
def test_outbox_refused_leaves_the_in_memory_payment_as_the_row(outbox_refused):
    """The database refused the settlement: the caller's payment object must not say
    verified (with an idx) while the row is pending."""
    payment = pending()
    with pytest.raises(DatabaseError):
        writes._transition(payment, Status.VERIFIED, idx="IDX-M", received_amount=1000)
    row = Payment.objects.get()
    assert row.status == Status.PENDING
    assert row.idx is None
    assert (payment.status, payment.idx, payment.received_amount) == (
        row.status,
        row.idx,
        row.received_amount,
    )


@pytest.mark.django_db(transaction=True)
def test_a_lost_race_refreshes_the_payment():
    payment = pending()
    stale = Payment.objects.get(pk=payment.pk)
    assert writes._transition(payment, Status.VERIFIED, idx="IDX-W")
    assert not state._fail(stale, "late")
    assert stale.status == Status.VERIFIED
    assert stale.idx == "IDX-W"
    assert SignalDelivery.objects.count() == 1


# --- 5. the view: ATOMIC_REQUESTS, hostile payloads -------------------------------------


@pytest.fixture
def atomic_requests(monkeypatch):
    monkeypatch.setitem(connection.settings_dict, "ATOMIC_REQUESTS", True)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("atomic", [False, True])
def test_view_verify_with_another_payments_idx(expect_khalti, payload, signals, atomic, request):
    if atomic:
        request.getfixturevalue("atomic_requests")
    other_with_idx(payload["idx"])
    record = transaction_record(amount=1000, idx=payload["idx"])
    record["user"] = {"name": HOSTILE, "idx": "u"}
    expect_khalti.verify(payload["token"], 1000, json=record)
    response = Client().post(VERIFY_URL, json.dumps(payload), content_type="application/json")
    assert response.status_code < 500, response.content
    mine = Payment.objects.get(token=payload["token"])
    assert mine.status == Status.NEEDS_REVIEW, (response.status_code, response.content)
    assert [name for name, _, _ in signals] == ["needs_review"]
    assert SignalDelivery.objects.filter(payment=mine).count() == 1
    # a resubmission changes nothing and sends nothing
    response = Client().post(VERIFY_URL, json.dumps(payload), content_type="application/json")
    assert [name for name, _, _ in signals] == ["needs_review"]
    assert SignalDelivery.objects.count() == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("atomic", [False, True])
def test_view_verify_hostile_payer_under_atomic_requests(
    expect_khalti, payload, signals, atomic, request
):
    if atomic:
        request.getfixturevalue("atomic_requests")
    record = transaction_record(amount=1000, idx=payload["idx"])
    record["user"] = {"name": HOSTILE, "idx": "u%s"}
    record["merchant"] = {"name": "%(x)s %s %%", "idx": "m"}
    expect_khalti.verify(payload["token"], 1000, json=record)
    response = Client().post(VERIFY_URL, json.dumps(payload), content_type="application/json")
    assert response.status_code == 200, response.content
    row = Payment.objects.get()
    assert row.status == Status.VERIFIED
    [(_, _, kwargs)] = signals
    first = kwargs["payment"]
    assert_same_payment(first, SignalDelivery.objects.get().payment_as_it_was)
    assert first.khalti_response["user"]["name"] == HOSTILE


# --- 6. server-side binding (a shop's OPTIONS on psycopg 3) -----------------------------


@pytest.fixture
def server_side_binding():
    if connection.vendor != "postgresql":
        yield  # psycopg 3's option; elsewhere the same settlement, as it binds
        return
    connection.close()
    options = connection.settings_dict.setdefault("OPTIONS", {})
    options["server_side_binding"] = True
    yield
    connection.close()
    options.pop("server_side_binding")


@pytest.mark.django_db(transaction=True)
def test_settlement_with_server_side_binding(server_side_binding):
    payment = pending()
    with Recorder() as rec:
        state._verified(payment, 1000, {"idx": "IDX-SSB", "khalti_response": {"s": HOSTILE}})
    row = Payment.objects.get()
    assert row.status == Status.VERIFIED
    delivery = SignalDelivery.objects.get()
    assert_same_payment(rec.seen[0][1], delivery.payment_as_it_was)
    with Recorder() as rec:
        assert writes._transition(
            row,
            Status.PARTIALLY_REFUNDED,
            source=Status.VERIFIED,
            refunded_amount=10,
            refund_amount=10,
        )
        assert writes._transition(
            Payment.objects.get(),
            Status.NEEDS_REVIEW,
            source=Status.PARTIALLY_REFUNDED,
            failure_reason="why %s",
            khalti_response={"x": HOSTILE},
        )
    assert SignalDelivery.objects.count() == 3


# --- 7. a Khalti that answers with what PostgreSQL's jsonb refuses -----------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "poison",
    [
        '"payer\\u0000name"',  # NUL: valid JSON, refused by jsonb
        "NaN",  # Python's json accepts it, JSON (and jsonb) does not
        "1e400",  # valid JSON, but too large for a float: Python reads it as infinity
        "-1e999",
    ],
)
def test_khalti_record_with_what_jsonb_refuses_still_settles(
    expect_khalti, payload, signals, poison
):
    """Khalti moved the money (a valid, tied transaction record) but one field of its
    answer is something PostgreSQL cannot store in jsonb: the payment must not stay
    pending forever (each resubmission asking Khalti again, never recording it)."""
    record = transaction_record(amount=1000, idx=payload["idx"])
    text = json.dumps({**record, "extra": "__POISON__"}).replace('"__POISON__"', poison)
    expect_khalti.verify(payload["token"], 1000, body=text)
    response = Client().post(VERIFY_URL, json.dumps(payload), content_type="application/json")
    row = Payment.objects.get()
    assert row.status == Status.VERIFIED, (response.status_code, response.content)
    assert [name for name, _, _ in signals] == ["verified"]


# --- 8. USE_TZ = False ---------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_snapshot_times_without_use_tz(settings):
    settings.USE_TZ = False
    connection.close()
    payment = pending()
    with Recorder(raises=1) as rec:
        state._verified(payment, 1000, {"idx": "IDX-TZ"})
        [(_, first, _)] = rec.seen
        again = redelivered(SignalDelivery.objects.get().pk)
    # naive on both, or aware on both: a receiver comparing them must not crash
    assert (first.verified_at.tzinfo is None) == (again.verified_at.tzinfo is None)
    assert (first.updated_at.tzinfo is None) == (again.updated_at.tzinfo is None)
    assert abs((first.verified_at - again.verified_at).total_seconds()) < 0.001
