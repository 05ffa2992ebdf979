"""clearing.parallel's work split: tapered card partitions and the batch digest shared by slices."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from citycard.clearing.batch import digest_of, digest_of_parts, digest_part
from citycard.clearing.parallel import TAPER_SPLIT, partition, tapered

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)
records = st.lists(st.dictionaries(st.text(max_size=6), json_values, max_size=4), max_size=30)


@settings(max_examples=200, deadline=None)
@given(records=records, cuts=st.lists(st.integers(min_value=0, max_value=30), max_size=6))
def test_the_digest_of_slices_is_the_digest_of_the_batch(records: list, cuts: list[int]) -> None:
    bounds = sorted({0, len(records), *(min(c, len(records)) for c in cuts)})
    parts = [digest_part(records[a:b]) for a, b in itertools.pairwise(bounds)]
    assert digest_of_parts(parts) == digest_of(records)
    assert digest_of_parts([]) == digest_of([]) == digest_of_parts([b"", b""])


def uploads(cards: int, taps: int) -> list[dict]:
    return [
        {"pan": f"62354800{card:08d}", "psn": "01", "atc": atc}
        for atc in range(taps)
        for card in range(cards)
    ]


def test_tapered_partitions_keep_cards_whole_and_are_small_at_both_ends() -> None:
    batch = uploads(cards=2_000, taps=5)
    parts = tapered(batch, 8)
    assert sorted(p for part in parts for p in part) == list(range(len(batch)))  # each record once
    owner: dict[str, int] = {}
    for index, part in enumerate(parts):
        assert part == sorted(part)  # upload order inside a partition
        for position in part:
            card = batch[position]["pan"]
            assert owner.setdefault(card, index) == index  # a card's taps never split
    assert len(parts) == 8 - 2 + 2 * TAPER_SPLIT
    sizes = [len(part) for part in parts]
    small, big = sizes[:TAPER_SPLIT] + sizes[-TAPER_SPLIT:], sizes[TAPER_SPLIT:-TAPER_SPLIT]
    assert max(small) * 2 < min(big)
    assert tapered(batch, 2) == partition(batch, 2)  # too few partitions to taper
