"""Transfer syntaxes, the element tags the split needs, and pydicom's names for them."""

from __future__ import annotations

import re

from ..errors import UnsupportedError

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
DEFLATED_EXPLICIT_VR_LE = "1.2.840.10008.1.2.1.99"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.57"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
HTJ2K_LOSSLESS_RPCL = "1.2.840.10008.1.2.4.202"

NATIVE_SYNTAXES = frozenset({IMPLICIT_VR_LE, EXPLICIT_VR_LE, EXPLICIT_VR_BE})
LOSSLESS_ENCAPSULATED_SYNTAXES = frozenset(
    {
        RLE_LOSSLESS,
        JPEG_LOSSLESS,
        JPEG_LOSSLESS_SV1,
        JPEG_LS_LOSSLESS,
        JPEG_2000_LOSSLESS,
        HTJ2K_LOSSLESS,
        HTJ2K_LOSSLESS_RPCL,
    }
)

PIXEL_DATA = 0x7FE00010
FLOAT_PIXEL_DATA = 0x7FE00008
DOUBLE_FLOAT_PIXEL_DATA = 0x7FE00009
EXTENDED_OFFSET_TABLE = 0x7FE00001
EXTENDED_OFFSET_TABLE_LENGTHS = 0x7FE00002

_UID_TEXT = re.compile(r"[0-9]+(\.[0-9]+)*")


def native_encoding(ts: str | None) -> tuple[bool, bool]:
    """(implicit, little) of a native transfer syntax; any other (or None) reads as Explicit VR LE."""
    return ts == IMPLICIT_VR_LE, ts != EXPLICIT_VR_BE


def syntax_name(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name
    return name if name and name != uid else uid


def check_known_syntax(uid: str) -> None:
    """Raise UnsupportedError unless ``uid`` is a registered DICOM transfer syntax."""
    from pydicom.uid import UID, UID_dictionary

    entry = UID_dictionary.get(UID(uid))
    if entry is None or entry[1] != "Transfer Syntax":
        # A well-formed UID (digits and dots) is quoted; anything else might be a name.
        shown = repr(uid) if _UID_TEXT.fullmatch(uid) else f"(not a valid UID, {len(uid)} characters)"
        raise UnsupportedError(
            f"unknown transfer syntax UID {shown}; expected a registered DICOM transfer"
            f" syntax such as {EXPLICIT_VR_LE} (Explicit VR Little Endian)"
        )
