from django.apps import AppConfig


class KhaltiSandboxConfig(AppConfig):
    name = "khalti_sandbox"
    verbose_name = "Khalti sandbox (the demo's stand-in for Khalti)"
    default_auto_field = "django.db.models.BigAutoField"
