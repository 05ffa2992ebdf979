"""Retail MAC, SM4 CBC-MAC and ECB from the system's OpenSSL libcrypto (through cffi), for batches
of operations under keys that change with every call — clearing's TC and IAD balance MACs and its
session keys (hsm.tc_batch).

Why not ``cryptography`` there: every MAC under a fresh session key needs fresh cipher contexts
(two for a retail MAC), and a context's construction (Python and Rust objects, OpenSSL's EVP
set-up) costs several times the few blocks it then encrypts. OpenSSL's DES API takes the key
schedule in a buffer the caller owns (``DES_set_key_unchecked``) and SM4 re-keys one EVP context,
so a MAC here is four foreign calls (retail) or two (SM4): about a third of the cost of a retail
MAC through ``cryptography``, two thirds of an SM4 one (docs/clearing.md, fifth session).

They answer exactly what :func:`citycard.crypto.mac.retail_mac`,
:func:`~citycard.crypto.mac.sm4_cbc_mac` and ``crypto.blockcipher``'s ECB answer: :func:`load`
checks that on known inputs before it hands out an instance, and returns ``None`` — callers then stay on ``cryptography`` — when
libcrypto 3 or one of its symbols is missing, a check fails, or ``CITYCARD_LIBCRYPTO=0`` is set.
The DES functions are OpenSSL's legacy low-level API (deprecated in 3.0, still exported); a
release that drops them falls back the same way.

An instance owns its buffers and its EVP contexts: one per thread (or per call), never shared.
Keys pass through as ``bytes`` and are never kept beyond the call but in the instance's key
schedule buffers and contexts, which the next call overwrites. The declarations come pre-compiled
(``_libcrypto_ffi``, see :func:`generated_source`).
"""

from __future__ import annotations

import ctypes.util
import os
import threading
from typing import Any

from citycard.crypto.blockcipher import sm4_ecb_encrypt, tdes_ecb_encrypt
from citycard.crypto.mac import retail_mac, sm4_cbc_mac

DISABLE_ENV = "CITYCARD_LIBCRYPTO"  # "0": never use libcrypto (A/B measurements, the fallback's tests)
DATA_BYTES_MAX = 4_096  # one MAC's padded input; the AC input is 40 bytes, the IAD MAC's 8 or 16
ECB_BYTES_MAX = 1 << 20  # one ECB call (a card's session-key blocks: 16 bytes per ATC)
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
_state: dict[str, Any] = {}  # "ffi", "lib", "ciphers" once loaded; "failed" when it could not be


CIPHERS = ("SM4-CBC", "SM4-ECB", "DES-EDE3-ECB")  # the EVP ciphers an instance keeps a context of


class LibcryptoMacs:
    """The two block MACs, and ECB encryption under keys that change per call, on libcrypto; not
    thread-safe (its buffers and contexts are its own)."""

    def __init__(self, ffi: Any, lib: Any, ciphers: dict[str, Any]):
        self._ffi, self._lib = ffi, lib
        self._k1 = ffi.new("DES_key_schedule *")
        self._k2 = ffi.new("DES_key_schedule *")
        self._chain = ffi.new("unsigned char[8]")
        self._mac = ffi.new("unsigned char[8]")
        self._out = ffi.new(f"unsigned char[{DATA_BYTES_MAX}]")
        self._outl = ffi.new("int *")
        self._ctx, self._sm4_ecb, self._tdes_ecb = (self._context(ciphers[name], name) for name in CIPHERS)

    def _context(self, cipher: Any, name: str) -> Any:
        ffi, lib = self._ffi, self._lib
        ctx = lib.EVP_CIPHER_CTX_new()
        if ctx == ffi.NULL:
            raise MemoryError("EVP_CIPHER_CTX_new failed")
        ctx = ffi.gc(ctx, lib.EVP_CIPHER_CTX_free)
        key = bytes(24) if name.startswith("DES") else _ZERO_16
        if not lib.EVP_EncryptInit_ex(
            ctx, cipher, ffi.NULL, key, _ZERO_16 if name.endswith("CBC") else ffi.NULL
        ):
            raise ValueError(f"EVP_EncryptInit_ex({name}) failed")
        return ctx

    def _ecb(self, ctx: Any, key: bytes, data: bytes, block: int, what: str) -> bytes:
        size = len(data)
        if size % block or not block <= size <= ECB_BYTES_MAX:
            raise ValueError(f"{what}: data {block}…{ECB_BYTES_MAX} bytes in whole blocks, got {size}")
        ffi, lib, out, outl = self._ffi, self._lib, self._out, self._outl
        if not lib.EVP_EncryptInit_ex(ctx, ffi.NULL, ffi.NULL, key, ffi.NULL):
            raise ValueError(f"EVP_EncryptInit_ex({what}) failed")
        parts = []
        for start in range(0, size, DATA_BYTES_MAX):  # ECB: the blocks are independent
            chunk = data[start : start + DATA_BYTES_MAX]
            if not lib.EVP_EncryptUpdate(ctx, out, outl, chunk, len(chunk)) or outl[0] != len(chunk):
                raise ValueError(f"EVP_EncryptUpdate({what}) failed")
            parts.append(ffi.buffer(out, len(chunk))[:])
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def tdes_ecb_encrypt(self, key: bytes, data: bytes) -> bytes:
        """crypto.blockcipher.tdes_ecb_encrypt for a 16-byte key K1‖K2 (3DES EDE with K1‖K2‖K1)."""
        if len(key) != 16:
            raise ValueError(f"3DES ECB: key 16 bytes, got {len(key)}")
        return self._ecb(self._tdes_ecb, key + key[:8], data, 8, "DES-EDE3-ECB")

    def sm4_ecb_encrypt(self, key: bytes, data: bytes) -> bytes:
        """crypto.blockcipher.sm4_ecb_encrypt."""
        if len(key) != 16:
            raise ValueError(f"SM4 ECB: key 16 bytes, got {len(key)}")
        return self._ecb(self._sm4_ecb, key, data, 16, "SM4-ECB")

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
    """The same answers as crypto.mac and crypto.blockcipher on a few keys and lengths (odd-parity
    and not; ECB across its internal chunks too)."""
    for seed in range(3):
        key = bytes((seed * 37 + i * 11) & 0xFF for i in range(16))
        for blocks in (2, 5, 9, DATA_BYTES_MAX // 16 + 3):
            data = bytes((seed + i * 7) & 0xFF for i in range(blocks * 16))
            if blocks < 16 and macs.retail_mac(key, data[: blocks * 8]) != retail_mac(
                key, data[: blocks * 8]
            ):
                return False
            if blocks < 16 and macs.sm4_cbc_mac(key, data) != sm4_cbc_mac(key, data):
                return False
            if macs.tdes_ecb_encrypt(key, data) != tdes_ecb_encrypt(key, data):
                return False
            if macs.sm4_ecb_encrypt(key, data) != sm4_ecb_encrypt(key, data):
                return False
    return True


GENERATED_MODULE = "citycard.crypto._libcrypto_ffi"  # _CDEF compiled to Python by cffi (below)


def generated_source() -> str:
    """The text of :data:`GENERATED_MODULE`: cffi's out-of-line ABI mode turns :data:`_CDEF` into a
    Python module of packed type tables, so a process opens libcrypto without importing pycparser
    and parsing the declarations (≈ 20 ms: once in every clearing run, before its workers fork).
    A test checks the committed module is this text; regenerate it with
    ``python -m citycard.crypto.libcrypto > src/citycard/crypto/_libcrypto_ffi.py``."""
    import contextlib
    import io
    import tempfile
    from pathlib import Path

    from cffi import FFI

    builder = FFI()
    builder.set_source(GENERATED_MODULE.rsplit(".", 1)[1], None)
    builder.cdef(_CDEF)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "module.py"
        with contextlib.redirect_stdout(io.StringIO()):  # cffi says "generating …" on stdout
            builder.emit_python_code(str(path))
        return _GENERATED_HEADER + path.read_text()


_GENERATED_HEADER = (
    "# Generated by `python -m citycard.crypto.libcrypto` from citycard.crypto.libcrypto._CDEF\n"
    "# (cffi out-of-line ABI mode: no compiler, no C). Do not edit; tests/crypto/test_libcrypto.py\n"
    "# checks it is current.\n"
)


def _ffi() -> Any:
    """The FFI of :data:`_CDEF`: the generated module's, else (it fails to load with this cffi)
    parsed here."""
    try:
        from citycard.crypto._libcrypto_ffi import ffi

        return ffi
    except Exception:  # noqa: BLE001 — any failure of the generated tables: parse the declarations
        from cffi import FFI

        ffi = FFI()
        ffi.cdef(_CDEF)
        return ffi


def _open() -> tuple[Any, Any, Any] | None:
    try:
        ffi = _ffi()
    except ImportError:  # no cffi at all
        return None
    names = [*LIBRARY_NAMES, ctypes.util.find_library("crypto")]
    for name in filter(None, names):
        try:
            lib = ffi.dlopen(name)
            ciphers = {
                cipher: lib.EVP_CIPHER_fetch(ffi.NULL, cipher.encode(), ffi.NULL) for cipher in CIPHERS
            }
        except (OSError, AttributeError):  # no such library, or a symbol missing
            continue
        if all(cipher != ffi.NULL for cipher in ciphers.values()):
            return ffi, lib, ciphers
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
                _state.update(ffi=opened[0], lib=opened[1], ciphers=opened[2])
            except (ValueError, MemoryError, OSError):
                _state["failed"] = True
        if "failed" in _state:
            return None
    return LibcryptoMacs(_state["ffi"], _state["lib"], _state["ciphers"])


FUNCTIONS = (  # what C code may call (hsm._tc_native), by the addresses below
    "DES_set_key_unchecked", "DES_cbc_cksum", "DES_ede3_cbc_encrypt", "EVP_CIPHER_CTX_new", "EVP_CIPHER_CTX_free",
    "EVP_EncryptInit_ex", "EVP_EncryptUpdate",
)  # fmt: skip


def addresses() -> dict[str, int] | None:
    """The addresses of :data:`FUNCTIONS` and of the EVP ciphers :data:`CIPHERS` in the libcrypto
    :func:`load` opened and checked, by name — for C code that computes with the same library
    (``hsm._tc_native``, which links against nothing) — or ``None`` when :func:`load` gives none."""
    if load() is None:
        return None
    ffi, lib = _state["ffi"], _state["lib"]
    out = {name: int(ffi.cast("uintptr_t", getattr(lib, name))) for name in FUNCTIONS}
    out.update({name: int(ffi.cast("uintptr_t", cipher)) for name, cipher in _state["ciphers"].items()})
    return out


if __name__ == "__main__":
    print(generated_source(), end="")
