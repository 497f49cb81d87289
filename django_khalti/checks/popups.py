"""W003: a middleware overriding the ``Cross-Origin-Opener-Policy`` that
``allow_khalti_popups`` sets, found by running the project's middleware on a made-up request.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

from django.conf import settings
from django.core import checks
from django.db import connections
from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory
from django.utils.module_loading import import_string

from ..decorators import COOP_HEADER, allow_khalti_popups, keeps_popup_opener


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


def check_popups_survive_middleware() -> list[checks.CheckMessage]:
    """W003: the project's middleware overrides the header of ``allow_khalti_popups``."""
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
