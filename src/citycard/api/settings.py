"""Settings of one API instance (limits are named here; ``citycard serve`` fills the paths)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

TOKEN_TTL_S = 8 * 3600  # an operator's working day; then log in again
AUTH_CACHE_TTL_S = 2.0  # a revoked key or token stops working within this many seconds in other processes
AUTH_CACHE_ENTRIES_MAX = 10_000
BODY_BYTES_MAX = 1_000_000  # a request body larger than this is refused (413) before parsing


@dataclass(frozen=True)
class ApiSettings:
    """What :func:`citycard.api.create_app` needs besides the engine and the HSM.

    ``image_dir``: where virtual card images are written by personalisation; ``issuer``: the
    issuer (data/hosts/issuers.toml) new cards are applied for unless the request names one.
    """

    image_dir: Path = field(default_factory=lambda: Path("cards"))
    issuer: str = "citybank"
    token_ttl_s: int = TOKEN_TTL_S
    auth_cache_ttl_s: float = AUTH_CACHE_TTL_S
    body_bytes_max: int = BODY_BYTES_MAX
    title: str = "citycard platform API"
    # validators (api/routers/terminals.py): the clearing HSM (None: the app's HSM) and the issuer's
    # IMK labels per suite, as `citycard clearing intake --hsm --master-key --labels` takes them;
    # the fare table distributed to validators (shipped name, or <fares_dir>/<name>.toml); the
    # CAPK set version (raise it when the HSM's CAs change)
    clearing_hsm: Path | None = None
    clearing_master_key: Path | None = None
    clearing_labels: dict[str, tuple[str, str]] = field(
        default_factory=lambda: {"INTL": ("imk-ac-intl", "imk-mac-intl"), "GM": ("imk-ac-gm", "imk-mac-gm")}
    )
    fare_table: str = "panzhihua"
    fares_dir: Path | None = None
    capks_version: int = 1
