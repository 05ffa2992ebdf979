"""Retail MAC and SM4 CBC-MAC from the system's OpenSSL libcrypto (through cffi), for batches of
MACs under keys that change with every MAC — clearing's TC and IAD balance MACs (hsm.tc_batch).

Why not ``cryptography`` there: every MAC under a fresh session key needs fresh cipher contexts
(two for a retail MAC), and a context's construction (Python and Rust objects, OpenSSL's EVP
set-up) costs several times the few blocks it then encrypts. OpenSSL's DES API takes the key
schedule in a buffer the caller owns (``DES_set_key_unchecked``) and SM4 re-keys one EVP context,
so a MAC here is four foreign calls (retail) or two (SM4): about a third of the cost of a retail
MAC through ``cryptography``, two thirds of an SM4 one (docs/clearing.md, fifth session).

Both answer exactly what :func:`citycard.crypto.mac.retail_mac` and
:func:`~citycard.crypto.mac.sm4_cbc_mac` answer: :func:`load` checks that on known vectors before
it hands out an instance, and returns ``None`` — callers then stay on ``cryptography`` — when
libcrypto 3 or one of its symbols is missing, a check fails, or ``CITYCARD_LIBCRYPTO=0`` is set.
The DES functions are OpenSSL's legacy low-level API (deprecated in 3.0, still exported); a
release that drops them falls back the same way.

An instance owns its buffers and its EVP context: one per thread (or per call), never shared.
Keys pass through as ``bytes`` and are never kept beyond the call but in the instance's key
schedule buffers, which the next MAC overwrites.
"""

from __future__ import annotations

import ctypes.util
import os
import threading
from typing import Any

from citycard.crypto.mac import retail_mac, sm4_cbc_mac

DISABLE_ENV = "CITYCARD_LIBCRYPTO"  # "0": never use libcrypto (A/B measurements, the fallback's tests)
DATA_BYTES_MAX = 4_096  # one MAC's padded input; the AC input is 40 bytes, the IAD MAC's 8 or 16
LIBRARY_NAMES = ("libcrypto.so.3", "libcrypto.3.dylib")

_CDEF = """
typedef struct { unsigned char opaque[128]; } DES_key_schedule;
void DES_set_key_unchecked(const unsigned char *key, DES_key_schedule *schedule);
unsigned int DES_cbc_cksum(const unsigned char *input, unsigned char *output, long length,
                           DES_key_schedule *schedule, const unsigned char *ivec);
void DES_ede3_cbc_encrypt(const unsigned char *input, unsigned char *output, long length,
                          DES_key_schedule *ks1, DES_key_schedule *ks2, DES_key_schedule *ks3,
                          unsigned char *ivec, int enc);
typedef struct evp_cipher_ctx_st EVP_CIPHER_CTX;
typedef struct evp_cipher_st EVP_CIPHER;
EVP_CIPHER_CTX *EVP_CIPHER_CTX_new(void);
void EVP_CIPHER_CTX_free(EVP_CIPHER_CTX *ctx);
EVP_CIPHER *EVP_CIPHER_fetch(void *libctx, const char *algorithm, const char *properties);
int EVP_EncryptInit_ex(EVP_CIPHER_CTX *ctx, const EVP_CIPHER *type, void *impl,
                       const unsigned char *key, const unsigned char *iv);
int EVP_EncryptUpdate(EVP_CIPHER_CTX *ctx, unsigned char *out, int *outl,
                      const unsigned char *in, int inl);
"""
# DES_key_schedule is 16 rounds × 8 bytes (openssl/des.h: DES_LONG ks[2] per round, 4-byte DES_LONG
# on every platform OpenSSL 3 builds for); 128 bytes is its size, declared opaque here.

_ZERO_8, _ZERO_16 = bytes(8), bytes(16)
_lock = threading.Lock()
_state: dict[str, Any] = {}  # "ffi", "lib", "sm4" once loaded; "failed" when it could not be


class LibcryptoMacs:
    """The two block MACs on libcrypto; not thread-safe (its buffers and context are its own)."""

    def __init__(self, ffi: Any, lib: Any, sm4_cbc: Any):
        self._ffi, self._lib, self._sm4_cbc = ffi, lib, sm4_cbc
        self._k1 = ffi.new("DES_key_schedule *")
        self._k2 = ffi.new("DES_key_schedule *")
        self._chain = ffi.new("unsigned char[8]")
        self._mac = ffi.new("unsigned char[8]")
        self._out = ffi.new(f"unsigned char[{DATA_BYTES_MAX}]")
        self._outl = ffi.new("int *")
        ctx = lib.EVP_CIPHER_CTX_new()
        if ctx == ffi.NULL:
            raise MemoryError("EVP_CIPHER_CTX_new failed")
        self._ctx = ffi.gc(ctx, lib.EVP_CIPHER_CTX_free)
        if not lib.EVP_EncryptInit_ex(self._ctx, sm4_cbc, ffi.NULL, _ZERO_16, _ZERO_16):
            raise ValueError("EVP_EncryptInit_ex(SM4-CBC) failed")

    def retail_mac(self, key: bytes, data: bytes) -> bytes:
        """ISO/IEC 9797-1 MAC algorithm 3 (IV zero) of padded ``data`` (two blocks or more) under
        the 16-byte ``key``: single-DES CBC-MAC under K1 over all blocks but the last
        (``DES_cbc_cksum``), then the last block ⊕ that chaining value under 3DES K1‖K2‖K1."""
        size = len(data)
        if len(key) != 16 or size % 8 or not 16 <= size <= DATA_BYTES_MAX:
            raise ValueError(f"retail MAC: key 16 bytes and data 16…{DATA_BYTES_MAX} in whole blocks, "
                             f"got {len(key)} and {size}")  # fmt: skip
        lib, k1, chain = self._lib, self._k1, self._chain
        lib.DES_set_key_unchecked(key[:8], k1)
        lib.DES_set_key_unchecked(key[8:], self._k2)
        lib.DES_cbc_cksum(data, chain, size - 8, k1, _ZERO_8)
        lib.DES_ede3_cbc_encrypt(data[size - 8 :], self._mac, 8, k1, self._k2, k1, chain, 1)
        return self._ffi.buffer(self._mac)[:]

    def sm4_cbc_mac(self, key: bytes, data: bytes) -> bytes:
        """SM4 CBC-MAC (IV zero) of padded ``data`` under the 16-byte ``key``: the last block of
        its SM4-CBC encryption, on this instance's re-keyed EVP context."""
        size = len(data)
        if len(key) != 16 or size % 16 or not 16 <= size <= DATA_BYTES_MAX:
            raise ValueError(f"SM4 CBC-MAC: key 16 bytes and data 16…{DATA_BYTES_MAX} in whole blocks, "
                             f"got {len(key)} and {size}")  # fmt: skip
        ffi, lib = self._ffi, self._lib
        if not lib.EVP_EncryptInit_ex(self._ctx, ffi.NULL, ffi.NULL, key, _ZERO_16):
            raise ValueError("EVP_EncryptInit_ex(SM4-CBC) failed")
        if not lib.EVP_EncryptUpdate(self._ctx, self._out, self._outl, data, size) or self._outl[0] != size:
            raise ValueError("EVP_EncryptUpdate(SM4-CBC) failed")
        return ffi.buffer(self._out, size)[size - 16 :]


def _agrees(macs: LibcryptoMacs) -> bool:
    """The same answers as crypto.mac on a few keys and lengths (odd-parity and not)."""
    for seed in range(3):
        key = bytes((seed * 37 + i * 11) & 0xFF for i in range(16))
        for blocks in (2, 5, 9):
            data = bytes((seed + i * 7) & 0xFF for i in range(blocks * 16))
            if macs.retail_mac(key, data[: blocks * 8]) != retail_mac(key, data[: blocks * 8]):
                return False
            if macs.sm4_cbc_mac(key, data) != sm4_cbc_mac(key, data):
                return False
    return True


def _open() -> tuple[Any, Any, Any] | None:
    try:
        from cffi import FFI
    except ImportError:
        return None
    ffi = FFI()
    ffi.cdef(_CDEF)
    names = [*LIBRARY_NAMES, ctypes.util.find_library("crypto")]
    for name in filter(None, names):
        try:
            lib = ffi.dlopen(name)
            sm4_cbc = lib.EVP_CIPHER_fetch(ffi.NULL, b"SM4-CBC", ffi.NULL)
        except (OSError, AttributeError):  # no such library, or a symbol missing
            continue
        if sm4_cbc != ffi.NULL:
            return ffi, lib, sm4_cbc
    return None


def load() -> LibcryptoMacs | None:
    """A new :class:`LibcryptoMacs`, or ``None`` when libcrypto cannot give crypto.mac's answers
    here (or ``CITYCARD_LIBCRYPTO=0``). The library is opened and checked once per process."""
    if os.environ.get(DISABLE_ENV, "1") == "0":
        return None
    with _lock:
        if not _state:
            opened = _open()
            try:
                if opened is None or not _agrees(LibcryptoMacs(*opened)):
                    raise ValueError("libcrypto unusable")
                _state.update(ffi=opened[0], lib=opened[1], sm4=opened[2])
            except (ValueError, MemoryError, OSError):
                _state["failed"] = True
        if "failed" in _state:
            return None
    return LibcryptoMacs(_state["ffi"], _state["lib"], _state["sm4"])
