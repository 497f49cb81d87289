"""Checks of what the two keys' shapes say (:mod:`django_khalti.keys`): W002 a test key
in production, E009 no public key for a widget in use, E010 a key in the other's
shape, E011 the two keys equal, W009 keys for another Khalti than ``BASE_URL``.

A bare key (no ``test_``/``live_`` prefix, as the ePayment sandbox's dashboard may
give) says nothing, and none of these fires for it. No message shows a key.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks

from ..keys import looks_live, looks_public, looks_secret, looks_test
from .config import base_url_host
from .urls import root_urlconf_file, serves_widget_only, template_using_widget

#: Khalti's sandbox hosts (``dev.khalti.com``, and the older ``a.khalti.com``): test keys only.
SANDBOX_HOSTS = ("dev.khalti.com", "a.khalti.com")
#: Khalti's live host: live keys only.
LIVE_HOSTS = ("khalti.com", "www.khalti.com")

_SWAP_HINT = (
    "Khalti's dashboard gives two keys: SECRET_KEY takes the one starting "
    "'live_secret_key_' (or 'test_secret_key_'), PUBLIC_KEY the one starting "
    "'live_public_key_' (or 'test_public_key_'). The secret key never goes in a page: "
    "{% khalti_widget %} refuses to publish a key shaped like one."
)


def check_test_key_in_production(config: dict[str, Any]) -> list[checks.CheckMessage]:
    """W002: a secret key shaped like a test key while ``DEBUG`` is False."""
    if settings.DEBUG or not looks_test(config.get("SECRET_KEY")):
        return []
    return [
        checks.Warning(
            "KHALTI['SECRET_KEY'] is a test key while DEBUG is False.",
            hint="Use your live secret key in production.",
            id="django_khalti.W002",
        )
    ]


def _widget_use() -> str | None:
    """What tells that the widget is used: a template with its tag, or its URLs alone."""
    template = template_using_widget()
    if template:
        return f"the template {template!r} uses {{% khalti_widget %}}"
    if serves_widget_only():
        return f"{root_urlconf_file()} includes django_khalti.widget_urls"
    return None


def check_public_key_for_widget(config: dict[str, Any]) -> list[checks.CheckMessage]:
    """E009: no ``PUBLIC_KEY`` while a template uses the widget tag, or the URLconf
    includes ``django_khalti.widget_urls`` (the widget's URL without ePayment's).
    """
    public = config.get("PUBLIC_KEY")
    if isinstance(public, str) and public.strip():
        return []
    use = _widget_use()
    if use is None:
        return []
    return [
        checks.Error(
            f"KHALTI['PUBLIC_KEY'] is missing or empty, and {use}: the widget cannot "
            "be offered, and buyers are told payments are not available.",
            hint="Set it to your merchant public key (Khalti's dashboard, beside the "
            "secret key), e.g. from an environment variable.",
            id="django_khalti.E009",
        )
    ]


def check_swapped_keys(config: dict[str, Any]) -> list[checks.CheckMessage]:
    """E010: ``SECRET_KEY`` shaped like a public key, or ``PUBLIC_KEY`` like a secret one."""
    problems: list[checks.CheckMessage] = []
    if looks_public(config.get("SECRET_KEY")):
        problems.append(
            checks.Error(
                "KHALTI['SECRET_KEY'] is shaped like a public key (its prefix is "
                "'..._public_key_'): Khalti refuses every call made with it (HTTP 401).",
                hint=_SWAP_HINT,
                id="django_khalti.E010",
            )
        )
    if looks_secret(config.get("PUBLIC_KEY")):
        problems.append(
            checks.Error(
                "KHALTI['PUBLIC_KEY'] is shaped like a secret key (its prefix is "
                "'..._secret_key_'): the widget would publish it in the page's HTML, where "
                "anyone can take it and refund the shop's payments.",
                hint=_SWAP_HINT,
                id="django_khalti.E010",
            )
        )
    return problems


def check_equal_keys(config: dict[str, Any]) -> list[checks.CheckMessage]:
    """E011: ``SECRET_KEY`` and ``PUBLIC_KEY`` the same key."""
    secret, public = config.get("SECRET_KEY"), config.get("PUBLIC_KEY")
    if not (isinstance(secret, str) and isinstance(public, str) and secret.strip()):
        return []
    if secret.strip() != public.strip():
        return []
    return [
        checks.Error(
            "KHALTI['SECRET_KEY'] and KHALTI['PUBLIC_KEY'] are the same key: one of them is "
            "wrong, and if it is the secret key, the widget publishes it in the page's HTML.",
            hint=_SWAP_HINT,
            id="django_khalti.E011",
        )
    ]


def _mode(key: object) -> str | None:
    return "live" if looks_live(key) else "test" if looks_test(key) else None


def check_keys_match_khalti(config: dict[str, Any]) -> list[checks.CheckMessage]:
    """W009: a live key with Khalti's sandbox ``BASE_URL``, a test key with its live
    one, or one live key and one test key.
    """
    host = base_url_host(config)
    khalti = "test" if host in SANDBOX_HOSTS else "live" if host in LIVE_HOSTS else None
    modes = {name: _mode(config.get(name)) for name in ("SECRET_KEY", "PUBLIC_KEY")}
    problems = [
        f"KHALTI[{name!r}] is a {mode} key, but BASE_URL is Khalti's "
        f"{'sandbox' if khalti == 'test' else 'live site'} ({host}): Khalti refuses "
        "every call made with it (HTTP 401)."
        for name, mode in modes.items()
        if mode and khalti and mode != khalti
    ]
    if None not in modes.values() and len(set(modes.values())) == 2:
        problems.append(
            f"KHALTI['SECRET_KEY'] is a {modes['SECRET_KEY']} key, but KHALTI['PUBLIC_KEY'] "
            f"a {modes['PUBLIC_KEY']} key: the widget's payments are made at one Khalti "
            "and verified at the other, which knows none of them."
        )
    return [
        checks.Warning(
            problem,
            hint="Use your test keys (test_...) with Khalti's sandbox, "
            "'https://dev.khalti.com/', and your live keys (live_...) with "
            "'https://khalti.com/' (dj-khalti's default when BASE_URL is unset).",
            id="django_khalti.W009",
        )
        for problem in problems
    ]


def check_key_shapes(config: dict[str, Any]) -> list[checks.CheckMessage]:
    """W002, E009, E010, E011 and W009, in that order."""
    return [
        *check_test_key_in_production(config),
        *check_public_key_for_widget(config),
        *check_swapped_keys(config),
        *check_equal_keys(config),
        *check_keys_match_khalti(config),
    ]
