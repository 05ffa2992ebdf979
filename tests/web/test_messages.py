"""The console's message tables: both languages complete and consistent (issue 6 item 7)."""

from __future__ import annotations

import re
import string
from pathlib import Path

import pytest

from citycard.web import messages

TEMPLATES = Path(messages.__file__).parent / "templates"
# t("key") and t('key') with a literal key; keys built from data (t("state." ~ c.state)) are checked below.
LITERAL_KEY = re.compile(r"""\bt\(\s*["']([a-z_.]+)["']\s*[,)]""")


def _placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_every_language_has_the_same_keys() -> None:
    assert set(messages.ZH) == set(messages.EN)
    assert set(messages.MESSAGES) == set(messages.LANGUAGES)


@pytest.mark.parametrize("key", sorted(messages.EN))
def test_placeholders_agree_between_languages(key: str) -> None:
    assert _placeholders(messages.ZH[key]) == _placeholders(messages.EN[key]), key


def test_every_literal_key_in_the_templates_exists() -> None:
    used = set()
    for path in TEMPLATES.glob("*.html"):
        used |= set(LITERAL_KEY.findall(path.read_text(encoding="utf-8")))
    assert used, "no t(...) calls found: the pattern is wrong"
    missing = sorted(used - set(messages.EN))
    assert missing == []


def test_every_card_state_and_event_kind_has_a_message() -> None:
    from citycard.platform.events import EVENT_KINDS
    from citycard.platform.tables import CARD_STATES

    for state in CARD_STATES:
        assert f"state.{state}" in messages.EN
    for kind in EVENT_KINDS:
        assert f"event.{kind}" in messages.EN


def test_fallbacks() -> None:
    assert messages.translate("en", "no.such.key") == "no.such.key"
    assert messages.translate("zh", "search.none", query="张三") == "没有与“张三”匹配的持卡人。"
    assert messages.pick_language("EN") == "zh"  # codes are exact; the cookie is written by us
