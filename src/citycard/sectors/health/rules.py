"""The insurance rules table (data/health/insurance.toml) and the share it gives a visit.

UNCERTAIN values (docs/health.md): the table's shape — deductible (起付线), share (报销比例, per
mille), caps per visit and per year (封顶线) per scheme and visit kind — follows how local rules are
written; its figures are placeholders, not a real city's policy.

>>> rules = load_rules()
>>> rules.share(scheme="urban_employee", kind="outpatient", amount_fen=12_000).insurance_fen
7140
>>> rules.share(scheme="ncms", kind="outpatient", amount_fen=50_000).insurance_fen  # the visit cap
10000
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from citycard.platform.errors import InvalidInput
from citycard.sectors.health.tables import VISIT_KINDS

AMOUNT_FEN_MAX = 10**10  # 1 亿元 for one visit: far above any real bill, a limit all the same
PERMILLE = 1_000


@dataclass(frozen=True, slots=True)
class KindRule:
    deductible_fen: int
    share_permille: int
    cap_per_visit_fen: int


@dataclass(frozen=True, slots=True)
class Scheme:
    code: str
    name: str
    insurer_account: str
    cap_per_year_fen: int
    kinds: dict[str, KindRule]


@dataclass(frozen=True, slots=True)
class Share:
    """What the insurer pays (``insurance_fen``) and what the patient pays (``self_pay_fen``)."""

    scheme: str
    kind: str
    amount_fen: int
    insurance_fen: int
    self_pay_fen: int
    rule: str  # which limit decided it: "share", "visit cap", "year cap", "deductible"

    def to_dict(self) -> dict[str, Any]:
        return {"scheme": self.scheme, "kind": self.kind, "amount_fen": self.amount_fen,
                "insurance_fen": self.insurance_fen, "self_pay_fen": self.self_pay_fen, "rule": self.rule}  # fmt: skip


def _fen(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= AMOUNT_FEN_MAX:
        raise ValueError(f"{where} must be an integer 0…{AMOUNT_FEN_MAX} fen, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Rules:
    version: int
    schemes: dict[str, Scheme]

    @classmethod
    def from_toml(cls, data: dict[str, Any]) -> Rules:
        """Parse and check the table; a wrong entry raises ValueError naming it."""
        schemes: dict[str, Scheme] = {}
        for code, raw in data.get("schemes", {}).items():
            kinds: dict[str, KindRule] = {}
            for kind in VISIT_KINDS:
                entry = raw.get("kinds", {}).get(kind)
                if entry is None:
                    raise ValueError(f"insurance rules: scheme {code} has no rule for {kind} visits")
                share = entry["share_permille"]
                if isinstance(share, bool) or not isinstance(share, int) or not 0 <= share <= PERMILLE:
                    raise ValueError(
                        f"insurance rules: {code}.{kind}.share_permille must be 0…1000, got {share!r}"
                    )
                kinds[kind] = KindRule(
                    _fen(entry["deductible_fen"], f"{code}.{kind}.deductible_fen"),
                    share,
                    _fen(entry["cap_per_visit_fen"], f"{code}.{kind}.cap_per_visit_fen"),
                )
            account = str(raw.get("insurer_account", ""))
            if account and not account.startswith("insurer:"):
                raise ValueError(
                    f"insurance rules: {code}.insurer_account must be insurer:<scheme>, got {account!r}"
                )
            schemes[code] = Scheme(code, str(raw["name"]), account,
                                   _fen(raw["cap_per_year_fen"], f"{code}.cap_per_year_fen"), kinds)  # fmt: skip
        if not schemes:
            raise ValueError("insurance rules: no [schemes.*] table")
        return cls(int(data.get("version", 1)), schemes)

    def scheme(self, code: str) -> Scheme:
        try:
            return self.schemes[code]
        except KeyError:
            raise InvalidInput("health.unknown_scheme", f"unknown insurance scheme {code!r}; known: "
                               f"{', '.join(sorted(self.schemes))}", fields={"scheme": "unknown"}) from None  # fmt: skip

    def share(self, *, scheme: str, kind: str, amount_fen: int, settled_this_year_fen: int = 0) -> Share:
        """The insurer's share of a visit of ``amount_fen``: floor((amount − deductible) × share / 1000),
        capped per visit and by what is left of the year's cap. Integer fen throughout."""
        rules = self.scheme(scheme)
        if kind not in rules.kinds:
            raise InvalidInput("health.bad_visit_kind", f"visit kind must be one of {', '.join(VISIT_KINDS)}",
                               fields={"kind": "unknown"})  # fmt: skip
        if (
            isinstance(amount_fen, bool)
            or not isinstance(amount_fen, int)
            or not 0 <= amount_fen <= AMOUNT_FEN_MAX
        ):
            raise InvalidInput("health.bad_amount", f"amount_fen must be an integer 0…{AMOUNT_FEN_MAX}",
                               fields={"amount_fen": "out of range"})  # fmt: skip
        rule = rules.kinds[kind]
        eligible = max(0, amount_fen - rule.deductible_fen)
        insurance = eligible * rule.share_permille // PERMILLE
        decided = "share" if eligible else "deductible"
        if insurance > rule.cap_per_visit_fen:
            insurance, decided = rule.cap_per_visit_fen, "visit cap"
        year_left = max(0, rules.cap_per_year_fen - settled_this_year_fen)
        if insurance > year_left:
            insurance, decided = year_left, "year cap"
        assert 0 <= insurance <= amount_fen
        return Share(scheme, kind, amount_fen, insurance, amount_fen - insurance, decided)


def rules_path() -> Path:
    return Path(str(resources.files("citycard") / "data" / "health" / "insurance.toml"))


@cache
def load_rules(path: Path | None = None) -> Rules:
    """The shipped rules table (or the one at ``path``)."""
    with open(path or rules_path(), "rb") as handle:
        return Rules.from_toml(tomllib.load(handle))
