"""The app configuration: the label ``django_khalti`` and its system checks."""

from importlib.util import find_spec

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class DjangoKhaltiConfig(AppConfig):
    """dj-khalti's app: ``django_khalti`` in ``INSTALLED_APPS``; ids are 64-bit whatever the project's default."""

    name = "django_khalti"
    label = "django_khalti"
    verbose_name = _("Khalti payments")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Register the system checks (:mod:`django_khalti.checks`)."""
        from . import checks  # noqa: F401  (registers the system checks)

        if find_spec("drf_spectacular") is not None:
            from . import spectacular  # noqa: F401  (describes the API to drf-spectacular)
