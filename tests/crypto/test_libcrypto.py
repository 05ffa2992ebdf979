"""citycard.crypto.libcrypto: the system OpenSSL's MACs give crypto.mac's answers, in both suites."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.conftest import require_service

from citycard.crypto import libcrypto
from citycard.crypto.mac import pad_method_2, retail_mac, sm4_cbc_mac

KEY = st.binary(min_size=16, max_size=16)


@pytest.fixture(scope="module")
def macs() -> libcrypto.LibcryptoMacs:
    found = libcrypto.load()
    require_service(found is not None, "the system's OpenSSL libcrypto 3 (libcrypto.so.3) is not usable here")
    assert found is not None
    return found


def test_retail_mac_public_vector(macs: libcrypto.LibcryptoMacs) -> None:
    # knovichikhin/psec tests @ 90ccbf3a (MIT), vectors-public §2.5: ISO 9797-1 alg 3, pad method 2
    key = b"AAAAAAAA" + b"BBBBBBBB"
    assert macs.retail_mac(key, pad_method_2(b"hello world", 8)) == bytes.fromhex("E16941032C3BC7D4")


@settings(max_examples=300, deadline=None)
@given(key=KEY, blocks=st.integers(2, 12), data=st.data())
def test_retail_mac_equals_crypto_mac(macs: libcrypto.LibcryptoMacs, key: bytes, blocks: int, data) -> None:  # type: ignore[no-untyped-def]
    message = data.draw(st.binary(min_size=8 * blocks, max_size=8 * blocks))
    assert macs.retail_mac(key, message) == retail_mac(key, message)


@settings(max_examples=300, deadline=None)
@given(key=KEY, blocks=st.integers(1, 12), data=st.data())
def test_sm4_cbc_mac_equals_crypto_mac(macs: libcrypto.LibcryptoMacs, key: bytes, blocks: int, data) -> None:  # type: ignore[no-untyped-def]
    message = data.draw(st.binary(min_size=16 * blocks, max_size=16 * blocks))
    assert macs.sm4_cbc_mac(key, message) == sm4_cbc_mac(key, message)


def test_one_instance_gives_each_key_its_own_answer(macs: libcrypto.LibcryptoMacs) -> None:
    # the key schedules and the EVP context are re-keyed per MAC: nothing of the last key stays
    data = bytes(range(48))
    first, second = bytes(range(16)), bytes(range(16, 32))
    for _ in range(2):
        assert macs.retail_mac(first, data[:40]) == retail_mac(first, data[:40])
        assert macs.retail_mac(second, data[:40]) == retail_mac(second, data[:40])
        assert macs.sm4_cbc_mac(first, data) == sm4_cbc_mac(first, data)
        assert macs.sm4_cbc_mac(second, data) == sm4_cbc_mac(second, data)


@pytest.mark.parametrize(
    ("call", "key", "size", "message"),
    [
        ("retail_mac", 15, 16, "key 16 bytes and data 16…4096 in whole blocks, got 15 and 16"),
        ("retail_mac", 16, 8, "got 16 and 8"),
        ("retail_mac", 16, 20, "got 16 and 20"),
        ("retail_mac", 16, libcrypto.DATA_BYTES_MAX + 8, f"got 16 and {libcrypto.DATA_BYTES_MAX + 8}"),
        ("sm4_cbc_mac", 16, 24, "got 16 and 24"),
        ("sm4_cbc_mac", 17, 16, "got 17 and 16"),
        ("sm4_cbc_mac", 16, 0, "got 16 and 0"),
    ],
)
def test_bad_lengths_are_refused(
    macs: libcrypto.LibcryptoMacs, call: str, key: int, size: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        getattr(macs, call)(bytes(key), bytes(size))


def test_switched_off_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(libcrypto.DISABLE_ENV, "0")
    assert libcrypto.load() is None
