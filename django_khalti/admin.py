from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest
from django.utils.translation import gettext_lazy as _

from .models import Payment


@admin.register(Payment)
class PaymentAdmin(admin.ModelAdmin):
    list_display = ["product_identity", "amount_display", "status", "idx", "created_at"]
    list_filter = ["status"]
    search_fields = ["=token", "=idx", "product_identity"]
    readonly_fields = [
        "id", "token", "product_identity", "amount", "status", "idx", "fee_amount", "mobile",
        "khalti_response", "failure_reason", "created_at", "updated_at", "verified_at",
        "claimed_at", "attempts",
    ]

    @admin.display(description=_("amount (Rs)"), ordering="amount")
    def amount_display(self, payment: Payment) -> str:
        return payment.amount_rupees

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Payment | None = None) -> bool:
        return bool(request.user.is_superuser)
