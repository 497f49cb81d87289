"""Settings of the project the tests and the demo run.

``DJANGO_DEMO=1`` (set by ``make demo``) turns on the demo: DEBUG, dj-khalti
talking to the Khalti sandbox this project serves under ``/sandbox/`` (or to
Khalti's real sandbox when ``KHALTI_SECRET_KEY`` is set), and the shop's
success and failure pages. Without it, ``KHALTI`` is what the tests expect;
the sandbox app and the shop's pages are installed either way, inert unless
``KHALTI["BASE_URL"]`` is pointed at ``<server>/sandbox/`` (as a live-server
test may do).

The database comes from ``DATABASE_URL``: unset (or ``sqlite:///path``) for
SQLite, ``postgres://root@127.0.0.1:5432/test`` or
``mysql://root@127.0.0.1:3306/test`` for the other two.
"""

import os
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlsplit

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "testproject-not-secret"
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_khalti",
    "shop",
    # Khalti's part, played on this server for the demo (django_khalti/sandbox).
    "django_khalti.sandbox",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    # The language from Accept-Language: dj-khalti answers in Nepali as well (locale/ne).
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "testproject.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


def database_from_url(url: str) -> dict:
    """A Django DATABASES entry from a ``scheme://user:password@host:port/name`` URL."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        name = unquote(parts.path[1:]) or str(BASE_DIR / "db.sqlite3")
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": name,
            # A file, not memory, so that concurrent tests share one database;
            # one per test run, so that two runs never share it.
            "TEST": {
                "NAME": str(Path(tempfile.gettempdir()) / f"dj-khalti-test-{os.getpid()}.sqlite3")
            },
            "OPTIONS": {
                "timeout": 30,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    engine = {
        "postgres": "django.db.backends.postgresql",
        "postgresql": "django.db.backends.postgresql",
        "mysql": "django.db.backends.mysql",
    }[parts.scheme]
    entry = {
        "ENGINE": engine,
        "NAME": unquote(parts.path[1:]),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
    }
    # One test database per run, so that two runs on one server never collide.
    entry["TEST"] = {"NAME": f"test_{entry['NAME']}_{os.getpid()}"}
    if engine.endswith("mysql"):
        # Django's default isolation on MySQL/MariaDB is READ COMMITTED;
        # DJANGO_DB_ISOLATION="repeatable read" runs at the server's own default
        # (.ci/run does, for the concurrency and reconcile tests).
        isolation = os.environ.get("DJANGO_DB_ISOLATION") or "read committed"
        entry["OPTIONS"] = {"charset": "utf8mb4", "isolation_level": isolation}
        entry["TEST"].update(CHARSET="utf8mb4", COLLATION="utf8mb4_unicode_ci")
    return entry


DATABASES = {"default": database_from_url(os.environ.get("DATABASE_URL") or "sqlite://")}
# A server started by the tests (tests/rig.py: gunicorn) runs on the database
# pytest-django created: DJANGO_DATABASE_NAME names it (the test database's NAME).
if os.environ.get("DJANGO_DATABASE_NAME"):
    DATABASES["default"]["NAME"] = os.environ["DJANGO_DATABASE_NAME"]
# Connections: Django's default (a new connection per request, CONN_MAX_AGE 0) unless
# DJANGO_CONN_MAX_AGE=<seconds> keeps them, or DJANGO_DB_POOL=1 (PostgreSQL only) uses
# Django's psycopg pool, OPTIONS {"pool": True} (psycopg[pool]; CONN_MAX_AGE stays 0,
# which the pool requires). The benchmark (bench/run.py) runs the defaults and the pool.
if os.environ.get("DJANGO_CONN_MAX_AGE"):
    DATABASES["default"]["CONN_MAX_AGE"] = int(os.environ["DJANGO_CONN_MAX_AGE"])
if os.environ.get("DJANGO_DB_POOL") == "1" and "postgresql" in DATABASES["default"]["ENGINE"]:
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = True
# DJANGO_PG_OPTIONS: libpq ``options`` for PostgreSQL sessions. Only the benchmark sets it
# (``-c synchronous_commit=off``, to show what flushing commits costs); never in production.
if os.environ.get("DJANGO_PG_OPTIONS") and "postgresql" in DATABASES["default"]["ENGINE"]:
    DATABASES["default"].setdefault("OPTIONS", {})["options"] = os.environ["DJANGO_PG_OPTIONS"]

AUTH_PASSWORD_VALIDATORS = []
LANGUAGE_CODE = "en"
LANGUAGES = [("en", "English"), ("ne", "Nepali")]
TIME_ZONE = "Asia/Kathmandu"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

KHALTI = {
    "SECRET_KEY": os.environ.get("KHALTI_SECRET_KEY", "test_secret_key_testproject"),
    "PUBLIC_KEY": os.environ.get("KHALTI_PUBLIC_KEY", "test_public_key_testproject"),
    "BASE_URL": os.environ.get("KHALTI_BASE_URL", "https://khalti.test/"),
    # KHALTI_TIMEOUT: the rig (tests/rig.py) runs with a short one.
    "TIMEOUT": float(os.environ["KHALTI_TIMEOUT"]) if os.environ.get("KHALTI_TIMEOUT") else 5,
    "AMOUNT_RESOLVER": "shop.khalti.order_amount",
    # The shop's public origin: Khalti's return URL is built on it, never on the Host header.
    "WEBSITE_URL": os.environ.get("KHALTI_WEBSITE_URL", "http://testserver"),
    # KHALTI_SIGNAL_GRACE_PERIOD: the rig's worker-timeout test waits less than a minute.
    "SIGNAL_GRACE_PERIOD": float(os.environ.get("KHALTI_SIGNAL_GRACE_PERIOD") or 60),
    # Tests ask Khalti about one payment again at once, where a buyer's reloads and
    # cron runs are seconds apart: a millisecond's spacing, as the throttle is off.
    # The spacing's own tests (tests/services/test_ask_spacing.py) set the default.
    "ASK_SPACING": float(os.environ.get("KHALTI_ASK_SPACING") or 0.001),
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django_khalti": {"handlers": ["console"], "level": "INFO"}},
}

# DJANGO_LOG_FILE: everything at DEBUG into this file as well (the rig's servers).
if os.environ.get("DJANGO_LOG_FILE"):
    LOGGING["handlers"]["file"] = {
        "class": "logging.FileHandler",
        "filename": os.environ["DJANGO_LOG_FILE"],
        "level": "DEBUG",
        "formatter": "process",
    }
    LOGGING["formatters"] = {
        "process": {"format": "%(asctime)s %(process)d %(levelname)s %(name)s %(message)s"},
    }
    LOGGING["root"] = {"handlers": ["file"], "level": "DEBUG"}
    LOGGING["loggers"]["django_khalti"].update(
        handlers=["console", "file"], level="DEBUG", propagate=False
    )

# Test-only fault injection (tests/system/test_reliability.py): with
# TESTPROJECT_FAIL_SETTLE_IF=<path>, while that file exists, every UPDATE that
# changes a payment's status fails with OperationalError, as if the database
# went away after Khalti answered (see testproject/faults.py). Never set otherwise.
if os.environ.get("TESTPROJECT_FAIL_SETTLE_IF"):
    MIDDLEWARE = ["testproject.faults.FailPaymentSettleMiddleware", *MIDDLEWARE]
# TESTPROJECT_SLOW_RECEIVER_IF=<path>: while that file exists, a payment_verified
# receiver connected ahead of the shop's sleeps 10 s (testproject/faults.py), long
# enough for gunicorn's --timeout to kill the worker mid-delivery.

# The test project runs with a sandbox-style key by design. Its tests run with DEBUG
# off (pytest-django's default), with the sandbox installed, and try dj-khalti's checks
# with live-shaped keys: the sandbox's start-up errors are silenced here, its refusal
# at request time stands (a test that reaches the sandbox turns DEBUG on).
SILENCED_SYSTEM_CHECKS = ["django_khalti.W002", "khalti_sandbox.E001", "khalti_sandbox.E002"]


# --- the demo (``make demo``) ---------------------------------------------------------

#: Khalti's widget script when Khalti's real sandbox is used; otherwise the demo's
#: widget loads the local stand-in (``khalti_sandbox:checkout-js``), so that
#: ``make demo`` works offline. KHALTI["WIDGET_SCRIPT_URL"] is set from it below.
KHALTI_CHECKOUT_JS_URL = (
    "https://khalti.s3.ap-south-1.amazonaws.com/KPG/dist/2020.12.17.0.0.0/khalti-checkout.iffe.js"
)
SHOP_KHALTI_CHECKOUT_JS = None

DEMO = os.environ.get("DJANGO_DEMO", "") == "1"
if DEMO:
    DEBUG = True
    #: Where the demo is served; the local sandbox lives under /sandbox/ there.
    DEMO_ADDR = os.environ.get("DJANGO_DEMO_ADDR", "127.0.0.1:8000")
    if os.environ.get("KHALTI_SECRET_KEY"):
        # Khalti's real sandbox, with the keys of your sandbox merchant account.
        if not os.environ.get("KHALTI_PUBLIC_KEY"):
            from django.core.exceptions import ImproperlyConfigured

            raise ImproperlyConfigured(
                "The demo against Khalti's sandbox needs KHALTI_PUBLIC_KEY as well as "
                "KHALTI_SECRET_KEY (the widget runs with the public key)."
            )
        KHALTI["BASE_URL"] = os.environ.get("KHALTI_BASE_URL", "https://dev.khalti.com/")
        KHALTI["TIMEOUT"] = 15  # Khalti's sandbox over the internet, not a local fake
        SHOP_KHALTI_CHECKOUT_JS = KHALTI_CHECKOUT_JS_URL
    else:
        KHALTI.update(
            SECRET_KEY="test_secret_key_dj_khalti_demo_sandbox",
            PUBLIC_KEY="test_public_key_dj_khalti_demo_sandbox",
            BASE_URL=os.environ.get("KHALTI_BASE_URL", f"http://{DEMO_ADDR}/sandbox/"),
        )
    # The demo serves the sandbox: its start-up errors are its own again.
    SILENCED_SYSTEM_CHECKS = ["django_khalti.W002"]
    KHALTI.update(SUCCESS_URL="shop:payment-success", FAILURE_URL="shop:payment-failure")
    KHALTI["WIDGET_SCRIPT_URL"] = SHOP_KHALTI_CHECKOUT_JS or "/sandbox/khalti-checkout.js"
    KHALTI["WEBSITE_URL"] = os.environ.get("KHALTI_WEBSITE_URL", f"http://{DEMO_ADDR}")
