from django.apps import AppConfig


class ShopConfig(AppConfig):
    name = "shop"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from testproject import faults

        faults.connect_slow_receiver()  # the reliability rig's; nothing otherwise
        from . import receivers  # noqa: F401
