"""The sandbox's system checks: it must not be installed where it could serve a buyer.

``khalti_sandbox.E001``: installed while ``DEBUG`` is off. ``khalti_sandbox.E002``: a key
of ``settings.KHALTI`` shaped like a live key. Registered by the app's ``ready()``;
DB-free, as dj-khalti's own checks. The same rules refuse every request at run time
(:mod:`django_khalti.sandbox.guard`), for servers that run no checks.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks

from .guard import live_key_settings

#: The hint of both: the one way to keep the sandbox and production apart.
HINT = (
    'Add "django_khalti.sandbox" to INSTALLED_APPS, and include its URLs, only in '
    "development settings (DEBUG = True, test keys): for example inside 'if DEBUG:'."
)


def check_sandbox(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """E001 ``DEBUG`` off, E002 a live-shaped ``SECRET_KEY`` or ``PUBLIC_KEY``."""
    errors: list[checks.CheckMessage] = []
    if not settings.DEBUG:
        errors.append(
            checks.Error(
                "django_khalti.sandbox is installed while DEBUG is off: it marks any "
                "payment paid without moving money, and refuses to serve.",
                hint=HINT,
                id="khalti_sandbox.E001",
            )
        )
    for name in live_key_settings():
        errors.append(
            checks.Error(
                f"django_khalti.sandbox is installed while KHALTI['{name}'] is a live key "
                "(live_...): it refuses to serve next to live keys.",
                hint="Install the sandbox only in settings that hold no live key: live keys "
                "take real payments, at Khalti's own BASE_URL, https://khalti.com/. (The "
                "tutorial installs it under 'if DEBUG and not "
                'os.environ.get("KHALTI_SECRET_KEY")\'.)',
                id="khalti_sandbox.E002",
            )
        )
    return errors
