"""The tutorial's table of its own names (docs/tutorial/index.rst, "Your own names")
lists every file of the tutorial where ``mysite`` or ``shop`` is a name Python, Django
or a template reads, so a reader whose names differ knows every place to change.
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TUTORIAL = ROOT / "docs" / "tutorial"
#: ``mysite`` or ``shop`` as a name: a dotted path, a URL name, a template path, an import.
NAME = re.compile(r"""["'](mysite|shop)[.:/"']|\bfrom (mysite|shop)\b|= (mysite|shop)\b""")
#: Files the tutorial copies under another name.
SHOWN_AS = {"mysite/settings_khalti.py": "mysite/settings.py"}


def names_table() -> str:
    text = (TUTORIAL / "index.rst").read_text()
    start = text.index(".. _tutorial-names:")
    return text[start : text.index(".. toctree::", start)]


def files_using_the_names() -> set[str]:
    files = [*TUTORIAL.glob("mysite/**/*"), *TUTORIAL.glob("shop/**/*"), TUTORIAL / "pytest.ini"]
    found = set()
    for path in files:
        if path.is_file() and "__pycache__" not in path.parts and NAME.search(path.read_text()):
            name = str(path.relative_to(TUTORIAL))
            found.add(SHOWN_AS.get(name, name))
    return found | pages_using_the_names()


def pages_using_the_names() -> set[str]:
    """The tutorial's pages whose own code blocks (commands to type) use the names."""
    return {
        page.name
        for page in TUTORIAL.glob("*.rst")
        if page.name != "index.rst"
        and any(
            line.startswith("    ") and NAME.search(line) for line in page.read_text().splitlines()
        )
    }


def test_the_names_are_found_where_the_tutorial_uses_them():
    found = files_using_the_names()
    assert {"mysite/settings.py", "mysite/urls.py", "pytest.ini", "shop/urls.py"} <= found
    assert "shop/templates/shop/payment_failed.html" in found
    assert {"epayment.rst", "widget.rst", "offline.rst"} <= found  # their shell commands


def test_the_table_lists_every_file_that_uses_the_names():
    table = names_table()
    missing = [name for name in sorted(files_using_the_names()) if f"``{name}``" not in table]
    assert not missing, f"the tutorial's names table misses {missing}"


def test_the_table_lists_the_template_folder():
    assert "``shop/templates/shop/``" in names_table()
