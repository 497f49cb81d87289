"""Attacks on the hot path's shortcuts (issue 27): the compiled reads and the delivered
mark that does not wait for the disk. Each test says what it holds the change to.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
from datetime import timedelta

import pytest
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext, override_settings
from django.utils import timezone

from django_khalti import services
from django_khalti.exceptions import KhaltiTokenUsed
from django_khalti.models import Payment, SignalDelivery, snapshot_of
from django_khalti.services import outbox
from django_khalti.services.compiled import Compiled
from django_khalti.signals import payment_refunded, payment_verified

from .test_hot_queries import TOKEN, VERIFY, compiled_uses_of, postgresql_only, uses_of


@pytest.fixture
def heard(no_shop_receivers):
    """Every signal the shop hears, in order."""
    got: list[str] = []

    def verified(sender, payment, **kwargs):
        got.append("verified")

    def refunded(sender, payment, **kwargs):
        got.append("refunded")

    payment_verified.connect(verified, sender=Payment, weak=False)
    payment_refunded.connect(refunded, sender=Payment, weak=False)
    yield got
    payment_verified.disconnect(verified, sender=Payment)
    payment_refunded.disconnect(refunded, sender=Payment)


def two_status_changes(payment):
    """A verification and a refund of ``payment``, each written by its own status change
    (counted with the row, due after the grace period), neither delivered yet: the
    refund committed while ``payment_verified``'s receivers were still running.
    """
    later = timezone.now() + timedelta(minutes=1)
    common = {
        "payment": payment,
        "snapshot": snapshot_of(payment),
        "attempts": 1,
        "attempts_finished": 0,
        "next_attempt_at": later,
    }
    first = SignalDelivery.objects.create(sequence=1, signal="payment_verified", **common)
    second = SignalDelivery.objects.create(
        sequence=2, signal="payment_refunded", arguments={"amount": 1000}, **common
    )
    return first, second


# --- the delivered mark: durability and order --------------------------------------------

#: A shell command that stops the test's PostgreSQL server at once (``pg_ctl stop -m
#: immediate``: what is not on disk is lost, as in a crash) and starts it again. Only for a
#: server of the tester's own, with a long ``wal_writer_delay`` so that a commit that did
#: not wait for the disk is still in memory when it stops.
CRASH = os.environ.get("KHALTI_TEST_PG_CRASH_CMD")


@postgresql_only
@pytest.mark.skipif(not CRASH, reason="needs KHALTI_TEST_PG_CRASH_CMD (a server to crash)")
@pytest.mark.django_db(transaction=True)
def test_a_crash_of_the_database_never_has_a_signal_heard_after_a_later_one(heard):
    """The signals reference: "A signal may be heard twice in a row (at least once), never
    after a later one." The refund's own worker finds the verification delivered and runs
    the refund's receivers; the database then crashes. Whatever it lost, the shop must
    not hear ``payment_verified`` again after it heard ``payment_refunded``."""
    payment = Payment.objects.create(
        token="tok-crash", amount=1000, product_identity="A", status="refunded"
    )
    first, second = two_status_changes(payment)
    assert outbox.deliver(first, first=True) is True
    assert outbox.deliver(second, first=True) is True
    assert heard == ["verified", "refunded"]

    connections.close_all()
    subprocess.run(str(CRASH), shell=True, check=True, capture_output=True, timeout=60)
    connections.close_all()

    SignalDelivery.objects.filter(delivered_at__isnull=True).update(
        next_attempt_at=timezone.now() - timedelta(minutes=1)
    )
    outbox.deliver_due(Payment.objects.get(pk=payment.pk))
    after_refund = heard[heard.index("refunded") + 1 :]
    assert "verified" not in after_refund, heard


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_with_autocommit_off_the_mark_leaves_the_callers_commit_waiting_for_the_disk(db):
    """Django's "deactivate transaction management" (``set_autocommit(False)``, or
    ``AUTOCOMMIT: False``): the shop's code writes, delivers, and commits itself. Not in
    an atomic block, but in the shop's transaction: its commit must wait for the disk."""
    payment = Payment.objects.create(token="tok-ac", amount=1000, product_identity="A")
    delivery, _ = two_status_changes(payment)
    transaction.set_autocommit(False)
    try:
        Payment.objects.filter(pk=payment.pk).update(status="verified")  # the shop's money
        assert outbox._record_attempt(delivery, [])
        with connection.cursor() as cursor:
            cursor.execute("SHOW synchronous_commit")
            setting = cursor.fetchone()[0]
        transaction.commit()
    finally:
        transaction.set_autocommit(True)
    assert setting == "on"


# --- the delivered mark: where it is written ---------------------------------------------


class ReadsFromTheReplica:
    """A router with an opinion on reads only: writes go where Django sends them when no
    router has one."""

    def db_for_read(self, model, **hints):
        return "replica"


READ_ONLY = {
    "sqlite": {"init_command": "PRAGMA query_only=ON;"},
    "postgresql": {"options": "-c default_transaction_read_only=on"},
    "mysql": {"init_command": "SET SESSION TRANSACTION READ ONLY"},
}


@contextlib.contextmanager
def a_replica(options, **settings):
    """A ``replica`` alias: the test database, read-only (a hot standby), with these
    ``OPTIONS`` and settings besides. Made as Django's connection handler makes one,
    for this thread only."""
    options = {
        **connection.settings_dict.get("OPTIONS", {}),
        **READ_ONLY[connection.vendor],
        **options,
    }
    if connection.vendor == "sqlite":
        options.pop("transaction_mode", None)
    replica = type(connections["default"])(
        {**connection.settings_dict, "OPTIONS": options, **settings}, "replica"
    )
    connections._connections.replica = replica  # type: ignore[attr-defined]
    try:
        yield replica
    finally:
        replica.close()
        del connections._connections.replica  # type: ignore[attr-defined]


@pytest.fixture
def read_only_replica(transactional_db):
    """A ``replica`` alias: the test database, read-only."""
    with a_replica({}) as replica:
        yield replica


@pytest.mark.django_db(transaction=True)
def test_the_delivered_mark_goes_where_every_other_write_of_the_outbox_goes(
    heard, read_only_replica
):
    """The payment's later signal is read where the router reads (a replica); its
    delivered mark must be written where the router writes, as its take was (the
    default database), not on the replica it was read from."""
    payment = Payment.objects.create(
        token="tok-replica", amount=1000, product_identity="A", status="refunded"
    )
    first, second = two_status_changes(payment)
    SignalDelivery.objects.filter(pk=second.pk).update(
        attempts_finished=1, next_attempt_at=timezone.now()
    )  # waiting for the first: its deliverer goes on with it
    with override_settings(DATABASE_ROUTERS=[ReadsFromTheReplica()]):
        run = outbox.deliver_in_order(first, first=True)
    assert [(d.signal, ok) for d, ok in run] == [
        ("payment_verified", True),
        ("payment_refunded", True),
    ]
    assert heard == ["verified", "refunded"]
    assert not SignalDelivery.objects.filter(delivered_at__isnull=True).exists()


# --- the compiled reads -------------------------------------------------------------------


@pytest.fixture
def payments(db):
    made = [
        Payment.objects.create(token="tok-a", amount=1000, product_identity="A"),
        Payment.objects.create(pidx="pidx-b", amount=1000, product_identity="B"),  # no token
        Payment.objects.create(
            token="tok-c", idx="idx-c", amount=1000, product_identity="C", status="verified"
        ),
    ]
    return made


def test_a_none_value_reads_what_the_orm_reads(payments):
    """``None`` changes the ORM's SQL (``IS NULL``); the compiled read must not answer
    otherwise than the ORM would."""
    assert compiled_uses_of(None) == uses_of(None)


def test_a_token_of_none_from_the_shops_code_is_refused_as_before(
    payments, order, no_shop_receivers, expect_khalti
):
    """``services.verify_payment`` is public: a shop's bug passing ``token=None`` was
    refused (token_used: a payment's NULL idx "is" that token) before Khalti was called,
    and no payment claimed the order."""
    with pytest.raises(KhaltiTokenUsed):
        services.verify_payment(
            None,
            token=None,  # type: ignore[arg-type]
            amount=order.total,
            product_identity=order.reference,
        )
    assert not Payment.objects.filter(product_identity=order.reference).exists()


HOSTILE = [
    "\x00",
    "\x00tok-a",
    "tok-a\x00",
    "\x00" + "0" * 36,
    "x" * 255,
    "x" * 10_000,
    "नेपाल",
    "'; DROP TABLE django_khalti_payment; --",
    "%s",
    "%%s%",
    '"',
    "\\",
    "tok-%",
    "",
    " tok-a",
    "TOK-A",
    "idx-c",
    "pidx-b",
]


@pytest.mark.parametrize("token", HOSTILE)
def test_a_hostile_token_reads_what_the_orm_reads(payments, token):
    try:
        expected = uses_of(token)
    except Exception as exc:  # the database refuses it (NUL on PostgreSQL): so must both
        with pytest.raises(type(exc)):
            compiled_uses_of(token)
        return
    assert compiled_uses_of(token) == expected


@pytest.mark.parametrize("token", [t for t in HOSTILE if t.strip() != "tok-a"])
def test_a_hostile_token_posted_is_a_4xx_or_refused_and_never_reaches_khalti(
    client, payments, token
):
    body = {"token": token, "amount": 1000, "product_identity": "A"}
    response = client.post(VERIFY, json.dumps(body), content_type="application/json")
    assert 400 <= response.status_code < 500, (response.status_code, response.content)


@pytest.mark.parametrize("field", ["idx", "pidx", "claimed_idx"])
@pytest.mark.django_db(transaction=True)
def test_another_payments_id_as_a_token_is_refused_as_before(field):
    Payment.objects.create(
        token="mine", amount=1000, product_identity="X", status="pending", **{field: "theirs"}
    )
    assert compiled_uses_of("theirs") == uses_of("theirs")


@pytest.mark.django_db(transaction=True)
def test_two_threads_first_using_one_query_read_alike(payments):
    query = Compiled(lambda token: Payment.objects.filter(token=token), token=TOKEN)
    barrier = threading.Barrier(2)
    got: list[object] = []

    def one(token):
        try:
            barrier.wait(timeout=10)
            got.append([row.token for row in query.rows(token=token)])
        except Exception as exc:  # pragma: no cover - the failure is the assertion below
            got.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=one, args=(t,)) for t in ("tok-a", "tok-c")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(map(str, got)) == ["['tok-a']", "['tok-c']"]
    assert [row.token for row in query.rows(token="tok-a")] == ["tok-a"]  # this thread's


@pytest.mark.django_db(transaction=True)
def test_a_plan_outlives_its_connection(payments):
    query = Compiled(lambda token: Payment.objects.filter(token=token), token=TOKEN)
    assert [row.token for row in query.rows(token="tok-a")] == ["tok-a"]
    connection.close()
    assert [row.token for row in query.rows(token="tok-c")] == ["tok-c"]


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_a_verifications_own_mark_still_does_not_wait_for_the_disk(client, expect_khalti, payload):
    """What the fixes above keep: a verification's first signal, delivered by its own
    worker after the commit (autocommit again), is marked without waiting for the disk,
    and nothing more is written for it."""
    expect_khalti.verify(payload["token"], 1000)
    with CaptureQueriesContext(connection) as queries:
        response = client.post(VERIFY, json.dumps(payload), content_type="application/json")
    assert response.status_code == 200, response.content
    marks = [q["sql"] for q in queries if "synchronous_commit" in q["sql"]]
    assert len(marks) == 1, marks
    assert marks[0].startswith("WITH marked AS (UPDATE"), marks  # and the next looked for
    assert not [q for q in queries if '"attempts" = "django_khalti_signaldelivery"' in q["sql"]]
