"""The tutorial (docs/tutorial/), followed step by step in a new project.

The tutorial shows its code with ``literalinclude`` from the files under
``docs/tutorial/``; this test builds a project from the very same files, the way
the tutorial tells a reader to: ``startproject mysite``, ``startapp shop``, the
shop's files copied in, the settings additions appended to ``settings.py``,
``makemigrations shop`` and ``migrate`` on SQLite, ``manage.py check``, and then
pytest, in a subprocess and with the tutorial's two-line ``pytest.ini``, on the
tutorial's own test module: an order paid through ePayment and one through the
widget, against the testing kit.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TUTORIAL = ROOT / "docs" / "tutorial"
PAGES = sorted(TUTORIAL.glob("*.rst"))

#: The shop app's files, as the tutorial lists them (``shop/...``).
SHOP_FILES = sorted(
    path.relative_to(TUTORIAL / "shop")
    for path in (TUTORIAL / "shop").rglob("*")
    if path.is_file() and "__pycache__" not in path.parts
)


def run(args, cwd, env):
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env
    )


def follow_the_tutorial(directory: Path) -> tuple[Path, dict[str, str]]:
    """A project at ``directory / "mysite"`` built as the tutorial says; its environment."""
    env = {**os.environ}
    for name in list(env):  # the tutorial's defaults, not this suite's settings or keys
        if name.startswith("KHALTI_") or name in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH"):
            del env[name]
    made = run(["-m", "django", "startproject", "mysite"], directory, env)
    assert made.returncode == 0, made.stderr
    project = directory / "mysite"
    made = run(["manage.py", "startapp", "shop"], project, env)
    assert made.returncode == 0, made.stderr

    for file in SHOP_FILES:
        (project / "shop" / file).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(TUTORIAL / "shop" / file, project / "shop" / file)
    shutil.copyfile(TUTORIAL / "mysite" / "urls.py", project / "mysite" / "urls.py")
    settings = project / "mysite" / "settings.py"
    settings.write_text(
        settings.read_text() + "\n\n" + (TUTORIAL / "mysite" / "settings_khalti.py").read_text()
    )
    shutil.copyfile(TUTORIAL / "pytest.ini", project / "pytest.ini")
    made = run(["manage.py", "makemigrations", "shop"], project, env)
    assert made.returncode == 0, made.stdout + made.stderr
    return project, env


def click_through_it_offline(project: Path) -> None:
    """The tutorial's step "Click through it offline": the local sandbox's settings and
    URLs appended to the project's (docs/tutorial/offline.rst)."""
    for name, addition in (("settings.py", "settings_sandbox.py"), ("urls.py", "urls_sandbox.py")):
        target = project / "mysite" / name
        target.write_text(
            target.read_text() + "\n\n" + (TUTORIAL / "mysite" / addition).read_text()
        )


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory):
    return follow_the_tutorial(tmp_path_factory.mktemp("tutorial"))


def test_the_pages_include_every_file_the_test_uses():
    included = {
        (TUTORIAL / match).resolve()
        for page in PAGES
        for match in re.findall(r"\.\. literalinclude:: (\S+)", page.read_text())
    }
    used = {
        *(TUTORIAL / "shop" / name for name in SHOP_FILES),
        TUTORIAL / "mysite" / "urls.py",
        TUTORIAL / "mysite" / "settings_khalti.py",
        TUTORIAL / "mysite" / "settings_sandbox.py",
        TUTORIAL / "mysite" / "urls_sandbox.py",
        TUTORIAL / "pytest.ini",
    }
    assert {path.resolve() for path in used} <= included


def test_the_startproject_settings_render_the_request_the_tags_need(tutorial):
    project, _ = tutorial
    assert (
        "'django.template.context_processors.request'"
        in (project / "mysite" / "settings.py").read_text()
    )


def test_the_project_checks_and_migrates(tutorial):
    project, env = tutorial
    checked = run(["manage.py", "check"], project, env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "no issues" in checked.stdout, checked.stdout + checked.stderr

    assert (project / "shop" / "migrations" / "0001_initial.py").exists()  # makemigrations
    migrated = run(["manage.py", "migrate"], project, env)
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    assert "Applying django_khalti." in migrated.stdout  # the Payment table
    assert "Applying shop.0001_initial... OK" in migrated.stdout


def test_the_tutorials_tests_pay_an_order_by_each_checkout(tutorial):
    project, env = tutorial
    result = run(
        ["-m", "pytest", "-v", "-p", "no:cacheprovider", "shop/test_payments.py"], project, env
    )

    assert result.returncode == 0, result.stdout + result.stderr
    for test in (
        "test_the_order_page_offers_both_checkouts",
        "test_an_order_paid_on_khaltis_page_is_paid",  # ePayment
        "test_an_order_paid_in_the_widget_is_paid",  # the widget
        "test_a_widget_payment_of_less_than_the_order_is_refused",
        "test_an_epayment_khalti_reports_for_less_is_not_paid",
    ):
        assert f"shop/test_payments.py::{test} PASSED" in result.stdout, result.stdout
    assert "5 passed" in result.stdout
