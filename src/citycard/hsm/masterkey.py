"""The master key that wraps every key of the software HSM: where it comes from and its KCV.

Sources in order: a key file named by the caller; ``CITYCARD_HSM_MASTER_KEY`` (64 hex digits);
the default key file ``<data dir>/hsm-master.key`` (data dir = ``CITYCARD_DATA_DIR`` or
``~/.local/share/citycard``), created with a random key, mode 0600 and its parent directories on
first use. The master key's KCV (AES-256 encrypting one zero block, leftmost 3 bytes) names it in
messages and in the key-store file; the key itself is never echoed, not even in part.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from citycard.hsm.keytypes import HSMError

MASTER_KEY_ENV = "CITYCARD_HSM_MASTER_KEY"
DATA_DIR_ENV = "CITYCARD_DATA_DIR"
MASTER_KEY_FILE_NAME = "hsm-master.key"
STORE_FILE_NAME = "hsm-keys.json"
MASTER_KEY_BYTES = 32  # AES-256
KCV_BYTES = 3
_SECRET_FILE_MODE = 0o600
_GROUP_OTHER_BITS = stat.S_IRWXG | stat.S_IRWXO


def data_dir() -> Path:
    """``CITYCARD_DATA_DIR`` or ``~/.local/share/citycard``."""
    configured = os.environ.get(DATA_DIR_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".local" / "share" / "citycard"


def default_master_key_path() -> Path:
    return data_dir() / MASTER_KEY_FILE_NAME


def master_key_kcv(master_key: bytes) -> bytes:
    """AES-256 encrypting one zero block, leftmost 3 bytes (identifies the master key, reveals nothing)."""
    encryptor = Cipher(algorithms.AES(master_key), modes.ECB()).encryptor()
    return (encryptor.update(bytes(16)) + encryptor.finalize())[:KCV_BYTES]


def _parse_master_key(text: str, where: str) -> bytes:
    digits = text.strip()
    if len(digits) != 2 * MASTER_KEY_BYTES or not re.fullmatch(r"[0-9A-Fa-f]*", digits):
        # Say what is wrong without echoing anything that may be (part of) the key.
        raise HSMError(
            f"master key in {where} must be {2 * MASTER_KEY_BYTES} hex digits, got {len(digits)} characters"
        )
    return bytes.fromhex(digits)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_secret_file_once(path: Path, text: str) -> bool:
    """Create ``path`` (mode 0600) with ``text`` unless it exists; True when this call created it.

    The text is written to a temporary file first and linked into place, so the file is either
    absent or complete, and a concurrent creator cannot be overwritten.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            os.fchmod(handle.fileno(), _SECRET_FILE_MODE)
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temp_name, path)
        except FileExistsError:
            return False
        fsync_dir(path.parent)
        return True
    finally:
        os.unlink(temp_name)


def load_master_key(key_file: Path | None = None) -> tuple[bytes, str]:
    """The master key and where it came from: the ``key_file`` given, else ``CITYCARD_HSM_MASTER_KEY``
    (64 hex digits) if set, else the default key file ``<data dir>/hsm-master.key``. A key file is
    created with a random key and mode 0600 on first use; a key file that others can read is refused.
    """
    from_env = os.environ.get(MASTER_KEY_ENV)
    if key_file is None and from_env is not None:
        where = f"environment variable {MASTER_KEY_ENV}"
        return _parse_master_key(from_env, where), where
    path = key_file if key_file is not None else default_master_key_path()
    where = f"key file {path}"
    if not path.exists():
        _write_secret_file_once(path, secrets.token_bytes(MASTER_KEY_BYTES).hex().upper() + "\n")
    mode = path.stat().st_mode
    if mode & _GROUP_OTHER_BITS:
        raise HSMError(
            f"master key file {path} has mode {stat.S_IMODE(mode):04o}; it must be 0600 (chmod 600 it)"
        )
    return _parse_master_key(path.read_text(encoding="ascii", errors="replace"), where), where
