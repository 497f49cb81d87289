"""The state diagram of docs/explanation/states.rst matches the code.

Its boxes must be exactly ``Payment.Status``. Its arrows are checked by
``tests/services/test_state_table.py``: every status change a scenario of the state
table makes must be an arrow here (:func:`drawn_edges`).
"""

from __future__ import annotations

import re
from pathlib import Path

from django_khalti.models import Payment

STATES_PAGE = Path(__file__).resolve().parents[2] / "docs" / "explanation" / "states.rst"


def diagram() -> str:
    """The DOT source of the page's one ``.. graphviz::`` directive."""
    text = STATES_PAGE.read_text(encoding="utf-8")
    block = text.split("\n.. graphviz::\n", 1)[1]
    return block.split("\n   digraph ", 1)[1].split("\n   }\n", 1)[0]


def drawn_edges() -> set[tuple[str, str]]:
    """The diagram's arrows, as (from status, to status)."""
    return set(re.findall(r'^\s*"([a-z_]+)" -> "([a-z_]+)"', diagram(), re.MULTILINE))


def drawn_nodes() -> set[str]:
    """Every box the diagram names: declared alone, or at either end of an arrow."""
    declared = re.findall(r'^\s*"([a-z_]+)"\s*(?:\[|;)', diagram(), re.MULTILINE)
    return set(declared) | {status for edge in drawn_edges() for status in edge}


def test_the_diagram_has_a_box_for_each_status_and_no_other():
    assert drawn_nodes() == {status.value for status in Payment.Status}


def test_every_status_but_pending_is_reached_and_pending_is_left():
    edges = drawn_edges()
    reached = {to for _, to in edges if _ != to}
    assert reached == {status.value for status in Payment.Status} - {"pending"}
    assert {to for source, to in edges if source == "pending"} >= {"verified", "failed"}
