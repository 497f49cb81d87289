"""Fixtures of the services' tests."""

import pytest
from django.db import connection

from django_khalti.models import SignalDelivery


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
