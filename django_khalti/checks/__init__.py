"""System checks (tag ``django_khalti``): what a project gets wrong, named with how to
fix it. They never touch the database, and no message shows a key.

:func:`check_settings` reads the ``KHALTI`` settings (:mod:`.config`, the keys'
shapes in :mod:`.key_shapes`, the result pages in :mod:`.pages`, the middleware in
:mod:`.popups`); :func:`check_wiring` how the project uses dj-khalti (:mod:`.wiring`);
:func:`check_deployment` runs with ``check --deploy`` (:mod:`.deploy`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core import checks

from .config import (
    check_base_url,
    check_resolver,
    check_timeout,
    check_unknown_keys,
    check_website_url,
    check_widget_script_url,
    secret_key_problems,
)
from .deploy import (
    SERVER_DATABASES,
    _check_connections,
    check_website_url_https,
    connections_per_request,
)
from .key_shapes import check_key_shapes
from .pages import check_page_urls
from .popups import check_popups_survive_middleware
from .wiring import check_late_receivers, check_receivers, check_urls_included

__all__ = [
    "SERVER_DATABASES",
    "check_deployment",
    "check_settings",
    "check_wiring",
    "connections_per_request",
]


def _config() -> dict[str, Any] | list[checks.CheckMessage]:
    """``settings.KHALTI`` (``{}`` when unset), or E001 when it is not a dict."""
    config = getattr(settings, "KHALTI", None)
    if config is not None and not isinstance(config, dict):
        return [
            checks.Error(
                "settings.KHALTI must be a dict.",
                hint="KHALTI = {'SECRET_KEY': ..., 'AMOUNT_RESOLVER': ...}",
                id="django_khalti.E001",
            )
        ]
    return config or {}


@checks.register("django_khalti")
def check_settings(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """Check ``settings.KHALTI`` (tag ``django_khalti``); returns the problems found.

    Errors: E001 no secret key (or ``KHALTI`` not a dict), E002 no callable amount
    resolver, E003 ``BASE_URL`` not an http(s) URL, E004 ``TIMEOUT``,
    ``SIGNAL_GRACE_PERIOD`` or ``ASK_SPACING`` out of bounds, E005 ``WEBSITE_URL`` malformed,
    or unset while the ePayment pages are served with ``DEBUG`` off, E006
    ``WIDGET_SCRIPT_URL`` not an https URL or a path, E007 ``SUCCESS_URL`` or
    ``FAILURE_URL`` naming no URL, E008 an unknown key, E009 no public key for a
    widget in use, E010 a key in the other's shape, E011 the two keys equal.
    Warnings: W001 ``BASE_URL`` without https to a remote host, W002 a test key while
    ``DEBUG`` is False, W003 a middleware overriding the ``Cross-Origin-Opener-Policy``
    of ``allow_khalti_popups``, W009 keys for another Khalti than ``BASE_URL``.
    """
    config = _config()
    if isinstance(config, list):
        return config
    secret_problems = secret_key_problems(config)
    return [
        *check_unknown_keys(config),
        *secret_problems,
        *([] if secret_problems else check_key_shapes(config)),
        *check_resolver(config),
        *check_base_url(config),
        *check_timeout(config),
        *check_website_url(config),
        *check_widget_script_url(config),
        *check_page_urls(config),
        *check_popups_survive_middleware(),
    ]


@checks.register("django_khalti")
def check_wiring(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """Check how the project uses dj-khalti (tag ``django_khalti``, every ``check``):
    W005 no receiver of ``payment_verified``, W006 dj-khalti's URLs not included,
    W007 a receiver of its signals connected only once the URLconf is loaded.

    All are warnings, not errors: a shop may read ``Payment`` rows instead of
    hearing the signal, or call :mod:`django_khalti.services` from views of its own
    instead of serving dj-khalti's; it silences the warning then.
    """
    return [*check_urls_included(), *check_late_receivers(), *check_receivers()]


@checks.register("django_khalti", deploy=True)
def check_deployment(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """``check --deploy`` (tag ``django_khalti``): W004, a new database connection for
    every request to PostgreSQL or MariaDB; W008, an ``http://`` ``WEBSITE_URL``.
    """
    config = _config()
    https = check_website_url_https(config) if isinstance(config, dict) else []
    return [*_check_connections(settings.DATABASES), *https]
