"""The sandbox's records in the admin, read-only: what "Khalti" holds, for a look behind the curtain."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.db.models import Model
from django.http import HttpRequest

from .models import SandboxEpayment, SandboxTransaction

if TYPE_CHECKING:
    # django-stubs makes the admin classes generic in their model; Django's are not
    # subscriptable at run time.
    _ModelAdmin = admin.ModelAdmin[Any]
else:
    _ModelAdmin = admin.ModelAdmin


class ReadOnlyAdmin(_ModelAdmin):
    """What "Khalti" holds, for a look behind the curtain; changed only through its API."""

    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        """Nobody adds a record: the sandbox's API makes them."""
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        """Nobody changes a record: the sandbox's API does."""
        return False


@admin.register(SandboxTransaction)
class SandboxTransactionAdmin(ReadOnlyAdmin):
    """The sandbox's transactions: widget payments and paid ePayments."""

    list_display = [
        "idx",
        "kind",
        "product_identity",
        "amount",
        "state",
        "refunded_amount",
        "created_at",
    ]
    list_filter = ["kind", "state"]
    search_fields = ["idx", "token", "product_identity"]


@admin.register(SandboxEpayment)
class SandboxEpaymentAdmin(ReadOnlyAdmin):
    """The ePayments merchants started at the sandbox, and what their buyers did."""

    list_display = ["pidx", "purchase_order_id", "amount", "status", "expires_at", "created_at"]
    list_filter = ["status"]
    search_fields = ["pidx", "purchase_order_id"]
