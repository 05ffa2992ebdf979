"""The card image: a virtual card's persistent state, a JSON base file and an A/B journal (docs/card.md §2).

A document looks like this (secret items sealed by the HSM, their KCVs beside them)::

    {
      "format": "citycard-card-image/3",
      "generation": 42,
      "card_serial": "5F0C9A1E22D4B781",
      "atr": "3B8E800163697479636172642050424F433311",
      "protocol": "T=1",
      "card_blocked": false,
      "saved_at": "2025-01-01T08:00:00+00:00",
      "kcvs": {"card-image": "1A2B3C"},
      "applications": [
        {"class": "citycard.card.pboc:PbocApplication", "aid": "A000000333010101",
         "label": "PBOC DEBIT", "state": {..., "keys": {"GM/AC": {"sealed": "…", "kcv": "…",
         "kcv_method": "SM4"}}}}
      ]
    }

Two files keep it (docs/card.md §2, format /3):

- ``card.json``, the **base image**: the JSON document above with a ``generation`` number, written
  by :func:`save_card` (personalisation, ``card new``, the end of a ``terminal pay``) to a temporary
  file in the same directory (``.<name>.<random>.tmp``), flushed and ``fsync``-ed, then
  ``os.replace``-d over the image and the directory ``fsync``-ed: a crash leaves the old image or
  the new one, and a temporary file left behind is never read.
- ``card.json.ab``, the **A/B journal** the card writes after each state change inside a
  transaction (:meth:`Card.save` → :func:`autosave`): two fixed slots; generation ``g`` goes into
  slot ``g % 2`` in place with one ``pwrite`` and one ``fdatasync`` — no temporary file, no rename,
  no directory sync (a tap's save costs a third of the base write). Each slot is
  ``CCIMGAB1`` ‖ generation (8, big-endian) ‖ length (4) ‖ SHA-256 over those and the payload (32)
  ‖ the payload (the same JSON document). The slot overwritten is always the older one, so a
  write torn by a crash fails its checksum and the other slot (or the base) is still whole.

Loading (:func:`read_image`) takes the base and every slot that verifies and belongs to the same
card serial, and keeps the highest generation. The card answers only after its save returned, so
an answer that left the card is never lost and its ATC never comes back.

Loading rebuilds each application from its class path; only classes under ``citycard.card.`` (or
classes registered in :data:`APPLICATION_CLASSES`) are ever imported, so an image cannot name
arbitrary code.

The sealer binds each secret to the card serial (not PAN‖PSN: the serial exists before
personalisation and is one per card, whatever applications it holds) and to the item's name.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import importlib
import json
import os
import re
import secrets
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from citycard.card.application import Application
from citycard.card.os import (
    APPLICATIONS_MAX,
    PROTOCOLS,
    SERIAL_BYTES,
    Card,
    TransmissionProtocol,
    check_atr,
)
from citycard.crypto.suite import Suite

if TYPE_CHECKING:
    from citycard.hsm import SoftHSM

# /3: a generation number and the A/B journal beside the base file; /2 images (no journal) are read
# as generation 0. /2: sealed item names carry the application's AID; /1 images cannot open them.
IMAGE_FORMAT = "citycard-card-image/3"
IMAGE_FORMATS_READ = (IMAGE_FORMAT, "citycard-card-image/2")
JOURNAL_SUFFIX = ".ab"
SLOT_MAGIC = b"CCIMGAB1"
SLOT_HEADER_BYTES = len(SLOT_MAGIC) + 8 + 4 + 32  # magic, generation, length, SHA-256
SLOT_BYTES_MIN = 16 * 1024  # a slot holds twice the document it was made for, at least this
GENERATION_MAX = 2**63 - 1
# fdatasync flushes the data without the inode times (the slot file never changes size); where the
# OS lacks it (macOS), fsync does the same job a little slower.
_fdatasync = getattr(os, "fdatasync", os.fsync)
IMAGE_BYTES_MAX = 4 * 1024 * 1024
CARD_IMAGE_KEY_LABEL = "card-image"
PERSO_KEK_LABEL = "perso-kek"
CLASS_PATH = re.compile(r"^citycard\.card(\.[a-z_][a-z0-9_]*)+:[A-Za-z_][A-Za-z0-9_]*$")
_HEX = re.compile(r"^([0-9A-Fa-f]{2})*$")

# Trusted application classes by class path, besides those importable under ``citycard.card.``
# (a test registers its own application here; an image file can never add to it).
APPLICATION_CLASSES: dict[str, type[Application]] = {}


class ImageError(ValueError):
    """A card image that cannot be read, trusted or written; the message says which file and why."""


class ImageTooLargeError(ImageError):
    """The image would exceed :data:`IMAGE_BYTES_MAX`."""


# --- sealing through the HSM -----------------------------------------------------------------------
SEALED_CACHE_MAX = 256  # sealed items remembered per card (a card has a few dozen)


class HsmSealer:
    """The :class:`~citycard.card.application.Sealer` of one card: the HSM's ``card-image`` key,
    AES-256-GCM, associated data = card serial ‖ item name (‖ check value); see
    :mod:`citycard.hsm.cardimage` for the KCV rules. ``suite`` (optional) picks a 3DES or SM4 KCV
    for a 16-byte key; a name component ``INTL``/``GM`` does the same (``keys/GM/AC``).
    """

    def __init__(self, hsm: SoftHSM, card_serial: bytes):
        if len(card_serial) != SERIAL_BYTES:
            raise ValueError(f"the card serial must be {SERIAL_BYTES} bytes, got {len(card_serial)}")
        self._hsm = hsm
        self.card_serial = bytes(card_serial)
        self._sealed: dict[str, tuple[bytes, dict[str, str]]] = {}

    def __repr__(self) -> str:
        return f"HsmSealer(card {self.card_serial.hex().upper()})"

    @property
    def key_kcv(self) -> str:
        """KCV of the HSM's card-image key (made on first use)."""
        return self._hsm.card_image_key().kcv_hex

    def seal(self, name: str, clear: bytes, *, suite: Suite | None = None) -> dict[str, str]:
        # The card saves its image after every state change, but its secrets rarely change: an
        # item whose value is unchanged keeps its sealed form (one AES-GCM + KCV less per item per
        # save). Keyed by a digest, so the cache holds nothing the card object does not hold already.
        digest = hashlib.sha256(clear).digest() + (suite.name.encode() if suite else b"")
        cached = self._sealed.get(name)
        if cached is not None and cached[0] == digest:
            return dict(cached[1])
        sealed = self._hsm.seal_card_item(self.card_serial, name, clear, suite=suite)
        if len(self._sealed) >= SEALED_CACHE_MAX:
            self._sealed.clear()
        self._sealed[name] = (digest, dict(sealed))
        return sealed

    def open(self, name: str, sealed: Mapping[str, str]) -> bytes:
        return self._hsm.open_card_item(self.card_serial, name, sealed)


class ApplicationSealer:
    """One application's view of the card's sealer: item names are prefixed with its AID, so two
    applications on one card (each with ``keys/GM/AC``, ``pin`` …) never share a sealed name."""

    def __init__(self, sealer: Any, aid: bytes):
        self._sealer = sealer
        self._prefix = aid.hex().upper()

    def __repr__(self) -> str:
        return f"ApplicationSealer({self._prefix}, {self._sealer!r})"

    def seal(self, name: str, clear: bytes, **options: Any) -> dict[str, str]:
        return self._sealer.seal(f"{self._prefix}/{name}", clear, **options)

    def open(self, name: str, sealed: Mapping[str, str]) -> bytes:
        return self._sealer.open(f"{self._prefix}/{name}", sealed)


class HsmPersoDecryptor:
    """The :class:`~citycard.card.application.PersoDecryptor` of a card: ``perso-kek`` in the HSM,
    ``suite``'s cipher, ECB, padding method 2 — the inverse of ``SoftHSM.encipher_perso_dgi``.
    """

    def __init__(self, hsm: SoftHSM, suite: Suite, *, label: str = PERSO_KEK_LABEL):
        self._hsm = hsm
        self.suite = suite
        self.label = label

    def __repr__(self) -> str:
        return f"HsmPersoDecryptor({self.label}, {self.suite.name})"

    def decipher(self, dgi: int, data: bytes) -> bytes:
        return self._hsm.decipher_perso_dgi(self.label, self.suite, data)


# --- class paths -------------------------------------------------------------------------------
def class_path(cls: type) -> str:
    """``module:QualifiedName`` of an application class, as an image names it."""
    return f"{cls.__module__}:{cls.__qualname__}"


def register_application_class(cls: type[Application]) -> str:
    """Trust ``cls`` for :func:`load_card` although it lives outside ``citycard.card`` (tests)."""
    if not (isinstance(cls, type) and issubclass(cls, Application)):
        raise TypeError(f"{cls!r} is not an Application class")
    APPLICATION_CLASSES[class_path(cls)] = cls
    return class_path(cls)


def application_class(path: str) -> type[Application]:
    """The application class an image names; only ``citycard.card.`` modules are imported."""
    registered = APPLICATION_CLASSES.get(path)
    if registered is not None:
        return registered
    if not isinstance(path, str) or not CLASS_PATH.fullmatch(path):
        raise ImageError(f"application class {path!r} is not a class path under citycard.card (module:Class)")
    module_name, _, name = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImageError(f"application class {path!r}: module does not import ({exc})") from None
    cls = getattr(module, name, None)
    if not (isinstance(cls, type) and issubclass(cls, Application)):
        raise ImageError(f"application class {path!r} is not an Application")
    return cls


# --- the document --------------------------------------------------------------------------------
def image_document(card: Card) -> dict[str, Any]:
    """The JSON-ready image of ``card`` (applications' secrets sealed by the card's sealer)."""
    if card.sealer is None:
        raise ImageError("the card has no sealer: its secret items cannot be written")
    kcv = getattr(card.sealer, "key_kcv", None)
    return {
        "format": IMAGE_FORMAT,
        "card_serial": card.serial.hex().upper(),
        "atr": card.atr.hex().upper(),
        "protocol": card.protocol,
        "card_blocked": card.card_blocked,
        "saved_at": card.now().isoformat(timespec="seconds"),
        "kcvs": {CARD_IMAGE_KEY_LABEL: kcv} if kcv is not None else {},
        "applications": [
            {
                "class": class_path(type(app)),
                "aid": app.aid.hex().upper(),
                "label": app.label,
                "state": app.to_image(ApplicationSealer(card.sealer, app.aid)),
            }
            for app in card.applications
        ],
    }


def _encode(document: Mapping[str, Any]) -> bytes:
    # Compact: `indent` forces json's pure-Python encoder, which costs more than the write itself on
    # every card transaction. `citycard card info` is the readable view.
    data = (json.dumps(document, separators=(",", ":"), ensure_ascii=False) + "\n").encode("utf-8")
    if len(data) > IMAGE_BYTES_MAX:
        raise ImageTooLargeError(f"card image of {len(data)} bytes exceeds the {IMAGE_BYTES_MAX} allowed")
    return data


def _fsync_directory(directory: Path) -> None:
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _replace_atomically(path: Path, data: bytes, *, durable: bool) -> None:
    """``data`` becomes ``path``: temp file in the same directory, fsync, replace, directory fsync."""
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    if durable:
        _fsync_directory(path.parent)


def write_image(path: str | Path, document: Mapping[str, Any], *, durable: bool = True) -> None:
    """Write ``document`` as the base image at ``path`` atomically: temp file in the same directory,
    fsync, replace, fsync of the directory (``durable=False`` skips both fsyncs, for benchmarks on
    throwaway cards)."""
    _replace_atomically(Path(path), _encode(document), durable=durable)


def journal_path(path: str | Path) -> Path:
    """The A/B journal beside the base image ``path`` (``card.json`` → ``card.json.ab``)."""
    path = Path(path)
    return path.with_name(path.name + JOURNAL_SUFFIX)


def slot_record(generation: int, payload: bytes) -> bytes:
    """One journal slot's bytes: magic ‖ generation ‖ length ‖ SHA-256 ‖ payload (module note).

    >>> record = slot_record(7, b"{}")
    >>> record[:8], int.from_bytes(record[8:16], "big"), len(record)
    (b'CCIMGAB1', 7, 54)
    """
    if not 0 < generation <= GENERATION_MAX:
        raise ValueError(f"generation must be 1..{GENERATION_MAX}, got {generation}")
    head = SLOT_MAGIC + generation.to_bytes(8, "big") + len(payload).to_bytes(4, "big")
    return head + hashlib.sha256(head + payload).digest() + payload


def parse_slot(raw: bytes) -> tuple[int, bytes] | None:
    """(generation, payload) of one slot, or None when it is empty, torn or not a slot."""
    if len(raw) < SLOT_HEADER_BYTES or not raw.startswith(SLOT_MAGIC):
        return None
    head = raw[: len(SLOT_MAGIC) + 12]
    generation = int.from_bytes(head[len(SLOT_MAGIC) : len(SLOT_MAGIC) + 8], "big")
    length = int.from_bytes(head[-4:], "big")
    payload = raw[SLOT_HEADER_BYTES : SLOT_HEADER_BYTES + length]
    if generation == 0 or len(payload) != length:
        return None
    if hashlib.sha256(head + payload).digest() != raw[len(head) : SLOT_HEADER_BYTES]:
        return None
    return generation, payload


def _slot_bytes_for(record_bytes: int) -> int:
    size = SLOT_BYTES_MIN
    while size < 2 * record_bytes:
        size *= 2
    return size


def _document_with_generation(card: Card) -> tuple[int, dict[str, Any]]:
    generation = card.image_generation + 1
    document = image_document(card)
    document["generation"] = generation
    return generation, document


def save_card(card: Card, path: str | Path | None = None) -> Path:
    """Write ``card``'s base image to ``path`` (default: the card's own image file) atomically, as a
    new generation (so it supersedes whatever the journal holds)."""
    target = Path(path) if path is not None else card.image_path
    if target is None:
        raise ImageError("save_card: the card has no image file and no path was given")
    generation, document = _document_with_generation(card)
    write_image(target, document, durable=card.durable)
    card.image_generation = generation
    return target


def autosave(card: Card) -> None:
    """The card's save after a state change (:meth:`Card.save`): the next generation into the A/B
    journal beside its image, in place, one ``fdatasync`` (module note). Without a base image yet,
    or when the document outgrew the journal's slots, a base write (:func:`save_card`) instead —
    the journal is then made anew, sized for the document, on the next save."""
    path = card.image_path
    if path is None:
        raise ImageError("autosave: the card has no image file")
    generation, document = _document_with_generation(card)
    record = slot_record(generation, _encode(document))
    journal = journal_path(path)
    if not path.exists():
        save_card(card)
        return
    try:
        handle = os.open(journal, os.O_RDWR)
    except FileNotFoundError:
        slot_bytes = _slot_bytes_for(len(record))
        blank = bytearray(2 * slot_bytes)
        offset = (generation % 2) * slot_bytes
        blank[offset : offset + len(record)] = record
        _replace_atomically(journal, bytes(blank), durable=card.durable)
        card.image_generation = generation
        return
    try:
        size = os.fstat(handle).st_size
        slot_bytes = size // 2
        if size % 2 or slot_bytes < SLOT_BYTES_MIN or len(record) > slot_bytes:
            os.close(handle)
            handle = -1
            save_card(card)  # durable in the base; the old journal is stale from now on
            journal.unlink(missing_ok=True)
            return
        written = os.pwrite(handle, record, (generation % 2) * slot_bytes)
        if written != len(record):
            raise OSError(errno.EIO, f"short write to {journal}: {written} of {len(record)} bytes")
        if card.durable:
            _fdatasync(handle)
    finally:
        if handle >= 0:
            os.close(handle)
    card.image_generation = generation


def _bad(path: Path, what: str) -> ImageError:
    return ImageError(f"card image {path}: {what}")


def _hex_field(path: Path, document: Mapping[str, Any], key: str, lengths: range) -> bytes:
    value = document.get(key)
    if not isinstance(value, str) or not _HEX.fullmatch(value) or len(value) // 2 not in lengths:
        raise _bad(path, f"{key} must be hex of {lengths.start} to {lengths.stop - 1} bytes")
    return bytes.fromhex(value)


def _check_document(path: Path, document: Any) -> dict[str, Any]:
    """``document`` checked as a card image (named ``path`` in errors); its generation filled in."""
    if isinstance(document, dict) and document.get("format") == "citycard-card-image/1":
        raise _bad(path, f"a card image of format /1, from before {IMAGE_FORMAT!r}: make the card again")
    if not isinstance(document, dict) or document.get("format") not in IMAGE_FORMATS_READ:
        raise _bad(path, f"not a card image (no format {IMAGE_FORMAT!r})")
    generation = document.setdefault("generation", 0)  # /2 images had no journal: generation 0
    if (
        isinstance(generation, bool)
        or not isinstance(generation, int)
        or not 0 <= generation <= GENERATION_MAX
    ):
        raise _bad(path, f"generation must be an integer 0..{GENERATION_MAX}")
    _hex_field(path, document, "card_serial", range(SERIAL_BYTES, SERIAL_BYTES + 1))
    try:
        check_atr(_hex_field(path, document, "atr", range(2, 34)))
    except ValueError as exc:
        raise _bad(path, str(exc)) from None
    if document.get("protocol") not in PROTOCOLS:
        raise _bad(path, f"protocol must be one of {', '.join(PROTOCOLS)}")
    if not isinstance(document.get("card_blocked"), bool):
        raise _bad(path, "card_blocked must be true or false")
    kcvs = document.get("kcvs")
    if not isinstance(kcvs, dict) or not all(isinstance(v, str) for v in kcvs.values()):
        raise _bad(path, "kcvs must be an object of hex strings")
    applications = document.get("applications")
    if not isinstance(applications, list) or len(applications) > APPLICATIONS_MAX:
        raise _bad(path, f"applications must be a list of at most {APPLICATIONS_MAX}")
    for index, entry in enumerate(applications, 1):
        if not isinstance(entry, dict) or not isinstance(entry.get("class"), str):
            raise _bad(path, f"application {index} must be an object with a class")
        if not isinstance(entry.get("state"), dict) or not isinstance(entry.get("label", ""), str):
            raise _bad(path, f"application {index} must have a state object and a text label")
        _hex_field(path, entry, "aid", range(5, 17))
    return document


def _json(path: Path, raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(path, f"not JSON ({exc})") from None


def _newest_in_journal(path: Path, base: dict[str, Any]) -> dict[str, Any]:
    """The journal's newest whole slot for the same card when it is newer than ``base``, else ``base``."""
    journal = journal_path(path)
    try:
        size = journal.stat().st_size
        if size > 2 * _slot_bytes_for(IMAGE_BYTES_MAX + SLOT_HEADER_BYTES):
            raise _bad(journal, f"{size} bytes, more than two slots of the largest image")
        raw = journal.read_bytes()
    except FileNotFoundError:
        return base
    except OSError as exc:
        raise ImageError(f"card image journal {journal} cannot be read: {exc.strerror}") from None
    newest = base
    half = len(raw) // 2
    for slot in (raw[:half], raw[half:]):
        found = parse_slot(slot)
        if found is None or found[0] <= newest["generation"]:
            continue  # empty, torn by a crash, or older than what we have
        document = _check_document(journal, _json(journal, found[1]))
        if document["generation"] != found[0]:
            raise _bad(journal, f"slot of generation {found[0]} holds generation {document['generation']}")
        if document["card_serial"] != base["card_serial"]:
            continue  # another card's journal left beside this file: not ours
        newest = document
    return newest


def read_image(path: str | Path) -> dict[str, Any]:
    """The checked document of the image at ``path`` — the newest generation of the base file and
    its A/B journal; nothing is unsealed and no class is imported."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > IMAGE_BYTES_MAX:
            raise _bad(path, f"{size} bytes, more than the {IMAGE_BYTES_MAX} allowed")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"card image {path} does not exist") from None
    except OSError as exc:
        raise ImageError(f"card image {path} cannot be read: {exc.strerror}") from None
    base = _check_document(path, _json(path, raw))
    return _newest_in_journal(path, base)


def load_card(
    path: str | Path,
    *,
    hsm: SoftHSM,
    perso_suite: Suite | None = None,
    clock: Callable[[], dt.datetime] | None = None,
    durable: bool = True,
) -> Card:
    """The card saved at ``path``, its applications rebuilt with ``from_image`` and its secrets opened
    by ``hsm``'s card-image key. The card keeps ``path`` as its image file.

    ``perso_suite`` gives a blank card its STORE DATA decryptor (``perso-kek`` in that suite).
    """
    path = Path(path)
    document = read_image(path)
    serial = bytes.fromhex(document["card_serial"])
    sealer = HsmSealer(hsm, serial)
    stored_kcv = document["kcvs"].get(CARD_IMAGE_KEY_LABEL)
    if stored_kcv is not None:
        try:
            hsm_kcv = hsm.card_image_key(create=False).kcv_hex
        except ValueError:
            raise _bad(
                path, f"sealed under a card-image key (KCV {stored_kcv}) this HSM does not hold"
            ) from None
        if hsm_kcv != stored_kcv:
            raise _bad(path, f"sealed under card-image key KCV {stored_kcv}, this HSM's is {hsm_kcv}")
    applications: list[Application] = []
    for index, entry in enumerate(document["applications"], 1):
        cls = application_class(entry["class"])
        try:
            app = cls.from_image(entry["state"], ApplicationSealer(sealer, bytes.fromhex(entry["aid"])))
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise _bad(path, f"application {index} ({entry['class']}): {type(exc).__name__}: {exc}") from None
        if app.aid.hex().upper() != entry["aid"].upper():
            raise _bad(
                path, f"application {index} rebuilt with AID {app.aid.hex().upper()}, not {entry['aid']}"
            )
        applications.append(app)
    try:
        card = Card(
            applications,
            atr=bytes.fromhex(document["atr"]),
            protocol=document["protocol"],
            serial=serial,
            image_path=path,
            sealer=sealer,
            perso_decryptor=HsmPersoDecryptor(hsm, perso_suite) if perso_suite is not None else None,
            clock=clock,
            card_blocked=document["card_blocked"],
            durable=durable,
        )
    except ValueError as exc:
        raise _bad(path, str(exc)) from None
    card.image_generation = document["generation"]
    return card


def new_card(
    applications: Sequence[Application],
    *,
    hsm: SoftHSM,
    image_path: str | Path | None = None,
    protocol: TransmissionProtocol = "T=1",
    perso_suite: Suite | None = None,
    serial: bytes | None = None,
    clock: Callable[[], dt.datetime] | None = None,
    durable: bool = True,
) -> Card:
    """A fresh card (a new random serial unless given) sealing through ``hsm``; nothing is written
    until the card saves (the last STORE DATA block, or :func:`save_card`).
    """
    serial = serial if serial is not None else secrets.token_bytes(SERIAL_BYTES)
    return Card(
        applications,
        protocol=protocol,
        serial=serial,
        image_path=image_path,
        sealer=HsmSealer(hsm, serial),
        perso_decryptor=HsmPersoDecryptor(hsm, perso_suite) if perso_suite is not None else None,
        clock=clock,
        durable=durable,
    )


def install_application(card: Card, app: Application) -> Application:
    """Add a blank application to an issued card (:meth:`citycard.card.os.Card.install`); STORE DATA
    then personalises it and the card saves its image with it. Used for the health DDF1
    (docs/health-card.md §4)."""
    return card.install(app)
