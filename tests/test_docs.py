"""README.rst and CHANGELOG.rst keep up with the code: every setting (with its default),
error code, signal, URL name, system check and command option a shop can meet is
documented, and the changelog keeps the Keep a Changelog shape.

The lists are taken from the code, so a new setting or error code without its line in
the README fails here. (That the files render on PyPI is checked by ``tox -e docs``.)
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
from django.core.management import load_command_class
from django.core.management.base import BaseCommand
from django.dispatch import Signal
from django.urls import get_resolver

from django_khalti import checks, exceptions, signals
from django_khalti.conf import DEFAULTS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.rst").read_text(encoding="utf-8")
CHANGELOG = (ROOT / "CHANGELOG.rst").read_text(encoding="utf-8")


def headings(text: str) -> list[str]:
    """Section titles: a line underlined with ``=``, ``-`` or ``~``."""
    lines = text.splitlines()
    return [
        lines[i].strip()
        for i in range(len(lines) - 1)
        if lines[i].strip()
        and re.fullmatch(r"(=+|-+|~+)", lines[i + 1])
        and len(lines[i + 1]) >= len(lines[i].strip())
    ]


@pytest.mark.parametrize(
    "section",
    [
        "Quick start",
        "1. Install and configure",
        "Settings",
        "Signals",
        "ePayment (KPG-2): Khalti's web checkout",
        "Reconciliation: ``khalti_reconcile``",
        "Refunds",
        "Admin",
        "System checks",
        "Testing your integration",
        "Guarantees",
        "Upgrading",
    ],
)
def test_the_readme_has_the_sections_a_newcomer_looks_for(section):
    assert section in headings(README)


def setting_rows() -> dict[str, str]:
    """The settings table: ``{name: default cell}``."""
    table = README.split("\nSettings\n========\n", 1)[1].split("\nSignals\n", 1)[0]
    rows = re.findall(r"\* - ``([A-Z_]+)``\n\s+- (.+)", table)
    return dict(rows)


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_every_setting_is_in_the_settings_table_with_its_default(name):
    rows = setting_rows()
    assert name in rows, f"KHALTI[{name!r}] is missing from README's settings table"
    default = DEFAULTS[name]
    shown = "``None``" if default is None else f"``{default!r}``".replace("'", '"')
    assert rows[name] == shown


def test_the_settings_table_lists_no_setting_that_does_not_exist():
    assert set(setting_rows()) == set(DEFAULTS)


def error_codes() -> set[str]:
    found = {"not_configured", "unavailable"}  # answered by the views themselves
    for _, cls in inspect.getmembers(exceptions, inspect.isclass):
        if issubclass(cls, exceptions.KhaltiError) and cls is not exceptions.KhaltiError:
            found.add(cls.code)
    return found


@pytest.mark.parametrize("code", sorted(error_codes()))
def test_every_error_code_is_documented(code):
    assert f"``{code}``" in README


@pytest.mark.parametrize(
    "name",
    sorted(name for name, value in vars(signals).items() if isinstance(value, Signal)),
)
def test_every_signal_is_documented(name):
    assert f"``{name}``" in README


def test_every_url_name_is_documented():
    names = [
        name for name in get_resolver("django_khalti.urls").reverse_dict if isinstance(name, str)
    ]
    assert names
    for name in names:
        assert f"django_khalti:{name}" in README, name


def test_every_system_check_is_documented():
    ids = set(re.findall(r"django_khalti\.[EW]\d{3}", inspect.getsource(checks)))
    assert ids
    for check_id in ids:
        assert f"``{check_id}``" in README, check_id


def options(command: BaseCommand) -> set[str]:
    parser = command.create_parser("manage.py", "khalti_reconcile")
    return {option for action in parser._actions for option in action.option_strings}


def test_every_option_of_khalti_reconcile_is_documented():
    command = load_command_class("django_khalti", "khalti_reconcile")
    ours = options(command) - options(BaseCommand())
    assert "--older-than" in ours
    for option in ours:
        assert f"``{option}" in README, option


KEEP_A_CHANGELOG = {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}


def test_the_changelog_keeps_the_keep_a_changelog_shape():
    titles = headings(CHANGELOG)
    assert titles[0] == "Changelog"
    assert titles[1] == "Unreleased", "the newest section is Unreleased"
    releases = [t for t in titles[1:] if t not in KEEP_A_CHANGELOG]
    for release in releases[1:]:
        assert re.fullmatch(r"\d+\.\d+\.\d+(\S*)? - \d{4}-\d{2}-\d{2}", release), release
    kinds = [t for t in titles if t in KEEP_A_CHANGELOG]
    assert kinds, "changes are grouped under Added, Changed, Fixed..."
    unknown = set(titles) - KEEP_A_CHANGELOG - {"Changelog"} - set(releases)
    assert not unknown
