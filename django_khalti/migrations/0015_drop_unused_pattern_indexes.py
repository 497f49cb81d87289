"""PostgreSQL: drop the ``varchar_pattern_ops`` twins (``..._like``) Django made for the
payment's indexed text columns that no query matches by prefix.

Django adds such a twin beside every unique or ``db_index`` text column, for
``startswith``/``LIKE 'x%'``. Of the payment's, only ``order_reference`` and
``product_identity`` are searched by prefix (the admin's search); the others
(tokens, Khalti's ids, the claims, ``status``, ``flow``) are only ever compared
whole, which their plain index or unique constraint serves. Every twin is written
on every insert and on every settlement (a status change is never a HOT update), for
nothing: eight fewer index entries a write (issue 27). Nothing changes elsewhere:
only PostgreSQL makes these twins. Reversing makes them again, as Django did.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from django.apps.registry import Apps
from django.db import migrations
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.models import Field

#: The columns whose twin stays: the admin's search matches them by prefix.
SEARCHED_BY_PREFIX = {"order_reference", "product_identity"}


def _twins(
    schema_editor: BaseDatabaseSchemaEditor, model: Any
) -> Iterator[tuple[str, Field[Any, Any]]]:
    """The payment's ``_like`` twins of columns never matched by prefix: (name, field)."""
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, model._meta.db_table)
    columns = {field.column: field for field in model._meta.local_concrete_fields}
    for name, details in constraints.items():
        (column, *others) = details["columns"] or [""]
        searched = column in SEARCHED_BY_PREFIX
        if name.endswith("_like") and not others and column in columns and not searched:
            yield name, columns[column]


def drop_twins(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    model = apps.get_model("django_khalti", "Payment")
    for name, _field in list(_twins(schema_editor, model)):
        schema_editor.execute(f"DROP INDEX IF EXISTS {schema_editor.quote_name(name)}")


def make_twins(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    model = apps.get_model("django_khalti", "Payment")
    present = {name for name, _field in _twins(schema_editor, model)}
    for field in model._meta.local_concrete_fields:
        if field.column in SEARCHED_BY_PREFIX or not (
            getattr(field, "db_index", False) or field.unique
        ):
            continue
        sql = schema_editor._create_like_index_sql(model, field)  # type: ignore[attr-defined]
        if sql is not None and str(sql.parts["name"]).strip('"') not in present:
            schema_editor.execute(sql)


class Migration(migrations.Migration):
    dependencies = [("django_khalti", "0014_add_refund_rechecked_at")]

    operations = [migrations.RunPython(drop_twins, make_twins, elidable=True)]
