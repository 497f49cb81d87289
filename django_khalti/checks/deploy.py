"""``check --deploy``'s checks: W004 a new database connection per request, W008 an
``http://`` ``WEBSITE_URL``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django.core import checks

from ..conf import website_url_is_sane

#: Database engines where opening a connection is a round trip of its own (or several).
SERVER_DATABASES = ("postgresql", "mysql")


def connections_per_request(databases: dict[str, Any]) -> bool:
    """Whether the ``default`` database of ``databases`` (``settings.DATABASES``) is a
    PostgreSQL or MariaDB/MySQL server that Django connects to anew for each request:
    ``CONN_MAX_AGE`` 0 (Django's default) and no connection pool.
    """
    default = databases.get("default") or {}
    engine = str(default.get("ENGINE", ""))
    if not any(name in engine for name in SERVER_DATABASES):
        return False
    options = default.get("OPTIONS") or {}
    return default.get("CONN_MAX_AGE", 0) == 0 and not options.get("pool")


def _check_connections(databases: dict[str, Any]) -> list[checks.CheckMessage]:
    if not connections_per_request(databases):
        return []
    return [
        checks.Warning(
            "DATABASES['default'] opens a new connection for every request "
            "(CONN_MAX_AGE = 0, no pool): a payment's verification then spends more time "
            "connecting to the database than on dj-khalti's own work.",
            hint="Keep connections: CONN_MAX_AGE = 60 with CONN_HEALTH_CHECKS = True, or on "
            'PostgreSQL with psycopg 3 (Django 5.1+) a pool: "OPTIONS": {"pool": True}. '
            "See the deployment guide in dj-khalti's documentation.",
            id="django_khalti.W004",
        )
    ]


def check_website_url_https(config: dict[str, Any]) -> list[checks.CheckMessage]:
    """W008: ``WEBSITE_URL`` with ``http://``: buyers come back from Khalti unencrypted."""
    website_url = config.get("WEBSITE_URL")
    if not website_url_is_sane(website_url) or urlsplit(str(website_url)).scheme != "http":
        return []
    return [
        checks.Warning(
            "KHALTI['WEBSITE_URL'] uses http://: Khalti sends buyers back to the shop "
            "unencrypted, and the pages they land on (and their cookies) can be read or "
            "changed on the way.",
            hint="Set it to your site's https:// origin in production, e.g. from an "
            "environment variable (KHALTI_WEBSITE_URL in the tutorial's settings).",
            id="django_khalti.W008",
        )
    ]
