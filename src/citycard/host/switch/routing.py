"""The BIN table: PAN → endpoint, longest prefix wins, else the default route (pure).

Routing is on F2 (the PAN, pboc-notes §10). A PAN that matches no prefix goes to the default
route (the remote/provincial switch); without one the switch answers "15" (no such issuer, ISO 8583
response code) — see :mod:`citycard.host.switch.codes`.
"""

from __future__ import annotations

from dataclasses import dataclass

from citycard.host.switch.config import StandInRule, SwitchConfig

PAN_DIGITS_MIN = 12
PAN_DIGITS_MAX = 19


@dataclass(frozen=True, slots=True)
class Destination:
    endpoint: str
    prefix: str | None  # None = reached by the default route
    standin: StandInRule | None


class RoutingTable:
    """Longest-prefix lookup over the configured BIN prefixes.

    >>> from citycard.host.switch.config import parse_switch_config
    >>> config = parse_switch_config({
    ...     "switch": {"name": "a", "institution_id": "1", "default_route": "prov"},
    ...     "endpoints": [{"name": "bank", "kind": "issuer", "port": 1},
    ...                   {"name": "bank2", "kind": "issuer", "port": 2},
    ...                   {"name": "prov", "kind": "switch", "port": 3}],
    ...     "routes": [{"prefix": "6228", "endpoint": "bank"}, {"prefix": "622848", "endpoint": "bank2"}]})
    >>> table = RoutingTable(config)
    >>> table.route("6228480000000001").endpoint, table.route("6228000000000001").endpoint
    ('bank2', 'bank')
    >>> table.route("9999000000000001")
    Destination(endpoint='prov', prefix=None, standin=None)
    """

    def __init__(self, config: SwitchConfig) -> None:
        self._by_prefix: dict[str, Destination] = {
            route.prefix: Destination(
                route.endpoint, route.prefix, config.standin[route.standin] if route.standin else None
            )
            for route in config.routes
        }
        # Lengths to try, longest first: at most BIN_DIGITS_MAX dictionary probes per lookup.
        self._lengths = sorted({len(prefix) for prefix in self._by_prefix}, reverse=True)
        default = config.switch.default_route
        self._default = Destination(default, None, None) if default is not None else None

    def route(self, pan: str) -> Destination | None:
        """The destination of ``pan``; None when no prefix matches and there is no default route."""
        if not (PAN_DIGITS_MIN <= len(pan) <= PAN_DIGITS_MAX and pan.isdigit()):
            raise ValueError(
                f"PAN must be {PAN_DIGITS_MIN}..{PAN_DIGITS_MAX} digits, got {len(pan)} characters"
            )
        for length in self._lengths:
            destination = self._by_prefix.get(pan[:length])
            if destination is not None:
                return destination
        return self._default
