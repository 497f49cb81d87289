"""The testing reference lists exactly the rules the shared rules module has."""

import ast
import re
from pathlib import Path

from django_khalti.rules import answers, catalogue

from .test_parity import STORIES, Transcript

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "reference" / "testing.rst"
#: The rules' code as imported (the installed package, where the suite runs against it).
RULES_CODE = Path(catalogue.__file__).resolve().parent


def table():
    """Each rule of the page's table: its id, Khalti's answer and the source."""
    return re.findall(
        r"^   \* - ``([a-z-]+\.[a-z-]+)``\n     - .*\n(?:       .*\n)*     - (.*)\n(?:       .*\n)*     - (.*)$",
        PAGE.read_text(),
        re.M,
    )


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


def answered_status(answer):
    """The HTTP status the page gives as Khalti's answer, or None (not an HTTP answer)."""
    if answer.startswith("Invalid token."):
        return 400
    found = re.match(r"(\d{3})\b", answer)
    return int(found[1]) if found else None


def test_each_rule_answers_with_the_status_the_page_gives_at_both_doors(doors, monkeypatch):
    seen = {}
    made = answers.Answer.__post_init__

    def note(self):
        made(self)
        seen.setdefault(self.rule, set()).add(self.status)

    monkeypatch.setattr(answers.Answer, "__post_init__", note)
    for door in doors:
        for story in STORIES:
            story(Transcript(door))

    on_the_page = {rule: answered_status(answer) for rule, answer, _ in table()}
    http_rules = {rule for rule, status in on_the_page.items() if status is not None}
    assert set(seen) == http_rules  # the stories reach every rule with an HTTP answer
    for rule in http_rules:
        assert seen[rule] == {on_the_page[rule]}, rule
