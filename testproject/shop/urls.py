from django.urls import path

from . import views

app_name = "shop"

urlpatterns = [
    path("", views.index, name="index"),
    path("orders/new/", views.order_create, name="order-create"),
    path("orders/<str:reference>/", views.order_detail, name="order"),
    path("orders/<str:reference>/pay/", views.pay_page, name="pay"),
    path("payment/success/", views.payment_success, name="payment-success"),
    path("payment/failure/", views.payment_failure, name="payment-failure"),
    path("favicon.ico", views.no_favicon),
]
