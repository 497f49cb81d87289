from django.contrib import admin

from .models import Order, OrderEvent


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = ["reference", "total", "paid", "paid_at"]
    list_filter = ["paid"]
    search_fields = ["reference"]


@admin.register(OrderEvent)
class OrderEventAdmin(admin.ModelAdmin):
    list_display = ["order_reference", "kind", "payment_id", "created_at"]
    list_filter = ["kind"]
