"""Screenshots of the three tabs of a running server (docs/annotate.png, docs/dashboard.png, docs/export.png).

    .venv/bin/python scripts/screenshots.py http://127.0.0.1:7860 docs
"""
from __future__ import annotations

import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

from app.testing import launch_chromium


def main(url: str, out: str) -> None:
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(url)
        page.wait_for_selector("[data-image-id]:not([data-image-id=''])", timeout=60_000)
        page.wait_for_timeout(800)
        page.screenshot(path=folder / "annotate.png")
        page.click("button[role=tab]:has-text('Dashboard')")
        page.click("#dash-refresh")
        page.wait_for_timeout(2500)
        page.screenshot(path=folder / "dashboard.png", full_page=True)
        page.click("button[role=tab]:has-text('Export')")
        page.click("#export-button")
        page.locator("#export-file a").first.wait_for(timeout=120_000)
        page.wait_for_timeout(500)
        page.screenshot(path=folder / "export.png")
        browser.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
