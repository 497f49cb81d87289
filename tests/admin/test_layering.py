"""The admin package imports only downwards: the ModelAdmins (payments.py, deliveries.py)
are built from the actions, the confirmation pages, the overview and the records, and
none of those imports a ModelAdmin back, not even for typing or inside a function."""

import ast
from pathlib import Path

import django_khalti.admin

ADMIN = Path(django_khalti.admin.__file__).parent
PACKAGE = "django_khalti.admin"
MODEL_ADMINS = {"payments", "deliveries"}


def imported(name):
    """The admin package's modules that module ``name`` imports, anywhere in it: at the
    top, under ``if TYPE_CHECKING:``, or inside a function."""
    found = set()
    for node in ast.walk(ast.parse((ADMIN / f"{name}.py").read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:  # from .x import y, from . import x
                if node.module:
                    found.add(node.module.split(".")[0])
                else:
                    found.update(alias.name for alias in node.names)
            elif node.level == 0 and (node.module or "").startswith(f"{PACKAGE}."):
                found.add(node.module.removeprefix(f"{PACKAGE}.").split(".")[0])
            elif node.level == 0 and node.module == PACKAGE:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(f"{PACKAGE}."):
                    found.add(alias.name.removeprefix(f"{PACKAGE}.").split(".")[0])
    return found & MODULES


MODULES = {path.stem for path in ADMIN.glob("*.py")} - {"__init__"}


def test_the_modules_are_found():
    assert {"actions", "views", "overview", "records", "forms", "payments"} <= MODULES
    assert imported("payments") >= {"actions", "views", "overview"}


def test_nothing_below_the_model_admins_imports_them():
    for name in sorted(MODULES - MODEL_ADMINS):
        assert not imported(name) & MODEL_ADMINS, f"admin/{name}.py imports a ModelAdmin"


def test_the_admin_package_imports_itself_in_no_circle():
    graph = {name: imported(name) for name in MODULES}

    def circle_from(name, path):
        for child in sorted(graph[name]):
            if child in path:
                return [*path[path.index(child) :], child]
            found = circle_from(child, [*path, child])
            if found:
                return found
        return None

    for name in sorted(MODULES):
        circle = circle_from(name, [name])
        assert circle is None, " -> ".join(circle)
