from django.contrib import admin

from .models import SandboxEpayment, SandboxTransaction


class ReadOnlyAdmin(admin.ModelAdmin):
    """What "Khalti" holds, for a look behind the curtain; changed only through its API."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(SandboxTransaction)
class SandboxTransactionAdmin(ReadOnlyAdmin):
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
    list_display = ["pidx", "purchase_order_id", "amount", "status", "expires_at", "created_at"]
    list_filter = ["status"]
    search_fields = ["pidx", "purchase_order_id"]
