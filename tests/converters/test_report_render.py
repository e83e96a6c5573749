"""report.html renders in headless Chromium (no network) and the screenshot
goes to docs/img/report.png."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img" / "report.png"
# Tests never rewrite tracked files: set EDGEPACK_UPDATE_SCREENSHOTS=1 to refresh docs/img/report.png.
UPDATE_DOCS = os.environ.get("EDGEPACK_UPDATE_SCREENSHOTS") == "1"


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is not installed (the lead installs it)")
def test_report_html_renders_in_headless_chromium(torch_build, tmp_path):
    shot = DOCS_IMG if UPDATE_DOCS else tmp_path / "report.png"
    from playwright.sync_api import sync_playwright
    requests = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("request", lambda r: requests.append(r.url))
        page.goto(torch_build.report_html.as_uri())
        assert page.locator("h1").inner_text().startswith("digits v1")
        assert page.locator("table tbody tr").count() >= 4
        assert page.locator("svg").count() >= 7  # 3 bar charts + 4 histograms
        box = page.locator("svg").first.bounding_box()
        assert box and box["width"] > 100
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert all(u.startswith("file://") for u in requests)  # self-contained: nothing fetched from a network
    assert shot.stat().st_size > 10_000
