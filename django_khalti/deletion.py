"""Nothing that records money, or a signal the shop has not had yet, is deleted.

A payment is the record of money that moved or may still move, and its claims keep
the same token or order from being paid twice; a refund records money given back;
an undelivered signal delivery is a promise to the shop's receivers. Each model's
queryset (a :class:`KeptQuerySet`) states, in SQL, which of its rows must be kept
and why (:meth:`KeptQuerySet.kept_because`): one rule answers the admin,
``deletable()`` and every delete.

- ``obj.delete()`` and ``queryset.delete()`` lock the rows, refuse with
  :class:`~django_khalti.exceptions.KhaltiProtectedError` (a ``ProtectedError``)
  when any must be kept, deleting nothing, and otherwise delete exactly the rows
  they checked, in the same transaction: a row that changes meanwhile waits for
  the lock, and is checked as it then stands.
- A cascade from a payment to its signal deliveries goes through
  :data:`PROTECT_UNDELIVERED`: a delivered one goes with its payment, an
  undelivered one protects it, as ``PROTECT`` would, on every path Django's
  ``Collector`` takes (which never calls a cascaded row's ``delete()``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, cast

from django.db import models, router, transaction
from django.db.models.deletion import CASCADE, Collector, ProtectedError

from .exceptions import KhaltiProtectedError

if TYPE_CHECKING:
    from django.utils.functional import _StrOrPromise as StrOrPromise

_M = TypeVar("_M", bound=models.Model)

#: The annotation that carries :meth:`KeptQuerySet.kept_because`: empty when the row may go.
KEPT_BECAUSE = "khalti_kept_because"


class KeptQuerySet(models.QuerySet[_M]):
    """A queryset whose ``delete()`` refuses, as a whole, if any of its rows must be kept."""

    #: What may be deleted, for people.
    rule: ClassVar[StrOrPromise] = ""
    #: How to delete what may go, for developers.
    purge: ClassVar[str] = ""
    #: Why a row is kept, for people, by the code :meth:`kept_because` gives.
    reasons: ClassVar[Mapping[str, StrOrPromise]] = {}

    def kept_because(self) -> models.Expression:
        """The rule, as an expression on each row: a code (a key of :attr:`reasons`)
        when the row must be kept, ``""`` when it may be deleted.
        """
        raise NotImplementedError

    def why(self, code: str) -> str:
        """Why a row is kept, for people, from its code."""
        return str(self.reasons[code])

    def deletable(self) -> KeptQuerySet[_M]:
        """Only the rows that may be deleted."""
        rows = self.alias(**{KEPT_BECAUSE: self.kept_because()}).filter(**{KEPT_BECAUSE: ""})
        return cast(KeptQuerySet[_M], rows)

    def kept(self) -> list[tuple[_M, str]]:
        """The rows that must be kept, each with why (for people)."""
        rows = self.annotate(**{KEPT_BECAUSE: self.kept_because()}).exclude(**{KEPT_BECAUSE: ""})
        return [(row, self.why(getattr(row, KEPT_BECAUSE))) for row in rows]

    def refuse_kept(self) -> list[_M]:
        """Lock the rows (until the transaction ends) and read them as they now stand;
        :class:`~django_khalti.exceptions.KhaltiProtectedError` if any must be kept.
        """
        ids = self.values("pk")
        ids.query.select_for_update = False  # locked below, by the outer query
        base = cast(KeptQuerySet[_M], self.model._default_manager.db_manager(self.db).all())
        locked = base.filter(pk__in=ids).select_for_update().order_by("pk")
        rows = list(locked.annotate(**{KEPT_BECAUSE: self.kept_because()}))
        kept = [(row, self.why(code)) for row in rows if (code := getattr(row, KEPT_BECAUSE))]
        if kept:
            raise KhaltiProtectedError(kept, str(self.rule), self.purge)
        return rows

    def delete(self) -> tuple[int, dict[str, int]]:
        """Delete the rows, unless one must be kept: then nothing, and
        :class:`~django_khalti.exceptions.KhaltiProtectedError` says which and why.
        """
        values = getattr(self, "_fields", None) is not None  # after .values()
        if self.query.is_sliced or self.query.distinct_fields or values:
            return super().delete()  # Django's own refusal (TypeError)
        with transaction.atomic(using=self.db):
            rows = self.refuse_kept()
            collector = Collector(using=self.db, origin=self)
            collector.collect(rows)
            deleted = collector.delete()
        self._result_cache = None
        return deleted


class KeptModel(models.Model):
    """A model whose rows are deleted only as its :class:`KeptQuerySet` allows."""

    class Meta:
        abstract = True

    def delete(
        self, using: str | None = None, keep_parents: bool = False
    ) -> tuple[int, dict[str, int]]:
        """Delete the row, unless it must be kept (see :class:`KeptQuerySet`)."""
        using = using or router.db_for_write(type(self), instance=self)
        with transaction.atomic(using=using):
            rows = type(self)._default_manager.db_manager(using).filter(pk=self.pk)
            cast(KeptQuerySet[Any], rows).refuse_kept()
            return super().delete(using=using, keep_parents=keep_parents)


def PROTECT_UNDELIVERED(
    collector: Collector, field: models.Field[Any, Any], sub_objs: Any, using: str
) -> None:
    """``on_delete`` of a signal delivery's payment, named as Django's own handlers:
    ``CASCADE`` for deliveries delivered already, ``PROTECT`` while one is not.
    """
    undelivered = list(sub_objs.filter(delivered_at__isnull=True))
    if undelivered:
        raise ProtectedError(
            f"A signal of this payment is not delivered to the shop yet: "
            f"{', '.join(str(delivery) for delivery in undelivered)}.",
            set(undelivered),
        )
    CASCADE(collector, field, sub_objs, using)
