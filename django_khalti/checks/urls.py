"""What the checks read of the project itself: which of dj-khalti's URLs it serves,
the names of its own URLs and apps (for hints in the project's own words), and the
templates that use ``{% khalti_widget %}``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from django.apps import AppConfig, apps
from django.conf import settings
from django.template import engines
from django.urls import NoReverseMatch, URLPattern, URLResolver, get_resolver, reverse

#: Namespaces whose URL names a hint never suggests: not the shop's own pages.
_NOT_THE_SHOPS = ("admin", "django_khalti", "khalti_sandbox")
#: The widget tag, as a template uses it.
_WIDGET_TAG = re.compile(r"\{%-?\s*khalti_widget\b")
#: A one-line template comment, ``{# ... #}``.
_COMMENT = re.compile(r"\{#.*?#\}")
#: dj-khalti's own package: its templates are the tag's rendering, not a use of it.
_PACKAGE = Path(__file__).resolve().parents[1]
#: Template files larger than this are not read (no template is this large).
_LARGEST_TEMPLATE = 1_000_000


def resolves(name: str) -> bool:
    """Whether the URL name ``name`` reverses, without arguments, in ``ROOT_URLCONF``."""
    try:
        reverse(name)
    except NoReverseMatch:
        return False
    return True


def serves_epayment() -> bool:
    """Whether the project's URLconf includes dj-khalti's ePayment pages."""
    return resolves("django_khalti:epayment-return")


def serves_widget_only() -> bool:
    """Whether the project's URLconf includes ``django_khalti.widget_urls`` (verify, no ePayment)."""
    return resolves("django_khalti:verify") and not serves_epayment()


def _names(patterns: list[URLPattern | URLResolver], prefix: str) -> Iterator[str]:
    for entry in patterns:
        if isinstance(entry, URLResolver):
            namespace = f"{prefix}{entry.namespace}:" if entry.namespace else prefix
            if entry.namespace not in _NOT_THE_SHOPS:
                yield from _names(entry.url_patterns, namespace)
        elif entry.name:
            yield f"{prefix}{entry.name}"


def page_names() -> list[str]:
    """The URL names of ``ROOT_URLCONF`` that reverse without arguments (namespace
    included), the admin's and dj-khalti's own left out: the shop's pages.
    """
    try:
        found = _names(get_resolver().url_patterns, "")
        return sorted({name for name in found if resolves(name)})
    except Exception:  # an URLconf that fails to import: Django's own check says so
        return []


def _installed_elsewhere(app: AppConfig) -> bool:
    path = Path(app.path).parts
    return "site-packages" in path or "dist-packages" in path


def project_app() -> AppConfig | None:
    """The project's own first app in ``INSTALLED_APPS``: not Django's, not dj-khalti's,
    nor one installed from a package. None when there is none.
    """
    for app in apps.get_app_configs():
        if app.name.startswith(("django.", "django_khalti")) or _installed_elsewhere(app):
            continue
        return app
    return None


def ready_method_of(app: AppConfig | None) -> str:
    """Where a receiver is connected in ``app``: ``ShopConfig.ready() (shop/apps.py)``."""
    if app is None or type(app) is AppConfig:  # an app without an AppConfig of its own
        name = app.name if app else "yourapp"
        return f"your AppConfig.ready() ({name.replace('.', '/')}/apps.py)"
    module = type(app).__module__.replace(".", "/")
    return f"{type(app).__name__}.ready() ({module}.py)"


def root_urlconf_file() -> str:
    """``ROOT_URLCONF`` as a file name: ``mysite/urls.py``."""
    urlconf = getattr(settings, "ROOT_URLCONF", None)
    return f"{urlconf.replace('.', '/')}.py" if isinstance(urlconf, str) else "your urls.py"


def _template_files() -> Iterator[tuple[Path, Path]]:
    """``(directory, file)`` of every file in the template directories of ``TEMPLATES``."""
    for engine in engines.all():
        for directory in map(Path, getattr(engine, "template_dirs", ())):
            if directory.is_dir() and not directory.resolve().is_relative_to(_PACKAGE):
                for path in directory.rglob("*"):
                    if path.is_file():
                        yield directory, path


def template_using_widget() -> str | None:
    """The first template (relative to its directory) that uses ``{% khalti_widget %}``,
    among the files in the directories of ``TEMPLATES`` (``DIRS`` and, with
    ``APP_DIRS``, each app's ``templates/``, dj-khalti's own left out), outside
    ``{# #}`` comments; None when no file there does.
    """
    for directory, path in _template_files():
        try:
            if path.stat().st_size > _LARGEST_TEMPLATE:
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        if _WIDGET_TAG.search(_COMMENT.sub("", text)):
            return str(path.relative_to(directory))
    return None
