"""Every page of the built documentation, opened in a browser, shows no error of its own.

Some errors reach the reader without failing ``sphinx-build -W``: the Furo theme draws
its own red box ("ERROR: Adding a table of contents in Furo-based documentation is
unnecessary") with CSS over a ``.. contents::`` directive, and docutils leaves a
``problematic`` node or a ``system-message`` block on the page where markup went wrong.
This opens each page in Chromium and fails on any text that says ERROR or WARNING
drawn by a stylesheet (``::before``/``::after``) and on those docutils blocks.

``tox -e docs`` runs it on the site it has just built (``DOCS_HTML``); run alone, it
builds the site into a temporary directory first (the ``docs`` extra: Sphinx, Furo).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import Page, sync_playwright

DOCS = Path(__file__).resolve().parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

#: Text a stylesheet draws, on any element, that says the page is broken.
STYLED_ALARMS = """() => {
  const found = [];
  for (const element of document.querySelectorAll('body *')) {
    for (const pseudo of ['::before', '::after']) {
      const content = getComputedStyle(element, pseudo).content;
      if (content && /ERROR|WARNING/.test(content)) {
        found.push(element.tagName.toLowerCase() + '.' + element.className + pseudo + ': ' + content);
      }
    }
  }
  for (const element of document.querySelectorAll('.problematic, .system-message')) {
    found.push(element.className + ': ' + element.textContent.trim().slice(0, 200));
  }
  return found;
}"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built HTML site: ``DOCS_HTML``, or built here."""
    if os.environ.get("DOCS_HTML"):
        return Path(os.environ["DOCS_HTML"])
    from sphinx.cmd.build import build_main

    html = tmp_path_factory.mktemp("docs-html")
    assert build_main(["-q", "-b", "html", str(DOCS), str(html)]) == 0
    return html


@pytest.fixture(scope="module")
def page() -> Page:
    """One Chromium page, reused for every document."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        yield browser.new_page()
        browser.close()


def built_pages(site: Path) -> list[Path]:
    """The site's pages: every HTML file but Sphinx's search and index machinery."""
    return sorted(
        path
        for path in site.rglob("*.html")
        if not {"_static", "_sources", "_modules"} & set(path.relative_to(site).parts)
    )


def test_no_page_shows_an_error_drawn_by_the_theme_or_docutils(site: Path, page: Page) -> None:
    pages = built_pages(site)
    assert len(pages) > 20, f"only {len(pages)} pages under {site}"
    alarms = {}
    for path in pages:
        page.goto(path.as_uri())
        found = page.evaluate(STYLED_ALARMS)
        if found:
            alarms[str(path.relative_to(site))] = found
    assert not alarms, alarms


def test_the_check_sees_furos_red_box(page: Page, tmp_path: Path, site: Path) -> None:
    """The check finds the box a ``.. contents::`` directive gets, on the site's own theme."""
    styled = next(path for path in built_pages(site) if path.name == "index.html")
    html = styled.read_text(encoding="utf-8").replace(
        '<article role="main"',
        '<nav class="contents" id="on-this-page"><p>On this page</p></nav><article role="main"',
        1,
    )
    copy = styled.with_name("furo-red-box-probe.html")
    copy.write_text(html, encoding="utf-8")
    try:
        page.goto(copy.as_uri())
        found = page.evaluate(STYLED_ALARMS)
    finally:
        copy.unlink()
    assert any("table of contents in Furo" in alarm for alarm in found), found
