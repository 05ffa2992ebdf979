"""The software HSM: the only place where clear keys exist (DESIGN.md §2).

Keys are wrapped under a master key (AES-256-GCM) in a JSON key store, referenced by label and
shown by KCV; operations are by key reference with key usage enforced by key type.
"""

from citycard.hsm.certificates import IccKeyAndCertificate
from citycard.hsm.keytypes import KEY_TYPES, HSMError, KeyInfo, KeyType
from citycard.hsm.softhsm import CardKeys, SoftHSM

__all__ = ["KEY_TYPES", "CardKeys", "HSMError", "IccKeyAndCertificate", "KeyInfo", "KeyType", "SoftHSM"]
