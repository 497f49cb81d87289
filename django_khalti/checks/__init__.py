"""System checks for the ``KHALTI`` settings. They never touch the database."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any
from urllib.parse import urlsplit

from django.apps import AppConfig
from django.conf import settings
from django.core import checks
from django.db import connections
from django.http import HttpRequest, HttpResponse
from django.shortcuts import resolve_url
from django.test import RequestFactory
from django.urls import NoReverseMatch, reverse
from django.utils.module_loading import import_string

from .client import MAX_TIMEOUT, key_is_clean, timeout_is_sane
from .conf import DEFAULTS, MAX_ASK_SPACING, ask_spacing_is_sane, website_url_is_sane
from .decorators import COOP_HEADER, allow_khalti_popups, keeps_popup_opener


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_secret_key(config: dict[str, Any]) -> list[checks.CheckMessage]:
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
    if secret.lower().startswith("test_") and not settings.DEBUG:
        return [
            checks.Warning(
                "KHALTI['SECRET_KEY'] is a test key while DEBUG is False.",
                hint="Use your live secret key in production.",
                id="django_khalti.W002",
            )
        ]
    return []


def _check_resolver(config: dict[str, Any]) -> list[checks.CheckMessage]:
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


def _check_base_url(config: dict[str, Any]) -> list[checks.CheckMessage]:
    base_url = config.get("BASE_URL", DEFAULTS["BASE_URL"])
    try:
        parts = urlsplit(base_url) if isinstance(base_url, str) else None
        host = parts.hostname if parts else None
    except ValueError:
        parts, host = None, None
    if parts is None or parts.scheme not in ("http", "https") or not host:
        return [
            checks.Error(
                "KHALTI['BASE_URL'] is not an http(s) URL with a host.",
                hint="Use Khalti's host root, e.g. 'https://khalti.com/'.",
                id="django_khalti.E003",
            )
        ]
    if parts.scheme != "https" and not _is_loopback(host):
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


def _check_timeout(config: dict[str, Any]) -> list[checks.CheckMessage]:
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


def _serves_epayment() -> bool:
    """Whether the project's URLconf includes dj-khalti's ePayment pages."""
    try:
        reverse("django_khalti:epayment-return")
    except NoReverseMatch:
        return False
    return True


def _check_website_url(config: dict[str, Any]) -> list[checks.CheckMessage]:
    website_url = config.get("WEBSITE_URL")
    if website_url:
        if website_url_is_sane(website_url):
            return []
        problem = "is not an http(s) origin such as 'https://shop.example.com'"
    elif not settings.DEBUG and _serves_epayment():
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


def _check_widget_script_url(config: dict[str, Any]) -> list[checks.CheckMessage]:
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
                parts.scheme == "http" and _is_loopback(host)
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


def _check_page_urls(config: dict[str, Any]) -> list[checks.CheckMessage]:
    """E007: ``SUCCESS_URL`` or ``FAILURE_URL`` that the views could not resolve.

    Read exactly as the ePayment return view and the widget tag read them, with
    Django's ``resolve_url``: a URL name is reversed, and a value with a ``/`` or
    a ``.`` (a path, a URL) is taken as it is and not checked here, since a page
    of the site may be served by something other than this URLconf.
    """
    problems: list[checks.CheckMessage] = []
    for name in ("SUCCESS_URL", "FAILURE_URL"):
        value = config.get(name)
        if not value:
            continue
        try:
            resolve_url(value)
        except NoReverseMatch:
            problem = "names no URL of ROOT_URLCONF (or one that needs arguments)"
        except Exception as exc:  # e.g. a number: the view would answer 500
            problem = f"cannot be resolved ({type(exc).__name__}: {exc})"
        else:
            continue
        problems.append(
            checks.Error(
                f"KHALTI[{name!r}] = {value!r} {problem}.",
                hint="Give a URL name without arguments ('shop:thanks', namespace "
                "included), a path on this site ('/thanks/') or a URL. Otherwise the "
                "buyer is shown dj-khalti's own result page instead.",
                id="django_khalti.E007",
            )
        )
    return problems


def _a_host() -> str:
    """A host name ``ALLOWED_HOSTS`` accepts, for a request made up by a check."""
    for host in settings.ALLOWED_HOSTS:
        if host and host != "*":
            return str(host).lstrip(".")  # ".example.com" allows example.com itself
    return "localhost"


def _middleware_coop() -> str | None:
    """The ``Cross-Origin-Opener-Policy`` the project's middleware leaves on a response of
    a view decorated with ``allow_khalti_popups``; None when that cannot be told (a
    middleware answered instead of the view, or raised: nothing to say then).
    """
    ran = []

    @allow_khalti_popups
    def pay_page(request: HttpRequest) -> HttpResponse:
        ran.append(True)
        return HttpResponse("")

    def no_queries(*args: Any) -> Any:
        raise RuntimeError("a system check runs no queries")

    try:
        # As BaseHandler.load_middleware chains them (process_view hooks aside), but an
        # exception is not turned into a 500 response here (which would be logged, and
        # mailed to ADMINS): it only means the check cannot tell.
        handler: Any = pay_page
        for path in reversed(settings.MIDDLEWARE):
            handler = import_string(path)(handler)
        request = RequestFactory().get("/", secure=True, headers={"host": _a_host()})
        with ExitStack() as stack:  # a middleware that queries cannot be told: skipped
            for connection in connections.all():
                stack.enter_context(connection.execute_wrapper(no_queries))
            response = handler(request)
    except Exception:  # MiddlewareNotUsed, an async-only middleware, anything: cannot tell
        return None
    if not ran or not hasattr(response, "headers"):
        return None
    return str(response.headers.get(COOP_HEADER, ""))


def _check_popups_survive_middleware() -> list[checks.CheckMessage]:
    coop = _middleware_coop()
    if coop is None or keeps_popup_opener(coop):
        return []
    return [
        checks.Warning(
            f"A middleware in MIDDLEWARE sends 'Cross-Origin-Opener-Policy: {coop}' even on "
            "views decorated with django_khalti.decorators.allow_khalti_popups.",
            hint="Payments in the Khalti widget's bank tabs are then lost: the buyer pays in "
            "a popup, and the page never hears of it. Let the view's header stand (set it "
            "with setdefault, as Django's SecurityMiddleware does), or exempt the pay pages.",
            id="django_khalti.W003",
        )
    ]


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
    ``FAILURE_URL`` naming no URL. Warnings: W001 ``BASE_URL``
    without https to a remote host, W002 a test key while ``DEBUG`` is False, W003
    a middleware overriding the ``Cross-Origin-Opener-Policy`` of
    ``allow_khalti_popups``.
    """
    config = getattr(settings, "KHALTI", None)
    if config is not None and not isinstance(config, dict):
        return [
            checks.Error(
                "settings.KHALTI must be a dict.",
                hint="KHALTI = {'SECRET_KEY': ..., 'AMOUNT_RESOLVER': ...}",
                id="django_khalti.E001",
            )
        ]
    config = config or {}
    return [
        *_check_secret_key(config),
        *_check_resolver(config),
        *_check_base_url(config),
        *_check_timeout(config),
        *_check_website_url(config),
        *_check_widget_script_url(config),
        *_check_page_urls(config),
        *_check_popups_survive_middleware(),
    ]


@checks.register("django_khalti")
def check_wiring(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """Check how the project uses dj-khalti (tag ``django_khalti``, every ``check``):
    W005 no receiver of ``payment_verified``, W006 dj-khalti's URLs not included.

    Both are warnings, not errors: a shop may read ``Payment`` rows instead of
    hearing the signal, or call :mod:`django_khalti.services` from views of its own
    instead of serving dj-khalti's; it silences the warning then. Receivers are
    connected by the time checks run (``AppConfig.ready``, or a module the models
    import): a receiver connected later, e.g. by a view module, is not seen.
    """
    return [*_check_receivers(), *_check_urls_included()]


def _check_receivers() -> list[checks.CheckMessage]:
    from .models import Payment
    from .signals import payment_verified

    if payment_verified.has_listeners(Payment):
        return []
    return [
        checks.Warning(
            "No receiver is connected to django_khalti.signals.payment_verified: payments "
            "verify, but orders stay unpaid.",
            hint="Connect one that marks the order paid, in your AppConfig.ready(): "
            "'from django_khalti.signals import payment_verified', then "
            "'@receiver(payment_verified, sender=Payment)' on a function "
            "mark_order_paid(sender, payment, **kwargs). See the Signals reference in "
            "dj-khalti's documentation.",
            id="django_khalti.W005",
        )
    ]


def _check_urls_included() -> list[checks.CheckMessage]:
    """W006: ``django_khalti:verify`` does not resolve.

    The widget tag posts to it, and the ePayment button and pages live beside it:
    without it the widget's payments are never verified (the buyer pays, the page
    gets a 404). Only a shop that serves none of dj-khalti's views (its own views
    call the services) has no need of it, hence a warning it can silence.
    """
    try:
        reverse("django_khalti:verify")
    except NoReverseMatch:
        return [
            checks.Warning(
                "dj-khalti's URLs are not in ROOT_URLCONF: 'django_khalti:verify' does not "
                "resolve, so the widget's payments cannot be verified and the ePayment "
                "pages are not served.",
                hint='Add path("khalti/", include("django_khalti.urls")) to your urls.py '
                '(a widget-only shop: include("django_khalti.widget_urls")), with its '
                "namespace, not its urlpatterns alone. A shop that only calls "
                "django_khalti.services from views of its own may silence this.",
                id="django_khalti.W006",
            )
        ]
    return []


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


@checks.register("django_khalti", deploy=True)
def check_deployment(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """``check --deploy`` (tag ``django_khalti``): W004, a new database connection for
    every request to PostgreSQL or MariaDB.
    """
    return _check_connections(settings.DATABASES)


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
