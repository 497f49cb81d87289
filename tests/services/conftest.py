"""Fixtures and faults of the services' tests."""

import re
from pathlib import Path

import pytest
from django.db import OperationalError, connection

from django_khalti.models import SignalDelivery

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
