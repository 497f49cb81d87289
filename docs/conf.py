"""Sphinx configuration of dj-khalti's documentation (``make docs``, ``tox -e docs``).

The build imports the package (autodoc, the OpenAPI schema, the settings and checks
tables) inside the repository's test project, so that Django is configured exactly as
the test suite configures it; nothing here talks to Khalti or to a database.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import django

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "testproject"), str(Path(__file__).parent / "_ext")]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")
django.setup()

from django_khalti import __version__  # noqa: E402  (after django.setup())

project = "dj-khalti"
author = "The dj-khalti developers"
copyright = "2026, the dj-khalti developers"
release = __version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
    "sphinx.ext.graphviz",
    "sphinx.ext.viewcode",
    "khalti_openapi",
]

root_doc = "index"
exclude_patterns = ["_build"]
nitpicky = False
default_role = "any"

html_theme = "furo"
html_title = f"dj-khalti {release}"
html_static_path = ["_static"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True}

graphviz_output_format = "svg"


doctest_global_setup = """
import django
"""
