"""The switch configuration (``switch.toml``): who the switch is, its endpoints, BIN table and stand-in rules.

A switch (jPOS "QMUX + router" style) has:

* ``[switch]`` — its own institution code (set in F33 "forwarding institution" of every request it
  forwards, pboc-notes §10), the address it listens on, and whether peers must MAC their messages;
* ``[[endpoints]]`` — the hosts it forwards to: local issuers (``kind = "issuer"``) and remote
  switches (``kind = "switch"``, e.g. the provincial platform or another city's switch), each with
  its address, the HSM label of the zone master key used to sign on to it, and a timeout;
* ``[[routes]]`` — the BIN table: PAN prefix → endpoint, longest prefix wins, and the stand-in rule
  applied when that endpoint is down or late; ``[switch] default_route`` names the endpoint for
  every PAN no prefix matches (normally the remote switch);
* ``[standin.<name>]`` — stand-in rules: which message kinds may be approved on the issuer's behalf
  and up to which amount in fen.

Everything is validated with pydantic; :func:`load_switch_config` turns every problem into one
:class:`SwitchConfigError` whose message names the file, the key path and what is wrong.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

INSTITUTION_DIGITS_MAX = 11  # F32/F33 are n..11
BIN_DIGITS_MIN = 1
BIN_DIGITS_MAX = 12  # longer prefixes would be account ranges, not BINs
ENDPOINTS_MAX = 64
ROUTES_MAX = 10_000
TIMEOUT_MS_MIN = 10
TIMEOUT_MS_MAX = 60_000
STANDIN_FEN_MAX = 100_000_000  # 1,000,000 yuan: no stand-in rule may approve more than this
NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,31}$"
# Kinds a stand-in may approve: a 0100/0200 with processing code 000000, whose advice is a 0220.
# EC load (600000) is never stood in for: the card needs the issuer's script (pboc-notes §6).
STANDIN_KINDS = ("authorisation", "purchase")


class SwitchConfigError(ValueError):
    """A switch configuration that cannot be used; the message says where and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class SwitchSection(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    institution_id: str = Field(pattern=rf"^[0-9]{{1,{INSTITUTION_DIGITS_MAX}}}$")
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
    require_mac: bool = True
    default_route: str | None = None


class Endpoint(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    kind: Literal["issuer", "switch"]
    host: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)
    # HSM label (in the switch's HSM) of the zone master key shared with this endpoint for sign-on;
    # the endpoint holds the same key as ``zmk:<our institution_id>``. None = a link without
    # sign-on and MAC (only for an endpoint that does not require MAC).
    zmk: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}$")
    timeout_ms: int = Field(default=2_000, ge=TIMEOUT_MS_MIN, le=TIMEOUT_MS_MAX)
    # How we identify ourselves when signing on to this endpoint (F41 ans8 / F42 ans15).
    terminal_id: str | None = Field(default=None, min_length=8, max_length=8)
    merchant_id: str | None = Field(default=None, min_length=15, max_length=15)

    @property
    def timeout_s(self) -> float:
        return self.timeout_ms / 1000


class StandInRule(_Strict):
    approve_max_fen: int = Field(ge=0, le=STANDIN_FEN_MAX)
    kinds: tuple[Literal["authorisation", "purchase"], ...] = STANDIN_KINDS

    @field_validator("kinds", mode="before")
    @classmethod
    def _list_to_tuple(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value


class Route(_Strict):
    prefix: str = Field(pattern=rf"^[0-9]{{{BIN_DIGITS_MIN},{BIN_DIGITS_MAX}}}$")
    endpoint: str
    standin: str | None = None  # name of a [standin.<name>] rule; None = decline when down


class SwitchConfig(_Strict):
    switch: SwitchSection
    endpoints: tuple[Endpoint, ...] = Field(max_length=ENDPOINTS_MAX)
    routes: tuple[Route, ...] = Field(default=(), max_length=ROUTES_MAX)
    standin: dict[str, StandInRule] = Field(default_factory=dict)

    @field_validator("endpoints", "routes", mode="before")
    @classmethod
    def _list_to_tuple(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value

    @model_validator(mode="after")
    def _cross_references(self) -> SwitchConfig:
        names = [e.name for e in self.endpoints]
        duplicate = next((n for n in names if names.count(n) > 1), None)
        if duplicate is not None:
            raise ValueError(f"endpoint {duplicate!r} is defined twice")
        prefixes = [r.prefix for r in self.routes]
        duplicate = next((p for p in prefixes if prefixes.count(p) > 1), None)
        if duplicate is not None:
            raise ValueError(f"BIN prefix {duplicate!r} is routed twice")
        for index, route in enumerate(self.routes):
            if route.endpoint not in names:
                raise ValueError(
                    f"routes[{index}] (prefix {route.prefix}) names unknown endpoint {route.endpoint!r}"
                )
            if route.standin is not None and route.standin not in self.standin:
                raise ValueError(
                    f"routes[{index}] (prefix {route.prefix}) names unknown stand-in rule {route.standin!r}"
                )
        default = self.switch.default_route
        if default is not None and default not in names:
            raise ValueError(f"switch.default_route names unknown endpoint {default!r}")
        return self

    def endpoint(self, name: str) -> Endpoint:
        return next(e for e in self.endpoints if e.name == name)


def _location(error: dict[str, Any]) -> str:
    """``("endpoints", 0, "port")`` → ``endpoints[0].port`` (the TOML key path)."""
    text = ""
    for part in error["loc"]:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def parse_switch_config(data: dict[str, Any], *, source: str = "switch config") -> SwitchConfig:
    """Validate a parsed TOML document; raise :class:`SwitchConfigError` naming the first problem.

    >>> parse_switch_config({"switch": {"name": "a", "institution_id": "x1"}, "endpoints": []})
    Traceback (most recent call last):
    ...
    citycard.host.switch.config.SwitchConfigError: switch config: switch.institution_id: String should match pattern '^[0-9]{1,11}$' (got 'x1')
    """
    try:
        return SwitchConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = _location(first)
        message = first["msg"].removeprefix("Value error, ")
        got = "" if first["type"] in ("missing", "value_error") else f" (got {first['input']!r})"
        prefix = f"{where}: " if first["type"] != "value_error" or first["loc"] else ""
        raise SwitchConfigError(f"{source}: {prefix}{message}{got}") from None


def load_switch_config(path: Path) -> SwitchConfig:
    """Read and validate ``switch.toml``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SwitchConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SwitchConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_switch_config(data, source=str(path))
