"""The base of the payments' read-only admin pages beside the changelist (the overview,
the ledger, the CSV export): shown to users who may view payments, with the admin's
own context.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponseBase
from django.views.generic import View
from django.views.generic.base import ContextMixin, TemplateResponseMixin

from ..models import Payment

if TYPE_CHECKING:
    from django.utils.functional import _StrOrPromise as StrOrPromise

    from .permissions import PaymentAdminBase


class PaymentsPage(TemplateResponseMixin, ContextMixin, View):
    """A page for users who may view payments (others: 403), built with
    ``as_view(model_admin=...)`` by the payments' admin.
    """

    #: The ``PaymentAdmin`` the view belongs to (``as_view(model_admin=...)``).
    model_admin: PaymentAdminBase | None = None
    title: StrOrPromise = ""

    @property
    def admin(self) -> PaymentAdminBase:
        """The view's ``PaymentAdmin``."""
        assert self.model_admin is not None, "as_view(model_admin=...)"
        return self.model_admin

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        """Refused (403) without the permission to view payments."""
        if not self.admin.has_view_permission(request):
            raise PermissionDenied
        return super().dispatch(request, *args, **kwargs)

    def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        """The page (a page may answer otherwise: a file)."""
        return self.render_to_response(self.get_context_data(**kwargs))

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        """The admin's context (``each_context``), the page's title and the payments' options."""
        return super().get_context_data(
            **self.admin.admin_site.each_context(self.request),
            title=self.title,
            opts=Payment._meta,
            **kwargs,
        )
