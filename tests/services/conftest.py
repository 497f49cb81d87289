"""Fixtures and faults of the services' tests."""

import io
import re
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import OperationalError, connection
from django.urls import reverse

from django_khalti.models import Payment, SignalDelivery
from django_khalti.signals import payment_refunded, payment_verified
from shop.models import Order

#: The states page, whose tables tests play row by row.
STATES_PAGE = Path(__file__).resolve().parents[2] / "docs" / "explanation" / "states.rst"


def table_cells(section: str, header: str) -> list[list[str]]:
    """The rows of the states page's four-column list table under the title
    ``section`` whose first header cell is ``header``, each as its cells' text
    on one line.
    """
    text = STATES_PAGE.read_text(encoding="utf-8").split(f"\n{section}\n", 1)[1]
    table = text.split(f"   * - {header}\n", 1)[1].split("\n\n", 1)[0]
    rows = []
    for chunk in table.split("   * - ")[1:]:
        cells = [" ".join(cell.split()) for cell in re.split(r"\n     - ", chunk.strip())]
        if len(cells) == 4:
            rows.append(cells)
    return rows


#: The statements a deadlock takes as its victim: the claim's insert (racing inserts
#: of one order's claim: InnoDB's duplicate-key locks) and a settlement (on
#: PostgreSQL one statement, ``WITH changed AS (UPDATE ...)``).
CLAIM_INSERT = r"INSERT INTO [\"`]django_khalti_payment[\"`]"
SETTLEMENT = r"(WITH changed AS \()?UPDATE [\"`]django_khalti_payment[\"`] SET [\"`]status[\"`]"
#: MySQL/MariaDB's deadlock, as its driver raises it.
DEADLOCK = (1213, "Deadlock found when trying to get lock")


def deadlocking(pattern, times=1, error=DEADLOCK):
    """An execute wrapper failing the first ``times`` statements that match ``pattern``
    with ``error``, and the list of the statements it failed."""
    seen = []

    def wrapper(execute, sql, params, many, context):
        if re.match(pattern, sql) and len(seen) < times:
            seen.append(sql)
            raise OperationalError(*error)
        return execute(sql, params, many, context)

    return wrapper, seen


@pytest.fixture
def outbox_refused():
    """The database itself refuses every outbox row (a constraint, or on SQLite a
    trigger): whatever writes one fails inside the database, mid-settlement."""
    table = connection.ops.quote_name(SignalDelivery._meta.db_table)
    if connection.vendor == "sqlite":
        add = (
            f"CREATE TRIGGER refuse_outbox BEFORE INSERT ON {table} "
            "BEGIN SELECT RAISE(ABORT, 'outbox refused'); END"
        )
        drop = "DROP TRIGGER refuse_outbox"
    else:
        add = f"ALTER TABLE {table} ADD CONSTRAINT refuse_outbox CHECK (attempts < 0)"
        drop = f"ALTER TABLE {table} DROP CONSTRAINT refuse_outbox"
    with connection.cursor() as cursor:
        cursor.execute(add)
    yield
    with connection.cursor() as cursor:
        cursor.execute(drop)


# --- the ledger walk, from the shop's side ----------------------------------------------


@pytest.fixture
def pay(client, khalti, django_capture_on_commit_callbacks):
    """Pay an order as a buyer does: Khalti's record, and the payment verified here
    (``created_on``: when Khalti's record says it was made).
    """

    def pay(reference, amount=1000, created_on=None):
        Order.objects.create(reference=reference, total=amount)
        held = khalti.add_payment(amount=amount)
        if created_on is not None:
            held.created_on = created_on
        with django_capture_on_commit_callbacks(execute=True):
            answer = client.post(
                reverse("django_khalti:verify"),
                held.payload(reference),
                content_type="application/json",
            )
        assert answer.status_code == 200, answer.json()
        return held, Payment.objects.get(order_reference=reference)

    return pay


@pytest.fixture
def walk(django_capture_on_commit_callbacks):
    """Run ``khalti_reconcile --ledger`` as cron would; its output."""

    def walk(*args, since="1d"):
        out = io.StringIO()
        with django_capture_on_commit_callbacks(execute=True):
            call_command(
                "khalti_reconcile",
                "--ledger",
                "--since",
                since,
                *args,
                stdout=out,
                stderr=io.StringIO(),
            )
        return out.getvalue()

    return walk


def told(signals):
    """What the shop's receivers were told, in order: (signal, order, amount)."""
    return [
        (name, kwargs["payment"].order_reference, kwargs.get("amount"))
        for name, _sender, kwargs in signals
    ]


@pytest.fixture
def warehouse_down_once(no_shop_receivers):
    """The shop's receivers as the docs write them, told in order into the list this
    yields: the ``payment_verified`` one raises the first time (its warehouse is down),
    the ``payment_refunded`` one records the amount.
    """
    story: list[tuple[object, ...]] = []
    down = {"verified": 1}

    def on_verified(sender, payment, **kwargs):
        if down["verified"]:
            down["verified"] -= 1
            raise ConnectionError("warehouse down")
        story.append(("verified", payment.order_reference))

    def on_refunded(sender, payment, amount, **kwargs):
        story.append(("refunded", payment.order_reference, amount))

    payment_verified.connect(on_verified, weak=False)
    payment_refunded.connect(on_refunded, weak=False)
    yield story
    payment_verified.disconnect(on_verified)
    payment_refunded.disconnect(on_refunded)
