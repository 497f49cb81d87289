"""``khalti_settings``: a lazy view over ``settings.KHALTI`` with defaults.

Values are read from ``django.conf.settings`` on every access, so
``override_settings(KHALTI=...)`` takes effect immediately in tests.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.utils.module_loading import import_string

from .exceptions import KhaltiConfigurationError
from .keys import looks_secret

DEFAULTS: dict[str, Any] = {
    "SECRET_KEY": None,
    "PUBLIC_KEY": None,
    "BASE_URL": "https://khalti.com/",
    "TIMEOUT": 10,
    "SIGNAL_GRACE_PERIOD": 60,
    "ASK_SPACING": 10,
    "AMOUNT_RESOLVER": None,
    "WEBSITE_URL": None,
    "SUCCESS_URL": None,
    "FAILURE_URL": None,
    "WIDGET_SCRIPT_URL": (
        "https://khalti.s3.ap-south-1.amazonaws.com/KPG/dist/2020.12.17.0.0.0/khalti-checkout.iffe.js"
    ),
}

#: Settings holding a dotted path, resolved with ``import_string`` on access.
IMPORT_STRINGS = {"AMOUNT_RESOLVER"}

#: The most calls to Khalti one claim on a payment makes: status, verify, status
#: again after a refused verify, and the two transaction records that tie a
#: "paid" status to the payment (the token's, the reported idx's); and for a
#: widget payment waiting for its order, the lookup of the link holding it.
CALLS_PER_CLAIM = 6
#: Seconds a claim may outlive its calls (database work, a busy host).
CLAIM_MARGIN = 10


#: The longest ``ASK_SPACING``: a buyer back from Khalti waits at most this long to be told.
MAX_ASK_SPACING = 60


def ask_spacing_is_sane(value: Any) -> bool:
    """Whether ``value`` is an ``ASK_SPACING``: seconds above 0 and at most :data:`MAX_ASK_SPACING`."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and 0 < value <= MAX_ASK_SPACING  # NaN compares False
    )


#: A host name's labels: letters, digits and inner hyphens (IDNA names in punycode).
_HOST_NAME = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*\.?", re.ASCII)


def website_url_is_sane(value: Any) -> bool:
    """Whether ``value`` is an origin Khalti can send buyers back to:
    ``http(s)://host[:port]``, nothing else (no user, path, query or fragment).
    """
    if not isinstance(value, str) or not value.isascii() or not value.isprintable():
        return False
    try:
        parts = urlsplit(value)
        host, port = parts.hostname or "", parts.port  # a port that is no number: ValueError
    except ValueError:
        return False
    try:
        bracketed = f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        if not _HOST_NAME.fullmatch(host):
            return False
        bracketed = host
    return bool(
        parts.scheme in ("http", "https")
        and parts.netloc.lower() in (bracketed, f"{bracketed}:{port}")  # no user, no junk
        and port != 0
        and parts.path in ("", "/")
        and not parts.query
        and not parts.fragment
        and " " not in value
    )


#: Why a ``PUBLIC_KEY`` shaped like a secret key is published nowhere (never the key itself).
SECRET_AS_PUBLIC_KEY = (
    "KHALTI['PUBLIC_KEY'] is shaped like a secret key (its prefix is '..._secret_key_'), "
    "so it is not published in any page: anyone could take it from the HTML and refund "
    "the shop's payments. Put the public key there, the secret key in SECRET_KEY "
    "(system check django_khalti.E010)."
)

#: Why a ``PUBLIC_KEY`` equal to ``SECRET_KEY`` is published nowhere (never the key itself).
SECRET_EQUALS_PUBLIC_KEY = (
    "KHALTI['PUBLIC_KEY'] and KHALTI['SECRET_KEY'] are the same key, so it is not "
    "published in any page: it may be the secret key, which refunds the shop's payments. "
    "Put the public key in PUBLIC_KEY (system check django_khalti.E011)."
)


def _same_key(public: object, secret: object) -> bool:
    """Whether ``public`` is the key ``secret`` (both set; surrounding whitespace aside)."""
    if not (isinstance(public, str) and isinstance(secret, str) and secret.strip()):
        return False
    return public.strip() == secret.strip()


class KhaltiSettings:
    """Attribute access to ``settings.KHALTI`` merged over :data:`DEFAULTS`."""

    def __getattr__(self, name: str) -> Any:
        if name not in DEFAULTS:
            raise AttributeError(f"Unknown Khalti setting: {name!r}")
        value = self.user_settings.get(name, DEFAULTS[name])
        if name in IMPORT_STRINGS and isinstance(value, str):
            try:
                value = import_string(value)
            except ImportError as exc:
                raise KhaltiConfigurationError(
                    f"KHALTI[{name!r}] = {value!r} cannot be imported: {exc}"
                ) from exc
        return value

    @property
    def user_settings(self) -> dict[str, Any]:
        """``settings.KHALTI`` as it is now (``{}`` when unset).

        Raises :class:`~django_khalti.exceptions.KhaltiConfigurationError` when it is not a dict.
        """
        config = getattr(settings, "KHALTI", None) or {}
        if not isinstance(config, dict):
            raise KhaltiConfigurationError("settings.KHALTI must be a dict.")
        return config

    def refuse_secret_as_public_key(self) -> None:
        """Raise :class:`~django_khalti.exceptions.KhaltiConfigurationError` when
        ``PUBLIC_KEY`` is shaped like a secret key (:func:`~django_khalti.keys.looks_secret`),
        or is ``SECRET_KEY`` itself (a bare key's shape says nothing); the error's message
        never shows the key.
        """
        public, secret = self.PUBLIC_KEY, self.SECRET_KEY
        if looks_secret(public):
            raise KhaltiConfigurationError(SECRET_AS_PUBLIC_KEY)
        if _same_key(public, secret):
            raise KhaltiConfigurationError(SECRET_EQUALS_PUBLIC_KEY)

    @property
    def public_key_for_page(self) -> str:
        """``PUBLIC_KEY``, to publish in a page (the widget's configuration).

        Raises :class:`~django_khalti.exceptions.KhaltiConfigurationError` when it is
        unset, not a string, shaped like a secret key or equal to ``SECRET_KEY``: the
        secret key is never published.
        """
        self.refuse_secret_as_public_key()
        key = self.PUBLIC_KEY
        if not key:
            raise KhaltiConfigurationError("KHALTI['PUBLIC_KEY'] is not set: the widget needs it.")
        if not isinstance(key, str):  # bytes would be published as "b'...'"
            raise KhaltiConfigurationError(
                f"KHALTI['PUBLIC_KEY'] must be a string, not {type(key).__name__}."
            )
        return key

    @property
    def stale_after(self) -> float:
        """Seconds after which a claim on a payment counts as abandoned.

        Every call to Khalti ends within ``TIMEOUT`` seconds, answer included (a
        wall-clock deadline), and a claim makes at most :data:`CALLS_PER_CLAIM`
        of them: a claim older than that, plus :data:`CLAIM_MARGIN`, belongs to
        a worker that died.
        """
        return float(self.TIMEOUT) * CALLS_PER_CLAIM + CLAIM_MARGIN

    @property
    def ask_spacing(self) -> timedelta:
        """``ASK_SPACING``: the least time between two claims on one payment, each of
        which asks Khalti about it (see :func:`~django_khalti.services.state.claim`).

        Raises :class:`~django_khalti.exceptions.KhaltiConfigurationError` when it is
        not a number of seconds above 0 and at most :data:`MAX_ASK_SPACING`.
        """
        value = self.ASK_SPACING
        if not ask_spacing_is_sane(value):
            raise KhaltiConfigurationError(
                f"KHALTI['ASK_SPACING'] must be a number of seconds above 0 and at most "
                f"{MAX_ASK_SPACING}, not {value!r}."
            )
        return timedelta(seconds=value)


khalti_settings = KhaltiSettings()
