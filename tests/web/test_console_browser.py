"""The operator console in a real browser (issue 6 acceptance): Playwright drives /usr/bin/chromium
headless against a real server on SQLite — log in, find the cardholder, report a loss, see the loss
in the card's timeline. The screenshot is kept as the test artifact
``test-artifacts/console-timeline.png`` (repository root; Chinese — it needs a CJK font such as
fonts-wqy-microhei on the machine, or the glyphs are boxes) and ``console-timeline-en.png`` (English).

Skipped on a laptop without Chromium; required in CI (``CITYCARD_REQUIRE_SERVICES=1``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import require_service
from tests.web.conftest import OPERATOR, PASSWORD, Console

from citycard.db import read_transaction
from citycard.host.issuer import tables as issuer_tables
from citycard.platform import cards

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
SCREENSHOT = ARTIFACTS / "console-timeline.png"  # Chinese (the default); readable with a CJK font installed
SCREENSHOT_EN = ARTIFACTS / "console-timeline-en.png"  # English: readable on any machine
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PAGE_TIMEOUT_MS = 30_000

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    require_service(CHROMIUM.exists() and os.access(CHROMIUM, os.X_OK), f"{CHROMIUM} is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def test_log_in_find_report_loss_and_see_the_timeline(browser: Any, console_sqlite: Console) -> None:
    console = console_sqlite
    context = browser.new_context(locale="zh-CN", viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    try:
        # A page without a session sends us to the login form.
        page.goto(f"{console.base_url}/console/cardholders")
        assert "/console/login" in page.url
        page.fill("input[name=username]", OPERATOR)
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url("**/console/cardholders")

        # The session cookie is HttpOnly and SameSite=Strict: no script on the page can read it.
        session = next(c for c in context.cookies() if c["name"] == "citycard_console")
        assert session["httpOnly"] and session["sameSite"] == "Strict"
        assert "citycard_console" not in page.evaluate("document.cookie")

        # Find the cardholder by name, open the cardholder, then the card.
        page.fill("input[name=q]", "张三")
        page.click("form.search button")
        page.wait_for_selector("#results")
        assert "找到 1 位持卡人" in page.inner_text("main")
        page.click(f"#results a[href='/console/cardholders/{console.holder['id']}']")
        page.wait_for_selector("#cards")
        page.click(f"#cards a[href='/console/cards/{console.card_id}']")
        page.wait_for_selector("#timeline")
        assert page.inner_text("#card-state") == "正常"

        # Report the loss (oral): confirm, submit; the page comes back with the notice.
        page.check("#action-report-loss input[name=confirm]")
        page.click("#action-report-loss button[type=submit]")
        page.wait_for_url(f"**/console/cards/{console.card_id}?done=report-loss")
        page.wait_for_selector(".notice")
        text = page.inner_text("main")
        assert "挂失成功" in text
        assert page.inner_text("#card-state") == "口头挂失"
        timeline = page.inner_text("#timeline")
        assert "卡片挂失" in timeline and "卡片已启用" in timeline and "卡片已发放" in timeline
        assert "交通" in timeline and "¥2.00" in timeline and "医疗" in timeline  # sectors' events too
        assert "加载行业应用" in timeline and "交通" in page.inner_text("#applications")
        assert "正常 → 口头挂失" in page.inner_text("#audit tbody tr:first-child")
        first_row = page.inner_text("#timeline tbody tr:first-child")
        assert "卡片挂失" in first_row  # newest first

        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        assert SCREENSHOT.stat().st_size > 10_000

        # The same page in English, through the language switch.
        page.click("#lang-switch")
        page.wait_for_selector("#timeline")
        assert "Card reported lost" in page.inner_text("#timeline")
        assert page.inner_text("#card-state") == "lost (oral report)"
        page.screenshot(path=str(SCREENSHOT_EN), full_page=True)
    finally:
        context.close()

    # What the browser did really happened: the platform card and the issuer's card are blocked.
    with read_transaction(console.engine) as conn:
        card = cards.get(conn, console.card_id)
        row = cards.record(conn, console.card_id)
        c = issuer_tables.cards.c
        status = conn.execute(
            issuer_tables.cards.select().with_only_columns(c.status).where(c.pan == row.pan, c.psn == row.psn)
        ).scalar_one()
        kinds = [e["kind"] for e in cards.timeline(conn, console.card_id)]
    assert card["state"] == "lost_oral" and card["lost_at"] is not None
    assert status == "lost"
    assert kinds.count("card.lost") == 1
