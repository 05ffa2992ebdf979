"""The patient's consent page in a real browser (issue 8 acceptance): Playwright drives
/usr/bin/chromium headless against a real server on SQLite. The patient logs in, sees that hospital
2 was refused, grants it access to their visit records, sees the grant, revokes it, and the audit
shows who read what. Screenshots are kept as artifacts: ``test-artifacts/health-consent.png``
(Chinese; needs a CJK font) and ``health-consent-en.png`` (English).
"""

from __future__ import annotations

from typing import Any

import pytest
from tests.web.conftest import PASSWORD, Console
from tests.web.test_console_browser import ARTIFACTS, PAGE_TIMEOUT_MS, browser  # noqa: F401 — fixture
from tests.web.test_health_pages import health_setup

from citycard.db import read_transaction
from citycard.platform.errors import Forbidden
from citycard.sectors.health import service

SCREENSHOT = ARTIFACTS / "health-consent.png"
SCREENSHOT_EN = ARTIFACTS / "health-consent-en.png"

pytestmark = pytest.mark.service


def test_the_patient_grants_and_revokes_consent_in_a_browser(browser: Any, console_sqlite: Console) -> None:  # noqa: F811
    console = console_sqlite
    setup = health_setup(console)
    holder = console.holder["id"]
    with pytest.raises(Forbidden):  # hospital 2's information system tries first: refused, audited
        service.read_records(console.engine, actor="key:7:his-h2", institution_id=setup["second"],
                             cardholder_id=holder, scope="visits", reader=lambda c, p: [])  # fmt: skip
    context = browser.new_context(locale="zh-CN", viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    try:
        page.goto(f"{console.base_url}/console/health/consent")
        assert "/console/health/login" in page.url
        page.fill("input[name=username]", setup["holder"])
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url("**/console/health/consent")
        assert "您尚未授权任何医院" in page.inner_text("main")
        assert "已拒绝" in page.inner_text("#audit tbody tr:first-child")

        page.select_option("#grant select[name=institution_id]", setup["second"])
        page.select_option("#grant select[name=scope]", "visits")
        page.click("#grant button[type=submit]")
        page.wait_for_url("**/console/health/consent?done=grant")
        assert "授权成功" in page.inner_text(".notice")
        row = page.inner_text("#consents tbody tr:first-child")
        assert "第2人民医院" in row and "就诊记录" in row

        # hospital 2 reads now: allowed, and the page shows it on reload
        seen = service.read_records(console.engine, actor="key:7:his-h2", institution_id=setup["second"],
                                    cardholder_id=holder, scope="visits", reader=lambda c, p: ["ok"])  # fmt: skip
        assert seen == ["ok"]
        page.reload()
        assert "已允许" in page.inner_text("#audit tbody tr:first-child")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        assert SCREENSHOT.stat().st_size > 10_000

        page.click("#consents form.revoke button[type=submit]")
        page.wait_for_url("**/console/health/consent?done=revoke")
        assert "已撤回授权" in page.inner_text(".notice")
        assert "第2人民医院" in page.inner_text("#revoked")
        page.click("#lang-switch")
        page.wait_for_selector("#audit")
        assert "Withdrawn consents" in page.inner_text("main") and "allowed" in page.inner_text("#audit")
        page.screenshot(path=str(SCREENSHOT_EN), full_page=True)
    finally:
        context.close()

    # what the browser did really happened, and the revoked consent closes the door again
    with read_transaction(console.engine) as conn:
        (consent,) = service.consents(conn, holder)
    assert consent["revoked_at"] is not None
    with pytest.raises(Forbidden):
        service.read_records(console.engine, actor="key:7:his-h2", institution_id=setup["second"],
                             cardholder_id=holder, scope="visits", reader=lambda c, p: [])  # fmt: skip
