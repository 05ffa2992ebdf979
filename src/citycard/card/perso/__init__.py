"""Personalisation: card profiles (TOML) → data preparation in the HSM (DGIs) → STORE DATA script.

>>> from citycard.card.perso import list_profiles
>>> list_profiles()
['citizen-card-gm', 'citizen-card-intl', 'pboc-debit-gm', 'pboc-debit-intl', 'pboc-ec-only-gm']
"""

from citycard.card.perso.prepare import (
    ENCIPHERED_DGIS,
    Dgi,
    PreparedCard,
    PrepareError,
    check_inputs,
    luhn_check_digit,
    luhn_valid,
    mask_pan,
    pin_block_format_2,
    prepare_card,
    static_data_to_authenticate,
)
from citycard.card.perso.profile import Profile, ProfileError, list_profiles, load_profile, parse_profile
from citycard.card.perso.script import (
    SCRIPT_FORMAT,
    Block,
    PersoScript,
    ScriptError,
    perso_script,
    select_apdu,
    store_data_apdus,
    store_data_blocks,
)

__all__ = [
    "ENCIPHERED_DGIS",
    "SCRIPT_FORMAT",
    "Block",
    "Dgi",
    "PersoScript",
    "PrepareError",
    "PreparedCard",
    "Profile",
    "ProfileError",
    "ScriptError",
    "check_inputs",
    "list_profiles",
    "load_profile",
    "luhn_check_digit",
    "luhn_valid",
    "mask_pan",
    "parse_profile",
    "perso_script",
    "pin_block_format_2",
    "prepare_card",
    "select_apdu",
    "static_data_to_authenticate",
    "store_data_apdus",
    "store_data_blocks",
]
