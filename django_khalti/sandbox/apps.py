from django.apps import AppConfig


class KhaltiSandboxConfig(AppConfig):
    name = "django_khalti.sandbox"
    #: The label the sandbox's tables and migrations were made under.
    label = "khalti_sandbox"
    verbose_name = "Khalti sandbox (a local stand-in for Khalti)"
    default_auto_field = "django.db.models.BigAutoField"
