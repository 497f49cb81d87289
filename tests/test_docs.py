"""The reference pages (docs/reference/) keep up with the code: every setting (with
its default), error code (with its HTTP status), signal, URL name, system check and
command option a shop can meet is documented; the OpenAPI page renders every
operation and status; README.rst is the quick start and a map of the site, whose
settings, tags and links are real; and the changelog keeps the Keep a Changelog shape.

The lists are taken from the code, so a new setting or error code without its line
in the reference fails here. (That the site builds without warnings is checked by
``tox -e docs``.)
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import sys
import textwrap
from pathlib import Path

import pytest
from django.core.management import load_command_class
from django.core.management.base import BaseCommand
from django.dispatch import Signal
from django.urls import get_resolver

from django_khalti import checks, exceptions, services, signals
from django_khalti.conf import DEFAULTS
from django_khalti.models import Payment

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "reference"
CHANGELOG = (ROOT / "CHANGELOG.rst").read_text(encoding="utf-8")
README = (ROOT / "README.rst").read_text(encoding="utf-8")


def page(name: str) -> str:
    """The text of ``docs/reference/<name>.rst``."""
    return (REFERENCE / f"{name}.rst").read_text(encoding="utf-8")


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


# --- settings ---------------------------------------------------------------------


def documented_settings() -> dict[str, str]:
    """``{name: its :Default: field}`` from settings.rst, one per ``setting-NAME`` label."""
    blocks = re.split(r"^\.\. _setting-([A-Z_]+):$", page("settings"), flags=re.M)
    found = {}
    for name, block in zip(blocks[1::2], blocks[2::2], strict=True):
        assert f"``{name}``" in headings(block)[:1], f"setting-{name} labels no heading"
        default = re.search(r"^:Default: (``.+?``)", block, flags=re.M)
        found[name] = default.group(1) if default else ""
    return found


def shown(value: object) -> str:
    """How settings.rst writes a default: Python's literal, double-quoted."""
    return "``None``" if value is None else f"``{value!r}``".replace("'", '"')


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_every_setting_is_documented_with_its_default(name):
    documented = documented_settings()
    assert name in documented, f"KHALTI[{name!r}] has no section in settings.rst"
    assert documented[name] == shown(DEFAULTS[name])


def test_the_settings_page_documents_no_setting_that_does_not_exist():
    assert set(documented_settings()) == set(DEFAULTS)


# --- errors -----------------------------------------------------------------------


def khalti_errors() -> list[type[exceptions.KhaltiError]]:
    return [
        cls
        for _, cls in inspect.getmembers(exceptions, inspect.isclass)
        if issubclass(cls, exceptions.KhaltiError)
    ]


def error_rows() -> dict[str, tuple[str, str]]:
    """The error table: ``{exception name: (code, HTTP status)}``."""
    rows = re.findall(
        r"^   \* - :class:`(\w+)`.*\n(?:       .*\n)*     - ``(\w+)``\n     - (\d+)\n",
        page("errors"),
        flags=re.M,
    )
    return {name: (code, status) for name, code, status in rows}


@pytest.mark.parametrize("cls", khalti_errors(), ids=lambda cls: cls.__name__)
def test_every_error_is_documented_with_its_code_and_status(cls):
    rows = error_rows()
    assert cls.__name__ in rows, f"{cls.__name__} is missing from errors.rst's table"
    assert rows[cls.__name__] == (cls.code, str(cls.status_code))


@pytest.mark.parametrize(("status", "code"), [("503", "not_configured"), ("503", "unavailable")])
def test_the_views_own_answers_are_documented(status, code):
    assert re.search(rf"^   \* - {status}\n     - ``{code}``$", page("errors"), flags=re.M)


@pytest.mark.parametrize("status", ["400", "405", "415", "429"])
def test_drfs_own_answers_are_documented(status):
    assert re.search(rf"^   \* - {status}\b", page("errors"), flags=re.M)


# --- signals, URLs, checks, the command -------------------------------------------


@pytest.mark.parametrize(
    "name",
    sorted(name for name, value in vars(signals).items() if isinstance(value, Signal)),
)
def test_every_signal_is_documented(name):
    assert re.search(rf"^   \* - ``{name}``$", page("signals"), flags=re.M), name


def url_names(urlconf: str) -> list[str]:
    return [name for name in get_resolver(urlconf).reverse_dict if isinstance(name, str)]


@pytest.mark.parametrize(
    "name", sorted(set(url_names("django_khalti.urls") + url_names("django_khalti.widget_urls")))
)
def test_every_url_name_is_documented(name):
    assert f"``django_khalti:{name}``" in page("http-api"), name


def check_ids() -> list[str]:
    """The ids in the source of django_khalti.checks, a package: each of its modules."""
    source = "".join(path.read_text() for path in Path(checks.__file__).parent.glob("*.py"))
    return sorted(set(re.findall(r"django_khalti\.([EW]\d{3})", source)))


def test_the_checks_are_found():
    assert "E001" in check_ids()
    assert "W006" in check_ids()
    assert "E010" in check_ids()  # in django_khalti/checks/key_shapes.py


@pytest.mark.parametrize("check_id", check_ids())
def test_every_system_check_is_documented(check_id):
    text = page("checks")
    assert f".. _check-{check_id}:" in text, check_id
    assert f"``django_khalti.{check_id}``" in headings(text), check_id


def test_the_checks_page_documents_no_check_that_does_not_exist():
    assert set(re.findall(r"^\.\. _check-(\w+):$", page("checks"), flags=re.M)) == set(check_ids())


def options(command: BaseCommand) -> set[str]:
    parser = command.create_parser("manage.py", "khalti_reconcile")
    return {option for action in parser._actions for option in action.option_strings}


def reconcile_options() -> list[str]:
    command = load_command_class("django_khalti", "khalti_reconcile")
    return sorted(options(command) - options(BaseCommand()))


def test_the_options_are_found():
    assert "--older-than" in reconcile_options()


@pytest.mark.parametrize("option", reconcile_options())
def test_every_option_of_khalti_reconcile_is_documented(option):
    assert re.search(rf"^   \* - ``{option}\b", page("commands"), flags=re.M), option


def test_the_quick_start_uses_the_tutorials_order():
    """README's resolver, receiver and templates name fields the tutorial's ``Order``
    has: going on from the quick start to the tutorial meets no missing field."""
    model = (ROOT / "docs" / "tutorial" / "shop" / "models.py").read_text(encoding="utf-8")
    fields = set(re.findall(r"^    (\w+) = models\.", model, flags=re.M)) | {"pk", "id"}
    used = set(re.findall(r"\border\.(\w+)", README)) - {"html"}  # not shop/order.html
    for block in re.findall(r"\.\. code-block:: python\n\n((?:    .*\n|\n)+)", README):
        for node in ast.walk(ast.parse(textwrap.dedent(block))):
            if isinstance(node, ast.Call) and "Order.objects" in ast.unparse(node.func):
                used |= {keyword.arg.split("__")[0] for keyword in node.keywords if keyword.arg}
    assert {"reference", "total", "paid_at"} <= used
    assert used <= fields, used - fields


# --- the Python API and the models -----------------------------------------------------


@pytest.mark.parametrize("name", sorted(services.__all__))
def test_every_public_service_is_documented(name):
    assert re.search(rf"^\.\. auto\w+:: django_khalti\.services\.{name}$", page("api"), re.M)


@pytest.mark.parametrize("status", Payment.Status.values)
def test_every_payment_status_is_documented(status):
    assert f"``{status}``" in page("models")


# --- the OpenAPI page ---------------------------------------------------------------


def test_the_openapi_page_renders_every_operation_status_and_code():
    sys.path.insert(0, str(ROOT / "docs" / "_ext"))
    try:
        openapi_rst = importlib.import_module("openapi_rst")  # docs/_ext, without Sphinx
    finally:
        sys.path.remove(str(ROOT / "docs" / "_ext"))
    schema = openapi_rst.generate()
    text = "\n".join(openapi_rst.render(schema))
    assert ".. khalti-openapi::" in page("http-api")
    assert schema["paths"]
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            assert f"``{method.upper()} {path}``" in text
            section = text.split(f"``{method.upper()} {path}``", 1)[1]
            for status in operation["responses"]:
                assert f"   * - {status}\n" in section, (path, status)
    for code in ("unknown_order", "token_used", "not_configured", "initiation_rejected"):
        assert f"``{code}``" in text


# --- README: the quick start and the way into the site ---------------------------------


def test_the_readme_is_the_introduction_the_quick_start_and_links():
    titles = headings(README)
    for section in ("Quick start", "1. Install and configure", "Documentation", "License"):
        assert section in titles
    assert len(README.splitlines()) < 300, "the reference and the guides live in docs/"


#: README is PyPI's page too: its links to the docs are absolute, into the repository.
REPOSITORY = "https://github.com/dj-khalti/dj-khalti/blob/main/"
LINKS = re.findall(rf"{re.escape(REPOSITORY)}(\S+?\.rst)\b", README)


def test_every_link_of_the_readme_names_a_file_of_the_repository():
    links = LINKS
    assert len(links) > 20
    assert not re.findall(r"(?:<|^\.\. _[^:]+: )(?!https://)\S+\.rst", README, flags=re.M), (
        "relative links break on PyPI"
    )
    missing = [link for link in links if not (ROOT / link).is_file()]
    assert not missing


def test_every_page_of_the_reference_and_the_guides_is_linked_from_the_readme():
    links = set(LINKS)
    for section in ("howto", "reference", "explanation"):
        for path in sorted((ROOT / "docs" / section).glob("*.rst")):
            if path.stem not in ("index", "architecture"):
                assert f"docs/{section}/{path.name}" in links, path


def test_the_quick_starts_settings_and_tags_are_real():
    from django.template import engines

    block = README.split("KHALTI = {", 1)[1].split("\n    }", 1)[0]
    keys = re.findall(r'^\s+"([A-Z_]+)":', block, flags=re.M)
    assert keys
    assert set(keys) <= set(DEFAULTS)
    library = engines["django"].engine.template_libraries["khalti"]  # type: ignore[attr-defined]
    for tag in set(re.findall(r"{% (khalti_\w+) ", README)):
        assert tag in library.tags, tag
    assert 'include("django_khalti.urls")' in README


# --- the changelog ------------------------------------------------------------------

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
