"""How the project uses dj-khalti: W005 no receiver of ``payment_verified``, W006
dj-khalti's URLs not included, W007 a receiver connected only once URLs are loaded.
"""

from __future__ import annotations

from django.apps import apps
from django.core import checks

from .urls import project_app, ready_method_of, resolves, root_urlconf_file


def check_receivers() -> list[checks.CheckMessage]:
    """W005: no receiver of ``payment_verified`` (for ``sender=Payment`` or any sender)."""
    from ..models import Payment
    from ..signals import payment_verified

    if payment_verified.has_listeners(Payment):
        return []
    return [
        checks.Warning(
            "No receiver is connected to django_khalti.signals.payment_verified: payments "
            "verify, but orders stay unpaid.",
            hint=f"Connect one that marks the order paid, in {ready_method_of(project_app())}: "
            "'from django_khalti.signals import payment_verified', then "
            "'@receiver(payment_verified, sender=Payment)' on a function "
            "mark_order_paid(sender, payment, **kwargs). See the Signals reference in "
            "dj-khalti's documentation.",
            id="django_khalti.W005",
        )
    ]


def check_late_receivers() -> list[checks.CheckMessage]:
    """W007: a receiver of one of dj-khalti's signals connected after every
    ``AppConfig.ready()`` had run, e.g. by a views module the URLconf imports.

    The URLconf is loaded first (as ``check``'s own URL checks load it), so that the
    receivers it connects are there to be seen.
    """
    from .. import signals

    resolves("django_khalti:verify")  # loads ROOT_URLCONF, and the views it imports
    problems: list[checks.CheckMessage] = []
    for name in ("payment_verified", "payment_failed", "payment_refunded", "payment_needs_review"):
        for module, receiver in getattr(signals, name).late_receivers():
            where = ready_method_of(apps.get_containing_app_config(module) or project_app())
            problems.append(
                checks.Warning(
                    f"{receiver}, a receiver of django_khalti.signals.{name}, is connected "
                    f"only once {module} is imported, after the apps were ready (e.g. by the "
                    "URLconf): processes that load no URLs (manage.py shell, "
                    "khalti_reconcile, a task worker) never call it, and their payments' "
                    "signals go unheard there.",
                    hint=f"Import the module that connects it from {where} (e.g. a "
                    "receivers.py of its own, not views.py), so that every process connects it.",
                    id="django_khalti.W007",
                )
            )
    return problems


def check_urls_included() -> list[checks.CheckMessage]:
    """W006: ``django_khalti:verify`` does not resolve.

    The widget tag posts to it, and the ePayment button and pages live beside it:
    without it the widget's payments are never verified (the buyer pays, the page
    gets a 404). Only a shop that serves none of dj-khalti's views (its own views
    call the services) has no need of it, hence a warning it can silence.
    """
    if resolves("django_khalti:verify"):
        return []
    return [
        checks.Warning(
            "dj-khalti's URLs are not in ROOT_URLCONF: 'django_khalti:verify' does not "
            "resolve, so the widget's payments cannot be verified and the ePayment "
            "pages are not served.",
            hint=f'Add path("khalti/", include("django_khalti.urls")) to {root_urlconf_file()} '
            '(a widget-only shop: include("django_khalti.widget_urls")), with its '
            "namespace, not its urlpatterns alone. A shop that only calls "
            "django_khalti.services from views of its own may silence this.",
            id="django_khalti.W006",
        )
    ]
