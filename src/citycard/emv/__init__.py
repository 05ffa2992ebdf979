"""EMV data: BER-TLV, the tag dictionary keyed by scheme, DOLs and named bit fields.

The lowest layer of citycard: it imports nothing else from the package.
"""

from citycard.emv.bits import AIP, CTQ, CVR, FIELDS, TSI, TTQ, TVR, BitField, Bits, pboc_cvr_from_iad
from citycard.emv.dol import DOLError, build_dol, dol_length, fit, parse_dol, split_dol_data
from citycard.emv.tags import SCHEMES, TagInfo, check_scheme, tag_info, tag_name, tag_table
from citycard.emv.tlv import (
    MAX_DEPTH,
    MAX_OBJECTS,
    MAX_VALUE_LENGTH,
    TLV,
    TLVError,
    decode,
    decode_dict,
    decode_one,
    encode,
    encode_one,
    find,
    find_all,
    is_constructed,
    normalize_tag,
)

__all__ = [
    "AIP",
    "CTQ",
    "CVR",
    "FIELDS",
    "MAX_DEPTH",
    "MAX_OBJECTS",
    "MAX_VALUE_LENGTH",
    "SCHEMES",
    "TLV",
    "TSI",
    "TTQ",
    "TVR",
    "BitField",
    "Bits",
    "DOLError",
    "TLVError",
    "TagInfo",
    "build_dol",
    "check_scheme",
    "decode",
    "decode_dict",
    "decode_one",
    "dol_length",
    "encode",
    "encode_one",
    "find",
    "find_all",
    "fit",
    "is_constructed",
    "normalize_tag",
    "parse_dol",
    "pboc_cvr_from_iad",
    "split_dol_data",
    "tag_info",
    "tag_name",
    "tag_table",
]
