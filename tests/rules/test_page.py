"""The testing reference lists exactly the rules the shared rules module has."""

import ast
import re
from pathlib import Path

from django_khalti.rules import catalogue

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "reference" / "testing.rst"
RULES_CODE = ROOT / "django_khalti" / "rules"


def listed():
    """Each rule of the page's table: its id and its source."""
    rows = re.findall(
        r"^   \* - ``([a-z-]+\.[a-z-]+)``\n(?:     - .*\n(?:       .*\n)*){2}     - (.*)$",
        PAGE.read_text(),
        re.M,
    )
    return dict(rows)


def applied():
    """Every rule id the rules' code names (in an Answer or a Refusal)."""
    ids = set()
    for path in RULES_CODE.glob("*.py"):
        if path.name == "catalogue.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in catalogue.RULES:
                ids.add(node.value)
    return ids


def test_the_page_lists_every_rule_and_no_other():
    assert set(listed()) == set(catalogue.RULES)


def test_each_rule_listed_says_where_it_comes_from_as_the_catalogue_does():
    sources = {
        "Khalti's docs": catalogue.DOCUMENTED,
        "assumed": catalogue.ASSUMED,
        "observed": catalogue.OBSERVED,
    }
    for rule, source in listed().items():
        assert sources[source.split(" (")[0]] == catalogue.RULES[rule].source, rule


def test_every_rule_in_the_catalogue_is_applied_by_the_rules_code():
    assert applied() == set(catalogue.RULES)
