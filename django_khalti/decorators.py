"""``allow_khalti_popups``: the decorator for a view that shows Khalti's widget.

The widget's bank tabs (e-banking, mobile banking, connectIPS, SCT) pay in a
popup that reports back through ``window.opener``. Django's default
``SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"`` cuts that link: the buyer
pays, and the page never hears of it. The decorated view's response says
``Cross-Origin-Opener-Policy: same-origin-allow-popups`` instead, which keeps
the opener for the popups the page opens and nothing else.
``SecurityMiddleware`` only sets the header when a response has none, so the
view's wins (a middleware that overwrites it is the system check
``django_khalti.W003``).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponseBase

#: The header, and the value that lets Khalti's bank popups report back.
COOP_HEADER = "Cross-Origin-Opener-Policy"
ALLOW_POPUPS = "same-origin-allow-popups"
#: Values that keep ``window.opener`` for the popups a page opens.
KEEPS_POPUP_OPENER = frozenset({ALLOW_POPUPS, "unsafe-none"})
#: Set on the request by :func:`allow_khalti_popups`, read by ``{% khalti_widget %}``.
REQUEST_FLAG = "_khalti_popups_allowed"

View = TypeVar("View", bound=Callable[..., Any])


def keeps_popup_opener(coop: str) -> bool:
    """Whether a ``Cross-Origin-Opener-Policy`` value (parameters such as
    ``report-to`` aside) keeps ``window.opener`` for the popups a page opens.
    """
    return coop.split(";")[0].strip().lower() in KEEPS_POPUP_OPENER


def _allow_popups(response: HttpResponseBase) -> HttpResponseBase:
    if not keeps_popup_opener(response.headers.get(COOP_HEADER, "")):
        response.headers[COOP_HEADER] = ALLOW_POPUPS
    return response


async def _allow_popups_later(response: Awaitable[HttpResponseBase]) -> HttpResponseBase:
    return _allow_popups(await response)


def allow_khalti_popups(view: View) -> View:
    """Decorate a view that shows Khalti's widget: its response is sent with
    ``Cross-Origin-Opener-Policy: same-origin-allow-popups`` (unless the view
    set ``unsafe-none``, which keeps popups working too), so that a payment in
    the widget's bank tabs reaches the page.

    Works on function views, sync or async; for a class-based view, wrap its
    ``as_view()`` or use ``method_decorator(allow_khalti_popups, name="dispatch")``.
    """
    if iscoroutinefunction(view):

        async def async_wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            setattr(request, REQUEST_FLAG, True)
            return _allow_popups(await view(request, *args, **kwargs))

        wrapper: Callable[..., Any] = markcoroutinefunction(async_wrapper)
    else:

        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            setattr(request, REQUEST_FLAG, True)
            response = view(request, *args, **kwargs)
            if inspect.isawaitable(response):  # an async view's dispatch (method_decorator)
                return _allow_popups_later(response)
            return _allow_popups(response)

    return cast("View", functools.wraps(view)(wrapper))


def popups_allowed(request: HttpRequest) -> bool:
    """Whether ``request`` is served by a view decorated with :func:`allow_khalti_popups`."""
    return bool(getattr(request, REQUEST_FLAG, False))
