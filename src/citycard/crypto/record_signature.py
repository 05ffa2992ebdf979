"""Signatures of institution-written records (a hospital's visit record on a health card).

pboc-notes §8.1: every record a hospital writes on the resident health card ends with the writing
institution's signature and a reference to its certificate. WS/T 543 is not public, so the
mechanism here is the project's (UNCERTAIN), one per suite:

- GM: SM2 with SM3 (GB/T 32918.2), e = SM3(Z_A ‖ M) with the default user ID, signature r‖s (64);
- INTL: RSA with SHA-256, PKCS#1 v1.5 (default) or PSS (MGF1-SHA-256, salt = hash length).

A **key id** names the public key inside the record: the leftmost 8 bytes of SM3 (GM) or SHA-256
(INTL) over the public key's encoding — SM2 x‖y (64 bytes), RSA the DER SubjectPublicKeyInfo.
A verifier looks the key up by institution and key id; a record whose key id does not match the
key it is checked with is refused before any signature arithmetic.

>>> from citycard.crypto import sm2
>>> d = sm2.generate_private_key()
>>> sig = sign(d, b"visit", algorithm=SM2_SM3)
>>> verify(sm2.public_key(d), b"visit", sig, algorithm=SM2_SM3)
True
>>> verify(sm2.public_key(d), b"visiT", sig, algorithm=SM2_SM3)
False
"""

from __future__ import annotations

import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric import rsa as crypto_rsa

from citycard.crypto import rsa, sm2
from citycard.crypto.hashes import sm3
from citycard.crypto.suite import Suite

SM2_SM3 = 0x01
RSA_PKCS1_SHA256 = 0x02
RSA_PSS_SHA256 = 0x03
ALGORITHMS = {SM2_SM3: "SM2-SM3", RSA_PKCS1_SHA256: "RSA-PKCS1-SHA256", RSA_PSS_SHA256: "RSA-PSS-SHA256"}
ALGORITHM_IDS = {name: ident for ident, name in ALGORITHMS.items()}
KEY_ID_BYTES = 8
RSA_BITS_MIN = 2048  # an institution's RSA key (NIST SP 800-131A: no less than 2048 bits today)
RSA_BITS_MAX = 4096
MESSAGE_BYTES_MAX = 4096


class SignatureError(ValueError):
    """Input that cannot be signed or checked at all (a wrong key kind, length or algorithm)."""


def algorithm_for(suite: Suite, *, pss: bool = False) -> int:
    """The record signature algorithm of ``suite``: SM2-SM3 for GM, RSA-SHA-256 for INTL."""
    if suite.signature == "sm2":
        return SM2_SM3
    return RSA_PSS_SHA256 if pss else RSA_PKCS1_SHA256


def _check_algorithm(algorithm: int) -> None:
    if algorithm not in ALGORITHMS:
        raise SignatureError(f"record signature algorithm {algorithm!r} is not one of {sorted(ALGORITHMS)}")


def _check_message(message: bytes) -> None:
    if not isinstance(message, bytes) or not 1 <= len(message) <= MESSAGE_BYTES_MAX:
        raise SignatureError(f"a signed record is 1 to {MESSAGE_BYTES_MAX} bytes")


def _rsa_padding(algorithm: int) -> padding.AsymmetricPadding:
    if algorithm == RSA_PSS_SHA256:
        return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)
    return padding.PKCS1v15()


def rsa_public_der(private_key: rsa.RsaPrivateKey) -> bytes:
    """The DER SubjectPublicKeyInfo of an RSA private key's public half (the INTL key encoding)."""
    public = crypto_rsa.RSAPublicNumbers(private_key.public_exponent, private_key.modulus).public_key()
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def openssl_private(private_key: rsa.RsaPrivateKey) -> crypto_rsa.RSAPrivateKey:
    """The key as an OpenSSL object without OpenSSL's consistency check (~0.3 s for 2048 bits): for
    a key out of the HSM, whose AES-GCM wrapping authenticated it. The HSM keeps the result."""
    numbers = crypto_rsa.RSAPrivateNumbers(
        p=private_key.prime_p,
        q=private_key.prime_q,
        d=private_key.private_exponent,
        dmp1=private_key.exponent_p,
        dmq1=private_key.exponent_q,
        iqmp=private_key.coefficient,
        public_numbers=crypto_rsa.RSAPublicNumbers(private_key.public_exponent, private_key.modulus),
    )
    return numbers.private_key(unsafe_skip_rsa_key_validation=True)


def public_key_bytes(private_key: rsa.RsaPrivateKey | bytes) -> bytes:
    """The public key encoding of a private key: SM2 x‖y, or RSA DER SubjectPublicKeyInfo."""
    if isinstance(private_key, rsa.RsaPrivateKey):
        return rsa_public_der(private_key)
    return sm2.public_key(private_key)


def _load_rsa_public(public_key: bytes) -> crypto_rsa.RSAPublicKey:
    try:
        key = serialization.load_der_public_key(public_key)
    except ValueError as exc:
        raise SignatureError(f"RSA public key is not a DER SubjectPublicKeyInfo: {exc}") from None
    if not isinstance(key, crypto_rsa.RSAPublicKey):
        raise SignatureError("the INTL record key must be an RSA public key")
    if not RSA_BITS_MIN <= key.key_size <= RSA_BITS_MAX:
        raise SignatureError(f"RSA record key of {key.key_size} bits: {RSA_BITS_MIN} to {RSA_BITS_MAX}")
    return key


def key_id(public_key: bytes, *, algorithm: int) -> bytes:
    """The 8-byte id of a public key: SM3 (SM2 keys) or SHA-256 (RSA keys), leftmost 8 bytes."""
    _check_algorithm(algorithm)
    if algorithm == SM2_SM3:
        if len(public_key) != 64:
            raise SignatureError(f"SM2 public key must be 64 bytes (x‖y), got {len(public_key)}")
        return sm3(public_key)[:KEY_ID_BYTES]
    _load_rsa_public(public_key)
    return hashlib.sha256(public_key).digest()[:KEY_ID_BYTES]


def sign(
    private_key: rsa.RsaPrivateKey | crypto_rsa.RSAPrivateKey | bytes, message: bytes, *, algorithm: int
) -> bytes:
    """Sign ``message`` (the record's canonical bytes): SM2 r‖s, or the RSA signature (N bytes).
    An RSA key may be given as an OpenSSL object (:func:`openssl_private`) to skip its rebuild."""
    _check_algorithm(algorithm)
    _check_message(message)
    if algorithm == SM2_SM3:
        if not isinstance(private_key, bytes):
            raise SignatureError("SM2-SM3 signs with a 32-byte SM2 private key")
        return sm2.sign(private_key, message)
    if isinstance(private_key, rsa.RsaPrivateKey):
        private_key = openssl_private(private_key)
    if not isinstance(private_key, crypto_rsa.RSAPrivateKey):
        raise SignatureError(f"{ALGORITHMS[algorithm]} signs with an RSA private key")
    if not RSA_BITS_MIN <= private_key.key_size <= RSA_BITS_MAX:
        raise SignatureError(f"RSA record key must be {RSA_BITS_MIN} to {RSA_BITS_MAX} bits")
    return private_key.sign(message, _rsa_padding(algorithm), hashes.SHA256())


def verify(public_key: bytes, message: bytes, signature: bytes, *, algorithm: int) -> bool:
    """True when ``signature`` is the key's signature of ``message``; False for a wrong one.

    SignatureError for input that is not a key or signature of the algorithm at all.
    """
    _check_algorithm(algorithm)
    _check_message(message)
    if algorithm == SM2_SM3:
        if len(signature) != sm2.SIGNATURE_BYTES:
            return False
        try:
            return sm2.verify(public_key, message, signature)
        except sm2.SM2Error as exc:
            raise SignatureError(f"SM2 record key: {exc}") from None
    key = _load_rsa_public(public_key)
    if len(signature) != (key.key_size + 7) // 8:
        return False
    try:
        key.verify(signature, message, _rsa_padding(algorithm), hashes.SHA256())
    except InvalidSignature:
        return False
    return True
