"""``{% load khalti %}``: Khalti's widget and the ePayment button, one tag each.

``{% khalti_widget order.reference order.title %}`` renders a Pay button, the
widget's configuration (``json_script``), Khalti's loader script and the app's
``django_khalti/khalti-pay.js``, which forwards the widget's payload to
``django_khalti:verify``. The amount is always the shop's resolver's, never the
template's. ``{% khalti_epayment_button order.reference %}`` renders a POST form
to ``django_khalti:epayment-start``, with the CSRF token.

Both render overridable templates (``django_khalti/widget.html``,
``django_khalti/epayment_button.html``) and need the ``request`` in the
template's context (``django.template.context_processors.request``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from django import template
from django.conf import settings
from django.db import DatabaseError
from django.http import HttpRequest
from django.middleware.csrf import get_token
from django.shortcuts import resolve_url
from django.template.loader import render_to_string
from django.urls import NoReverseMatch, reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.safestring import SafeString
from django.utils.translation import gettext as _

from .. import services
from ..conf import khalti_settings
from ..decorators import popups_allowed
from ..exceptions import KhaltiAmountTooSmall, KhaltiConfigurationError, KhaltiError

logger = logging.getLogger(__name__)
register = template.Library()

#: The widget's tabs, as Khalti's loader names them (``paymentPreference``).
PAYMENT_PREFERENCES = ("KHALTI", "EBANKING", "MOBILE_BANKING", "CONNECT_IPS", "SCT")
#: The largest amount a browser's JavaScript number holds exactly (``Number.MAX_SAFE_INTEGER``).
MAX_SAFE_AMOUNT = 2**53 - 1
#: How many widgets this request rendered (their elements' ids are numbered).
_COUNTER = "_khalti_widgets"
#: Set on the request once a widget has rendered the scripts.
_SCRIPTS = "_khalti_widget_scripts"

_T = TypeVar("_T")


def _request(context: template.Context, tag: str) -> HttpRequest:
    request = context.get("request")
    if not isinstance(request, HttpRequest):
        raise KhaltiConfigurationError(
            f"{{% {tag} %}} needs the request in the template's context: add "
            "'django.template.context_processors.request' to the context processors "
            "of TEMPLATES, and render with render(request, ...)."
        )
    return request


def _preferences(value: str | Iterable[str] | None) -> list[str] | None:
    if value is None or value == "":
        return None
    names = value.split(",") if isinstance(value, str) else list(value)
    chosen = [str(name).strip().upper() for name in names if str(name).strip()]
    unknown = [name for name in chosen if name not in PAYMENT_PREFERENCES]
    if unknown:
        raise KhaltiConfigurationError(
            f"{{% khalti_widget %}}: payment_preference names {unknown!r}; Khalti's tabs "
            f"are {', '.join(PAYMENT_PREFERENCES)}."
        )
    return chosen or None


def _page_url(request: HttpRequest, target: str | None) -> str | None:
    """A page of this site to send the buyer to, or None: a ``next`` parameter passed
    in must not make an open redirect, nor run a ``javascript:`` URL.
    """
    if not target:
        return None
    try:
        url = str(resolve_url(target))
    except NoReverseMatch:
        logger.error("{%% khalti_widget %%}: the URL %r cannot be resolved.", target)
        return None
    if not url_has_allowed_host_and_scheme(
        url, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        logger.warning(
            "{%% khalti_widget %%}: %r is not a page of this site; the buyer stays on the "
            "pay page instead.",
            url,
        )
        return None
    return url


def _product_url(request: HttpRequest, product_url: str | None) -> str:
    if product_url:
        return str(product_url)
    # Only shown by Khalti; still, the shop's own origin rather than the Host header when known.
    website = khalti_settings.WEBSITE_URL
    if website:
        return str(website).rstrip("/") + request.get_full_path()
    return request.build_absolute_uri()


def _warn_without_popups(request: HttpRequest) -> None:
    if settings.DEBUG and not popups_allowed(request):
        logger.warning(
            "{%% khalti_widget %%} on %s, a view not decorated with "
            "django_khalti.decorators.allow_khalti_popups: with Django's default "
            "Cross-Origin-Opener-Policy (same-origin), payments in the widget's bank "
            "tabs are lost (the buyer pays, the page never hears of it).",
            request.path,
        )


def _payable_amount(request: HttpRequest, identity: str) -> int:
    """The amount the shop's resolver asks for ``identity``, if Khalti takes it online:
    ``KhaltiAmountTooSmall`` under Rs 10, as ePayment refuses it, in its words.
    """
    amount = services.expected_amount(request, identity)
    if amount > MAX_SAFE_AMOUNT:
        raise KhaltiConfigurationError(
            f"The order {identity!r} costs {amount} paisa, more than a browser counts exactly."
        )
    if amount < services.MIN_EPAYMENT_AMOUNT:
        raise KhaltiAmountTooSmall()
    return amount


def _or_words(tag: str, identity: str, offer: Callable[[], _T]) -> tuple[_T | None, str | None]:
    """``offer()`` and no words; or None and what a buyer reads instead of a Pay button:
    a refusal's own words (an unknown order, under Rs 10), or "not available" for a
    misconfigured shop, logged.
    """
    try:
        return offer(), None
    except KhaltiError as exc:
        return None, str(exc.detail)
    except (KhaltiConfigurationError, DatabaseError) as exc:
        logger.error("{%% %s %%} cannot offer %r: %s", tag, identity, exc, exc_info=exc)
        return None, _("Payments are not available right now.")


def _widget_messages() -> dict[str, str]:
    """What the widget's script says to the buyer, in the page's language."""
    return {
        "confirming": _("Paid at Khalti; confirming your payment with the shop…"),
        "verified": _("Khalti confirmed your payment. Thank you!"),
        "failed": _("Your payment could not be confirmed."),
        "unconfirmed": _(
            "Your payment is not confirmed yet. Do not pay again: check again in a moment."
        ),
        "checkAgain": _("Check again"),
        "closed": _("The Khalti window was closed; nothing was paid."),
        "unavailable": _("Khalti's widget could not be loaded."),
    }


@register.simple_tag(takes_context=True)
def khalti_widget(
    context: template.Context,
    product_identity: Any,
    product_name: Any = None,
    *,
    product_url: str | None = None,
    label: str | None = None,
    payment_preference: str | Iterable[str] | None = None,
    success_url: str | None = None,
    failure_url: str | None = None,
    button_id: str | None = None,
    button_class: str = "",
) -> SafeString:
    """Khalti's widget for the order ``product_identity``: a Pay button and what it needs.

    The amount is the shop's resolver's for this request. An order the resolver
    does not know, or one under Khalti's minimum of Rs 10 (as ePayment refuses
    it), renders the refusal's words and no button; a misconfigured shop (the
    resolver raising, no ``PUBLIC_KEY``, or one shaped like a secret key, which
    is never published) renders "not available" and logs the error, as the
    views answer ``503 not_configured``. ``success_url`` (default
    ``KHALTI["SUCCESS_URL"]``; a path, URL or URL name) is where the buyer goes
    once verified, with ``?payment=<id>``; without one, the page reloads.
    ``failure_url`` is where a refused payment goes, with ``?code=<the refusal's
    code>``; without one, the buyer stays on the page with the refusal's words.
    Both must be pages of this site.
    """
    request = _request(context, "khalti_widget")
    identity = str(product_identity)
    number = getattr(request, _COUNTER, 0) + 1
    setattr(request, _COUNTER, number)
    widget_id = f"khalti-widget-{number}"
    page: dict[str, Any] = {
        "widget_id": widget_id,
        "config_id": f"{widget_id}-config",
        "first": False,
        "label": label or _("Pay with Khalti"),
        "button_id": button_id,
        "button_class": button_class,
        "script_url": khalti_settings.WIDGET_SCRIPT_URL,
        "config": None,
        "error": None,
    }
    preferences = _preferences(payment_preference)  # the template's bug: raised, loud
    offer, page["error"] = _or_words(
        "khalti_widget",
        identity,
        # Never a secret-shaped key: khalti_settings.public_key_for_page refuses one.
        lambda: (_payable_amount(request, identity), khalti_settings.public_key_for_page),
    )
    if offer is not None:
        amount, public_key = offer
        _warn_without_popups(request)
        page["config"] = {
            "publicKey": public_key,
            "productIdentity": identity,
            "productName": str(product_name) if product_name else identity,
            "productUrl": _product_url(request, product_url),
            "amount": amount,
            "verifyUrl": reverse("django_khalti:verify"),
            "csrfToken": get_token(request),
            "successUrl": _page_url(request, success_url or khalti_settings.SUCCESS_URL),
            "failureUrl": _page_url(request, failure_url),
            "messages": _widget_messages(),
            **({"paymentPreference": preferences} if preferences else {}),
        }
        # The scripts, once a page: with the first widget that can be paid.
        page["first"] = not getattr(request, _SCRIPTS, False)
        setattr(request, _SCRIPTS, True)
    return render_to_string("django_khalti/widget.html", page, request=request)


@register.simple_tag(takes_context=True)
def khalti_epayment_button(
    context: template.Context,
    product_identity: Any,
    label: str | None = None,
    *,
    button_id: str | None = None,
    button_class: str = "",
) -> SafeString:
    """A button that starts an ePayment for ``product_identity``: a POST form to
    ``django_khalti:epayment-start`` with the CSRF token. The order and its
    amount are checked there again, by the shop's resolver. An order the resolver
    does not know, or one under Khalti's minimum of Rs 10, renders the refusal's
    words and no button, as :func:`khalti_widget` does (and a misconfigured shop
    "not available", logged).
    """
    request = _request(context, "khalti_epayment_button")
    identity = str(product_identity)
    try:
        action = reverse("django_khalti:epayment-start", args=[str(product_identity)])
    except NoReverseMatch as exc:
        raise KhaltiConfigurationError(
            f"{{% khalti_epayment_button %}} cannot link {str(product_identity)!r} to "
            "django_khalti:epayment-start: include 'django_khalti.urls' (not widget_urls), "
            "and use references without '/'."
        ) from exc
    _amount, error = _or_words(
        "khalti_epayment_button", identity, lambda: _payable_amount(request, identity)
    )
    return render_to_string(
        "django_khalti/epayment_button.html",
        {
            "error": error,
            "action": action,
            "label": label or _("Pay with Khalti"),
            "button_id": button_id,
            "button_class": button_class,
        },
        request=request,
    )
