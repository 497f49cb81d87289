"""``khalti_settings``: a lazy view over ``settings.KHALTI`` with defaults.

Values are read from ``django.conf.settings`` on every access, so
``override_settings(KHALTI=...)`` takes effect immediately in tests.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.utils.module_loading import import_string

from .exceptions import KhaltiConfigurationError

DEFAULTS: dict[str, Any] = {
    "SECRET_KEY": None,
    "PUBLIC_KEY": None,
    "BASE_URL": "https://khalti.com/",
    "TIMEOUT": 10,
    "AMOUNT_RESOLVER": None,
    "WEBSITE_URL": None,
    "SUCCESS_URL": None,
    "FAILURE_URL": None,
}

#: Settings holding a dotted path, resolved with ``import_string`` on access.
IMPORT_STRINGS = {"AMOUNT_RESOLVER"}


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

    @property
    def stale_after(self) -> float:
        """Seconds after which a claim on a payment counts as abandoned.

        A request to Khalti may take up to ``TIMEOUT`` to connect and ``TIMEOUT``
        between bytes of the answer; a claim older than twice that plus a margin
        belongs to a worker that died.
        """
        return float(self.TIMEOUT) * 2 + 10


khalti_settings = KhaltiSettings()
