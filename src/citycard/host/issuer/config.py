"""Issuer configuration as data: ``data/hosts/issuers.toml`` → :class:`IssuerConfig` per bank.

A config names HSM keys by label (never a key), the BINs the bank owns, its F32/F33 institution
code and its risk limits (all in fen or counts, each a named field). Stand-in rules belong to the
switch, not here.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from citycard.crypto.suite import GM, INTL, Suite

CONFIG_FORMAT = "citycard-issuers/1"
DEFAULT_CONFIG = "data/hosts/issuers.toml"
SUITES_BY_NAME = {"INTL": INTL, "GM": GM}
KEY_LABEL_NAMES = ("imk_ac", "imk_mac", "imk_enc", "pvk", "pin_key")
LIMIT_NAMES = ("transaction_max_fen", "daily_max_fen", "atc_jump_max", "pin_tries_max", "ec_balance_max_fen")
AMOUNT_FEN_MAX = 999_999_999_999  # F4 n12
ATC_MAX = 0xFFFF
PIN_TRIES_MAX = 9
INSTITUTION_DIGITS_MAX = 11  # F32/F33 n..11
ISSUER_NAME_CHARS_MAX = 24  # it goes into ledger account codes and posting keys


class IssuerConfigError(ValueError):
    """An issuers file that is malformed; the message names the issuer and the key."""


@dataclass(frozen=True, slots=True)
class KeyLabels:
    """HSM labels of one suite's keys: IMK-AC/MAC/ENC, the PVK and the PIN key F52 arrives under."""

    imk_ac: str
    imk_mac: str
    imk_enc: str
    pvk: str
    pin_key: str


@dataclass(frozen=True)
class IssuerConfig:
    """One bank's issuer host."""

    name: str
    bins: tuple[str, ...]
    institution_id: str  # F32/F33 code
    keys: dict[str, KeyLabels]  # by suite name, "INTL" / "GM"
    transaction_max_fen: int = 5_000_000
    daily_max_fen: int = 20_000_000
    atc_jump_max: int = 100
    pin_tries_max: int = 3
    ec_balance_max_fen: int = 100_000  # 9F77 when the card does not send it (PBOC: 1000 yuan)
    extra: dict[str, Any] = field(default_factory=dict)

    def labels(self, suite: Suite) -> KeyLabels:
        try:
            return self.keys[suite.name]
        except KeyError:
            raise IssuerConfigError(f"issuer {self.name} has no keys for suite {suite.name}") from None

    def owns(self, pan: str) -> bool:
        return any(pan.startswith(prefix) for prefix in self.bins)


def _int(name: str, key: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise IssuerConfigError(f"issuer {name}: {key} must be an integer {low}..{high}, got {value!r}")
    return value


def _issuer(name: str, table: Any) -> IssuerConfig:
    if not isinstance(table, dict):
        raise IssuerConfigError(f"issuer {name}: expected a table")
    if not name.isascii() or not name.replace("-", "").isalnum() or len(name) > ISSUER_NAME_CHARS_MAX:
        raise IssuerConfigError(
            f"issuer name {name!r}: letters, digits and -, at most {ISSUER_NAME_CHARS_MAX} characters"
        )
    unknown = set(table) - {"bins", "institution_id", "keys", *LIMIT_NAMES}
    if unknown:
        raise IssuerConfigError(f"issuer {name}: unknown keys {', '.join(sorted(unknown))}")
    bins = table.get("bins")
    if not isinstance(bins, list) or not bins or not all(isinstance(b, str) and b.isdigit() for b in bins):
        raise IssuerConfigError(f"issuer {name}: bins must be a non-empty list of digit strings")
    institution = table.get("institution_id")
    if (
        not (isinstance(institution, str) and institution.isdigit())
        or len(institution) > INSTITUTION_DIGITS_MAX
    ):
        raise IssuerConfigError(f"issuer {name}: institution_id must be 1..{INSTITUTION_DIGITS_MAX} digits")
    keys_table = table.get("keys")
    if not isinstance(keys_table, dict) or not keys_table:
        raise IssuerConfigError(f"issuer {name}: needs [issuers.{name}.keys.INTL] and/or .GM")
    keys: dict[str, KeyLabels] = {}
    for suite_name, labels in keys_table.items():
        if suite_name not in SUITES_BY_NAME:
            raise IssuerConfigError(f"issuer {name}: key suite {suite_name!r} is not INTL or GM")
        if not isinstance(labels, dict) or set(labels) != set(KEY_LABEL_NAMES):
            raise IssuerConfigError(
                f"issuer {name}: keys.{suite_name} needs exactly {', '.join(KEY_LABEL_NAMES)}"
            )
        if not all(isinstance(v, str) and v for v in labels.values()):
            raise IssuerConfigError(f"issuer {name}: keys.{suite_name} labels must be non-empty strings")
        keys[suite_name] = KeyLabels(**labels)
    limits = {
        "transaction_max_fen": (1, AMOUNT_FEN_MAX),
        "daily_max_fen": (1, AMOUNT_FEN_MAX),
        "atc_jump_max": (1, ATC_MAX),
        "pin_tries_max": (1, PIN_TRIES_MAX),
        "ec_balance_max_fen": (0, AMOUNT_FEN_MAX),
    }
    values = {key: _int(name, key, table[key], *limits[key]) for key in LIMIT_NAMES if key in table}
    return IssuerConfig(name, tuple(bins), institution, keys, **values)


def parse_issuer_configs(text: str, *, source: str = "issuers.toml") -> dict[str, IssuerConfig]:
    """Parse an issuers file; every issuer validated, a precise error on the first bad key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise IssuerConfigError(f"{source}: {exc}") from None
    if data.get("format") != CONFIG_FORMAT:
        raise IssuerConfigError(f"{source}: format must be {CONFIG_FORMAT!r}, got {data.get('format')!r}")
    issuers = data.get("issuers")
    if not isinstance(issuers, dict) or not issuers:
        raise IssuerConfigError(f"{source}: no [issuers.NAME] tables")
    configs = {name: _issuer(name, table) for name, table in issuers.items()}
    seen: dict[str, str] = {}
    for config in configs.values():
        for prefix in config.bins:
            if prefix in seen:
                raise IssuerConfigError(f"{source}: BIN {prefix} belongs to {seen[prefix]} and {config.name}")
            seen[prefix] = config.name
    return configs


def load_issuer_configs(path: Path | None = None) -> dict[str, IssuerConfig]:
    """The issuers of ``path``, default the shipped ``data/hosts/issuers.toml``.

    >>> sorted(load_issuer_configs())
    ['citybank', 'ruralbank']
    >>> load_issuer_configs()["citybank"].labels(INTL).imk_ac
    'imk-ac-intl'
    """
    if path is None:
        text = resources.files("citycard").joinpath(DEFAULT_CONFIG).read_text(encoding="utf-8")
        return parse_issuer_configs(text, source=DEFAULT_CONFIG)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise IssuerConfigError(f"cannot read {path}: {exc.strerror}") from None
    return parse_issuer_configs(text, source=str(path))
