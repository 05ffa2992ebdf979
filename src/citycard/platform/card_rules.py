"""Card rules as data (``citycard/data/platform/cards.toml``): deposit, dormancy period, profiles.

>>> rules().dormancy_days > 0 and rules().deposit_fen >= 0
True
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources

RULES_FORMAT = "citycard-platform-cards/1"
DEPOSIT_FEN_MAX = 100_000  # 1,000 yuan: anything above is a typo in the rules file
DORMANCY_DAYS_RANGE = range(30, 3_651)


@dataclass(frozen=True, slots=True)
class CardRules:
    deposit_fen: int
    dormancy_days: int
    profiles: tuple[str, ...]


def parse_rules(text: str) -> CardRules:
    """Parse a rules file; a missing or out-of-range value is a ``ValueError`` naming it."""
    data = tomllib.loads(text)
    if data.get("format") != RULES_FORMAT:
        raise ValueError(f"card rules: format must be {RULES_FORMAT!r}")
    unknown = set(data) - {"format", "deposit_fen", "dormancy_days", "profiles"}
    if unknown:
        raise ValueError(f"card rules: unknown keys {sorted(unknown)}")
    deposit, days, profiles = data.get("deposit_fen"), data.get("dormancy_days"), data.get("profiles")
    if not isinstance(deposit, int) or not 0 <= deposit <= DEPOSIT_FEN_MAX:
        raise ValueError(f"card rules: deposit_fen must be 0..{DEPOSIT_FEN_MAX}")
    if not isinstance(days, int) or days not in DORMANCY_DAYS_RANGE:
        raise ValueError(
            f"card rules: dormancy_days must be {DORMANCY_DAYS_RANGE.start}..{DORMANCY_DAYS_RANGE.stop - 1}"
        )
    if not isinstance(profiles, list) or not profiles or not all(isinstance(p, str) for p in profiles):
        raise ValueError("card rules: profiles must be a non-empty list of profile names")
    return CardRules(deposit, days, tuple(profiles))


@cache
def rules() -> CardRules:
    """The shipped card rules, read once."""
    return parse_rules(
        (resources.files("citycard.data") / "platform" / "cards.toml").read_text(encoding="utf-8")
    )
