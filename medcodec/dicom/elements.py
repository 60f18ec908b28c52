"""Our own walk of a file's element structure: exact offsets, and truncation found where pydicom
would stop silently."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import CorruptRecordError, InvalidDicomError
from ..spec import PixelSpec

_ITEM = 0xFFFEE000
_ITEM_DELIMITER = 0xFFFEE00D
_SEQUENCE_DELIMITER = 0xFFFEE0DD
UNDEFINED_LENGTH = 0xFFFFFFFF


@dataclass(frozen=True)
class Element:
    tag: int
    vr: bytes | None  # None when implicit
    header_start: int
    value_start: int
    value_end: int  # for undefined length: just after the sequence delimiter item
    undefined_length: bool


def has_preamble(data: bytes) -> bool:
    return len(data) >= 132 and data[128:132] == b"DICM"


def _is_letter_vr(vr: bytes) -> bool:
    # Same test pydicom uses to decide an element switched to implicit VR.
    return b"AA" <= vr <= b"ZZ"


def _known_vrs() -> tuple[frozenset[bytes], frozenset[bytes]]:
    from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR

    known = frozenset(str(v).encode("ascii") for v in VR)
    long_length = frozenset(str(v).encode("ascii") for v in EXPLICIT_VR_LENGTH_32)
    return known, long_length


KNOWN_VRS, LONG_LENGTH_VRS = _known_vrs()


def _truncated(what: str, offset: int, need: int, size: int) -> InvalidDicomError:
    return InvalidDicomError(
        f"truncated DICOM: {what} at byte {offset} needs {need} bytes but the file"
        f" has {size} bytes"
    )


def _read_header(
    data: bytes, pos: int, *, implicit: bool, little: bool
) -> tuple[int, bytes | None, int, int]:
    """Return (tag, vr or None, length, value_start) of the element header at ``pos``."""
    size = len(data)
    if pos + 8 > size:
        raise _truncated("element header", pos, 8, size)
    end = "<" if little else ">"
    group, elem = struct.unpack_from(end + "HH", data, pos)
    tag = group << 16 | elem
    if group == 0xFFFE:  # items and delimiters: tag + 4-byte length in every syntax
        return tag, None, struct.unpack_from(end + "I", data, pos + 4)[0], pos + 8
    if not implicit:
        vr = data[pos + 4 : pos + 6]
        if vr in KNOWN_VRS or _is_letter_vr(vr):
            if vr in LONG_LENGTH_VRS:
                if pos + 12 > size:
                    raise _truncated("element header", pos, 12, size)
                return tag, vr, struct.unpack_from(end + "I", data, pos + 8)[0], pos + 12
            return tag, vr, struct.unpack_from(end + "H", data, pos + 6)[0], pos + 8
        # Not a VR: an implicit element inside an explicit dataset (pydicom reads it so too)
    return tag, None, struct.unpack_from(end + "I", data, pos + 4)[0], pos + 8


def _walk_items(data: bytes, pos: int, *, implicit: bool, little: bool, depth: int) -> int:
    """Walk the items of an undefined-length value; return the offset after its delimiter."""
    size = len(data)
    end = "<" if little else ">"
    while True:
        if pos + 8 > size:
            raise _truncated(
                "sequence item (no sequence delimiter before end of file)", pos, 8, size
            )
        group, elem, length = struct.unpack_from(end + "HHI", data, pos)
        tag = group << 16 | elem
        if tag == _SEQUENCE_DELIMITER:
            return pos + 8
        if tag != _ITEM:
            raise InvalidDicomError(
                f"malformed DICOM: expected an item tag (FFFE,E000) at byte {pos},"
                f" found ({group:04X},{elem:04X})"
            )
        if length == UNDEFINED_LENGTH:
            pos = _walk_dataset(
                data, pos + 8, implicit=implicit, little=little, depth=depth + 1, in_item=True
            )
        else:
            if pos + 8 + length > size:
                raise _truncated("sequence item", pos, 8 + length, size)
            pos += 8 + length


def _walk_dataset(
    data: bytes, pos: int, *, implicit: bool, little: bool, depth: int, in_item: bool
) -> int:
    """Walk a nested (undefined-length item) dataset; return the offset after its delimiter."""
    if depth > 64:
        raise InvalidDicomError("malformed DICOM: sequences nested more than 64 deep")
    size = len(data)
    while pos < size:
        tag, vr, length, value_start = _read_header(data, pos, implicit=implicit, little=little)
        if tag == _ITEM_DELIMITER:
            return value_start
        pos = _skip_value(
            data, tag, vr, length, value_start, implicit=implicit, little=little, depth=depth
        )
    if in_item:
        raise _truncated("sequence item (no item delimiter before end of file)", pos, 8, size)
    return pos


def _skip_value(
    data: bytes, tag: int, vr: bytes | None, length: int, value_start: int, *,
    implicit: bool, little: bool, depth: int,
) -> int:
    if length == UNDEFINED_LENGTH:
        # SQ, encapsulated pixel data, or UN of undefined length (content is implicit VR LE)
        if vr == b"UN":
            return _walk_items(data, value_start, implicit=True, little=True, depth=depth)
        return _walk_items(data, value_start, implicit=implicit, little=little, depth=depth)
    value_end = value_start + length
    if value_end > len(data):
        raise _truncated(
            f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) value", value_start, length, len(data)
        )
    return value_end


def walk_file_meta(data: bytes, pos: int) -> int:
    """Skip the group 0002 elements (always explicit VR LE) starting at ``pos``."""
    size = len(data)
    while pos + 4 <= size and struct.unpack_from("<H", data, pos)[0] == 0x0002:
        tag, vr, length, value_start = _read_header(data, pos, implicit=False, little=True)
        pos = _skip_value(data, tag, vr, length, value_start, implicit=False, little=True, depth=0)
    return pos


def padding_start(data: bytes) -> int:
    """Where the file's trailing zero bytes begin (len(data) when it ends otherwise). Zeros
    read as empty (0000,0000) elements, one per 8 bytes: a file padded with megabytes of
    them must not be walked element by element (it took 18 s for 20 MB). The same as
    ``len(data.rstrip(b"\\0"))``, without its copy of the file: searched from the end,
    in pieces that double."""
    import numpy as np

    end = len(data)
    if not end or data[-1]:
        return end
    view = np.frombuffer(data, dtype=np.uint8)
    piece = 4096
    while end:
        start = max(0, end - piece)
        nonzero = np.flatnonzero(view[start:end])
        if nonzero.size:
            return start + int(nonzero[-1]) + 1
        end, piece = start, 2 * piece
    return 0


def walk_top_level(data: bytes, pos: int, *, implicit: bool, little: bool) -> list[Element]:
    """Walk the top-level dataset to the end of the file; raise if it ends mid-element.
    Trailing zero padding (from a zero tag on, nothing but zeros) ends the walk."""
    elements = []
    size = len(data)
    padding = padding_start(data)
    while pos < size:
        if pos >= padding:  # (0000,0000) is no dataset element: the rest is padding
            break
        tag, vr, length, value_start = _read_header(data, pos, implicit=implicit, little=little)
        if tag >> 16 == 0xFFFE:
            raise InvalidDicomError(
                f"malformed DICOM: item or delimiter tag ({tag >> 16:04X},{tag & 0xFFFF:04X})"
                f" at byte {pos} outside any sequence"
            )
        value_end = _skip_value(
            data, tag, vr, length, value_start, implicit=implicit, little=little, depth=0
        )
        elements.append(
            Element(tag, vr, pos, value_start, value_end, length == UNDEFINED_LENGTH)
        )
        pos = value_end
    return elements


def guess_headerless_encoding(data: bytes) -> tuple[bool, bool] | None:
    """(implicit, little) for data without a preamble that starts like a dataset, else None."""
    if len(data) < 8:
        return None
    group_le = struct.unpack_from("<H", data, 0)[0]
    group_be = struct.unpack_from(">H", data, 0)[0]
    explicit = data[4:6] in KNOWN_VRS
    if group_le in (0x0002, 0x0008):
        return (not explicit, True)
    if group_be == 0x0008 and explicit:
        return (False, False)
    return None


def read_meta_transfer_syntax(data: bytes, start: int, end: int) -> str | None:
    pos = start
    while pos < end:
        tag, vr, length, value_start = _read_header(data, pos, implicit=False, little=True)
        value_end = _skip_value(
            data, tag, vr, length, value_start, implicit=False, little=True, depth=0
        )
        if tag == 0x00020010 and length != UNDEFINED_LENGTH:
            uid = data[value_start:value_end].decode("ascii", errors="replace").strip("\x00 ")
            return uid or None
        pos = value_end
    return None


def pixel_header(prefix: bytes, spec: PixelSpec) -> tuple[bytes | None, int]:
    """(VR or None if implicit, length) of the PixelData header that ends ``prefix``."""
    end = ">" if spec.big_endian else "<"
    size = len(prefix)
    # An implicit header's bytes -8:-6 are the tag, never a VR: the two forms cannot be confused.
    if size >= 12 and prefix[-8:-6] in LONG_LENGTH_VRS:
        if struct.unpack_from(end + "HH", prefix, size - 12) == (0x7FE0, 0x0010):
            return prefix[-8:-6], struct.unpack_from(end + "I", prefix, size - 4)[0]
    if size >= 8 and struct.unpack_from(end + "HH", prefix, size - 8) == (0x7FE0, 0x0010):
        return None, struct.unpack_from(end + "I", prefix, size - 4)[0]
    raise CorruptRecordError("prefix does not end with a PixelData (7FE0,0010) header")
