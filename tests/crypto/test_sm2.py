"""SM2 signatures (GB/T 32918.2): the public GM/T 0003.5 vector, and a cross-check of the fast code
against a slow reference written here from the standard (plain ints, affine double-and-add).

Vector: shared/reference/vectors-public.md §7.3 (GM/T 0003.5-2012 Annex A/C, as in OpenSSL
test/sm2_internal_test.c).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citycard.crypto import sm2
from citycard.crypto.hashes import sm3
from citycard.crypto.sm2 import SM2Error

h = bytes.fromhex

# --- the slow reference: GB/T 32918.1/.2 written as plainly as possible, on Python ints --------------
P = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFF
A = P - 3
B = 0x28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93
N = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123
G = (
    0x32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7,
    0xBC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0,
)


def ref_add(p1, p2):
    if p1 is None:
        return p2
    if p2 is None:
        return p1
    if p1[0] == p2[0] and (p1[1] + p2[1]) % P == 0:
        return None
    if p1 == p2:
        slope = (3 * p1[0] ** 2 + A) * pow(2 * p1[1], -1, P) % P
    else:
        slope = (p2[1] - p1[1]) * pow(p2[0] - p1[0], -1, P) % P
    x3 = (slope * slope - p1[0] - p2[0]) % P
    return x3, (slope * (p1[0] - x3) - p1[1]) % P


def ref_mul(k, point):
    result = None
    for bit in bin(k)[2:]:
        result = ref_add(result, result)
        if bit == "1":
            result = ref_add(result, point)
    return result


def ref_encode(point) -> bytes:
    return point[0].to_bytes(32, "big") + point[1].to_bytes(32, "big")


def ref_decode(public_key: bytes):
    return int.from_bytes(public_key[:32], "big"), int.from_bytes(public_key[32:], "big")


def ref_on_curve(point) -> bool:
    x, y = point
    return x < P and y < P and (y * y - x**3 - A * x - B) % P == 0


def ref_z_a(point, user_id: bytes = b"1234567812345678") -> bytes:
    parts = [(8 * len(user_id)).to_bytes(2, "big"), user_id]
    parts += [v.to_bytes(32, "big") for v in (A, B, *G, *point)]
    return sm3(b"".join(parts))


def ref_sign_digest(d: int, e: int, k: int) -> tuple[int, int] | None:
    r = (e + ref_mul(k, G)[0]) % N
    s = pow(1 + d, -1, N) * (k - r * d) % N
    return None if r == 0 or r + k == N or s == 0 else (r, s)


def ref_verify_digest(point, e: int, r: int, s: int) -> bool:
    if not (1 <= r < N and 1 <= s < N) or (r + s) % N == 0:
        return False
    q = ref_add(ref_mul(s, G), ref_mul((r + s) % N, point))
    return q is not None and (e + q[0]) % N == r


def sig_bytes(r: int, s: int) -> bytes:
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


# --- GM/T 0003.5 example -----------------------------------------------------------------------------
D = h("3945208F7B2144B13F36E38AC6D39F95889393692860B51A42FB81EF4DF7C5B8")
PUB = h(
    "09F9DF311E5421A150DD7D161E4BC5C672179FAD1833FC076BB08FF356F35020"
    "CCEA490CE26775A52DC6EA718CC1AA600AED05FBF35E084A6632F6072DA9AD13"
)
ZA = h("B2E14C5C79C6DF5B85F4FE7ED8DB7A262B9DA7E07CCB0EA9F4747B8CCDA8A4F3")
MSG = b"message digest"
E = h("F0B43E94BA45ACCAACE692ED534382EB17E6AB5A19CE7B31F4486FDFC0D28640")
K = 0x59276E27D506861A16680F3AD9C02DCCEF3CC1FA3CDBE4CE6D54B80DEAC1BC21
SIG = h(
    "F5A03B0648D2C4630EEAC513E1BB81A15944DA3827D5B74143AC7EACEEE720B3"
    "B1B6AA29DF212FD8763182BC0D421CA1BB9038FD1F7F42D4840B69C485BBC1AA"
)


def test_vector_public_key_z_a_and_e():
    assert sm2.public_key(D) == PUB
    assert sm2.z_a(PUB) == ZA
    assert sm2.z_a(PUB, b"1234567812345678") == ZA
    assert sm2.z_a(b"\x04" + PUB) == ZA  # the uncompressed 65-byte form is the same key
    assert sm3(sm2.z_a(PUB) + MSG) == E
    assert ref_z_a(ref_decode(PUB)) == ZA  # the reference agrees, so it can be trusted below


def test_vector_signature():
    assert sm2.sign(D, MSG, k=K) == SIG
    assert sm2.sign_digest(D, E, k=K) == SIG
    assert sm2.verify(PUB, MSG, SIG) is True
    assert sm2.verify(b"\x04" + PUB, MSG, SIG) is True
    assert sm2.verify_digest(PUB, E, SIG) is True
    assert sm2.verify(PUB, MSG, SIG, cache=True) is True
    assert ref_sign_digest(int.from_bytes(D, "big"), int.from_bytes(E, "big"), K) == (
        int.from_bytes(SIG[:32], "big"),
        int.from_bytes(SIG[32:], "big"),
    )


# --- cross-checks against the reference ----------------------------------------------------------------
scalars = st.integers(min_value=1, max_value=N - 2)
EDGE_SCALARS = [1, 2, 3, 15, 16, 17, 127, 128, 129, 255, 256, 2**255, 2**256 % N, 2**257 % N, N - 2, N - 3]


@pytest.mark.parametrize("k", EDGE_SCALARS)
def test_public_key_is_k_g_for_edge_scalars(k):
    assert sm2.public_key(k.to_bytes(32, "big")) == ref_encode(ref_mul(k, G))


@settings(max_examples=40, deadline=None)
@given(k=scalars)
def test_public_key_is_k_g(k):
    assert sm2.public_key(k.to_bytes(32, "big")) == ref_encode(ref_mul(k, G))


@settings(max_examples=25, deadline=None)
@given(d=scalars, k=st.integers(min_value=1, max_value=N - 1), message=st.binary(max_size=200))
def test_sign_with_k_matches_reference_and_verifies(d, k, message):
    point = ref_mul(d, G)
    e = int.from_bytes(sm3(ref_z_a(point) + message), "big")
    expected = ref_sign_digest(d, e, k)
    if expected is None:  # probability ~3/n; then a given k must be refused
        with pytest.raises(SM2Error):
            sm2.sign(d.to_bytes(32, "big"), message, k=k)
        return
    signature = sm2.sign(d.to_bytes(32, "big"), message, k=k)
    assert signature == sig_bytes(*expected)
    assert sm2.verify(ref_encode(point), message, signature) is True


@settings(max_examples=25, deadline=None)
@given(d=scalars, s=st.integers(min_value=1, max_value=N - 1), t=st.integers(min_value=1, max_value=N - 1))
def test_verify_digest_matches_reference_for_any_s_and_t(d, s, t):
    # Build a valid signature from (s, t) alone: r = t - s, e chosen so that e + x1 ≡ r (B7).
    point = ref_mul(d, G)
    r = (t - s) % N
    q = ref_add(ref_mul(s, G), ref_mul(t, point))
    if r == 0 or q is None:
        return
    e = (r - q[0]) % N
    pk, sig = ref_encode(point), sig_bytes(r, s)
    for digest in (e, (e + 1) % N):
        expected = ref_verify_digest(point, digest, r, s)
        assert expected is (digest == e)
        digest_bytes = digest.to_bytes(32, "big")
        assert sm2.verify_digest(pk, digest_bytes, sig) is expected
        assert sm2.verify_digest(pk, digest_bytes, sig, cache=True) is expected


def minus_g() -> bytes:
    return ref_encode((G[0], P - G[1]))


def test_colliding_points_take_the_general_path(monkeypatch):
    # Public key -G, s and t sharing their top digit: the fast chain adds G to -G and must hand over to
    # the affine path; then s·G + t·(-G) = (s - t)·G = -7·G.
    calls = []
    real_affine_add = sm2._affine_add

    def counting_affine_add(p1, p2):
        calls.append((p1, p2))
        return real_affine_add(p1, p2)

    monkeypatch.setattr(sm2, "_affine_add", counting_affine_add)
    s, t = 2**200 + 5, 2**200 + 12
    r = (t - s) % N
    e = (r - ref_mul(N - 7, G)[0]) % N
    assert sm2.verify_digest(minus_g(), e.to_bytes(32, "big"), sig_bytes(r, s)) is True
    assert calls, "the general path was not taken"
    assert sm2.verify_digest(minus_g(), ((e + 1) % N).to_bytes(32, "big"), sig_bytes(r, s)) is False


@pytest.mark.parametrize("cached", [False, True])
def test_sum_at_infinity_is_no_signature(cached):
    # s·G + s·(-G) is the point at infinity: B6 gives no x1, so nothing verifies (checked below the API,
    # where t = s is allowed; through the API t = s would need r = 0).
    x, y = sm2._GX, sm2._P - sm2._GY
    rows = sm2._comb_table(x, y, sm2._KEY_COMB_WIDTH) if cached else None
    for s in (1, 5, 2**200 + 5, N - 1):
        assert sm2._double_mul_x(s, s, x, y, rows) is None


def test_given_k_that_the_standard_rejects_raises():
    d = int.from_bytes(D, "big")
    x1 = ref_mul(K, G)[0]
    r_zero = (-x1) % N
    r_plus_k_is_n = (N - K - x1) % N
    s_zero = (K * pow(d, -1, N) - x1) % N  # k = r·d makes s = 0
    for e in (r_zero, r_plus_k_is_n, s_zero):
        with pytest.raises(SM2Error, match="take another k"):
            sm2.sign_digest(D, e.to_bytes(32, "big"), k=K)


def test_random_k_is_drawn_again_when_r_is_zero(monkeypatch):
    x1 = ref_mul(K, G)[0]
    e = (-x1) % N  # with k = K, r would be 0
    draws = iter([K - 1, 12345 - 1])  # randbelow(n - 1) + 1 gives K, then 12345
    monkeypatch.setattr(sm2.secrets, "randbelow", lambda _: next(draws))
    signature = sm2.sign_digest(D, e.to_bytes(32, "big"))
    assert signature == sig_bytes(*ref_sign_digest(int.from_bytes(D, "big"), e, 12345))


# --- round trips and rejections ------------------------------------------------------------------------
def test_random_round_trip_and_fresh_keys():
    d = sm2.generate_private_key()
    assert len(d) == sm2.PRIVATE_KEY_BYTES and 1 <= int.from_bytes(d, "big") <= N - 2
    assert d != sm2.generate_private_key()
    pk = sm2.public_key(d)
    assert len(pk) == sm2.PUBLIC_KEY_BYTES and sm2.is_on_curve(pk)
    signature = sm2.sign(d, b"fare 200 fen")
    assert len(signature) == sm2.SIGNATURE_BYTES
    assert sm2.verify(pk, b"fare 200 fen", signature) is True
    assert sm2.sign(d, b"fare 200 fen") != signature  # a fresh k each time
    assert sm2.verify(pk, b"fare 200 fen", sm2.sign(d, b"fare 200 fen")) is True


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 0x80 >> (bit % 8)
    return bytes(out)


def test_any_flipped_bit_of_message_or_signature_fails():
    d = sm2.generate_private_key()
    pk, message = sm2.public_key(d), b"9F4B dynamic data 1234"
    signature = sm2.sign(d, message)
    for bit in range(8 * len(message)):
        assert sm2.verify(pk, flip(message, bit), signature) is False
    for bit in range(8 * len(signature)):
        assert sm2.verify(pk, message, flip(signature, bit)) is False


def test_any_flipped_bit_of_the_public_key_fails_or_is_refused():
    d = sm2.generate_private_key()
    pk, message = sm2.public_key(d), b"issuer certificate"
    signature = sm2.sign(d, message)
    refused = 0
    for bit in range(8 * len(pk)):
        other = flip(pk, bit)
        x, y = ref_decode(other)
        if ref_on_curve((x, y)):  # another valid key (as likely as guessing a key): just a wrong one
            assert sm2.verify(other, message, signature) is False
            continue
        expected = "coordinate ≥ p" if x >= P or y >= P else "not a point on the curve sm2p256v1"
        with pytest.raises(SM2Error, match=expected):
            sm2.verify(other, message, signature)
        assert sm2.is_on_curve(other) is False
        refused += 1
    assert refused >= 8 * len(pk) - 2


@pytest.mark.parametrize(
    ("r", "s"),
    [(0, 1), (1, 0), (0, 0), (N, 1), (N + 1, 1), (2**256 - 1, 1), (1, N), (1, 2**256 - 1), (1, N - 1)],
    ids=["r=0", "s=0", "r=s=0", "r=n", "r=n+1", "r=max", "s=n", "s=max", "r+s=n"],
)
def test_out_of_range_r_and_s_are_false(r, s):
    assert sm2.verify(PUB, MSG, sig_bytes(r, s)) is False
    assert sm2.verify(PUB, MSG, sig_bytes(r, s), cache=True) is False
    assert sm2.verify_digest(PUB, E, sig_bytes(r, s)) is False


def test_user_id_is_part_of_the_signature():
    d = sm2.generate_private_key()
    pk = sm2.public_key(d)
    signature = sm2.sign(d, MSG, user_id=b"citycard-issuer-01")
    assert sm2.verify(pk, MSG, signature, user_id=b"citycard-issuer-01") is True
    assert sm2.verify(pk, MSG, signature) is False
    assert sm2.verify(PUB, MSG, SIG, user_id=b"1234567812345679") is False
    assert sm2.verify(PUB, MSG, SIG, user_id=b"") is False
    assert sm2.z_a(PUB, b"") == ref_z_a(ref_decode(PUB), b"")


def test_cache_and_no_cache_agree_and_no_cache_leaves_the_cache_alone():
    info = sm2._key_rows.cache_info()
    assert info.maxsize == sm2.KEY_TABLE_CACHE_MAX <= 64
    keys = [sm2.generate_private_key() for _ in range(3)]
    for d in keys:
        pk = sm2.public_key(d)
        good = sm2.sign(d, MSG)
        bad = sig_bytes(int.from_bytes(good[:32], "big"), int.from_bytes(good[32:], "big") ^ 1)
        before = sm2._key_rows.cache_info()
        assert [sm2.verify(pk, MSG, sig) for sig in (good, bad, SIG)] == [True, False, False]
        assert sm2._key_rows.cache_info() == before  # cache=False neither reads nor fills it
        assert [sm2.verify(pk, MSG, sig, cache=True) for sig in (good, bad, SIG)] == [True, False, False]
        after = sm2._key_rows.cache_info()
        assert after.misses == before.misses + 1 and after.hits == before.hits + 2


# --- malformed input ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "message"),
    [
        (PUB[:63], "must be 64 bytes \\(x‖y\\) or 65 bytes \\(04‖x‖y\\), got 63"),
        (PUB + b"\x00\x00", "must be 64 bytes \\(x‖y\\) or 65 bytes \\(04‖x‖y\\), got 66"),
        (b"", "got 0"),
        (b"\x02" + PUB, "of 65 bytes must start with 04 \\(uncompressed\\), got 02"),
        (PUB[:32] + bytes(32), "not a point on the curve sm2p256v1"),
        (b"\xff" * 64, "coordinate ≥ p"),
    ],
)
def test_malformed_public_key_raises(key, message):
    with pytest.raises(SM2Error, match=message):
        sm2.verify(key, MSG, SIG)
    with pytest.raises(SM2Error, match=message):
        sm2.verify_digest(key, E, SIG)
    with pytest.raises(SM2Error, match=message):
        sm2.z_a(key)


def test_is_on_curve():
    assert sm2.is_on_curve(PUB) is True
    assert sm2.is_on_curve(b"\x04" + PUB) is True
    assert sm2.is_on_curve(minus_g()) is True
    assert sm2.is_on_curve(PUB[:32] + bytes(32)) is False
    assert sm2.is_on_curve(b"\xff" * 64) is False
    with pytest.raises(SM2Error, match="got 63"):
        sm2.is_on_curve(PUB[:63])


@pytest.mark.parametrize("length", [0, 63, 65, 72])
def test_wrong_signature_length_raises(length):
    with pytest.raises(SM2Error, match=f"SM2 signature must be 64 bytes \\(r‖s\\), got {length}"):
        sm2.verify(PUB, MSG, (SIG * 2)[:length])
    with pytest.raises(SM2Error, match=f"got {length}"):
        sm2.verify_digest(PUB, E, (SIG * 2)[:length])


@pytest.mark.parametrize("length", [31, 33])
def test_wrong_digest_length_raises(length):
    with pytest.raises(SM2Error, match=f"SM2 digest e must be 32 bytes, got {length}"):
        sm2.sign_digest(D, bytes(length))
    with pytest.raises(SM2Error, match=f"SM2 digest e must be 32 bytes, got {length}"):
        sm2.verify_digest(PUB, bytes(length), SIG)


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (D[:31], "SM2 private key must be 32 bytes, got 31"),
        (D + b"\x00", "SM2 private key must be 32 bytes, got 33"),
        (bytes(32), "SM2 private key must be in \\[1, n-2\\]"),
        ((N - 1).to_bytes(32, "big"), "in \\[1, n-2\\]"),
        (N.to_bytes(32, "big"), "in \\[1, n-2\\]"),
        (b"\xff" * 32, "in \\[1, n-2\\]"),
    ],
)
def test_bad_private_key_raises(key, message):
    with pytest.raises(SM2Error, match=message):
        sm2.public_key(key)
    with pytest.raises(SM2Error, match=message):
        sm2.sign(key, MSG)
    with pytest.raises(SM2Error, match=message):
        sm2.sign_digest(key, E)


@pytest.mark.parametrize("k", [0, -1, N, N + 1])
def test_k_out_of_range_raises(k):
    with pytest.raises(SM2Error, match="SM2 k must be in \\[1, n-1\\]"):
        sm2.sign(D, MSG, k=k)


def test_user_id_too_long_raises():
    with pytest.raises(SM2Error, match="SM2 user ID must be at most 8191 bytes, got 8192"):
        sm2.verify(PUB, MSG, SIG, user_id=bytes(8192))
    with pytest.raises(SM2Error, match="got 8192"):
        sm2.sign(D, MSG, user_id=bytes(8192))
    assert sm2.verify(PUB, MSG, SIG, user_id=bytes(8191)) is False  # the longest ID is still usable


def test_sm2_error_is_a_value_error():
    assert issubclass(SM2Error, ValueError)
