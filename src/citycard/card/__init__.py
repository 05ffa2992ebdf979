"""The chip: the card OS, the card image, and the application contract (docs/card.md).

``Card`` answers APDUs and never raises; ``load_card``/``save_card``/``new_card`` keep its state in
an atomically written image file whose secrets are sealed by the HSM.
"""

from citycard.card.apdu import Command, Response
from citycard.card.application import Application, CardContext, Interface, PersoDecryptor, Sealer
from citycard.card.image import (
    APPLICATION_CLASSES,
    IMAGE_BYTES_MAX,
    IMAGE_FORMAT,
    ApplicationSealer,
    HsmPersoDecryptor,
    HsmSealer,
    ImageError,
    ImageTooLargeError,
    image_document,
    load_card,
    new_card,
    read_image,
    register_application_class,
    save_card,
)
from citycard.card.os import PPSE_NAME, PSE_NAME, Card, build_atr
from citycard.card.sw import CardError

__all__ = [
    "APPLICATION_CLASSES",
    "IMAGE_BYTES_MAX",
    "IMAGE_FORMAT",
    "PPSE_NAME",
    "PSE_NAME",
    "Application",
    "ApplicationSealer",
    "Card",
    "CardContext",
    "CardError",
    "Command",
    "HsmPersoDecryptor",
    "HsmSealer",
    "ImageError",
    "ImageTooLargeError",
    "Interface",
    "PersoDecryptor",
    "Response",
    "Sealer",
    "build_atr",
    "image_document",
    "load_card",
    "new_card",
    "read_image",
    "register_application_class",
    "save_card",
]
