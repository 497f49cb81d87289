"""The sandbox's app: ``"django_khalti.sandbox"`` in ``INSTALLED_APPS`` (label ``khalti_sandbox``)."""

from django.apps import AppConfig


class KhaltiSandboxConfig(AppConfig):
    """A local stand-in for Khalti: its tables, admin, pages and system checks."""

    name = "django_khalti.sandbox"
    #: The label the sandbox's tables and migrations were made under.
    label = "khalti_sandbox"
    verbose_name = "Khalti sandbox (a local stand-in for Khalti)"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Register the checks that keep the sandbox out of production."""
        from django.core import checks

        from .checks import check_sandbox

        checks.register(check_sandbox, "khalti_sandbox")
