"""When the sandbox may serve, and its refusal when it may not.

The sandbox plays Khalti for a developer's browser: it takes any payment with its
test ids and moves no money. A site that serves it in production hands every buyer
a free "paid", so it serves only while ``DEBUG`` is on and no key in
``settings.KHALTI`` is shaped like a live one (:func:`django_khalti.keys.looks_live`).
The system checks (:mod:`django_khalti.sandbox.checks`) say so at start-up; the
:func:`guarded` wrapper, applied to every view in ``urls.py``, says so again on each
request, for a server that runs no checks (gunicorn, uwsgi).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import wraps
from typing import Any, Literal

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.loader import render_to_string

from ..keys import looks_live

#: What a refused URL answers: Khalti's API a JSON body, a page HTML, a script JS.
Kind = Literal["api", "page", "script"]

#: The keys of ``settings.KHALTI`` the sandbox looks at.
KEY_SETTINGS = ("SECRET_KEY", "PUBLIC_KEY")

DEBUG_OFF = (
    "The Khalti sandbox serves only while DEBUG is on: it marks any payment paid "
    "without moving money, so it must never run in production."
)
LIVE_KEY = (
    "The Khalti sandbox does not serve while KHALTI['{name}'] is a live key "
    "(live_...): a site with live keys takes real payments, never the sandbox's."
)
#: The machine code of every refusal (JSON ``error_key``, as Khalti's own refusals).
REFUSED = "sandbox_refused"


def live_key_settings() -> list[str]:
    """The names of the keys of ``settings.KHALTI`` shaped like live keys."""
    config = getattr(settings, "KHALTI", None)
    if not isinstance(config, dict):
        return []
    return [name for name in KEY_SETTINGS if looks_live(config.get(name))]


def refusal() -> str | None:
    """Why the sandbox may not serve now, or None when it may."""
    if not settings.DEBUG:
        return DEBUG_OFF
    live = live_key_settings()
    if live:
        return LIVE_KEY.format(name=live[0])
    return None


def refused(kind: Kind, request: HttpRequest, reason: str) -> HttpResponse:
    """The sandbox's 403: JSON for Khalti's API, a page saying why, a script that throws."""
    if kind == "api":
        response: HttpResponse = JsonResponse({"detail": reason, "error_key": REFUSED}, status=403)
        response["Access-Control-Allow-Origin"] = "*"  # the widget's calls read it
        return response
    if kind == "script":
        body = f"throw new Error({_js_string(reason)});\n"
        return HttpResponse(body, status=403, content_type="application/javascript; charset=utf-8")
    html = render_to_string("khalti_sandbox/refused.html", {"reason": reason}, request=request)
    return HttpResponse(html, status=403)


def _js_string(text: str) -> str:
    """``text`` as a JavaScript string literal."""
    return json.dumps(text).replace("<", "\\u003c")


def guarded(kind: Kind, view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """``view``, answered by the sandbox's refusal whenever :func:`refusal` gives one.

    The view itself never runs then: no row is read or written, no key compared.
    """

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        reason = refusal()
        if reason is not None:
            return refused(kind, request, reason)
        return view(request, *args, **kwargs)

    return wrapper
