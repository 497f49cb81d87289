"""Deleting in the admin: what the models keep (:mod:`django_khalti.deletion`) is
neither offered nor deleted, and the person is told which rows were kept, and why.

- :class:`KeptRecordsAdmin`: a row's Delete button only for a superuser, and only
  when the row may go; its delete page sends the person back to the row, told why;
- :func:`delete_selected`: Django's own "Delete selected", for the selected rows
  that may go; the others are left, and named with why.

The rule is the models' own (their querysets' ``kept()``); a row that became one to
keep after the page was shown is refused by its ``delete()`` and reported the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from django.contrib import admin, messages
from django.contrib.admin.actions import delete_selected as django_delete_selected
from django.contrib.admin.utils import quote, unquote
from django.db import router, transaction
from django.db.models import Model, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseBase, HttpResponseRedirect
from django.urls import reverse
from django.utils.translation import gettext_lazy as _

from ..deletion import KeptQuerySet
from ..exceptions import KhaltiProtectedError

if TYPE_CHECKING:
    _Admin = admin.ModelAdmin[Any]
else:
    _Admin = object


def _rows(model_admin: admin.ModelAdmin[Any]) -> KeptQuerySet[Any]:
    """The admin's model's rows, as the queryset that knows which must be kept."""
    return cast(KeptQuerySet[Any], model_admin.model._default_manager.all())


def kept(model_admin: admin.ModelAdmin[Any], pks: Sequence[Any]) -> list[tuple[Model, str]]:
    """Of the rows ``pks`` of the admin's model, those that must be kept, with why."""
    return _rows(model_admin).filter(pk__in=pks).kept()


def tell_kept(
    model_admin: admin.ModelAdmin[Any], request: HttpRequest, kept: list[tuple[Model, str]]
) -> None:
    """Tell the person which rows were not deleted, why, and what may be."""
    model_admin.message_user(
        request,
        _("Not deleted: %(rows)s. %(rule)s")
        % {
            "rows": "; ".join(f"{row} ({why})" for row, why in kept),
            "rule": _rows(model_admin).rule,
        },
        messages.ERROR,
    )


class KeptRecordsAdmin(_Admin):
    """A ModelAdmin of rows that are records: deleted only by a superuser, and only
    the rows the model lets go.
    """

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        """Only for superusers (whatever the model permissions say), and a row only if
        it may be deleted.
        """
        if not request.user.is_superuser:
            return False
        return obj is None or not kept(self, [obj.pk])

    def delete_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        """Django's delete page; for a row that must be kept, back to its page, told why."""
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            return super().delete_view(request, object_id, extra_context)
        found = kept(self, [obj.pk]) if request.user.is_superuser else []
        if not found:
            try:
                return super().delete_view(request, object_id, extra_context)
            except KhaltiProtectedError as refused:  # kept since the page was shown
                found = refused.kept
        tell_kept(self, request, found)
        opts = self.opts
        url = f"{self.admin_site.name}:{opts.app_label}_{opts.model_name}_change"
        return HttpResponseRedirect(reverse(url, args=[quote(obj.pk)]))


#: Django's own action's label ("Delete selected …"), translated by Django.
DELETE_SELECTED_LABEL = cast(Any, django_delete_selected).short_description


@admin.action(permissions=["delete"], description=DELETE_SELECTED_LABEL)
def delete_selected(
    modeladmin: admin.ModelAdmin[Any], request: HttpRequest, queryset: QuerySet[Any]
) -> HttpResponseBase | None:
    """Django's "Delete selected" (its confirmation page, then the delete) for the
    selected rows that may be deleted; the others are left, and named with why.
    """
    found = kept(modeladmin, list(queryset.values_list("pk", flat=True)))
    if found:
        tell_kept(modeladmin, request, found)
    deletable = queryset.exclude(pk__in=[row.pk for row, _why in found])
    if not deletable.exists():
        return None
    try:
        # A refusal rolls the deletion's log entries back with it.
        with transaction.atomic(using=router.db_for_write(modeladmin.model)):
            return django_delete_selected(modeladmin, request, deletable)
    except KhaltiProtectedError as refused:  # kept since the page was shown
        tell_kept(modeladmin, request, refused.kept)
        return None
