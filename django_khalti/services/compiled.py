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
model's own columns (no ``select_related``). A :class:`CompiledUpdate` is the same for
an ``UPDATE`` (its row count); either's :class:`Statement` can be a part of a larger one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from django.db import connections, router, transaction
from django.db.models import Expression, Field, Model, QuerySet
from django.db.models.sql import UpdateQuery
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
class Statement:
    """SQL compiled for one database, and where each of its parameters comes from: a
    value's name, or a constant.
    """

    sql: str
    slots: list[tuple[str | None, Any]]


@dataclass(frozen=True)
class _Plan:
    """A query compiled for one database: its statement, and how a row becomes a model."""

    statement: Statement
    query: Any  # the compiled sql.Query (for a converting compiler)
    columns: list[Any]  # the selected expressions, whose converters apply
    model_columns: slice
    init_list: list[str]
    annotations: dict[str, int]


class CompiledStatement:
    """A statement built by ``build(**slots)`` (a queryset), compiled once per
    database: its SQL, to run or to be a part of a larger statement.

    ``fields`` names each value that changes and the field whose database form it
    takes (as the query's lookup would prepare it).
    """

    def __init__(self, build: Callable[..., Any], **fields: Field[Any, Any]) -> None:
        self._build = build
        self._fields = fields
        self._statements: dict[str, Statement] = {}

    def statement(self, using: str) -> Statement:
        """The statement compiled for the database ``using``: once."""
        statement = self._statements.get(using)
        if statement is None:
            sql, params = self._sql(using, self._slots())
            statement = self._statements[using] = self._slotted(sql, params)
        return statement

    def params(self, statement: Statement, using: str, values: dict[str, Any]) -> list[Any]:
        """``statement``'s parameters for ``values`` (each named as in ``fields``)."""
        connection = connections[using]
        return [
            self._fields[name].get_db_prep_value(values[name], connection)
            if name is not None
            else fixed
            for name, fixed in statement.slots
        ]

    def _sql(self, using: str, slots: dict[str, Slot]) -> tuple[str, Any]:
        return self._compiler(using, slots).as_sql()  # type: ignore[no-any-return]

    def _compiler(self, using: str, slots: dict[str, Slot]) -> Any:
        return self._build(**slots).using(using).query.get_compiler(using)

    def _slots(self) -> dict[str, Slot]:
        """A slot for each value that changes."""
        return {name: Slot(name, field) for name, field in self._fields.items()}

    def _slotted(self, sql: str, params: Any) -> Statement:
        """The compiled ``sql``, each of its ``params`` a slot's name or a constant."""
        slots: list[tuple[str | None, Any]] = [
            (param.name, None) if isinstance(param, Slot) else (None, param) for param in params
        ]
        missing = set(self._fields) - {name for name, _ in slots}
        if missing:
            raise ValueError(f"The compiled query takes no value for {sorted(missing)}.")
        return Statement(sql, slots)


class Compiled(CompiledStatement, Generic[M]):
    """A query built by ``build(**slots)``, compiled once per database, whose
    rows are read as models.
    """

    def __init__(self, build: Callable[..., QuerySet[M]], **fields: Field[Any, Any]) -> None:
        super().__init__(build, **fields)
        self._model: type[M] = build(**self._slots()).model
        self._plans: dict[str, _Plan] = {}

    def rows(self, using: str | None = None, **values: Any) -> list[M]:
        """The query's rows for ``values`` (each named as in ``fields``), read on
        ``using`` (None: where the router reads the model).
        """
        if None in values.values():
            # None changes the SQL (``IS NULL``), which the plan cannot: the ORM's query.
            return list(self._build(**values).using(using))
        using = using or router.db_for_read(self._model)
        plan = self.plan(using)
        with connections[using].cursor() as cursor:
            cursor.execute(plan.statement.sql, self.params(plan.statement, using, values))
            return self.models(plan, using, cursor.fetchall())

    def plan(self, using: str) -> _Plan:
        """The query compiled for the database ``using``, and how its rows become
        models: once.
        """
        return self._plans.get(using) or self._compile(using)

    def models(self, plan: _Plan, using: str, fetched: list[Any]) -> list[M]:
        """The rows ``fetched`` by ``plan``'s SQL (or with its columns in the same
        places), as models: the database's converters applied, annotations set.
        """
        connection = connections[using]
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

    def _compile(self, using: str) -> _Plan:
        compiler = self._compiler(using, self._slots())
        sql, params = compiler.as_sql()
        statement = self._statements[using] = self._slotted(sql, params)
        if compiler.klass_info.get("related_klass_infos"):
            raise ValueError("A compiled query reads one model's own columns only.")
        model_columns = compiler.klass_info["select_fields"]
        first, last = model_columns[0], model_columns[-1]
        selected = [column for column, _sql, _alias in compiler.select[: compiler.col_count]]
        plan = _Plan(
            statement=statement,
            query=compiler.query,
            columns=selected,
            model_columns=slice(first, last + 1),
            init_list=[column.target.attname for column in selected[first : last + 1]],
            annotations=dict(compiler.annotation_col_map),
        )
        self._plans[using] = plan
        return plan


class CompiledUpdate(CompiledStatement):
    """An ``UPDATE`` compiled once per database: ``build(**slots)`` gives the
    rows to update and the values to set (as ``QuerySet.update``'s keywords).
    """

    def run(self, using: str, **values: Any) -> int:
        """Update the rows for ``values`` on the database ``using``: how many matched."""
        if None in values.values():
            rows, changes = self._build(**values)
            return int(rows.using(using).update(**changes))
        statement = self.statement(using)
        connection = connections[using]
        # Within an atomic block, an error marks it for rollback, as QuerySet.update does.
        with transaction.mark_for_rollback_on_error(using), connection.cursor() as cursor:
            cursor.execute(statement.sql, self.params(statement, using, values))
            return int(cursor.rowcount)

    def _sql(self, using: str, slots: dict[str, Slot]) -> tuple[str, Any]:
        rows, changes = self._build(**slots)
        query = rows.using(using).query.chain(UpdateQuery)
        query.add_update_values(changes)
        query.annotations = {}  # as QuerySet.update
        return query.get_compiler(using).as_sql()  # type: ignore[no-any-return]
