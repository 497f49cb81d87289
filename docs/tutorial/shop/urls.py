from django.urls import path

from . import views

app_name = "shop"

urlpatterns = [
    path("orders/<str:reference>/", views.order, name="order"),
    path("thanks/", views.thanks, name="thanks"),
    path("payment-failed/", views.payment_failed, name="payment-failed"),
]
