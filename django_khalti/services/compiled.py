"""Hot statements compiled once: Django's SQL for a query of fixed shape, run with new values.

Building a query through the ORM (filters, expressions, the compiler) costs far more
Python than sending it: of the widget's token lookup, about 3,200 of 3,700 function
calls went to compiling its SQL, on every verification. A statement is built by the
ORM once per database alias, with a :class:`Slot` (an expression whose SQL is ``%s``
and whose parameter is the slot itself) for each value that changes; each run binds
the values in the slots' places and runs the same SQL. A :class:`Compiled` read then
makes the rows models as Django's own ``ModelIterable`` does (the database's
converters applied, annotations set as attributes); :mod:`.writes` composes a
settlement's statement the same way.

Only for statements whose SQL does not depend on the values (exact lookups: ``IN
(...)`` changes the SQL with the value; so does None, ``IS NULL``, which is run as the
ORM's query), whose other parameters are constants (a ``timezone.now()`` would be
frozen at the first run: use the database's clock, ``DbNow``), and that select one
model's own columns (no ``select_related``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from django.db import connections, router
from django.db.models import Expression, Field, Model, QuerySet
from django.db.models.sql.compiler import SQLCompiler

M = TypeVar("M", bound=Model)


class Slot(Expression):
    """A value bound at each run of a compiled statement: its SQL is ``%s``, and its
    parameter the slot itself, which the run replaces with the value. ``source``
    says where a run takes it from (its caller's to read).
    """

    def __init__(self, name: str, field: Any = None, source: str = "") -> None:
        super().__init__(output_field=field)
        self.name, self.source = name, source

    def as_sql(self, compiler: Any, connection: Any) -> Any:
        """A placeholder, whose parameter is this slot (bound at each run)."""
        return "%s", [self]


@dataclass(frozen=True)
class _Plan:
    """A query compiled for one database: its SQL, where each parameter comes from
    (a value's name, or a constant), and how a row becomes a model.
    """

    sql: str
    slots: list[tuple[str | None, Any]]
    query: Any  # the compiled sql.Query (for a converting compiler)
    columns: list[Any]  # the selected expressions, whose converters apply
    model_columns: slice
    init_list: list[str]
    annotations: dict[str, int]


class Compiled(Generic[M]):
    """A query built by ``build(**slots)``, compiled once per database.

    ``fields`` names each value that changes and the field whose database form it
    takes (as the query's lookup would prepare it).
    """

    def __init__(self, build: Callable[..., QuerySet[M]], **fields: Field[Any, Any]) -> None:
        self._build = build
        self._fields = fields
        self._model: type[M] = build(**self._slots()).model
        self._plans: dict[str, _Plan] = {}

    def rows(self, **values: Any) -> list[M]:
        """The query's rows for ``values`` (each named as in ``fields``), read where
        the router reads the model.
        """
        if None in values.values():
            # None changes the SQL (``IS NULL``), which the plan cannot: the ORM's query.
            return list(self._build(**values))
        using = router.db_for_read(self._model)
        plan = self._plans.get(using) or self._compile(using)
        connection = connections[using]
        params = [
            self._fields[name].get_db_prep_value(values[name], connection)
            if name is not None
            else fixed
            for name, fixed in plan.slots
        ]
        with connection.cursor() as cursor:
            cursor.execute(plan.sql, params)
            fetched = cursor.fetchall()
        converting = SQLCompiler(plan.query, connection, using)
        converters = converting.get_converters(plan.columns)
        if converters:
            fetched = list(converting.apply_converters(fetched, converters))
        return [self._instance(plan, using, row) for row in fetched]

    def _instance(self, plan: _Plan, using: str, row: Any) -> M:
        instance = self._model.from_db(using, plan.init_list, row[plan.model_columns])
        for name, position in plan.annotations.items():
            setattr(instance, name, row[position])
        return instance

    def _slots(self) -> dict[str, Slot]:
        """A slot for each value that changes."""
        return {name: Slot(name, field) for name, field in self._fields.items()}

    def _compile(self, using: str) -> _Plan:
        compiler = self._build(**self._slots()).using(using).query.get_compiler(using)
        sql, params = compiler.as_sql()
        slots: list[tuple[str | None, Any]] = [
            (param.name, None) if isinstance(param, Slot) else (None, param) for param in params
        ]
        missing = set(self._fields) - {name for name, _ in slots}
        if missing:
            raise ValueError(f"The compiled query takes no value for {sorted(missing)}.")
        if compiler.klass_info.get("related_klass_infos"):
            raise ValueError("A compiled query reads one model's own columns only.")
        model_columns = compiler.klass_info["select_fields"]
        first, last = model_columns[0], model_columns[-1]
        selected = [column for column, _sql, _alias in compiler.select[: compiler.col_count]]
        plan = _Plan(
            sql=sql,
            slots=slots,
            query=compiler.query,
            columns=selected,
            model_columns=slice(first, last + 1),
            init_list=[column.target.attname for column in selected[first : last + 1]],
            annotations=dict(compiler.annotation_col_map),
        )
        self._plans[using] = plan
        return plan
