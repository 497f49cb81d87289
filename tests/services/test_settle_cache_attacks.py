"""Attacks on the settlement statement composed once per shape of change (writes._statement_for)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.db import connections
from django.test import override_settings

from django_khalti.models import Payment, SignalDelivery
from django_khalti.services import state, writes

from .test_settlement_attacks import HOSTILE, Recorder, assert_same_payment, pending, redelivered

Status = Payment.Status


def verified(reference, **extra):
    payment = pending(token=f"tok-{reference}", reference=reference, **extra)
    state._verified(payment, 1000, {"idx": f"IDX-{reference}"})
    return Payment.objects.get(pk=payment.pk)


SHAPES = [
    # (name, callable(payment) -> changes)
    ("review-dict", lambda p: state._needs_review(p, "why", khalti_response={"a": [1, None]})),
    ("review-list", lambda p: state._needs_review(p, HOSTILE, khalti_response=[HOSTILE, 2**70])),
    ("review-str", lambda p: state._needs_review(p, "w", khalti_response="just a string")),
    ("review-int", lambda p: state._needs_review(p, "w", khalti_response=2**62)),
    ("review-none", lambda p: state._needs_review(p, "w", khalti_response=None)),
    ("review-false", lambda p: state._needs_review(p, "w", khalti_response=False)),
    ("fail", lambda p: state._fail(p, "no money " + HOSTILE, raw={"x": 1})),
    ("fail-quiet", lambda p: state._fail(p, "quiet", notify=False)),
    ("verify", lambda p: state._verified(p, 999, {"idx": f"IDX-V-{p.pk}", "fee_amount": 3})),
    ("verify-noidx", lambda p: state._verified(p, 1000, {"khalti_response": {"n": None}})),
]


@pytest.mark.django_db(transaction=True)
def test_shapes_interleaved_each_row_is_what_its_receivers_saw():
    """Each order of shapes composes first: a value written after a None of the same
    field, and a None after a value, each reuse the other's statement."""
    results = []
    with Recorder(raises=100) as rec:
        for round_ in range(3):
            if round_ < 2:  # composed afresh; round 2 reuses round 1's
                writes._STATEMENTS.clear()
            for n, (name, change) in enumerate(SHAPES[::-1] if round_ == 1 else SHAPES):
                payment = pending(token=f"t{round_}-{n}", reference=f"O{round_}-{n}")
                before = len(rec.seen)
                change(payment)
                row = Payment.objects.get(pk=payment.pk)
                assert_same_payment(row, payment, ms_fields=())
                seen = rec.seen[before:]
                deliveries = list(SignalDelivery.objects.filter(payment=row))
                if name == "fail-quiet":
                    assert not seen
                    assert not deliveries
                    continue
                [(_, first, kwargs)] = seen
                [delivery] = deliveries
                assert_same_payment(row, first, ms_fields=())
                assert_same_payment(row, redelivered(delivery.pk))
                assert delivery.sequence == row.status_changes
                assert kwargs == delivery.arguments
                results.append((name, row.status))
    assert len(results) == 27


@pytest.mark.django_db(transaction=True)
def test_grace_period_changed_at_runtime_reaches_the_outbox_row():
    verified("G0")
    for grace in (7, 3600, 1):
        with override_settings(KHALTI={"SIGNAL_GRACE_PERIOD": grace}):
            payment = pending(token=f"tok-g{grace}", reference=f"G{grace}")
            with Recorder(raises=1):
                state._fail(payment, "x")
        delivery = SignalDelivery.objects.get(payment=payment)
        wait = delivery.next_attempt_at - delivery.created_at
        assert abs(wait - timedelta(seconds=grace)) < timedelta(seconds=1), (grace, wait)


@pytest.mark.django_db(transaction=True)
def test_first_use_by_many_threads_at_once():
    writes._STATEMENTS.clear()
    payments = [pending(token=f"tok-t{i}", reference=f"T{i}") for i in range(12)]
    barrier = threading.Barrier(12)

    def one(i):
        try:
            payment = Payment.objects.get(pk=payments[i].pk)
            barrier.wait(timeout=10)
            SHAPES[i % len(SHAPES)][1](payment)
            return payment
        finally:
            connections.close_all()

    with Recorder() as rec, ThreadPoolExecutor(12) as pool:
        done = list(pool.map(one, range(12)))
    for payment in done:
        assert_same_payment(Payment.objects.get(pk=payment.pk), payment, ms_fields=())
    assert len(rec.seen) == SignalDelivery.objects.count()
