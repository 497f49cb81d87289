"""The hot path's own costs (issue 27): reads compiled once, and a delivered mark that
does not wait for the disk, without changing what anyone reads or what is durable.
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.db.models import Q
from django.db.models.expressions import RawSQL
from django.db.models.sql.compiler import SQLCompiler, SQLUpdateCompiler
from django.urls import reverse
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from django_khalti.models import Payment, SignalDelivery, snapshot_of
from django_khalti.services import marks, outbox
from django_khalti.services.compiled import Compiled, CompiledUpdate
from django_khalti.services.outbox import _due_exists
from django_khalti.services.widget import _TOKEN_USES

pytestmark = pytest.mark.django_db

VERIFY = reverse("django_khalti:verify")
TOKEN = Payment._meta.get_field("token")


def uses_of(token):
    """The widget's token lookup, as the ORM builds it every time."""
    rows = Payment.objects.filter(
        Q(token=token) | Q(idx=token) | Q(pidx=token) | Q(claimed_idx=token)
    ).annotate(undelivered=_due_exists())
    return {(row.pk, bool(row.undelivered)) for row in rows}  # type: ignore[attr-defined]


def compiled_uses_of(token):
    """The same, as the widget reads it: compiled once (a bool, as the ORM's, though
    SQLite and MySQL send 0 or 1)."""
    return {(row.pk, row.undelivered) for row in _TOKEN_USES.rows(token=token)}  # type: ignore[attr-defined]


@pytest.fixture
def some_payments(db):
    made = [
        Payment.objects.create(token="tok-a", amount=1000, product_identity="A"),
        Payment.objects.create(
            token="tok-b", idx="tok-a", amount=1000, product_identity="B", status="verified"
        ),
        Payment.objects.create(pidx="it's 100%s", amount=1000, product_identity="C"),
        Payment.objects.create(
            token="tok-d", claimed_idx="tok-a", amount=1000, product_identity="D"
        ),
    ]
    SignalDelivery.objects.create(
        payment=made[1],
        sequence=1,
        signal="verified",
        snapshot=snapshot_of(made[1]),
        next_attempt_at=timezone.now() - timedelta(minutes=1),  # due again
    )
    return made


@pytest.mark.parametrize("token", ["tok-a", "tok-b", "it's 100%s", "nobody's", "tok-%"])
def test_a_compiled_read_answers_what_the_orm_answers(some_payments, token):
    assert compiled_uses_of(token) == uses_of(token)
    assert uses_of("tok-a") == {
        (some_payments[0].pk, False),
        (some_payments[1].pk, True),
        (some_payments[3].pk, False),
    }


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    token=st.text(
        st.characters(blacklist_categories=["Cs"], blacklist_characters="\0"), max_size=40
    )
)
def test_any_token_is_bound_as_a_value_never_as_sql(some_payments, token):
    assert compiled_uses_of(token) == uses_of(token)


def compiles_of(compiler, monkeypatch):
    """The models whose SQL ``compiler`` builds from now on, one entry a build."""
    compiles = []
    plain = compiler.as_sql

    def counted(self, *args, **kwargs):
        compiles.append(self.query.model)
        return plain(self, *args, **kwargs)

    monkeypatch.setattr(compiler, "as_sql", counted)
    return compiles


def test_its_sql_is_compiled_once(some_payments, monkeypatch):
    query = Compiled(lambda token: Payment.objects.filter(token=token), token=TOKEN)
    compiles = compiles_of(SQLCompiler, monkeypatch)
    for token in ("tok-a", "tok-b", "tok-d", "tok-a"):
        assert [row.token for row in query.rows(token=token)] == [token]
    assert len(compiles) == 1


def test_a_value_the_query_does_not_take_is_refused_when_compiled(db):
    query = Compiled(lambda token: Payment.objects.filter(amount=5), token=TOKEN)
    with pytest.raises(ValueError, match="token"):
        query.rows(token="x")


def test_rows_are_read_as_django_reads_them(some_payments):
    """Field converters applied: JSON, times and UUIDs come back as Python values."""
    payment = some_payments[1]
    Payment.objects.filter(pk=payment.pk).update(khalti_response={"idx": "x", "amount": 1000})
    (row,) = Compiled(lambda pk: Payment.objects.filter(pk=pk), pk=Payment._meta.pk).rows(
        pk=payment.pk
    )
    assert row.khalti_response == {"idx": "x", "amount": 1000}
    assert row.created_at == Payment.objects.get(pk=payment.pk).created_at
    assert isinstance(row.pk, uuid.UUID)
    assert row._state.adding is False
    assert row._state.db == "default"


def test_a_query_of_one_column_reads_too(some_payments):
    (row,) = Compiled(
        lambda token: Payment.objects.filter(token=token).only("pk"), token=TOKEN
    ).rows(token="tok-a")
    assert row.pk == some_payments[0].pk
    assert row.amount == 1000  # deferred, read on access


# --- the delivered mark ------------------------------------------------------------------

postgresql_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="synchronous_commit is PostgreSQL's"
)


def synchronous_commit():
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        return cursor.fetchone()[0]


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_the_unflushed_mark_leaves_every_later_commit_durable(client, expect_khalti, payload):
    """The delivered mark asks PostgreSQL not to wait for the disk for its own commit
    alone: the same connection's next claim and settlement wait, as they must."""
    expect_khalti.verify(payload["token"], 1000)
    response = client.post(VERIFY, json.dumps(payload), content_type="application/json")
    assert response.status_code == 200, response.content
    assert SignalDelivery.objects.get().delivered_at is not None
    assert synchronous_commit() == "on"


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_inside_a_callers_transaction_the_mark_does_not_touch_its_commit(
    expect_khalti, payload, client
):
    """Delivered from inside a transaction of the caller's (a shop's own code), the mark
    must not make that transaction's commit skip the disk: it may hold money."""
    expect_khalti.verify(payload["token"], 1000)
    assert (
        client.post(VERIFY, json.dumps(payload), content_type="application/json").status_code == 200
    )
    delivery = SignalDelivery.objects.get()
    SignalDelivery.objects.filter(pk=delivery.pk).update(delivered_at=None)
    delivery.refresh_from_db()
    with transaction.atomic():
        assert outbox._record_attempt(delivery, [])
        assert synchronous_commit() == "on"
    assert SignalDelivery.objects.get().delivered_at is not None


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_the_marks_condition_turns_the_wait_off_for_its_statement_alone(some_payments):
    """Read from inside a statement carrying the mark's condition: synchronous_commit
    is off there, and on again once its transaction is over."""
    rows = SignalDelivery.objects.filter(*marks.unflushed("default")).annotate(
        setting=RawSQL("current_setting('synchronous_commit')", ())
    )
    assert [row.setting for row in rows] == ["off"]  # type: ignore[attr-defined]
    assert synchronous_commit() == "on"


# --- the mark, compiled once ---------------------------------------------------------------


def test_a_compiled_mark_writes_what_it_says_and_only_on_its_own_attempt(some_payments):
    """The failed mark binds the receivers' errors as a value, whatever they say; a
    mark of an attempt that is no longer the row's writes nothing."""
    delivery = SignalDelivery.objects.get()
    errors = ["notify: ValueError: it's 100%s'; DROP TABLE x; --", "ship: KeyError: '\\n'"]
    assert marks.mark(delivery, errors, "default")
    row = SignalDelivery.objects.get()
    assert (row.last_error, row.delivered_at) == ("\n".join(errors), None)
    delivery.attempts += 1  # taken over meanwhile
    assert not marks.mark(delivery, [], "default")
    delivery.attempts -= 1
    assert marks.mark(delivery, [], "default")
    row = SignalDelivery.objects.get()
    assert (row.last_error, row.next_attempt_at) == ("", None)
    assert row.delivered_at is not None


def test_a_compiled_update_is_compiled_once(some_payments, monkeypatch):
    rename = CompiledUpdate(
        lambda pk, token: (Payment.objects.filter(pk=pk), {"token": token}),
        pk=Payment._meta.pk,
        token=TOKEN,
    )
    compiles = compiles_of(SQLUpdateCompiler, monkeypatch)
    for n, payment in enumerate(some_payments):
        assert rename.run("default", pk=payment.pk, token=f"new-{n}") == 1
    assert len(compiles) == 1
    assert sorted(Payment.objects.values_list("token", flat=True)) == [
        "new-0",
        "new-1",
        "new-2",
        "new-3",
    ]
