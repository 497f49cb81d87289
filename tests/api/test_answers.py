"""The API's answers are serialized with fields shared by every answer: each answer is
still its own payment's, from however many threads at once, and none keeps a payment."""

import gc
import uuid
import weakref
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

from rest_framework.fields import DateTimeField

from django_khalti.models import Payment
from django_khalti.serializers import EpaymentSerializer, PaymentSerializer, VerifiedSerializer

START = datetime(2026, 12, 1, tzinfo=timezone.utc)


def a_payment(n):
    return Payment(
        id=uuid.uuid4(),
        product_identity=f"ORD-{n}",
        amount=1000 + n,
        status=Payment.Status.VERIFIED,
        idx=f"idx-{n}",
        pidx=f"pidx-{n}",
        payment_url=f"https://pay.khalti.com/?pidx=pidx-{n}",
        expires_at=START + timedelta(minutes=n),
        verified_at=START + timedelta(seconds=n),
    )


def expected(payment):
    stamp = DateTimeField().to_representation(payment.verified_at)  # a field of its own
    return {
        "status": "verified",
        "payment": {
            "id": str(payment.id),
            "product_identity": payment.product_identity,
            "amount": payment.amount,
            "status": "verified",
            "idx": payment.idx,
            "verified_at": stamp,
        },
    }


def test_each_answer_is_its_own_payments_from_many_threads_at_once():
    payments = [a_payment(n) for n in range(400)]

    def answer(payment):
        return (
            VerifiedSerializer({"status": "verified", "payment": payment}).data,
            EpaymentSerializer(payment).data,
        )

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(answer, payments))

    for payment, (verified, epayment) in zip(payments, answers, strict=True):
        assert verified == expected(payment)
        assert epayment == {
            "payment": str(payment.id),
            "pidx": payment.pidx,
            "payment_url": payment.payment_url,
            "expires_at": DateTimeField().to_representation(payment.expires_at),
        }


def test_an_answer_keeps_no_payment_once_given():
    payment = a_payment(1)
    alive = weakref.ref(payment)
    answer = VerifiedSerializer({"status": "verified", "payment": payment})
    assert answer.data == expected(payment)
    # The shared fields serve every answer: none of them is bound to one that was given.
    nested = answer.fields["payment"]
    assert isinstance(nested, PaymentSerializer)
    payment_fields = nested.fields
    assert answer.fields["status"].root.instance is None
    assert payment_fields["idx"].root.instance is None
    assert EpaymentSerializer(payment).data["pidx"] == "pidx-1"
    del payment, answer
    gc.collect()
    assert alive() is None


def test_a_none_is_answered_as_null():
    payment = a_payment(2)
    payment.idx, payment.verified_at = None, None
    payment_answer = VerifiedSerializer({"status": "verified", "payment": payment}).data["payment"]
    assert (payment_answer["idx"], payment_answer["verified_at"]) == (None, None)


def test_an_answer_that_drops_a_field_drops_it_from_that_answer_only():
    """A shop's answer that trims its fields for one answer (DRF's documented way:
    change ``self.fields`` after ``__init__``) must not trim every later answer."""

    class Trimmed(PaymentSerializer):
        def __init__(self, *args, hide_idx=False, **kwargs):
            super().__init__(*args, **kwargs)
            if hide_idx:
                self.fields.pop("idx")

    assert "idx" not in Trimmed(a_payment(3), hide_idx=True).data
    assert Trimmed(a_payment(4)).data["idx"] == "idx-4"
    assert PaymentSerializer(a_payment(5)).data["idx"] == "idx-5"
