"""Checks of the ``KHALTI`` settings' values, one setting (or two) at a time:
E001 to E007's settings part, E008 (an unknown key), W001.
"""

from __future__ import annotations

import difflib
import ipaddress
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core import checks
from django.utils.module_loading import import_string

from ..client import MAX_TIMEOUT, key_is_clean, timeout_is_sane
from ..conf import DEFAULTS, MAX_ASK_SPACING, ask_spacing_is_sane, website_url_is_sane
from ..keys import looks_public, looks_secret
from .urls import serves_epayment


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine (``localhost``, ``127.0.0.1``, ``::1``)."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def secret_key_problems(config: dict[str, Any]) -> list[checks.CheckMessage]:
    """E001: a ``SECRET_KEY`` missing, blank, or with whitespace or control characters."""
    secret = config.get("SECRET_KEY")
    if not isinstance(secret, str) or not secret.strip():
        return [
            checks.Error(
                "KHALTI['SECRET_KEY'] is missing or empty.",
                hint="Set it to your merchant secret key, e.g. from an environment variable.",
                id="django_khalti.E001",
            )
        ]
    if not key_is_clean(secret):
        # The message never shows the key (check output goes to logs and CI).
        return [
            checks.Error(
                "KHALTI['SECRET_KEY'] has whitespace or control characters around or in it.",
                hint="A key read from a file often ends with a newline: .strip() it. Every "
                "call to Khalti would fail otherwise.",
                id="django_khalti.E001",
            )
        ]
    return []


def _shown(key: object) -> str:
    """How a message names a ``KHALTI`` key: its repr, unless it is shaped like a Khalti key."""
    return "(a Khalti key)" if looks_secret(key) or looks_public(key) else repr(key)


def check_unknown_keys(config: dict[str, Any]) -> list[checks.CheckMessage]:
    """E008: a key of ``KHALTI`` that dj-khalti does not read, with the known one it is
    closest to (``SUCESS_URL``: ``SUCCESS_URL``), found by :mod:`difflib`.
    """
    problems: list[checks.CheckMessage] = []
    for key in config:
        if key in DEFAULTS:
            continue
        spelled = str(key).strip().upper()
        close = [spelled] if spelled in DEFAULTS else difflib.get_close_matches(spelled, DEFAULTS)
        message = f"KHALTI[{_shown(key)}] is an unknown key"
        if close:
            message += f"; did you mean {close[0]}?"
            hint = f"Rename it to {close[0]!r}: dj-khalti ignores {_shown(key)}, so {close[0]} "
            hint += "keeps its default."
        else:
            message += "."
            hint = f"dj-khalti ignores it. Its settings are: {', '.join(DEFAULTS)}."
        problems.append(checks.Error(message, hint=hint, id="django_khalti.E008"))
    return problems


def check_resolver(config: dict[str, Any]) -> list[checks.CheckMessage]:
    """E002: no ``AMOUNT_RESOLVER``, or one that cannot be imported or called."""
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
    if not problem:
        return []
    return [
        checks.Error(
            f"KHALTI['AMOUNT_RESOLVER'] {problem}.",
            hint="Name a function order_amount(request, product_identity) that returns "
            "KhaltiOrder(reference, amount) (django_khalti.orders), or the amount in paisa "
            "your shop expects for the order as an int, or None for an unknown order.",
            id="django_khalti.E002",
        )
    ]


def base_url_host(config: dict[str, Any]) -> str | None:
    """The host of ``BASE_URL`` (lower case), or None when it is no http(s) URL with one."""
    base_url = config.get("BASE_URL", DEFAULTS["BASE_URL"])
    try:
        parts = urlsplit(base_url) if isinstance(base_url, str) else None
        host = parts.hostname if parts else None
    except ValueError:
        return None
    if parts is None or parts.scheme not in ("http", "https") or not host:
        return None
    return host


def check_base_url(config: dict[str, Any]) -> list[checks.CheckMessage]:
    """E003: ``BASE_URL`` not an http(s) URL with a host; W001: http to a remote host."""
    host = base_url_host(config)
    if host is None:
        return [
            checks.Error(
                "KHALTI['BASE_URL'] is not an http(s) URL with a host.",
                hint="Use Khalti's host root, e.g. 'https://khalti.com/'.",
                id="django_khalti.E003",
            )
        ]
    base_url = str(config.get("BASE_URL", DEFAULTS["BASE_URL"]))
    if not base_url.lower().startswith("https:") and not is_loopback(host):
        return [
            checks.Warning(
                f"KHALTI['BASE_URL'] (host {host!r}) does not use https.",
                hint="Khalti must be called over https: the secret key travels in every request.",
                id="django_khalti.W001",
            )
        ]
    return []


def _positive_seconds(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and 0 < value < float("inf")  # NaN compares False
    )


def check_timeout(config: dict[str, Any]) -> list[checks.CheckMessage]:
    """E004: ``TIMEOUT``, ``SIGNAL_GRACE_PERIOD`` or ``ASK_SPACING`` out of bounds."""
    problems: list[checks.CheckMessage] = []
    if not timeout_is_sane(config.get("TIMEOUT", DEFAULTS["TIMEOUT"])):
        problems.append(
            checks.Error(
                f"KHALTI['TIMEOUT'] must be a number of seconds above 0 and at most {MAX_TIMEOUT}.",
                hint="Khalti's own clients use 30; the default is 10.",
                id="django_khalti.E004",
            )
        )
    if not _positive_seconds(config.get("SIGNAL_GRACE_PERIOD", DEFAULTS["SIGNAL_GRACE_PERIOD"])):
        problems.append(
            checks.Error(
                "KHALTI['SIGNAL_GRACE_PERIOD'] must be a positive number of seconds.",
                hint="How long a signal's first delivery may run before it is delivered "
                "again; the default is 60.",
                id="django_khalti.E004",
            )
        )
    if not ask_spacing_is_sane(config.get("ASK_SPACING", DEFAULTS["ASK_SPACING"])):
        problems.append(
            checks.Error(
                "KHALTI['ASK_SPACING'] must be a number of seconds above 0 and at most "
                f"{MAX_ASK_SPACING}.",
                hint="The least time between two questions to Khalti about one payment; "
                "the default is 10.",
                id="django_khalti.E004",
            )
        )
    return problems


def check_website_url(config: dict[str, Any]) -> list[checks.CheckMessage]:
    """E005: ``WEBSITE_URL`` no origin, or unset while the ePayment pages are served with DEBUG off."""
    website_url = config.get("WEBSITE_URL")
    if website_url:
        if website_url_is_sane(website_url):
            return []
        problem = "is not an http(s) origin such as 'https://shop.example.com'"
    elif not settings.DEBUG and serves_epayment():
        problem = "is not set, and the ePayment pages are served with DEBUG off"
    else:
        return []
    return [
        checks.Error(
            f"KHALTI['WEBSITE_URL'] {problem}.",
            hint="Set it to the shop's public origin: Khalti sends buyers back there, and "
            "it is never taken from the request's Host header. A widget-only shop can "
            "include 'django_khalti.widget_urls' instead of 'django_khalti.urls'.",
            id="django_khalti.E005",
        )
    ]


def check_widget_script_url(config: dict[str, Any]) -> list[checks.CheckMessage]:
    """E006: ``WIDGET_SCRIPT_URL`` neither an https URL nor a path on this site."""
    url = config.get("WIDGET_SCRIPT_URL", DEFAULTS["WIDGET_SCRIPT_URL"])
    good = False
    # (A backslash: browsers read "/\\host/x.js" as "//host/x.js", another site.)
    if isinstance(url, str) and url.isprintable() and url.isascii() and not {" ", "\\"} & set(url):
        try:
            parts = urlsplit(url)
            host = parts.hostname or ""
        except ValueError:
            parts, host = None, ""
        if parts is not None:
            good = (parts.scheme == "https" and bool(host)) or (
                parts.scheme == "http" and is_loopback(host)
            )
            good = good or (not parts.scheme and url.startswith("/") and not url.startswith("//"))
    if good:
        return []
    return [
        checks.Error(
            "KHALTI['WIDGET_SCRIPT_URL'] is not an https URL or a path on this site.",
            hint="Khalti's loader, e.g. the default "
            f"{DEFAULTS['WIDGET_SCRIPT_URL']!r}; a copy you serve may be a path such as "
            "'/static/khalti-checkout.iffe.js'.",
            id="django_khalti.E006",
        )
    ]
