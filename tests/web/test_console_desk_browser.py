"""The desk pages in a real browser: Playwright drives /usr/bin/chromium headless against a real
server on SQLite — log in, register a cardholder (Chinese), issue a card at the desk, load the
campus application onto it, see it on the card; then the same page in English. Screenshots are kept
as ``test-artifacts/console-desk.png`` (Chinese) and ``console-desk-en.png`` (English).

Skipped on a laptop without Chromium; required in CI (``CITYCARD_REQUIRE_SERVICES=1``).
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from tests.web.conftest import OPERATOR, PASSWORD, Console, resident_id
from tests.web.test_console_browser import ARTIFACTS, PAGE_TIMEOUT_MS, browser  # noqa: F401 (fixture)

from citycard.card import load_card
from citycard.db import read_transaction
from citycard.platform import applications, cards
from citycard.platform import tables as platform_tables

SCREENSHOT = ARTIFACTS / "console-desk.png"
SCREENSHOT_EN = ARTIFACTS / "console-desk-en.png"

pytestmark = pytest.mark.service


def test_register_issue_and_load_an_application_in_the_browser(browser: Any, console_sqlite: Console) -> None:  # noqa: F811
    console = console_sqlite
    number = resident_id("20050620")  # a student: at most 30 years old (cardholder_kinds.toml)
    context = browser.new_context(locale="zh-CN", viewport={"width": 1280, "height": 1400})
    page = context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    try:
        page.goto(f"{console.base_url}/console/register")
        assert "/console/login" in page.url
        page.fill("input[name=username]", OPERATOR)
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url("**/console/register")

        page.fill("#register input[name=name]", "赵柜台")
        page.fill("#register input[name=id_number]", number)
        page.select_option("#register select[name=kind]", "student")
        page.fill("#register input[name=phone]", "13912345678")
        page.click("#register button[type=submit]")
        page.wait_for_selector("#issue-card")
        main = page.inner_text("main")
        assert "赵柜台" in main and "2005-06-20" in main and "学生" in main

        page.click("#issue-card button[type=submit]")
        page.wait_for_selector("#manage-applications")
        assert page.inner_text("#card-state") == "正常"
        card_id = int(page.url.split("/console/cards/")[1].split("?")[0])

        page.click("#manage-applications")
        page.wait_for_selector("#load-campus")
        page.fill("#load-campus input[name='campus.school_code']", "1033500001")
        page.fill("#load-campus input[name='campus.member_no']", "2026S0001")
        page.fill("#load-campus input[name='campus.faculty']", "数学学院")
        page.fill("#load-campus input[name='campus.valid_until']", "2029-07-31")
        page.click("#load-campus button[type=submit]")
        page.wait_for_selector("#unload-campus")
        assert "校园卡已加载到卡片。" in page.inner_text(".notice")

        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        assert SCREENSHOT.stat().st_size > 10_000

        page.click("#lang-switch")
        page.wait_for_selector("#unload-campus")
        assert "Applications on card" in page.inner_text("h1")
        page.screenshot(path=str(SCREENSHOT_EN), full_page=True)
    finally:
        context.close()

    # What the browser did really happened: the cardholder, the active card, the record on the chip.
    with read_transaction(console.engine) as conn:
        h = platform_tables.cardholders.c
        holder = conn.execute(sa.select(h.id, h.kind).where(h.id_number == number)).one()
        card = cards.record(conn, card_id)
        assert holder.kind == "student" and card.cardholder_id == holder.id and card.state == "active"
        assert [a["app_id"] for a in applications.on_card(conn, card_id)] == ["campus"]
    chip = load_card(card.image_path, hsm=console.hsm)
    record = applications.read_from_card(chip, "campus")
    assert record["valid"] is True and record["member_no"] == "2026S0001" and record["faculty"] == "数学学院"
