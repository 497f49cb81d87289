"""Hot reads compiled once: Django's SQL for a query of fixed shape, run with new values.

Building a query through the ORM (filters, expressions, the compiler) costs far more
Python than sending it: of the widget's token lookup, about 3,200 of 3,700 function
calls went to compiling its SQL, on every verification. A :class:`Compiled` query is
built by the ORM once per database alias, with a placeholder for each value that
changes; each run binds the values in the placeholders' places and runs the same SQL
through :meth:`~django.db.models.query.QuerySet.raw`, so that rows become models as
Django reads them (field converters applied, annotations as attributes).

Only for queries whose SQL does not depend on the values: exact lookups of values that
are never None (``IS NULL`` and ``IN (...)`` change the SQL with the value).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from django.db import connections, router
from django.db.models import Field, Model, QuerySet

M = TypeVar("M", bound=Model)


class Compiled(Generic[M]):
    """A query built by ``build(**placeholders)``, compiled once per database.

    ``fields`` names each value that changes and the field whose database form it
    takes (as the query's lookup would prepare it).
    """

    def __init__(self, build: Callable[..., QuerySet[M]], **fields: Field[Any, Any]) -> None:
        self._build = build
        self._fields = fields
        self._model: type[M] = build(**self._placeholders()).model
        self._compiled: dict[str, tuple[str, list[tuple[str | None, Any]]]] = {}

    def rows(self, **values: Any) -> list[M]:
        """The query's rows for ``values`` (each named as in ``fields``), read where
        the router reads the model.
        """
        using = router.db_for_read(self._model)
        sql, slots = self._compiled.get(using) or self._compile(using)
        connection = connections[using]
        params = [
            self._fields[name].get_db_prep_value(values[name], connection)
            if name is not None
            else fixed
            for name, fixed in slots
        ]
        return list(self._model._default_manager.db_manager(using).raw(sql, params))

    def _placeholders(self) -> dict[str, Any]:
        """A value of each field's type that no real value equals."""
        return {name: _unequalled(field) for name, field in self._fields.items()}

    def _compile(self, using: str) -> tuple[str, list[tuple[str | None, Any]]]:
        placeholders = self._placeholders()
        connection = connections[using]
        prepared = {
            name: self._fields[name].get_db_prep_value(value, connection)
            for name, value in placeholders.items()
        }
        query = self._build(**placeholders).using(using).query
        sql, params = query.get_compiler(using).as_sql()
        slots: list[tuple[str | None, Any]] = []
        for param in params:
            name = next((n for n, p in prepared.items() if p == param), None)
            slots.append((name, None) if name is not None else (None, param))
        missing = set(prepared) - {name for name, _ in slots}
        if missing:
            raise ValueError(f"The compiled query takes no value for {sorted(missing)}.")
        self._compiled[using] = (sql, slots)
        return sql, slots


def _unequalled(field: Field[Any, Any]) -> Any:
    """A value of ``field``'s type (a foreign key's: its target's) that no real one equals."""
    kind = getattr(field, "target_field", field).get_internal_type()
    if kind == "UUIDField":
        return uuid.uuid4()
    if kind == "CharField":
        return f"\0{uuid.uuid4()}"
    raise TypeError(f"No placeholder for a {kind}.")
