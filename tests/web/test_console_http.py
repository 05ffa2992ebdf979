"""The operator console over plain HTTP (httpx) against a real server (issue 6 item 7).

Each page: 200 for an operator, a redirect to the login page without a session, both languages;
CSRF failures → 403 with nothing changed; lifecycle actions really change the card (platform,
issuer host, events) and show in the timeline; other roles are refused.
"""

from __future__ import annotations

import re
from urllib.parse import quote

import httpx
import pytest
from tests.web.conftest import OPERATOR, PASSWORD, REGULATOR, Console, csrf_of

from citycard.db import read_transaction, utc_now, write_transaction
from citycard.host.issuer import tables as issuer_tables
from citycard.platform import blacklist, cards
from citycard.web.routes import FORM_BYTES_MAX
from citycard.web.security import LANG_COOKIE, SESSION_COOKIE
from citycard.web.services import SEARCH_PAGE_SIZE


def _state(console: Console, card_id: int) -> dict:
    with read_transaction(console.engine) as conn:
        card = cards.get(conn, card_id)
        events = cards.timeline(conn, card_id)
    return {"card": card, "events": [e["kind"] for e in events]}


def _issuer_status(console: Console, card_id: int) -> str:
    with read_transaction(console.engine) as conn:
        row = cards.record(conn, card_id)
        c = issuer_tables.cards.c
        return conn.execute(
            issuer_tables.cards.select().with_only_columns(c.status).where(c.pan == row.pan, c.psn == row.psn)
        ).scalar_one()


def _post_action(client: httpx.Client, card_id: int, action: str, **fields: str) -> httpx.Response:
    page = client.get(f"/console/cards/{card_id}")
    assert page.status_code == 200, page.text
    return client.post(
        f"/console/cards/{card_id}/{action}", data={"csrf_token": csrf_of(page.text), **fields}
    )


def _english(client: httpx.Client) -> None:
    client.cookies.set(LANG_COOKIE, "en", domain="127.0.0.1", path="/console")


# --- no session, login, logout --------------------------------------------------------------------


def test_every_page_redirects_to_login_without_a_session(console: Console) -> None:
    pages = [
        "/console/",
        "/console/cardholders?q=%E5%BC%A0",
        f"/console/cardholders/{console.holder['id']}",
        f"/console/cards/{console.card_id}",
        "/console/blacklist",
    ]
    with console.client() as client:
        for page in pages:
            answer = client.get(page)
            assert answer.status_code == 303, page
            assert answer.headers["location"] == f"/console/login?next={quote(page, safe='')}"
        posted = client.post(f"/console/cards/{console.card_id}/report-loss", data={"csrf_token": "x"})
        assert posted.status_code == 303  # and back to the start page after login, not to a POST URL
        assert posted.headers["location"] == "/console/login?next=%2Fconsole%2F"
    assert _state(console, console.card_id)["card"]["state"] == "active"


def test_login_sets_a_strict_httponly_session_cookie_and_returns_to_the_page(console: Console) -> None:
    with console.client() as client:
        form = client.get("/console/login", params={"next": f"/console/cards/{console.card_id}"})
        assert form.status_code == 200
        assert 'name="password"' in form.text and "操作员登录" in form.text
        answer = client.post(
            "/console/login",
            data={"username": OPERATOR, "password": PASSWORD, "csrf_token": csrf_of(form.text),
                  "next": f"/console/cards/{console.card_id}"},
        )  # fmt: skip
        assert answer.status_code == 303
        assert answer.headers["location"] == f"/console/cards/{console.card_id}"
        cookie = next(h for h in answer.headers.get_list("set-cookie") if h.startswith(SESSION_COOKIE + "="))
        attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
        assert {"httponly", "path", "max-age"} <= attributes
        assert "samesite=strict" in cookie.lower() and "path=/console" in cookie.lower()
        token = cookie.split(";")[0].split("=", 1)[1]
        assert token.startswith("cct_")  # the API's bearer token: the API accepts it too
        me = client.get("/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert me.status_code == 200 and me.json()["role"] == "operator"
        page = client.get(answer.headers["location"])
        assert page.status_code == 200 and "张三" in page.text
        assert page.headers["cache-control"] == "no-store" and page.headers["x-frame-options"] == "DENY"


def test_names_are_html_escaped(console: Console) -> None:
    holder = console.new_holder("<script>alert(1)</script>")
    with console.logged_in() as client:
        page = client.get(f"/console/cardholders/{holder['id']}")
        assert page.status_code == 200
        assert "<script>" not in page.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
        found = client.get("/console/cardholders", params={"q": "<script>"})
        assert "<script>" not in found.text and found.headers["content-security-policy"].startswith(
            "default-src"
        )


def test_wrong_password_is_refused_without_a_session(console: Console) -> None:
    with console.client() as client:
        form = client.get("/console/login")
        answer = client.post(
            "/console/login",
            data={"username": OPERATOR, "password": "wrong-password", "csrf_token": csrf_of(form.text)},
        )
        assert answer.status_code == 401
        assert "用户名或密码错误" in answer.text
        assert SESSION_COOKIE not in answer.cookies
        assert client.get("/console/blacklist").status_code == 303


def test_login_without_the_csrf_cookie_is_403(console: Console) -> None:
    with console.client() as client:
        form = client.get("/console/login")
        token = csrf_of(form.text)
        client.cookies.clear()  # a cross-site form would post without our cookie
        answer = client.post(
            "/console/login", data={"username": OPERATOR, "password": PASSWORD, "csrf_token": token}
        )
        assert answer.status_code == 403
        assert "CSRF" in answer.text
        assert SESSION_COOKIE not in answer.cookies


def test_open_redirects_are_refused(console: Console) -> None:
    with console.client() as client:
        for target in ("https://evil.example/", "//evil.example/console/", "/v1/cards", "/console\\@evil",
                       "/console/../v1/cards", "/console/%2e%2e/v1/cards"):  # fmt: skip
            answer = client.get("/console/lang/en", params={"next": target})
            assert answer.status_code == 303
            assert answer.headers["location"] == "/console/", target
        form = client.get("/console/login", params={"next": "https://evil.example/"})
        assert 'name="next" value="/console/"' in form.text


def test_other_roles_are_refused_and_their_token_revoked(console: Console) -> None:
    with console.client() as client:
        form = client.get("/console/login")
        answer = client.post(
            "/console/login",
            data={"username": REGULATOR, "password": PASSWORD, "csrf_token": csrf_of(form.text)},
        )
        assert answer.status_code == 403
        assert "无权使用运营控制台" in answer.text
        assert SESSION_COOKIE not in answer.cookies


def test_logout_revokes_the_token(console: Console) -> None:
    with console.logged_in() as client:
        token = client.cookies.get(SESSION_COOKIE)
        page = client.get("/console/cardholders")
        answer = client.post("/console/logout", data={"csrf_token": csrf_of(page.text)})
        assert answer.status_code == 303 and answer.headers["location"] == "/console/login"
        assert client.get("/v1/auth/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    with console.client() as replay:  # the old cookie, replayed: the session is gone
        replay.cookies.set(SESSION_COOKIE, token, domain="127.0.0.1", path="/console")
        again = replay.get("/console/cardholders")
        assert again.status_code == 303 and "expired=1" in again.headers["location"]


def test_a_forged_session_cookie_is_sent_to_login(console: Console) -> None:
    with console.client() as client:
        client.cookies.set(SESSION_COOKIE, "cct_forged", domain="127.0.0.1", path="/console")
        answer = client.get("/console/blacklist")
        assert answer.status_code == 303 and "expired=1" in answer.headers["location"]


# --- pages, both languages ------------------------------------------------------------------------


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_every_page_renders_for_an_operator(console: Console, lang: str) -> None:
    words = {
        "zh": {"search": "查找持卡人", "found": "找到 1 位持卡人", "cards": "卡片", "timeline": "全行业时间线",
               "active": "正常", "issued": "卡片已发放", "blacklist": "未更新的终端", "loss": "挂失"},
        "en": {"search": "Find a cardholder", "found": "1 cardholder(s) found", "cards": "Cards",
               "timeline": "Timeline across all sectors", "active": "active", "issued": "Card issued",
               "blacklist": "Stale terminals", "loss": "Report loss"},
    }[lang]  # fmt: skip
    with console.logged_in() as client:
        if lang == "en":
            _english(client)
        root = client.get("/console/")
        assert root.status_code == 303 and root.headers["location"] == "/console/cardholders"
        search = client.get("/console/cardholders")
        assert search.status_code == 200 and words["search"] in search.text
        with read_transaction(console.engine) as conn:
            pan = cards.record(conn, console.card_id).pan
        for query in ("张三", pan):
            found = client.get("/console/cardholders", params={"q": query})
            assert found.status_code == 200
            assert (
                words["found"] in found.text and f"/console/cardholders/{console.holder['id']}" in found.text
            )
        holder = client.get(f"/console/cardholders/{console.holder['id']}")
        assert holder.status_code == 200 and words["cards"] in holder.text
        assert (
            console.holder["id_number_masked"] in holder.text
            and f"/console/cards/{console.card_id}" in holder.text
        )
        card = client.get(f"/console/cards/{console.card_id}")
        assert card.status_code == 200
        for word in ("timeline", "active", "issued", "loss"):
            assert words[word] in card.text, word
        assert 'id="action-report-loss"' in card.text and 'id="action-unblock"' not in card.text
        loaded = card.text.split('id="applications"', 1)[1].split("</table>", 1)[0]
        assert {"zh": "公共交通", "en": "ransit"}[lang] in loaded and "SFI 15" in loaded
        assert 'id="audit"' in card.text
        listing = client.get("/console/blacklist")
        assert listing.status_code == 200 and words["blacklist"] in listing.text
        assert f'<html lang="{"zh-CN" if lang == "zh" else "en"}">' in listing.text


def test_search_by_full_resident_id_number(console: Console) -> None:
    with read_transaction(console.engine) as conn:
        from citycard.platform import tables

        number = conn.execute(
            tables.cardholders.select().with_only_columns(tables.cardholders.c.id_number)
            .where(tables.cardholders.c.id == console.holder["id"])
        ).scalar_one()  # fmt: skip
    with console.logged_in() as client:
        found = client.get("/console/cardholders", params={"q": number})
        assert found.status_code == 200 and "张三" in found.text
        results = found.text.split('id="results"', 1)[1].split("</table>", 1)[0]
        assert console.holder["id_number_masked"] in results
        assert number not in results  # listed masked, even to the operator who typed it
        none = client.get("/console/cardholders", params={"q": "无此人"})
        assert none.status_code == 200 and "没有与“无此人”匹配的持卡人" in none.text


def test_language_switch_is_a_cookie_and_returns_to_the_page(console: Console) -> None:
    with console.logged_in() as client:
        page = f"/console/cards/{console.card_id}"
        answer = client.get("/console/lang/en", params={"next": page})
        assert answer.status_code == 303 and answer.headers["location"] == page
        assert answer.cookies.get(LANG_COOKIE) == "en"
        assert "Timeline across all sectors" in client.get(page).text
        client.get("/console/lang/zh", params={"next": page})
        assert "全行业时间线" in client.get(page).text


def test_unknown_card_and_cardholder_are_404(console: Console) -> None:
    with console.logged_in() as client:
        assert client.get("/console/cards/999999").status_code == 404
        assert client.get("/console/cardholders/999999").status_code == 404
        for url in (
            "/console/cards/0",
            f"/console/cards/{2**64}",
            "/console/cards/x",
            "/console/cardholders/-1",
        ):
            assert client.get(url).status_code == 422, url  # refused before the database sees it
        assert client.get("/console/static/../routes.py").status_code == 404
        assert client.get("/console/static/console.css").status_code == 200


# --- CSRF and lifecycle actions -------------------------------------------------------------------


def test_csrf_failure_is_403_and_changes_nothing(console: Console) -> None:
    card_id = console.new_card(console.holder["id"])
    before = _state(console, card_id)
    with console.logged_in() as client, console.logged_in() as other:
        other_page = other.get(f"/console/cards/{card_id}")
        for token in ("", "0" * 64, csrf_of(other_page.text)):  # none, forged, another session's
            answer = client.post(
                f"/console/cards/{card_id}/report-loss", data={"csrf_token": token, "formal": "1"}
            )
            assert answer.status_code == 403
            assert "CSRF" in answer.text
        no_field = client.post(f"/console/cards/{card_id}/cancel", data={})
        assert no_field.status_code == 403
    assert _state(console, card_id) == before
    assert _issuer_status(console, card_id) == "active"


def test_an_oversized_form_is_413_and_changes_nothing(console: Console) -> None:
    card_id = console.new_card(console.holder["id"])
    before = _state(console, card_id)
    with console.logged_in() as client:
        page = client.get(f"/console/cards/{card_id}")
        answer = client.post(
            f"/console/cards/{card_id}/report-loss",
            data={"csrf_token": csrf_of(page.text), "padding": "x" * (FORM_BYTES_MAX + 1)},
        )
        assert answer.status_code == 413
    assert _state(console, card_id) == before


def test_search_results_are_paged(console: Console) -> None:
    for _ in range(SEARCH_PAGE_SIZE + 1):
        console.new_holder("翻页测试")
    with console.logged_in() as client:
        first = client.get("/console/cardholders", params={"q": "翻页测试"})
        assert first.status_code == 200
        assert f"找到 {SEARCH_PAGE_SIZE} 位持卡人" in first.text
        more = re.search(r'href="(/console/cardholders\?q=[^"]+&(?:amp;)?after=\d+)"', first.text)
        assert more, "no link to the next page"
        second = client.get(more.group(1).replace("&amp;", "&"))
        assert second.status_code == 200 and "找到 1 位持卡人" in second.text
        bad = client.get("/console/cardholders", params={"q": "翻页测试", "after": "not-a-cursor"})
        assert bad.status_code == 200 and "请求失败" in bad.text  # the platform's page.cursor error


def test_report_loss_blocks_the_card_and_shows_in_the_timeline(console: Console) -> None:
    card_id = console.new_card(console.holder["id"])
    with console.logged_in() as client:
        answer = _post_action(client, card_id, "report-loss")
        assert answer.status_code == 303
        assert answer.headers["location"] == f"/console/cards/{card_id}?done=report-loss"
        page = client.get(answer.headers["location"])
        assert "挂失成功" in page.text and "口头挂失" in page.text
        assert "event-card-lost" in page.text and "卡片挂失" in page.text
        assert 'id="action-unblock"' in page.text and 'id="action-replace"' in page.text
    after = _state(console, card_id)
    assert after["card"]["state"] == "lost_oral" and after["card"]["lost_at"] is not None
    assert after["events"].count("card.lost") == 1
    assert _issuer_status(console, card_id) == "lost"


def test_formal_report_then_unblock(console: Console) -> None:
    card_id = console.new_card(console.holder["id"])
    with console.logged_in() as client:
        assert _post_action(client, card_id, "report-loss", formal="1").status_code == 303
        assert _state(console, card_id)["card"]["state"] == "lost"
        answer = _post_action(client, card_id, "unblock")
        assert answer.status_code == 303
        _english(client)
        page = client.get(answer.headers["location"])
        assert "The card is unblocked." in page.text and "Card unblocked" in page.text
    assert _state(console, card_id)["card"]["state"] == "active"
    assert _issuer_status(console, card_id) == "active"


def test_a_refused_transition_shows_the_platform_error_and_changes_nothing(console: Console) -> None:
    card_id = console.new_card(console.holder["id"])
    before = _state(console, card_id)
    with console.logged_in() as client:
        answer = _post_action(client, card_id, "unblock")  # an active card has nothing to unblock
        assert answer.status_code == 409
        assert "卡片当前状态不允许此操作" in answer.text
        unknown = _post_action(client, card_id, "explode")
        assert unknown.status_code == 404
    assert _state(console, card_id) == before


@pytest.mark.parametrize("suite", ["GM", "INTL"])
def test_replace_issues_a_new_card_and_links_both(console: Console, suite: str) -> None:
    holder = console.holder if suite == "GM" else console.holder_intl
    card_id = console.new_card(holder["id"], suite=suite)
    with console.logged_in() as client:
        assert _post_action(client, card_id, "report-loss", formal="1").status_code == 303
        answer = _post_action(client, card_id, "replace")
        assert answer.status_code == 303
        new_id = int(answer.headers["location"].split("new=")[1])
        page = client.get(answer.headers["location"])
        assert f"已补发新卡 {new_id}" in page.text and f"/console/cards/{new_id}" in page.text
        new_page = client.get(f"/console/cards/{new_id}")
        assert f"补换自卡片 {card_id}" in new_page.text and "正常" in new_page.text
    old, new = _state(console, card_id), _state(console, new_id)
    assert old["card"]["state"] == "replaced" and old["card"]["replaced_by_id"] == new_id
    assert new["card"]["state"] == "active" and new["card"]["suite"] == suite
    assert "card.replaced" in old["events"]


def test_cancel_refunds_the_deposit(console: Console) -> None:
    card_id = console.new_card(console.holder["id"])
    with console.logged_in() as client:
        answer = _post_action(client, card_id, "cancel")
        assert answer.status_code == 303 and "refund=2000" in answer.headers["location"]
        page = client.get(answer.headers["location"])
        assert "退款 ¥20.00" in page.text and "已注销" in page.text
        assert "当前状态下没有可执行的操作" in page.text
    assert _state(console, card_id)["card"]["state"] == "cancelled"


def test_blacklist_page_lists_versions_and_stale_terminals(console: Console) -> None:
    first_lost, second_lost = console.new_card(console.holder["id"]), console.new_card(console.holder["id"])
    now = utc_now()
    with console.logged_in() as client:
        assert _post_action(client, first_lost, "report-loss").status_code == 303
        with write_transaction(console.engine) as conn:
            first = blacklist.publish(conn, terminal_class="bus", actor="test", at=now)
            blacklist.report_version(conn, "BUS-STALE-01", "bus", first, now)
        assert _post_action(client, second_lost, "report-loss", formal="1").status_code == 303
        with write_transaction(console.engine) as conn:
            second = blacklist.publish(conn, terminal_class="bus", actor="test", at=now)
            blacklist.report_version(conn, "BUS-FRESH-01", "bus", second, now)
        assert second > first
        _english(client)
        page = client.get("/console/blacklist")
    assert page.status_code == 200
    stale = page.text.split('id="stale"', 1)[1].split("</table>", 1)[0]
    assert "BUS-STALE-01" in stale and "behind the current version" in stale
    assert "BUS-FRESH-01" not in stale
    versions = page.text.split('id="versions"', 1)[1].split("</table>", 1)[0]
    assert f"<td>bus</td><td>{second}</td>" in versions and f"<td>bus</td><td>{first}</td>" in versions
