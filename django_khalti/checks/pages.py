"""E007: ``SUCCESS_URL`` or ``FAILURE_URL`` that the views could not resolve, with a hint
in the project's own URL names.
"""

from __future__ import annotations

import difflib
from typing import Any

from django.core import checks
from django.shortcuts import resolve_url
from django.urls import NoReverseMatch

from .urls import page_names

#: How many of the project's URL names a hint lists when none is close to the value.
_LISTED = 5


def _suggestion(value: Any) -> str:
    """The project's own URL names for the hint: the closest to ``value``, or a few."""
    names = page_names()
    if not names:
        return "Give a URL name without arguments (namespace included, e.g. 'orders:thanks')"
    close = difflib.get_close_matches(str(value), names, n=1, cutoff=0.6)
    if close:
        return f"Did you mean {close[0]!r}? Give a URL name without arguments"
    listed = ", ".join(repr(name) for name in names[:_LISTED])
    more = ", ..." if len(names) > _LISTED else ""
    return f"Give a URL name without arguments, as ROOT_URLCONF names them ({listed}{more})"


def check_page_urls(config: dict[str, Any]) -> list[checks.CheckMessage]:
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
                hint=f"{_suggestion(value)}, a path on this site ('/thanks/') or a URL. "
                "Otherwise the buyer is shown dj-khalti's own result page instead.",
                id="django_khalti.E007",
            )
        )
    return problems
