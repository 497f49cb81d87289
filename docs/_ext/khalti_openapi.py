"""``.. khalti-openapi::``: dj-khalti's OpenAPI schema, generated from the app at build time.

The directive renders each operation (path, method, request body fields, every
response status with the refusal codes it can carry; see ``openapi_rst``) and
writes the schema as ``openapi.json`` beside the built pages, for download.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from openapi_rst import generate, render
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles


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
