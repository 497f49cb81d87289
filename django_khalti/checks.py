"""System checks for the ``KHALTI`` settings. They never touch the database."""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core import checks
from django.utils.module_loading import import_string

LOOPBACK_NAMES = {"localhost"}


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@checks.register("django_khalti")
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    config = getattr(settings, "KHALTI", None)
    if not isinstance(config, dict):
        config = {}
    messages: list[checks.CheckMessage] = []

    secret = config.get("SECRET_KEY")
    if not secret or not isinstance(secret, str):
        messages.append(
            checks.Error(
                "KHALTI['SECRET_KEY'] is missing or empty.",
                hint="Set it to your merchant secret key, e.g. from an environment variable.",
                id="django_khalti.E001",
            )
        )
    elif secret.startswith("test_") and not settings.DEBUG:
        messages.append(
            checks.Warning(
                "KHALTI['SECRET_KEY'] is a test key while DEBUG is False.",
                hint="Use your live secret key in production.",
                id="django_khalti.W002",
            )
        )

    resolver = config.get("AMOUNT_RESOLVER")
    problem = None
    if not resolver:
        problem = "is missing"
    elif isinstance(resolver, str):
        try:
            resolver = import_string(resolver)
        except ImportError as exc:
            problem = f"cannot be imported ({exc})"
    if problem is None and not callable(resolver):
        problem = "is not callable"
    if problem:
        messages.append(
            checks.Error(
                f"KHALTI['AMOUNT_RESOLVER'] {problem}.",
                hint="Name a function order_amount(request, product_identity) -> int | None "
                "that returns the amount in paisa your shop expects for the order.",
                id="django_khalti.E002",
            )
        )

    base_url = config.get("BASE_URL", "https://khalti.com/")
    parts = urlsplit(str(base_url))
    if parts.scheme != "https" and not _is_loopback(parts.hostname or ""):
        messages.append(
            checks.Warning(
                f"KHALTI['BASE_URL'] {base_url!r} does not use https.",
                hint="Khalti must be called over https: the secret key travels in every request.",
                id="django_khalti.W001",
            )
        )
    return messages
