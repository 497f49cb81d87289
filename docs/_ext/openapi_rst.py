"""dj-khalti's OpenAPI schema, generated from the app, and rendered as reStructuredText.

Plain Python (no Sphinx): ``khalti_openapi`` puts it on a page, and
``tests/test_docs.py`` checks what it renders where Sphinx is not installed.
The generator is Django REST framework's ``SchemaGenerator`` over
``django_khalti.urls`` mounted at ``/khalti/``, as the test suite mounts it.
"""

from __future__ import annotations

from functools import cache
from typing import Any

PREFIX = "khalti/"


@cache  # one build renders the page and writes openapi.json from the same schema
def generate() -> dict[str, Any]:
    """The schema DRF's generator writes for dj-khalti's URLs under ``/khalti/``."""
    from django.urls import include, path
    from rest_framework.schemas.openapi import SchemaGenerator

    from django_khalti import __version__

    patterns = [path(PREFIX, include("django_khalti.urls"))]
    generator = SchemaGenerator(title="dj-khalti", version=__version__, patterns=patterns)
    return generator.get_schema(request=None, public=True)


def _codes(schema: dict[str, Any]) -> list[str]:
    """The ``code`` values a response body can carry (refusals), in order."""
    found: list[str] = []
    for body in schema.get("anyOf", [schema]):
        found += body.get("properties", {}).get("code", {}).get("enum", [])
    return found


def _fields(component: dict[str, Any]) -> list[str]:
    """One RST list item per property of a request or response component."""
    required = set(component.get("required", []))
    lines = []
    for name, field in component.get("properties", {}).items():
        kind = field.get("type") or ("object" if "properties" in field else "any")
        limits = [
            f"{key} {field[key]}"
            for key in ("maxLength", "minimum", "maximum", "format")
            if key in field
        ]
        notes = ", ".join(
            [kind, "required" if name in required else "optional"]
            + (["read-only"] if field.get("readOnly") else [])
            + limits
        )
        lines.append(f"- ``{name}`` ({notes})")
    return lines


def render(schema: dict[str, Any]) -> list[str]:
    """The operations of ``schema`` as reStructuredText lines."""
    components = schema.get("components", {}).get("schemas", {})
    lines: list[str] = []
    for url, methods in schema["paths"].items():
        for method, operation in methods.items():
            title = f"``{method.upper()} {url}``"
            lines += [title, "~" * len(title), ""]
            body = operation.get("requestBody", {}).get("content", {})
            kinds = ", ".join(f"``{media}``" for media in body)
            ref = next(iter(body.values()), {}).get("schema", {}).get("$ref", "")
            name = ref.rsplit("/", 1)[-1]
            lines += [f"Request body ``{name}`` ({kinds}):", ""]
            lines += [*_fields(components.get(name, {})), ""]
            lines += [".. list-table::", "   :header-rows: 1", "   :widths: 10 30 60", ""]
            lines += ["   * - Status", "     - ``code``", "     - Answer"]
            for status, response in operation["responses"].items():
                content = next(iter(response.get("content", {}).values()), {})
                codes = ", ".join(f"``{code}``" for code in _codes(content.get("schema", {})))
                text = response["description"].replace("*", r"\*").replace("`", "'")
                lines += [f"   * - {status}", f"     - {codes or '(none)'}", f"     - {text}"]
            lines.append("")
    for name, component in components.items():
        if name.endswith(("Verify", "Initiate")):
            continue  # request bodies: listed with their operation
        title = f"``{name}``"
        lines += [title, "~" * len(title), ""]
        lines += [*_fields(component), ""]
    return lines
