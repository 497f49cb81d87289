"""Worker-process side of the multi-process tests (imported by spawned processes)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def setup(database_name: str, khalti_url: str) -> None:
    """Configure Django in a fresh process against the test database and the fake."""
    sys.path[:0] = [str(ROOT / "testproject"), str(ROOT)]
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")
    from django.conf import settings

    settings.DATABASES["default"]["NAME"] = database_name
    settings.KHALTI = {**settings.KHALTI, "BASE_URL": khalti_url}
    import django

    django.setup()


def post_at(start: float, payload: dict) -> tuple[int, dict]:
    """Wait until ``start`` (time.time()), then POST the payload to the verify view."""
    import time

    from django.db import connections
    from django.test import Client
    from django.urls import reverse

    time.sleep(max(0.0, start - time.time()))
    try:
        response = Client().post(
            reverse("django_khalti:verify"), json.dumps(payload), content_type="application/json"
        )
        return response.status_code, response.json()
    finally:
        connections.close_all()


def reconcile_at(start: float, *args: str) -> str:
    """Wait until ``start``, then run ``khalti_reconcile`` with ``args``; its output."""
    import io
    import time

    from django.core.management import call_command
    from django.core.management.base import CommandError
    from django.db import connections

    time.sleep(max(0.0, start - time.time()))
    out = io.StringIO()
    try:
        call_command("khalti_reconcile", *args, stdout=out)
    except CommandError as exc:
        out.write(f"error: {exc}")
    finally:
        connections.close_all()
    return out.getvalue()
