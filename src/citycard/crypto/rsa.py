"""Raw RSA as EMV uses it: no padding, the signer's structure lives inside the block (Book 2 §5–6).

EMV certificates and signatures are "RSA with message recovery": the signer computes
``data^d mod n`` over a block exactly as long as the modulus (``6A ‖ … ‖ hash ‖ BC``) and the
terminal recovers it with ``signature^e mod n``. Both directions are here, on bytes, with exact
length checks; :mod:`citycard.crypto.oda` adds the EMV block structure on top.

Keys: EMV CA, issuer and ICC keys use the public exponent 3 or 65537 (Book 2 §5.1, §6.1) and
moduli of whole bytes up to 248 bytes (1984 bits). :func:`generate_rsa_key` makes test keys with
``cryptography`` (OpenSSL) from 1024 bits and with gmpy2 primes below that (OpenSSL refuses keys
under 1024 bits; EMV ICC keys of 768 or 896 bits are common, so the tests need them).

>>> key = generate_rsa_key(512)
>>> block = b"\\x6a" + bytes(62) + b"\\xbc"
>>> recover(key.modulus_bytes, key.exponent_bytes, sign_raw(key, block)) == block
True
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field

import gmpy2
from cryptography.hazmat.primitives.asymmetric import rsa as crypto_rsa

RSA_BITS_MIN = 512  # smallest key generate_rsa_key makes (test ICC keys); EMV keys are larger
RSA_BITS_MAX = 1984  # EMV: N_CA ≤ 248 bytes (Book 2 §5.1)
RSA_OPENSSL_BITS_MIN = 1024  # below this, cryptography refuses to generate; gmpy2 primes are used
PUBLIC_EXPONENTS = (3, 65537)  # the only two EMV allows (Book 2 §5.1, §6.1)
_PRIME_ROUNDS = 64  # Miller–Rabin rounds (gmpy2.is_prime) for the gmpy2 path


class RSAError(ValueError):
    """Bad RSA input: a length, a value not below the modulus, an exponent EMV does not allow."""


@dataclass(frozen=True, slots=True)
class RsaPrivateKey:
    """An RSA private key as integers, signing with the CRT (gmpy2).

    The private parts are left out of ``repr`` so a key never lands in a log by accident.
    """

    modulus: int
    public_exponent: int
    private_exponent: int = field(repr=False)
    prime_p: int = field(repr=False)
    prime_q: int = field(repr=False)
    exponent_p: int = field(repr=False)  # d mod (p − 1)
    exponent_q: int = field(repr=False)  # d mod (q − 1)
    coefficient: int = field(repr=False)  # q⁻¹ mod p

    @property
    def size_bytes(self) -> int:
        """Modulus length N in bytes (certificate and signature length)."""
        return (self.modulus.bit_length() + 7) // 8

    @property
    def modulus_bytes(self) -> bytes:
        return self.modulus.to_bytes(self.size_bytes, "big")

    @property
    def exponent_bytes(self) -> bytes:
        """The public exponent as EMV stores it (9F32/9F47, CAPK): ``03`` or ``010001``."""
        return exponent_to_bytes(self.public_exponent)

    @classmethod
    def from_numbers(cls, *, p: int, q: int, e: int) -> RsaPrivateKey:
        """Build the key from its two primes and public exponent (d = e⁻¹ mod λ(n))."""
        if p == q:
            raise RSAError("RSA primes p and q must differ")
        lam = math.lcm(p - 1, q - 1)
        if math.gcd(e, lam) != 1:
            raise RSAError(f"public exponent {e} is not coprime with λ(n)")
        d = int(gmpy2.invert(e, lam))
        return cls(
            modulus=p * q,
            public_exponent=e,
            private_exponent=d,
            prime_p=p,
            prime_q=q,
            exponent_p=d % (p - 1),
            exponent_q=d % (q - 1),
            coefficient=int(gmpy2.invert(q, p)),
        )

    @classmethod
    def from_cryptography(cls, key: crypto_rsa.RSAPrivateKey) -> RsaPrivateKey:
        numbers = key.private_numbers()
        return cls(
            modulus=numbers.public_numbers.n,
            public_exponent=numbers.public_numbers.e,
            private_exponent=numbers.d,
            prime_p=numbers.p,
            prime_q=numbers.q,
            exponent_p=numbers.dmp1,
            exponent_q=numbers.dmq1,
            coefficient=numbers.iqmp,
        )

    def to_cryptography(self) -> crypto_rsa.RSAPrivateKey:
        """The same key as a ``cryptography`` object (for PEM/DER export by the HSM)."""
        public = crypto_rsa.RSAPublicNumbers(self.public_exponent, self.modulus)
        return crypto_rsa.RSAPrivateNumbers(
            p=self.prime_p,
            q=self.prime_q,
            d=self.private_exponent,
            dmp1=self.exponent_p,
            dmq1=self.exponent_q,
            iqmp=self.coefficient,
            public_numbers=public,
        ).private_key()


def exponent_to_bytes(exponent: int) -> bytes:
    """Minimal big-endian bytes of a public exponent: 3 → ``03``, 65537 → ``010001``.

    >>> exponent_to_bytes(65537).hex()
    '010001'
    """
    if exponent < 1:
        raise RSAError(f"RSA public exponent must be positive, got {exponent}")
    return exponent.to_bytes((exponent.bit_length() + 7) // 8, "big")


def _check_block(modulus: int, modulus_len: int, data: bytes, what: str) -> int:
    if len(data) != modulus_len:
        raise RSAError(f"{what} must be {modulus_len} bytes like the modulus, got {len(data)}")
    value = int.from_bytes(data, "big")
    if value >= modulus:
        raise RSAError(f"{what} is not below the modulus")
    return value


def recover(modulus: bytes, exponent: bytes, data: bytes) -> bytes:
    """Public-key operation ``data^e mod n`` (EMV "recover"; Book 2 §5.3 step 2, §6.3 step 2).

    ``data`` must be exactly as long as ``modulus`` and its value below it; the result has the
    modulus length.

    >>> recover(bytes([0xBB]), b"\\x03", b"\\x02").hex()
    '08'
    """
    if not modulus or modulus[0] == 0:
        raise RSAError(
            "RSA modulus must be non-empty with a non-zero first byte, got "
            f"{len(modulus)} bytes starting {modulus[:1].hex().upper() or 'nothing'}"
        )
    if not exponent or not 1 <= len(exponent) <= 3:
        raise RSAError(f"RSA public exponent must be 1 to 3 bytes, got {len(exponent)}")
    n = int.from_bytes(modulus, "big")
    e = int.from_bytes(exponent, "big")
    value = _check_block(n, len(modulus), data, "RSA input")
    return int(gmpy2.powmod(value, e, n)).to_bytes(len(modulus), "big")


def sign_raw(private_key: RsaPrivateKey, data: bytes) -> bytes:
    """Private-key operation ``data^d mod n`` with the CRT (the signer's side of :func:`recover`).

    The result is checked by recovering it again before it is returned (a faulty CRT step would
    otherwise leak a prime factor; and a signature that does not recover is a programmer error).
    """
    n = private_key.modulus
    value = _check_block(n, private_key.size_bytes, data, "data to sign")
    p, q = private_key.prime_p, private_key.prime_q
    s_p = gmpy2.powmod(value % p, private_key.exponent_p, p)
    s_q = gmpy2.powmod(value % q, private_key.exponent_q, q)
    h = (private_key.coefficient * (s_p - s_q)) % p
    signature = int(s_q + h * q)
    if gmpy2.powmod(signature, private_key.public_exponent, n) != value:
        raise AssertionError("RSA CRT signature does not recover the signed block")
    return signature.to_bytes(private_key.size_bytes, "big")


def _random_prime(bits: int, exponent: int) -> int:
    """A random prime of exactly ``bits`` bits, top two bits set, with gcd(e, p − 1) = 1."""
    while True:
        candidate = secrets.randbits(bits) | (0b11 << (bits - 2)) | 1
        prime = int(gmpy2.next_prime(candidate))
        if prime.bit_length() != bits or not gmpy2.is_prime(prime, _PRIME_ROUNDS):
            continue
        if math.gcd(exponent, prime - 1) == 1:
            return prime


def generate_rsa_key(bits: int, exponent: int = 3) -> RsaPrivateKey:
    """A fresh RSA key whose modulus has exactly ``bits`` bits (a whole number of bytes).

    ``exponent`` is 3 (EMV CA and most card keys) or 65537. From 1024 bits the key comes from
    ``cryptography`` (OpenSSL), which accepts e = 3; below 1024 bits (test ICC keys) from two
    gmpy2 primes with their top two bits set, so p·q has exactly ``bits`` bits.
    """
    if exponent not in PUBLIC_EXPONENTS:
        raise RSAError(f"EMV allows the public exponent 3 or 65537, got {exponent}")
    if bits % 8 or not RSA_BITS_MIN <= bits <= RSA_BITS_MAX:
        raise RSAError(
            f"RSA key size must be a multiple of 8 from {RSA_BITS_MIN} to {RSA_BITS_MAX} bits, got {bits}"
        )
    if bits >= RSA_OPENSSL_BITS_MIN:
        key = RsaPrivateKey.from_cryptography(
            crypto_rsa.generate_private_key(public_exponent=exponent, key_size=bits)
        )
    else:
        half = bits // 2
        while True:
            p = _random_prime(half, exponent)
            q = _random_prime(bits - half, exponent)
            if p != q and (p * q).bit_length() == bits:
                break
        key = RsaPrivateKey.from_numbers(p=max(p, q), q=min(p, q), e=exponent)
    if key.modulus.bit_length() != bits:
        raise AssertionError(f"generated modulus has {key.modulus.bit_length()} bits, wanted {bits}")
    return key
