"""The resident health application (居民健康卡 DDF1) on the citizen card: docs/health-card.md.

:mod:`.files` the files and access rights as data, :mod:`.records` the record layouts and the
signed visit record, :mod:`.application` the DDF1 the card OS selects by name, :mod:`.perso` the
STORE DATA script that loads it.
"""

from citycard.card.health.application import HEALTH_DDF1_NAME, HealthApplication
from citycard.card.health.records import (
    HealthRecordError,
    RecordSignatureError,
    VisitRecord,
    decode_record,
    encode_record,
    verify_record,
)

__all__ = [
    "HEALTH_DDF1_NAME",
    "HealthApplication",
    "HealthRecordError",
    "RecordSignatureError",
    "VisitRecord",
    "decode_record",
    "encode_record",
    "verify_record",
]
