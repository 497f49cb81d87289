"""pytest plugin for .ci/check_package.py: the run fails unless the tests ran on the wheel.

Once the test modules are collected (every import of the app done), ``django_khalti`` must
come from this interpreter's site-packages, not from a source tree on sys.path.
"""

import sys
import sysconfig
from pathlib import Path

import pytest


def _installed_at() -> tuple[Path, Path]:
    module = sys.modules.get("django_khalti")
    if module is None or module.__file__ is None:
        raise pytest.UsageError("installed_wheel: django_khalti was never imported")
    return Path(module.__file__).resolve(), Path(sysconfig.get_paths()["purelib"]).resolve()


def pytest_report_header(config):
    module = sys.modules.get("django_khalti")
    return f"django_khalti imported from {getattr(module, '__file__', None)}"


def pytest_collection_finish(session):
    where, site_packages = _installed_at()
    if site_packages not in where.parents:
        raise pytest.UsageError(
            f"installed_wheel: django_khalti imported from {where}, "
            f"not from the installed wheel in {site_packages}"
        )
