"""SM2 digital signatures on the recommended curve sm2p256v1 (GB/T 32918.2-2016 = GM/T 0003.2-2012).

- Z_A, the signer's identity hash: GB/T 32918.2 §5.5. Signature generation: §6.1 (steps A1-A7).
  Verification: §7.1 (steps B1-B7). Curve parameters: GB/T 32918.5-2017 (sm2p256v1).
- Bytes in and out: a private key is 32 bytes; a public key is 64 bytes x‖y (65 bytes 04‖x‖y are accepted
  on input); a signature is the raw 64 bytes r‖s that PBOC certificates and fDDA carry, not DER.

How it is made fast in pure Python (every field operation is one gmpy2 ``mpz`` operation, so the cost is
the number of Python-level operations, and the hot loops are written inline to keep that number small):

- Jacobian coordinates (x = X/Z², y = Y/Z³). Doubling uses a = -3, so 3x² + aZ⁴ = 3(X - Z²)(X + Z²), and
  its output is scaled by 1/2 (a Jacobian point is unchanged by (X, Y, Z) → (λ²X, λ³Y, λZ)), which drops
  every small constant but one (3/2 mod p): Z3 = YZ, X3 = L² - 2T, Y3 = L(T - X3) - S², where S = Y²,
  T = XS and L = (3/2)(X - Z²)(X + Z²).
- k·G (signing, key generation): a fixed-base table of affine points j·2^(8i)·G, j = ±1..128, one table row
  per signed 8-bit window of k (33 rows), so k·G is at most 32 mixed additions and no doubling.
- s·G + t·P (verification): one doubling chain for both scalars (Straus-Shamir interleaving), with the
  width-5 NAF of t over P's odd multiples ±P..±15P (computed in affine per call) and the width-12 NAF of s
  over G's precomputed odd multiples; about 256 doublings and 63 mixed additions.
- ``cache=True`` on verify keeps a comb table for up to :data:`KEY_TABLE_CACHE_MAX` public keys (CA and
  issuer keys are verified again and again); then verification is mixed additions only.
- The hot loops assume the two points of an addition differ and are not opposite; when that fails (with
  crafted scalars or keys only) the whole computation is redone on the slow affine path, which handles
  every case.

Not constant-time: Python integers leak timing. Verification handles only public data; a production
signing key belongs in a C library or an HSM, not here.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from functools import lru_cache
from operator import itemgetter

import gmpy2
from gmpy2 import mpz

from citycard.crypto.hashes import sm3

DEFAULT_USER_ID = b"1234567812345678"  # GB/T 35276 default ID when the parties agreed on none
PRIVATE_KEY_BYTES = 32
PUBLIC_KEY_BYTES = 64
SIGNATURE_BYTES = 64
DIGEST_BYTES = 32
USER_ID_BYTES_MAX = 8191  # ENTL is the ID's length in bits on 2 bytes
KEY_TABLE_CACHE_MAX = 32  # public keys whose comb table verify(cache=True) keeps (~0.2 MB each)
SIGNING_KEY_CACHE_MAX = 16  # public keys of recent signers, keyed by a SHA-256 of the private key

# sm2p256v1 (GB/T 32918.5-2017): y² = x³ + ax + b over F_p, a = p - 3; G has prime order n, cofactor 1.
_P = mpz(0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFF)
_A = _P - 3
_B = mpz(0x28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93)
_N = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123  # a Python int: scalars stay ints
_GX = mpz(0x32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7)
_GY = mpz(0xBC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0)
_ONE = mpz(1)
_THREE_HALVES = 3 * (_P + 1) // 2 % _P  # 3/2 mod p, the one constant of the halved doubling
_CURVE_BYTES = b"".join(int(v).to_bytes(32, "big") for v in (_A, _B, _GX, _GY))  # a‖b‖xG‖yG in Z_A

_G_COMB_WIDTH = 8  # signed 8-bit windows: 33 rows × 128 points, k·G ≤ 32 additions
_G_WNAF_WIDTH = 12  # 1024 odd multiples of G: about 256/13 additions for s·G inside the verify chain
_P_WNAF_WIDTH = 5  # 8 odd multiples of a fresh public key: 8 inversions, about 256/6 additions
_KEY_COMB_WIDTH = 5  # a cached key's table: 52 rows × 16 points, t·P ≤ 51 additions

_first = itemgetter(0)


class SM2Error(ValueError):
    """Malformed SM2 input: a wrong length, a key out of range, a point that is not on the curve."""


class _DegenerateError(ArithmeticError):
    """A fast mixed addition met Q + Q or Q + (-Q); the caller redoes the work on the affine path."""


# --- slow, general affine arithmetic (None is the point at infinity) ----------------------------------
def _affine_add(p1: tuple[mpz, mpz] | None, p2: tuple[mpz, mpz] | None) -> tuple[mpz, mpz] | None:
    if p1 is None:
        return p2
    if p2 is None:
        return p1
    (x1, y1), (x2, y2) = p1, p2
    if x1 == x2:
        if (y1 + y2) % _P == 0:
            return None
        slope = (3 * x1 * x1 + _A) * gmpy2.invert(y1 + y1, _P) % _P
    else:
        slope = (y2 - y1) * gmpy2.invert(x2 - x1, _P) % _P
    x3 = (slope * slope - x1 - x2) % _P
    return x3, (slope * (x1 - x3) - y1) % _P


def _affine_mul(k: int, point: tuple[mpz, mpz] | None) -> tuple[mpz, mpz] | None:
    result = None
    while k:
        if k & 1:
            result = _affine_add(result, point)
        point = _affine_add(point, point)
        k >>= 1
    return result


# --- Jacobian helpers for building tables (the hot loops inline the same formulas) -------------------
def _jacobian_double(X: mpz, Y: mpz, Z: mpz) -> tuple[mpz, mpz, mpz]:
    p = _P
    zz = Z * Z % p
    S = Y * Y % p
    T = X * S  # left unreduced: it only feeds sums that are reduced next
    L = (X - zz) * (X + zz) * _THREE_HALVES % p
    X3 = (L * L - T - T) % p
    return X3, (L * (T - X3) - S * S) % p, Y * Z % p


def _jacobian_add_affine(X: mpz, Y: mpz, Z: mpz, x2: mpz, y2: mpz) -> tuple[mpz, mpz, mpz]:
    p = _P
    zz = Z * Z % p
    H = x2 * zz % p - X  # X is reduced, so H ≡ 0 only as H == 0
    R = y2 * zz * Z % p - Y
    if not H:
        raise _DegenerateError
    HH = H * H % p
    HHH = H * HH
    V = X * HH
    X3 = (R * R - HHH - V - V) % p
    return X3, (R * (V - X3) - Y * HHH) % p, Z * H % p


def _to_affine(X: mpz, Y: mpz, Z: mpz) -> tuple[mpz, mpz]:
    z_inv = gmpy2.invert(Z, _P)
    zz_inv = z_inv * z_inv % _P
    return X * zz_inv % _P, Y * zz_inv * z_inv % _P


def _to_affine_batch(points: list[tuple[mpz, mpz, mpz]]) -> list[tuple[mpz, mpz]]:
    """All points to affine with one inversion (Montgomery's trick)."""
    p = _P
    prefix = []
    acc = _ONE
    for _, _, Z in points:
        prefix.append(acc)
        acc = acc * Z % p
    acc_inv = gmpy2.invert(acc, p)
    out: list = [None] * len(points)
    for i in range(len(points) - 1, -1, -1):
        X, Y, Z = points[i]
        z_inv = acc_inv * prefix[i] % p
        acc_inv = acc_inv * Z % p
        zz_inv = z_inv * z_inv % p
        out[i] = (X * zz_inv % p, Y * zz_inv * z_inv % p)
    return out


# --- precomputed tables --------------------------------------------------------------------------------
def _comb_table(x: mpz, y: mpz, width: int) -> list[list]:
    """Rows i = 0..⌈257/width⌉-1 of affine points: row[j] = j·2^(width·i)·(x, y) for j = 1..2^(width-1),
    row[-j] = its negative, so a signed digit indexes its row directly."""
    half = 1 << (width - 1)
    rows = []
    bx, by = x, y
    for _ in range(-(-257 // width)):
        multiples = [(bx, by, _ONE), _jacobian_double(bx, by, _ONE)]
        for _ in range(3, half + 1):
            multiples.append(_jacobian_add_affine(*multiples[-1], bx, by))
        row: list = [None] * (2 * half + 1)
        for j, (ax, ay) in enumerate(_to_affine_batch(multiples), 1):
            row[j] = (ax, ay)
            row[-j] = (ax, _P - ay)
        rows.append(row)
        bx, by = _to_affine(*_jacobian_double(*multiples[-1]))  # 2^width·base = 2·(half·base)
    return rows


def _odd_multiples(x: mpz, y: mpz, width: int) -> list:
    """Affine ±(x, y), ±3(x, y), .. ±(2^(width-1) - 1)(x, y) in a list indexed by the signed multiple.

    Affine additions, one inversion each: for the 8 points of a fresh key that is cheaper in Python
    than Jacobian additions followed by a batch inversion."""
    p = _P
    table: list = [None] * (1 << width)
    table[1] = (x, y)
    table[-1] = (x, p - y)
    slope = (3 * x * x + _A) * gmpy2.invert(y + y, p) % p
    x2 = (slope * slope - x - x) % p  # 2·(x, y)
    y2 = (slope * (x - x2) - y) % p
    cx, cy = x, y
    for j in range(3, 1 << (width - 1), 2):
        slope = (y2 - cy) * gmpy2.invert(x2 - cx, p) % p
        nx = (slope * slope - cx - x2) % p
        cy = (slope * (cx - nx) - cy) % p
        cx = nx
        table[j] = (cx, cy)
        table[-j] = (cx, p - cy)
    return table


def _comb_digits(k: int, width: int) -> list[int]:
    """k = Σ d_i·2^(width·i) with d_i in [-2^(width-1) + 1, 2^(width-1)], lowest first."""
    full = 1 << width
    half = full >> 1
    mask = full - 1
    digits = []
    for _ in range(-(-257 // width)):
        d = k & mask
        k >>= width
        if d > half:
            d -= full
            k += 1
        digits.append(d)
    assert k == 0, "scalar wider than 256 bits"
    return digits


def _wnaf(k: int, width: int, table: list) -> list[tuple[int, tuple[mpz, mpz]]]:
    """Width-w NAF of k as (bit position, table[digit]) pairs, lowest first: every digit is odd with
    |d| < 2^(w-1), and nonzero digits are at least w positions apart."""
    full = 1 << width
    half = full >> 1
    mask = full - 1
    terms = []
    position = 0
    while k:
        zeros = (k & -k).bit_length() - 1
        k >>= zeros
        position += zeros
        d = k & mask
        if d > half:
            d -= full
        terms.append((position, table[d]))
        k = (k - d) >> width
        position += width
    return terms


_G_TABLES: tuple[list[list], list] | None = None
_G_TABLES_LOCK = threading.Lock()


def _g_tables() -> tuple[list[list], list]:
    """G's comb rows and odd multiples, built on first use (about 40 ms and 1.3 MB)."""
    global _G_TABLES
    if _G_TABLES is None:
        with _G_TABLES_LOCK:
            if _G_TABLES is None:
                _G_TABLES = (_comb_table(_GX, _GY, _G_COMB_WIDTH), _odd_multiples(_GX, _GY, _G_WNAF_WIDTH))
    return _G_TABLES


# --- the hot loops ---------------------------------------------------------------------------------------
def _comb_accumulate(
    acc: tuple[mpz, mpz, mpz] | None, rows: list[list], digits: list[int]
) -> tuple[mpz, mpz, mpz] | None:
    """acc + Σ rows[i][d_i] by mixed additions (formula of _jacobian_add_affine, inlined)."""
    p = _P
    pairs = zip(rows, digits, strict=True)
    if acc is None:
        for row, d in pairs:
            if d:
                X, Y = row[d]
                Z = _ONE
                break
        else:
            return None
    else:
        X, Y, Z = acc
    for row, d in pairs:
        if d:
            x2, y2 = row[d]
            zz = Z * Z % p
            H = x2 * zz % p - X
            R = y2 * zz * Z % p - Y
            if not H:
                raise _DegenerateError
            HH = H * H % p
            HHH = H * HH
            V = X * HH
            X = (R * R - HHH - V - V) % p
            Y = (R * (V - X) - Y * HHH) % p
            Z = Z * H % p
    return X, Y, Z


def _chain(terms: list[tuple[int, tuple[mpz, mpz]]]) -> tuple[mpz, mpz, mpz]:
    """Σ 2^position·point over the terms by one doubling chain from the highest position down.

    Doubling and mixed addition are _jacobian_double and _jacobian_add_affine, inlined."""
    p = _P
    c = _THREE_HALVES
    terms.sort(key=_first)
    top, (X, Y) = terms.pop()
    Z = _ONE
    terms.reverse()
    terms.append((0, None))  # sentinel: the last doublings, down to position 0
    for position, point in terms:
        for _ in range(top - position):
            zz = Z * Z % p
            S = Y * Y % p
            T = X * S  # left unreduced: it only feeds sums that are reduced next
            L = (X - zz) * (X + zz) * c % p
            Z = Y * Z % p
            X = (L * L - T - T) % p
            Y = (L * (T - X) - S * S) % p
        if point is None:
            break
        top = position
        x2, y2 = point
        zz = Z * Z % p
        H = x2 * zz % p - X
        R = y2 * zz * Z % p - Y
        if not H:
            raise _DegenerateError
        HH = H * H % p
        HHH = H * HH
        V = X * HH
        X = (R * R - HHH - V - V) % p
        Y = (R * (V - X) - Y * HHH) % p
        Z = Z * H % p
    return X, Y, Z


def _base_mul(k: int) -> tuple[mpz, mpz]:
    """k·G in affine, for 1 ≤ k < n."""
    try:
        return _to_affine(*_comb_accumulate(None, _g_tables()[0], _comb_digits(k, _G_COMB_WIDTH)))
    except _DegenerateError:
        return _affine_mul(k, (_GX, _GY))


def _double_mul_x(s: int, t: int, x: mpz, y: mpz, key_rows: list[list] | None) -> int | None:
    """The affine x of s·G + t·(x, y), or None for the point at infinity; 1 ≤ s, t < n."""
    g_rows, g_odd = _g_tables()
    try:
        if key_rows is None:
            terms = _wnaf(t, _P_WNAF_WIDTH, _odd_multiples(x, y, _P_WNAF_WIDTH))
            terms += _wnaf(s, _G_WNAF_WIDTH, g_odd)
            X, _, Z = _chain(terms)
        else:
            acc = _comb_accumulate(None, key_rows, _comb_digits(t, _KEY_COMB_WIDTH))
            X, _, Z = _comb_accumulate(acc, g_rows, _comb_digits(s, _G_COMB_WIDTH))
    except _DegenerateError:
        point = _affine_add(_affine_mul(s, (_GX, _GY)), _affine_mul(t, (x, y)))
        return None if point is None else int(point[0])
    z_inv = gmpy2.invert(Z, _P)
    return int(X * z_inv * z_inv % _P)


# --- keys --------------------------------------------------------------------------------------------------
def _decode_public_key(public_key: bytes) -> tuple[bytes, mpz, mpz]:
    """64 bytes x‖y and the coordinates; 65 bytes 04‖x‖y are accepted. Length and prefix only."""
    if len(public_key) == PUBLIC_KEY_BYTES + 1:
        if public_key[0] != 0x04:
            raise SM2Error(
                f"SM2 public key of 65 bytes must start with 04 (uncompressed), got {public_key[0]:02X}"
            )
        public_key = public_key[1:]
    elif len(public_key) != PUBLIC_KEY_BYTES:
        raise SM2Error(f"SM2 public key must be 64 bytes (x‖y) or 65 bytes (04‖x‖y), got {len(public_key)}")
    public_key = bytes(public_key)
    return public_key, mpz.from_bytes(public_key[:32], "big"), mpz.from_bytes(public_key[32:], "big")


def _curve_problem(x: mpz, y: mpz) -> str | None:
    if x >= _P or y >= _P:
        return "SM2 public key has a coordinate ≥ p"
    if (y * y - (x * x + _A) * x - _B) % _P:
        return "SM2 public key is not a point on the curve sm2p256v1"
    return None


def _parse_public_key(public_key: bytes) -> tuple[bytes, mpz, mpz]:
    """Public key validation (GB/T 32918.1): a point of the curve in canonical form. The cofactor is 1,
    so every such point has order n; the point at infinity has no 64-byte encoding."""
    encoded, x, y = _decode_public_key(public_key)
    problem = _curve_problem(x, y)
    if problem:
        raise SM2Error(problem)
    return encoded, x, y


def _private_scalar(private_key: bytes) -> int:
    if len(private_key) != PRIVATE_KEY_BYTES:
        raise SM2Error(f"SM2 private key must be {PRIVATE_KEY_BYTES} bytes, got {len(private_key)}")
    d = int.from_bytes(private_key, "big")
    if not 1 <= d <= _N - 2:  # 1 + d must be invertible mod n (GB/T 32918.1 key pair generation)
        raise SM2Error("SM2 private key must be in [1, n-2]")
    return d


# Z_A needs the signer's public key, and d·G costs more than the rest of a signature. The cache is
# keyed by a one-way digest of d, so neither d nor (1 + d)^-1 (which reveals d) stays in this module.
_signer_public_keys: dict[bytes, bytes] = {}
_signer_public_keys_lock = threading.Lock()


def _signing_key(private_key: bytes) -> tuple[int, int, bytes]:
    """d, (1 + d)^-1 mod n and the 64-byte public key."""
    d = _private_scalar(private_key)
    digest = hashlib.sha256(private_key).digest()
    public = _signer_public_keys.get(digest)
    if public is None:
        x, y = _base_mul(d)
        public = x.to_bytes(32, "big") + y.to_bytes(32, "big")
        with _signer_public_keys_lock:
            if len(_signer_public_keys) >= SIGNING_KEY_CACHE_MAX:
                _signer_public_keys.pop(next(iter(_signer_public_keys)))
            _signer_public_keys[digest] = public
    return d, int(gmpy2.invert(1 + d, _N)), public


@lru_cache(maxsize=KEY_TABLE_CACHE_MAX)
def _key_rows(public_key: bytes) -> list[list]:
    _, x, y = _decode_public_key(public_key)  # validated by the caller
    return _comb_table(x, y, _KEY_COMB_WIDTH)


def generate_private_key() -> bytes:
    """A fresh private key d, 1 ≤ d ≤ n-2, from the operating system's CSPRNG (GB/T 32918.1 key pair)."""
    return (secrets.randbelow(_N - 2) + 1).to_bytes(PRIVATE_KEY_BYTES, "big")


def public_key(private_key: bytes) -> bytes:
    """P = d·G as 64 bytes x‖y (no 04 prefix)."""
    return _signing_key(bytes(private_key))[2]


def is_on_curve(public_key: bytes) -> bool:
    """Whether a 64-byte (or 65-byte 04‖x‖y) public key is a point of sm2p256v1 with coordinates below p.

    Raises SM2Error for a wrong length or prefix: that is a malformed encoding, not a point."""
    _, x, y = _decode_public_key(public_key)
    return _curve_problem(x, y) is None


def _z_a_checked(public_key: bytes, user_id: bytes) -> bytes:
    if len(user_id) > USER_ID_BYTES_MAX:
        raise SM2Error(f"SM2 user ID must be at most {USER_ID_BYTES_MAX} bytes, got {len(user_id)}")
    return sm3((8 * len(user_id)).to_bytes(2, "big") + user_id + _CURVE_BYTES + public_key)


def z_a(public_key: bytes, user_id: bytes = DEFAULT_USER_ID) -> bytes:
    """Z_A = SM3(ENTL‖ID‖a‖b‖xG‖yG‖xA‖yA), 32 bytes (GB/T 32918.2 §5.5); ENTL is ID's length in bits.

    >>> z_a(public_key(bytes.fromhex(
    ...     "3945208F7B2144B13F36E38AC6D39F95889393692860B51A42FB81EF4DF7C5B8"))).hex().upper()
    'B2E14C5C79C6DF5B85F4FE7ED8DB7A262B9DA7E07CCB0EA9F4747B8CCDA8A4F3'
    """
    return _z_a_checked(_parse_public_key(public_key)[0], user_id)


# --- signatures --------------------------------------------------------------------------------------------
def sign_digest(private_key: bytes, e: bytes, *, k: int | None = None) -> bytes:
    """Raw r‖s over an already computed e = SM3(Z_A‖M) (GB/T 32918.2 §6.1, steps A3-A7).

    ``k`` is for test vectors only; without it k is drawn from ``secrets`` and drawn again when r = 0,
    r + k = n or s = 0, as A5 and A6 require. A given k that hits one of those raises SM2Error.
    """
    d, inverse_1_plus_d, _ = _signing_key(bytes(private_key))
    return _sign_e(d, inverse_1_plus_d, e, k)


def _sign_e(d: int, inverse_1_plus_d: int, e: bytes, k: int | None) -> bytes:
    if len(e) != DIGEST_BYTES:
        raise SM2Error(f"SM2 digest e must be {DIGEST_BYTES} bytes, got {len(e)}")
    if k is not None and not 1 <= k < _N:
        raise SM2Error("SM2 k must be in [1, n-1]")
    e_int = int.from_bytes(e, "big")
    while True:
        k_int = k if k is not None else secrets.randbelow(_N - 1) + 1  # A3
        r = (e_int + int(_base_mul(k_int)[0])) % _N  # A4, A5
        if r and r + k_int != _N:
            s = inverse_1_plus_d * (k_int - r * d) % _N  # A6
            if s:
                return r.to_bytes(32, "big") + s.to_bytes(32, "big")  # A7
        if k is not None:
            raise SM2Error("SM2 k gives r = 0, r + k = n or s = 0 (GB/T 32918.2 §6.1 A5/A6): take another k")


def sign(
    private_key: bytes, message: bytes, *, user_id: bytes = DEFAULT_USER_ID, k: int | None = None
) -> bytes:
    """SM2 signature r‖s (64 bytes) of message with e = SM3(Z_A‖M) (GB/T 32918.2 §6.1).

    GM/T 0003.5 example (OpenSSL test/sm2_internal_test.c):

    >>> d = bytes.fromhex("3945208F7B2144B13F36E38AC6D39F95889393692860B51A42FB81EF4DF7C5B8")
    >>> sig = sign(d, b"message digest", k=0x59276E27D506861A16680F3AD9C02DCCEF3CC1FA3CDBE4CE6D54B80DEAC1BC21)
    >>> sig[:32].hex().upper()
    'F5A03B0648D2C4630EEAC513E1BB81A15944DA3827D5B74143AC7EACEEE720B3'
    >>> sig[32:].hex().upper()
    'B1B6AA29DF212FD8763182BC0D421CA1BB9038FD1F7F42D4840B69C485BBC1AA'
    """
    d, inverse_1_plus_d, encoded = _signing_key(bytes(private_key))
    return _sign_e(d, inverse_1_plus_d, sm3(_z_a_checked(encoded, user_id) + message), k)


def _verify_e(x: mpz, y: mpz, e: bytes, signature: bytes, key_rows: list[list] | None) -> bool:
    """GB/T 32918.2 §7.1 steps B1, B2 and B5-B7."""
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:], "big")
    if not (0 < r < _N and 0 < s < _N):  # B1, B2
        return False
    t = (r + s) % _N  # B5
    if not t:
        return False
    x1 = _double_mul_x(s, t, x, y, key_rows)  # B6
    return x1 is not None and (int.from_bytes(e, "big") + x1) % _N == r  # B7


def _check_signature_length(signature: bytes) -> None:
    if len(signature) != SIGNATURE_BYTES:
        raise SM2Error(f"SM2 signature must be {SIGNATURE_BYTES} bytes (r‖s), got {len(signature)}")


def verify_digest(public_key: bytes, e: bytes, signature: bytes, *, cache: bool = False) -> bool:
    """Check a raw r‖s signature over an already computed e = SM3(Z_A‖M) (GB/T 32918.2 §7.1).

    False for a wrong signature (r or s outside [1, n-1] included); SM2Error for a malformed public
    key, e or signature length. ``cache=True``: see :func:`verify`.
    """
    encoded, x, y = _parse_public_key(public_key)
    if len(e) != DIGEST_BYTES:
        raise SM2Error(f"SM2 digest e must be {DIGEST_BYTES} bytes, got {len(e)}")
    _check_signature_length(signature)
    return _verify_e(x, y, e, signature, _key_rows(encoded) if cache else None)


def verify(
    public_key: bytes,
    message: bytes,
    signature: bytes,
    *,
    user_id: bytes = DEFAULT_USER_ID,
    cache: bool = False,
) -> bool:
    """Check a raw r‖s SM2 signature of message, e = SM3(Z_A‖M) (GB/T 32918.2 §7.1).

    False for a wrong signature (r or s outside [1, n-1] included); SM2Error for a malformed public key
    or a signature that is not 64 bytes. ``cache=True`` keeps a per-key table (LRU of
    KEY_TABLE_CACHE_MAX keys; its first use costs a few ms) for keys verified again, such as CA and
    issuer keys; ``cache=False`` never reads or fills it.

    >>> P = bytes.fromhex("09F9DF311E5421A150DD7D161E4BC5C672179FAD1833FC076BB08FF356F35020"
    ...                   "CCEA490CE26775A52DC6EA718CC1AA600AED05FBF35E084A6632F6072DA9AD13")
    >>> sig = bytes.fromhex("F5A03B0648D2C4630EEAC513E1BB81A15944DA3827D5B74143AC7EACEEE720B3"
    ...                     "B1B6AA29DF212FD8763182BC0D421CA1BB9038FD1F7F42D4840B69C485BBC1AA")
    >>> verify(P, b"message digest", sig), verify(P, b"message digest!", sig)
    (True, False)
    """
    encoded, x, y = _parse_public_key(public_key)
    _check_signature_length(signature)
    e = sm3(_z_a_checked(encoded, user_id) + message)
    return _verify_e(x, y, e, signature, _key_rows(encoded) if cache else None)
