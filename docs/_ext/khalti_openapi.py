"""``.. khalti-openapi::``: dj-khalti's OpenAPI schema, generated from the app at build time.

The directive runs Django REST framework's ``SchemaGenerator`` over
``django_khalti.urls`` (mounted at ``/khalti/``, as the test suite does), renders
each operation as reStructuredText (path, method, request body fields, every
response status with the refusal codes it can carry), and writes the schema as
``openapi.json`` beside the built pages, for download.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

PREFIX = "khalti/"


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


class KhaltiOpenAPI(SphinxDirective):
    """Render the schema here, and have it written as ``openapi.json`` for download."""

    def run(self) -> list[nodes.Node]:
        schema = generate()
        container = nodes.section()
        container.document = self.state.document
        source = self.get_source_info()[0]
        nested_parse_with_titles(self.state, StringList(render(schema), source), container)
        return container.children


def write_schema(app: Sphinx, exception: Exception | None) -> None:
    """Write ``openapi.json`` into an HTML build's output."""
    if exception is None and app.builder.format == "html":
        schema = generate()
        Path(app.outdir, "openapi.json").write_text(json.dumps(schema, indent=2), "utf-8")


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("khalti-openapi", KhaltiOpenAPI)
    app.connect("build-finished", write_schema)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
