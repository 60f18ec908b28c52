"""Split a DICOM file into (header bytes, raw pixel words, trailer bytes) and back.

Three restore modes (see ``ParsedDicom.restore_mode``):

* ``byte-exact``: native syntaxes (Implicit VR LE, Explicit VR LE / BE, and
  headerless datasets).  The frames are the raw PixelData words exactly as
  stored, and ``rebuild_dicom`` gives back the original bytes.
* ``pixel-exact``: lossless compressed syntaxes (RLE, JPEG Lossless, JPEG-LS
  Lossless, JPEG 2000 Lossless, HTJ2K Lossless).  The frames are the decoded
  words; restore re-encodes them (same syntax when an encoder exists and was
  verified to give the same words back, else Explicit VR Little Endian).
* ``verbatim``: everything else (lossy or unknown-to-us compression, layouts
  the integer pixel codec cannot code): the original file is kept as-is.

The exact byte offset of the top-level PixelData value is found by our own
element walker (pydicom stops silently at a truncated element, we must not),
and cross-checked against the offset pydicom recorded while reading.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import struct
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from collections.abc import Iterator
from typing import Any

import numpy as np

from .errors import (
    CorruptRecordError,
    InvalidDicomError,
    LimitExceededError,
    MedcodecError,
    UnsupportedError,
    shown,
)
from .spec import PixelSpec

__all__ = [
    "RESTORE_BYTE_EXACT",
    "RESTORE_PIXEL_EXACT",
    "RESTORE_VERBATIM",
    "DicomLimits",
    "ParsedDicom",
    "parse_dicom",
    "rebuild_dicom",
    "is_dicom",
]

RESTORE_BYTE_EXACT = "byte-exact"
RESTORE_PIXEL_EXACT = "pixel-exact"
RESTORE_VERBATIM = "verbatim"

REENCODE_ORIGINAL_SYNTAX = "original-syntax"
REENCODE_EXPLICIT_VR_LE = "explicit-vr-le"

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

# Decoding / encoding plugins are pinned and tried in this fixed order (never pydicom's
# "whichever works first"), so the same file always yields the same words and bytes.
_DECODING_PLUGINS: dict[str, tuple[str, ...]] = {
    RLE_LOSSLESS: ("pylibjpeg", "pydicom"),
    JPEG_LOSSLESS: ("pylibjpeg",),
    JPEG_LOSSLESS_SV1: ("pylibjpeg",),
    JPEG_LS_LOSSLESS: ("pylibjpeg", "pyjpegls"),
    JPEG_2000_LOSSLESS: ("pylibjpeg",),
    HTJ2K_LOSSLESS: ("pylibjpeg",),
    HTJ2K_LOSSLESS_RPCL: ("pylibjpeg",),
}
_ENCODING_PLUGINS: dict[str, tuple[str, ...]] = {
    RLE_LOSSLESS: ("pylibjpeg", "pydicom"),
    JPEG_LS_LOSSLESS: ("pyjpegls",),
    JPEG_2000_LOSSLESS: ("pylibjpeg",),
}

_PIXEL_DATA = 0x7FE00010
_FLOAT_PIXEL_DATA = 0x7FE00008
_DOUBLE_FLOAT_PIXEL_DATA = 0x7FE00009
_EXTENDED_OFFSET_TABLE = 0x7FE00001
_EXTENDED_OFFSET_TABLE_LENGTHS = 0x7FE00002
_ITEM = 0xFFFEE000
_ITEM_DELIMITER = 0xFFFEE00D
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_UNDEFINED_LENGTH = 0xFFFFFFFF
_SEQUENCE_DELIMITER_ITEM = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_SUBSAMPLED_PHOTOMETRICS = frozenset({"YBR_FULL_422", "YBR_PARTIAL_422", "YBR_PARTIAL_420"})

_DEFER_SIZE = 1 << 16
_LOG = logging.getLogger(__name__)
_UID_TEXT = re.compile(r"[0-9]+(\.[0-9]+)*")


def default_memory_budget() -> int:
    """Bytes one input may use by default: 60% of this machine's physical memory."""
    try:
        return int(0.6 * os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # no sysconf: assume a small machine
        return 4 << 30


@dataclass(frozen=True, kw_only=True)
class DicomLimits:
    """Upper bounds on what a header (or a record) may claim, checked before anything is
    allocated.

    ``memory_bytes``: the budget for one input's working memory (None: 60% of physical
    memory, ``default_memory_budget``); an image is refused when its samples times
    ``bytes_per_sample`` (the measured peak of the work to be done on it, set by the
    caller: ``medcodec.codec.working_bytes_per_sample``) exceed it. ``max_pixel_ratio``:
    decoded pixel bytes per byte of compressed pixel data (a 2 kB file must not claim a
    4000 x 4000 image); None turns the check off. ``seconds``: how long coding one input may
    take (None: no limit; migrate and compress default to 600 s); a cooperative deadline
    (``deadline()``) checked at natural boundaries of the encoder, so it stops an input
    between planes, never inside one (one plane is bounded by the memory budget).
    """

    max_samples: int = 2**31
    max_rows: int = 65535
    max_cols: int = 65535
    max_frames: int = 100_000
    memory_bytes: int | None = None
    bytes_per_sample: int = 0
    max_pixel_ratio: int | None = 10_000
    seconds: float | None = None

    def deadline(self) -> "Deadline":
        """A deadline ``seconds`` from now, for one input's coding."""
        return Deadline(self.seconds)

    def check_memory(self, samples: int, what: str) -> None:
        """Raise LimitExceededError when ``samples`` would need more than the memory budget."""
        need = samples * self.bytes_per_sample
        budget = default_memory_budget() if self.memory_bytes is None else self.memory_bytes
        if need > budget:
            raise LimitExceededError(
                f"{what} of {samples} samples needs about {need / 2**30:.1f} GiB to code, over the memory budget of"
                f" {budget / 2**30:.1f} GiB (raise it with --memory-budget)"
            )


class Deadline:
    """When coding one input must stop (``DicomLimits.seconds``). Cooperative: the encoder
    calls ``check`` at its natural boundaries (between planes, between candidate models and
    colour choices, before verification), which raises LimitExceededError once the time is
    up. ``Deadline(None)`` never expires."""

    __slots__ = ("seconds", "at")

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.at = None if seconds is None else time.monotonic() + seconds

    def check(self, where: str) -> None:
        if self.at is not None and time.monotonic() > self.at:
            raise LimitExceededError(
                f"coding this input took longer than the time limit of {self.seconds:g} s (stopped {where};"
                " raise it with --max-seconds)"
            )


NO_DEADLINE = Deadline(None)


@dataclass(frozen=True, kw_only=True)
class ParsedDicom:
    """A DICOM file split into the bytes around the pixel data and the pixel words.

    ``frames`` has shape (frames, samples, rows, cols), dtype uint8 or uint16 in
    native byte order, and holds the stored words untouched (no masking, no sign
    extension).  ``prefix + <pixel value> + suffix`` is the file.

    In pixel-exact mode the words are what the decoder yields (signed samples as the
    unsigned view of their two's complement word), ``spec.transfer_syntax`` is the
    original syntax and ``spec.photometric`` describes the decoded words: JPEG 2000
    YBR_RCT data decodes to RGB, so the spec says "RGB" while the header keeps YBR_RCT.
    """

    restore_mode: str
    spec: PixelSpec | None
    prefix: bytes
    suffix: bytes
    frames: np.ndarray | None
    extra: bytes
    original: bytes | None
    reencode: str | None
    note: str


# --------------------------------------------------------------------------------------
# Public API


def is_dicom(data: bytes) -> bool:
    """Cheap sniff: 'DICM' at byte 128, or the bytes walk as a headerless dataset."""
    try:
        data = bytes(data)
        if _has_preamble(data):
            return True
        encoding = _guess_headerless_encoding(data)
        if encoding is None:
            return False
        start = _walk_file_meta(data, 0)
        implicit, little = encoding
        ts = _read_meta_transfer_syntax(data, 0, start) if start else None
        if ts in NATIVE_SYNTAXES:
            implicit, little = ts == IMPLICIT_VR_LE, ts != EXPLICIT_VR_BE
        elif ts is not None:
            implicit, little = False, True
        _walk_top_level(data, start, implicit=implicit, little=little)
        return True
    except BaseException as exc:  # a sniff never raises
        if not _caused_by_input(exc):
            raise
        return False


def parse_dicom(
    data: bytes, *, keep_codestream: bool = False, limits: DicomLimits = DicomLimits()
) -> ParsedDicom:
    """Split ``data`` (a whole DICOM file) into header bytes, pixel words and trailer bytes.

    Raises InvalidDicomError (not DICOM, truncated, inconsistent), UnsupportedError
    (unknown transfer syntax) or LimitExceededError (dimensions beyond ``limits``);
    no other exception escapes.
    """
    data = bytes(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _parse(data, keep_codestream=keep_codestream, limits=limits)
    except MedcodecError:
        raise
    except BaseException as exc:  # pydicom / numpy / codec failures never escape raw
        if not _caused_by_input(exc):
            raise
        raise InvalidDicomError(
            f"could not parse DICOM input ({type(exc).__name__}); expected a well-formed DICOM file"
        ) from exc


def rebuild_dicom(parsed: ParsedDicom) -> bytes:
    """Rebuild the file from ``parsed``: the original bytes (byte-exact, verbatim) or a
    file with the same pixel words (pixel-exact)."""
    mode = parsed.restore_mode
    if mode == RESTORE_VERBATIM:
        if parsed.original is None:
            raise CorruptRecordError("verbatim record has no original bytes")
        return parsed.original
    if parsed.spec is None or parsed.frames is None:
        raise CorruptRecordError(f"{mode} record lacks its pixel spec or frames")
    _check_frames(parsed.frames, parsed.spec)
    if mode == RESTORE_BYTE_EXACT:
        return _rebuild_native(parsed)
    if mode == RESTORE_PIXEL_EXACT:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if parsed.reencode == REENCODE_ORIGINAL_SYNTAX:
                    return _rebuild_original_syntax(parsed)
                if parsed.reencode == REENCODE_EXPLICIT_VR_LE:
                    return _rebuild_explicit_vr_le(parsed)
        except MedcodecError:
            raise
        except BaseException as exc:
            if not _caused_by_input(exc):
                raise
            raise CorruptRecordError(
                f"could not rebuild pixel-exact DICOM ({type(exc).__name__})"
            ) from exc
        raise CorruptRecordError(
            f"unknown reencode {shown(parsed.reencode)}; expected"
            f" {REENCODE_ORIGINAL_SYNTAX!r} or {REENCODE_EXPLICIT_VR_LE!r}"
        )
    raise CorruptRecordError(
        f"unknown restore mode {shown(mode)}; expected one of"
        f" {RESTORE_BYTE_EXACT!r}, {RESTORE_PIXEL_EXACT!r}, {RESTORE_VERBATIM!r}"
    )


# --------------------------------------------------------------------------------------
# Structure walking (exact offsets, truncation detection)


@dataclass(frozen=True)
class _Element:
    tag: int
    vr: bytes | None  # None when implicit
    header_start: int
    value_start: int
    value_end: int  # for undefined length: just after the sequence delimiter item
    undefined_length: bool


def _caused_by_input(exc: BaseException) -> bool:
    """True for failures bad input can cause.  Codec extensions written in Rust (pyo3)
    raise PanicException, a BaseException, on malformed codestreams: those count too;
    interrupts, exits and running out of memory do not."""
    return not isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit, MemoryError))


def _has_preamble(data: bytes) -> bool:
    return len(data) >= 132 and data[128:132] == b"DICM"


def _is_letter_vr(vr: bytes) -> bool:
    # Same test pydicom uses to decide an element switched to implicit VR.
    return b"AA" <= vr <= b"ZZ"


def _known_vrs() -> tuple[frozenset[bytes], frozenset[bytes]]:
    from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR

    known = frozenset(str(v).encode("ascii") for v in VR)
    long_length = frozenset(str(v).encode("ascii") for v in EXPLICIT_VR_LENGTH_32)
    return known, long_length


_KNOWN_VRS, _LONG_LENGTH_VRS = _known_vrs()


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
        if vr in _KNOWN_VRS or _is_letter_vr(vr):
            if vr in _LONG_LENGTH_VRS:
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
        if length == _UNDEFINED_LENGTH:
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
    if length == _UNDEFINED_LENGTH:
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


def _walk_file_meta(data: bytes, pos: int) -> int:
    """Skip the group 0002 elements (always explicit VR LE) starting at ``pos``."""
    size = len(data)
    while pos + 4 <= size and struct.unpack_from("<H", data, pos)[0] == 0x0002:
        tag, vr, length, value_start = _read_header(data, pos, implicit=False, little=True)
        pos = _skip_value(data, tag, vr, length, value_start, implicit=False, little=True, depth=0)
    return pos


def _padding_start(data: bytes) -> int:
    """Where the file's trailing zero bytes begin (len(data) when it ends otherwise). Zeros
    read as empty (0000,0000) elements, one per 8 bytes: a file padded with megabytes of
    them must not be walked element by element (it took 18 s for 20 MB)."""
    return len(data.rstrip(b"\0"))


def _walk_top_level(data: bytes, pos: int, *, implicit: bool, little: bool) -> list[_Element]:
    """Walk the top-level dataset to the end of the file; raise if it ends mid-element.
    Trailing zero padding (from a zero tag on, nothing but zeros) ends the walk."""
    elements = []
    size = len(data)
    padding = _padding_start(data)
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
            _Element(tag, vr, pos, value_start, value_end, length == _UNDEFINED_LENGTH)
        )
        pos = value_end
    return elements


def _guess_headerless_encoding(data: bytes) -> tuple[bool, bool] | None:
    """(implicit, little) for data without a preamble that starts like a dataset, else None."""
    if len(data) < 8:
        return None
    group_le = struct.unpack_from("<H", data, 0)[0]
    group_be = struct.unpack_from(">H", data, 0)[0]
    explicit = data[4:6] in _KNOWN_VRS
    if group_le in (0x0002, 0x0008):
        return (not explicit, True)
    if group_be == 0x0008 and explicit:
        return (False, False)
    return None


# --------------------------------------------------------------------------------------
# Parsing


def _parse(data: bytes, *, keep_codestream: bool, limits: DicomLimits) -> ParsedDicom:
    if not data:
        raise InvalidDicomError("not a DICOM file: the input is empty (0 bytes)")
    preamble = _has_preamble(data)
    if not preamble and _guess_headerless_encoding(data) is None:
        raise InvalidDicomError(
            "not a DICOM file: no 'DICM' marker at byte 128 and the first bytes"
            " are not a group 0002/0008 element of a headerless dataset"
        )
    meta_start = 132 if preamble else 0
    try:
        dataset_start = _walk_file_meta(data, meta_start)
        declared_ts = _read_meta_transfer_syntax(data, meta_start, dataset_start)
    except InvalidDicomError as exc:
        raise _headerless_error(exc) if not preamble else exc

    if declared_ts == DEFLATED_EXPLICIT_VR_LE:
        _read_dataset(data, preamble=preamble)  # must at least be readable
        return _verbatim(data, None, "Deflated Explicit VR Little Endian kept verbatim")

    if declared_ts is not None and declared_ts not in NATIVE_SYNTAXES:
        _check_known_syntax(declared_ts)

    # pydicom reads trailing zero padding element by element too: give it the content only,
    # cut at an element boundary found by our own walk (the restore keeps every byte).
    content = data
    if declared_ts is not None and _padding_start(data) < len(data) - 1024:
        try:
            walked = _walk_top_level(data, dataset_start, implicit=declared_ts == IMPLICIT_VR_LE,
                                     little=declared_ts != EXPLICIT_VR_BE)
            content = data[: walked[-1].value_end] if walked else data
        except InvalidDicomError:
            content = data
    ds = _read_dataset(
        content, preamble=preamble, fallback_ts=declared_ts, dataset_start=dataset_start
    )
    implicit, little = ds.original_encoding
    if implicit is None:
        # Nothing after the file meta: pydicom never chose an encoding.
        implicit, little = (declared_ts == IMPLICIT_VR_LE), (declared_ts != EXPLICIT_VR_BE)
    try:
        elements = _walk_top_level(data, dataset_start, implicit=implicit, little=little)
    except InvalidDicomError as exc:
        raise _headerless_error(exc) if not preamble else exc
    pixel = next((e for e in elements if e.tag == _PIXEL_DATA), None)
    if pixel is not None:
        _cross_check_offset(ds, pixel)

    if declared_ts is None:
        ts = IMPLICIT_VR_LE if implicit else (EXPLICIT_VR_LE if little else EXPLICIT_VR_BE)
    else:
        ts = declared_ts

    if pixel is None:
        return _verbatim(data, None, _no_pixel_note(elements))

    if ts in NATIVE_SYNTAXES and not pixel.undefined_length:
        return _parse_native(
            data, ds, pixel, ts, little=little, limits=limits, guessed=declared_ts is None
        )
    if ts in NATIVE_SYNTAXES:
        spec = _lenient_spec(ds, ts, big_endian=not little)
        return _verbatim(
            data, spec, "encapsulated PixelData under a native transfer syntax kept verbatim"
        )
    return _parse_encapsulated(
        data, ds, pixel, ts, keep_codestream=keep_codestream, limits=limits
    )


def _headerless_error(exc: InvalidDicomError) -> InvalidDicomError:
    # Without a preamble a failed walk cannot tell a cut-off dataset from other data.
    return InvalidDicomError(
        f"not a DICOM file: no 'DICM' marker and not a headerless dataset ({exc})"
    )


def _read_meta_transfer_syntax(data: bytes, start: int, end: int) -> str | None:
    pos = start
    while pos < end:
        tag, vr, length, value_start = _read_header(data, pos, implicit=False, little=True)
        value_end = _skip_value(
            data, tag, vr, length, value_start, implicit=False, little=True, depth=0
        )
        if tag == 0x00020010 and length != _UNDEFINED_LENGTH:
            uid = data[value_start:value_end].decode("ascii", errors="replace").strip("\x00 ")
            return uid or None
        pos = value_end
    return None


def _check_known_syntax(uid: str) -> None:
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


def _read_dataset(
    data: bytes, *, preamble: bool, fallback_ts: str | None = None, dataset_start: int = 0
) -> Any:
    """pydicom's reading of the whole file; its failures become InvalidDicomError."""
    import pydicom

    try:
        # Large values (the pixel data above all) stay unread: we slice them from ``data``.
        return pydicom.dcmread(io.BytesIO(data), force=True, defer_size=_DEFER_SIZE)
    except BaseException as exc:
        if not _caused_by_input(exc):
            raise
        # Prefer a precise "truncated" message when our walker can find the cut.
        if fallback_ts is not None and fallback_ts != DEFLATED_EXPLICIT_VR_LE:
            _walk_top_level(
                data,
                dataset_start,
                implicit=fallback_ts == IMPLICIT_VR_LE,
                little=fallback_ts != EXPLICIT_VR_BE,
            )
        if not preamble:
            raise InvalidDicomError(
                f"not a DICOM file: no 'DICM' marker and pydicom cannot read it as a headerless"
                f" dataset ({type(exc).__name__})"
            ) from exc
        raise InvalidDicomError(
            f"unreadable DICOM file: pydicom failed with {type(exc).__name__}; expected a"
            " well-formed dataset"
        ) from exc


def _cross_check_offset(ds: Any, pixel: _Element) -> None:
    try:
        raw = ds.get_item(_PIXEL_DATA)
    except BaseException as exc:
        if not _caused_by_input(exc):
            raise
        return
    value_tell = getattr(raw, "value_tell", None)
    if value_tell is not None and value_tell != pixel.value_start:
        raise InvalidDicomError(
            f"malformed DICOM: PixelData value found at byte {pixel.value_start} by the"
            f" element walk but at byte {value_tell} by pydicom"
        )


def _no_pixel_note(elements: list[_Element]) -> str:
    tags = {e.tag for e in elements}
    if _FLOAT_PIXEL_DATA in tags:
        return "Float Pixel Data kept verbatim"
    if _DOUBLE_FLOAT_PIXEL_DATA in tags:
        return "Double Float Pixel Data kept verbatim"
    return "no top-level PixelData; kept verbatim"


def _verbatim(data: bytes, spec: PixelSpec | None, note: str) -> ParsedDicom:
    return ParsedDicom(
        restore_mode=RESTORE_VERBATIM,
        spec=spec,
        prefix=b"",
        suffix=b"",
        frames=None,
        extra=b"",
        original=data,
        reencode=None,
        note=note,
    )


# ---- header attributes


def _int_attr(ds: Any, keyword: str, default: int | None) -> int | None:
    """Integer value of a header attribute; ``default`` when absent or empty."""
    value = ds.get(keyword)
    if value is None or (isinstance(value, (str, bytes)) and not value.strip()):
        return default
    if not isinstance(value, (int, str, bytes)):
        if hasattr(value, "__len__") and len(value) == 0:
            return default
        raise InvalidDicomError(
            f"{keyword} must hold a single integer, found {type(value).__name__}"
        )
    try:
        return int(value.strip() if isinstance(value, (str, bytes)) else value)
    except ValueError:  # the value itself is never quoted: a broken writer may put a name there
        raise InvalidDicomError(
            f"{keyword} is not an integer (a {len(value)}-character value); expected a decimal integer"
        ) from None


@dataclass(frozen=True)
class _Geometry:
    rows: int
    cols: int
    frames: int
    samples: int
    bits_allocated: int
    bits_stored: int
    high_bit: int
    pixel_representation: int
    photometric: str
    planar_configuration: int


def _geometry(ds: Any) -> _Geometry:
    """Read and check the Image Pixel attributes; InvalidDicomError when unusable."""
    rows = _int_attr(ds, "Rows", None)
    cols = _int_attr(ds, "Columns", None)
    if not rows or not cols or rows < 0 or cols < 0:
        raise InvalidDicomError(
            f"PixelData present but Rows={rows} Columns={cols}; both must be positive integers"
        )
    frames = _int_attr(ds, "NumberOfFrames", 1)
    if frames is None or frames < 1:
        raise InvalidDicomError(f"NumberOfFrames {frames} is invalid; expected an integer >= 1")
    samples = _int_attr(ds, "SamplesPerPixel", 1)
    if samples is None or samples < 1:
        raise InvalidDicomError(f"SamplesPerPixel {samples} is invalid; expected an integer >= 1")
    bits_allocated = _int_attr(ds, "BitsAllocated", None)
    if not bits_allocated or bits_allocated < 1:
        raise InvalidDicomError(
            f"PixelData present but BitsAllocated is {bits_allocated}; expected a positive integer"
        )
    bits_stored = _int_attr(ds, "BitsStored", bits_allocated)
    high_bit = _int_attr(ds, "HighBit", bits_stored - 1)
    pixel_representation = _int_attr(ds, "PixelRepresentation", 0)
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip()
    if not photometric:
        photometric = "MONOCHROME2" if samples == 1 else "RGB"
    planar = _int_attr(ds, "PlanarConfiguration", 0) if samples > 1 else 0
    return _Geometry(
        rows, cols, frames, samples, bits_allocated, bits_stored, high_bit,
        pixel_representation, photometric, planar,
    )


def _check_limits(geo: _Geometry, limits: DicomLimits) -> None:
    for name, value, field, limit in (
        ("Rows", geo.rows, "max_rows", limits.max_rows),
        ("Columns", geo.cols, "max_cols", limits.max_cols),
        ("NumberOfFrames", geo.frames, "max_frames", limits.max_frames),
    ):
        if value > limit:
            raise LimitExceededError(f"{name} {value} exceeds the limit {field}={limit}")
    total = geo.rows * geo.cols * geo.frames * geo.samples
    if total > limits.max_samples:
        raise LimitExceededError(
            f"rows*cols*frames*samples = {total} exceeds the limit max_samples={limits.max_samples}"
        )
    limits.check_memory(total, "an image")


def _check_ratio(geo: _Geometry, compressed_bytes: int, limits: DicomLimits) -> None:
    """Refuse compressed pixel data that claims far more pixels than its size can hold."""
    if limits.max_pixel_ratio is None:
        return
    decoded = geo.rows * geo.cols * geo.frames * geo.samples * max(1, geo.bits_allocated // 8)
    if decoded > limits.max_pixel_ratio * max(compressed_bytes, 1):
        raise LimitExceededError(
            f"{compressed_bytes} bytes of compressed pixel data claim {decoded} bytes of pixels, over the"
            f" limit of {limits.max_pixel_ratio}:1"
        )


def _spec(
    geo: _Geometry, ts: str, *, big_endian: bool, photometric: str | None = None
) -> PixelSpec:
    return PixelSpec(
        rows=geo.rows,
        cols=geo.cols,
        frames=geo.frames,
        samples=geo.samples,
        bits_allocated=geo.bits_allocated,
        bits_stored=geo.bits_stored,
        high_bit=geo.high_bit,
        pixel_representation=geo.pixel_representation,
        photometric=photometric or geo.photometric,
        planar_configuration=geo.planar_configuration,
        transfer_syntax=ts,
        big_endian=big_endian,
    )


def _lenient_spec(ds: Any, ts: str, *, big_endian: bool) -> PixelSpec | None:
    """Best-effort description for verbatim records; None when the header cannot give one."""
    try:
        return _spec(_geometry(ds), ts, big_endian=big_endian)
    except BaseException as exc:
        if not _caused_by_input(exc):
            raise
        return None


def _uncodable_reason(geo: _Geometry) -> str | None:
    """Why the integer pixel codec cannot take this layout (None if it can)."""
    if geo.bits_allocated not in (8, 16):
        return f"BitsAllocated {geo.bits_allocated} (pixel codec needs 8 or 16)"
    if geo.photometric in _SUBSAMPLED_PHOTOMETRICS:
        return f"subsampled photometric {geo.photometric}"
    if geo.pixel_representation not in (0, 1):
        return f"PixelRepresentation {geo.pixel_representation} (expected 0 or 1)"
    if geo.samples > 1 and geo.planar_configuration not in (0, 1):
        return f"PlanarConfiguration {geo.planar_configuration} (expected 0 or 1)"
    probe = _spec(geo, EXPLICIT_VR_LE, big_endian=False)
    try:
        probe.validate_for_coding()
    except UnsupportedError as exc:
        return str(exc)
    return None


def _packed_length(geo: _Geometry) -> int:
    """Bytes a native PixelData value needs for all frames (before the pad byte)."""
    total_samples = geo.rows * geo.cols * geo.frames * geo.samples
    if geo.photometric == "YBR_FULL_422" and geo.samples == 3:
        total_samples = total_samples * 2 // 3
    return (total_samples * geo.bits_allocated + 7) // 8


# ---- native syntaxes


def _parse_native(
    data: bytes, ds: Any, pixel: _Element, ts: str, *, little: bool, limits: DicomLimits,
    guessed: bool,
) -> ParsedDicom:
    geo = _geometry(ds)
    _check_limits(geo, limits)
    value_length = pixel.value_end - pixel.value_start
    needed = _packed_length(geo)
    if value_length < needed:
        raise InvalidDicomError(
            f"truncated PixelData: header claims {geo.frames} frame(s) of {geo.rows}x{geo.cols}"
            f"x{geo.samples} at {geo.bits_allocated} bits ({needed} bytes) but the value"
            f" holds {value_length} bytes"
        )
    reason = _uncodable_reason(geo)
    if reason is None and pixel.vr is not None and pixel.vr not in _LONG_LENGTH_VRS:
        reason = f"PixelData with VR {pixel.vr.decode('ascii', 'replace')!r} (expected OB/OW)"
    if reason is not None:
        return _verbatim(data, _spec(geo, ts, big_endian=not little), f"{reason}; kept verbatim")

    spec = _spec(geo, ts, big_endian=not little)
    value = data[pixel.value_start : pixel.value_end]
    if _needs_ow_swap(spec, pixel.vr):
        value = _swap_pairs(value)
    frames = _words_from_native(value[:needed], spec)
    prefix = data[: pixel.value_start]
    try:  # rebuild reads the header back from the prefix: make sure it will
        readable = _pixel_header(prefix, spec) == (pixel.vr, value_length)
    except CorruptRecordError:
        readable = False
    if not readable:
        return _verbatim(data, spec, "PixelData header not recognisable on rebuild; kept verbatim")
    return ParsedDicom(
        restore_mode=RESTORE_BYTE_EXACT,
        spec=spec,
        prefix=prefix,
        suffix=data[pixel.value_end :],
        frames=frames,
        extra=value[needed:],
        original=None,
        reencode=None,
        note=f"native {_syntax_name(ts)}"
        + (" (no transfer syntax in file meta)" if guessed else ""),
    )


def _needs_ow_swap(spec: PixelSpec, vr: bytes | None) -> bool:
    # Explicit VR Big Endian stores 8-bit pixels as OW: each pair of bytes is swapped.
    return spec.big_endian and spec.bits_allocated == 8 and vr == b"OW"


def _swap_pairs(value: bytes) -> bytes:
    even = len(value) - len(value) % 2
    swapped = np.frombuffer(value, dtype=np.uint8, count=even).reshape(-1, 2)[:, ::-1].tobytes()
    return swapped + value[even:]


def _word_dtype(spec: PixelSpec) -> np.dtype:
    if spec.bits_allocated == 8:
        return np.dtype(np.uint8)
    return np.dtype(">u2" if spec.big_endian else "<u2")


def _words_from_native(raw: bytes, spec: PixelSpec) -> np.ndarray:
    """(frames, samples, rows, cols) native-order words from the stored bytes."""
    words = np.frombuffer(raw, dtype=_word_dtype(spec))
    words = words.astype(np.uint8 if spec.bits_allocated == 8 else np.uint16, copy=True)
    if spec.samples > 1 and spec.planar_configuration == 0:
        words = words.reshape(spec.frames, spec.rows, spec.cols, spec.samples).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(words.reshape(spec.frames, spec.samples, spec.rows, spec.cols))


def _native_bytes(frames: np.ndarray, spec: PixelSpec, *, big_endian: bool) -> bytes:
    """Inverse of ``_words_from_native`` (stored layout, stored byte order)."""
    words = frames
    if spec.samples > 1 and spec.planar_configuration == 0:
        words = words.transpose(0, 2, 3, 1)
    if spec.bits_allocated == 8:
        dtype = np.dtype(np.uint8)
    else:
        dtype = np.dtype(">u2" if big_endian else "<u2")
    return np.ascontiguousarray(words).astype(dtype, copy=False).tobytes()


def _rebuild_native(parsed: ParsedDicom) -> bytes:
    spec = parsed.spec
    assert spec is not None and parsed.frames is not None
    value = _native_bytes(parsed.frames, spec, big_endian=spec.big_endian) + parsed.extra
    vr, length = _pixel_header(parsed.prefix, spec)
    if length != len(value):
        raise CorruptRecordError(
            f"PixelData header declares {length} bytes but frames+extra give {len(value)}"
        )
    if _needs_ow_swap(spec, vr):
        value = _swap_pairs(value)
    return parsed.prefix + value + parsed.suffix


def _pixel_header(prefix: bytes, spec: PixelSpec) -> tuple[bytes | None, int]:
    """(VR or None if implicit, length) of the PixelData header that ends ``prefix``."""
    end = ">" if spec.big_endian else "<"
    size = len(prefix)
    # An implicit header's bytes -8:-6 are the tag, never a VR: the two forms cannot be confused.
    if size >= 12 and prefix[-8:-6] in _LONG_LENGTH_VRS:
        if struct.unpack_from(end + "HH", prefix, size - 12) == (0x7FE0, 0x0010):
            return prefix[-8:-6], struct.unpack_from(end + "I", prefix, size - 4)[0]
    if size >= 8 and struct.unpack_from(end + "HH", prefix, size - 8) == (0x7FE0, 0x0010):
        return None, struct.unpack_from(end + "I", prefix, size - 4)[0]
    raise CorruptRecordError("prefix does not end with a PixelData (7FE0,0010) header")


def _check_frames(frames: np.ndarray, spec: PixelSpec) -> None:
    shape = (spec.frames, spec.samples, spec.rows, spec.cols)
    dtype = np.uint8 if spec.bits_allocated == 8 else np.uint16
    if frames.shape != shape or frames.dtype != dtype:
        raise CorruptRecordError(
            f"frames have shape {frames.shape} dtype {frames.dtype};"
            f" the spec needs {shape} {np.dtype(dtype)}"
        )


def _syntax_name(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name
    return name if name and name != uid else uid


# ---- encapsulated syntaxes


def _parse_encapsulated(
    data: bytes, ds: Any, pixel: _Element, ts: str, *, keep_codestream: bool, limits: DicomLimits
) -> ParsedDicom:
    if not pixel.undefined_length:
        spec = _lenient_spec(ds, ts, big_endian=False)
        note = f"{_syntax_name(ts)} with non-encapsulated PixelData kept verbatim"
        return _verbatim(data, spec, note)
    if ts not in LOSSLESS_ENCAPSULATED_SYNTAXES:
        spec = _lenient_spec(ds, ts, big_endian=False)
        note = f"lossy or unsupported compression {_syntax_name(ts)} kept verbatim"
        return _verbatim(data, spec, note)
    if keep_codestream:
        spec = _lenient_spec(ds, ts, big_endian=False)
        note = f"{_syntax_name(ts)} codestream kept verbatim (keep_codestream)"
        return _verbatim(data, spec, note)

    geo = _geometry(ds)
    _check_limits(geo, limits)
    reason = _uncodable_reason(geo)
    if reason is not None:
        return _verbatim(data, _spec(geo, ts, big_endian=False), f"{reason}; kept verbatim")
    _check_ratio(geo, pixel.value_end - pixel.value_start, limits)

    prefix = data[: pixel.value_start]
    suffix = data[pixel.value_end :]
    try:
        header = _header_dataset(prefix, suffix)
        params = _coding_params(header, ts)
    except MedcodecError:
        raise
    except BaseException as exc:
        if not _caused_by_input(exc):
            raise
        return _verbatim(data, _spec(geo, ts, big_endian=False),
                         f"header not reusable for restore ({type(exc).__name__}); kept verbatim")

    encapsulated = data[pixel.value_start : pixel.value_end - 8]  # without the delimiter item
    try:
        words, photometric = _decode_encapsulated(encapsulated, params)
    except _FrameCountError as exc:
        raise InvalidDicomError(str(exc)) from None
    except _KeepVerbatim as exc:
        return _verbatim(data, _spec(geo, ts, big_endian=False), f"{exc}; kept verbatim")

    spec = _spec(geo, ts, big_endian=False, photometric=photometric)
    reencode, why = _choose_reencode(words, params, header)
    if reencode is None:
        return _verbatim(data, spec, f"{why}; kept verbatim")
    return ParsedDicom(
        restore_mode=RESTORE_PIXEL_EXACT,
        spec=spec,
        prefix=prefix,
        suffix=suffix,
        frames=words,
        extra=b"",
        original=None,
        reencode=reencode,
        note=f"{_syntax_name(ts)} decoded; restore {reencode} ({why})",
    )


class _KeepVerbatim(Exception):
    """Internal: the pixel data cannot be taken apart safely; keep the file as-is."""


class _FrameCountError(Exception):
    """Internal: the encapsulated data holds fewer frames than the header claims."""


@dataclass(frozen=True)
class _CodingParams:
    ts: str
    rows: int
    cols: int
    frames: int
    samples: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric: str
    planar_configuration: int
    has_bot: bool
    extended_offsets: tuple[bytes, bytes] | None

    def options(self, *, frames: int | None = None) -> dict[str, Any]:
        return dict(
            rows=self.rows,
            columns=self.cols,
            number_of_frames=self.frames if frames is None else frames,
            samples_per_pixel=self.samples,
            bits_allocated=self.bits_allocated,
            bits_stored=self.bits_stored,
            pixel_representation=self.pixel_representation,
            photometric_interpretation=self.photometric,
            planar_configuration=self.planar_configuration,
        )


_MINIMAL_ENCAPSULATED = b"\xfe\xff\x00\xe0\x00\x00\x00\x00\xfe\xff\xdd\xe0\x00\x00\x00\x00"


def _header_dataset(prefix: bytes, suffix: bytes) -> Any:
    """The dataset of ``prefix + <empty encapsulated value> + suffix`` (header only)."""
    import pydicom

    content = suffix[: _padding_start(suffix)]
    if len(content) < len(suffix) - 1024:  # megabytes of trailing zeros: read without them if that works
        try:
            return pydicom.dcmread(io.BytesIO(prefix + _MINIMAL_ENCAPSULATED + content), force=True)
        except Exception:  # noqa: BLE001 - the cut fell inside an element: read everything
            pass
    return pydicom.dcmread(io.BytesIO(prefix + _MINIMAL_ENCAPSULATED + suffix), force=True)


def _coding_params(header: Any, ts: str) -> _CodingParams:
    geo = _geometry(header)
    extended = None
    if _EXTENDED_OFFSET_TABLE in header and _EXTENDED_OFFSET_TABLE_LENGTHS in header:
        extended = (
            bytes(header[_EXTENDED_OFFSET_TABLE].value),
            bytes(header[_EXTENDED_OFFSET_TABLE_LENGTHS].value),
        )
    return _CodingParams(
        ts=ts,
        rows=geo.rows,
        cols=geo.cols,
        frames=geo.frames,
        samples=geo.samples,
        bits_allocated=geo.bits_allocated,
        bits_stored=geo.bits_stored,
        pixel_representation=geo.pixel_representation,
        photometric=geo.photometric,
        planar_configuration=geo.planar_configuration,
        # A Basic Offset Table is only needed to find frames; single frames go without.
        has_bot=geo.frames > 1,
        extended_offsets=extended,
    )


@contextlib.contextmanager
def native_stderr_captured() -> Iterator[None]:
    """Keep what native code writes straight to file descriptor 2 off the user's stderr.

    The decoding plugins are native (the RLE plugin is Rust): on hostile input a panic
    prints its message, and with RUST_BACKTRACE set a backtrace of some 80 lines, to fd 2
    before it reaches Python as an exception that we report in one line. Output written
    inside this block goes to a temporary file and to this module's logger at DEBUG. It
    is process-wide: another thread's stderr output in the same moment is logged too.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (an embedded interpreter): nothing to guard
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read(1 << 16)
            if text:
                _LOG.debug("a decoding plugin wrote %d bytes to stderr: %s", len(text),
                           text.decode("utf-8", "replace").splitlines()[0][:200])


def _decode_encapsulated(encapsulated: bytes, params: _CodingParams) -> tuple[np.ndarray, str]:
    """Every frame decoded to raw words (frames, samples, rows, cols), and the photometric
    interpretation of the decoded words."""
    from pydicom.pixels import get_decoder

    decoder = get_decoder(params.ts)
    plugins = [p for p in _DECODING_PLUGINS[params.ts] if p in decoder.available_plugins]
    if not plugins:
        raise _KeepVerbatim(f"no decoder installed for {_syntax_name(params.ts)}")
    failures = []
    for plugin in plugins:
        try:
            with native_stderr_captured():
                return _decode_with(decoder, plugin, encapsulated, params)
        except (_KeepVerbatim, _FrameCountError):
            raise
        except BaseException as exc:
            if not _caused_by_input(exc):
                raise
            failures.append(f"{plugin}: {type(exc).__name__}")
    raise _KeepVerbatim(f"decoding failed ({', '.join(failures)})")


def _decode_with(
    decoder: Any, plugin: str, encapsulated: bytes, params: _CodingParams
) -> tuple[np.ndarray, str]:
    target = np.dtype(np.uint8 if params.bits_allocated == 8 else np.uint16)
    signed_target = np.dtype(np.int8 if params.bits_allocated == 8 else np.int16)
    out = np.empty((params.frames, params.samples, params.rows, params.cols), dtype=target)
    options = params.options()
    if params.extended_offsets is not None:
        options["extended_offsets"] = params.extended_offsets
    photometric = params.photometric
    count = 0
    for arr, props in decoder.iter_array(
        encapsulated,
        raw=True,
        decoding_plugin=plugin,
        correct_unused_bits=False,  # keep bits above BitsStored exactly as coded
        allow_excess_frames=True,
        **options,
    ):
        if count >= params.frames:
            raise _KeepVerbatim(
                f"encapsulated data holds more frames than NumberOfFrames {params.frames}"
            )
        if arr.dtype.kind not in "ui":
            raise _KeepVerbatim(f"decoder returned {arr.dtype} samples")
        if arr.dtype.itemsize > target.itemsize:
            info = np.iinfo(signed_target if arr.dtype.kind == "i" else target)
            if arr.size and (arr.min() < info.min or arr.max() > info.max):
                raise _KeepVerbatim(
                    f"decoded samples exceed BitsAllocated {params.bits_allocated}"
                )
        # Value-preserving cast into the word container, then the unsigned view of it.
        if arr.dtype.kind == "i":
            arr = arr.astype(signed_target, copy=False).view(target)
        else:
            arr = arr.astype(target, copy=False)
        if params.samples == 1:
            arr = arr.reshape(1, params.rows, params.cols)
        else:
            arr = arr.reshape(params.rows, params.cols, params.samples).transpose(2, 0, 1)
        out[count] = arr
        photometric = str(props.get("photometric_interpretation", photometric))
        count += 1
    if count < params.frames:
        raise _FrameCountError(
            f"header claims {params.frames} frames but the encapsulated PixelData holds {count}"
        )
    return out, photometric


def _signed_view(frame: np.ndarray, params: _CodingParams) -> np.ndarray:
    if params.pixel_representation == 1:
        return frame.view(np.int8 if params.bits_allocated == 8 else np.int16)
    return frame


def _encode_frames(words: np.ndarray, params: _CodingParams) -> list[bytes]:
    """Encode every frame with pydicom's encoder for ``params.ts`` (pinned plugin)."""
    from pydicom.pixels import get_encoder

    encoder = get_encoder(params.ts)
    plugin = next(p for p in _ENCODING_PLUGINS[params.ts] if p in encoder.available_plugins)
    encoded = []
    for frame in words:
        interleaved = np.ascontiguousarray(frame.transpose(1, 2, 0))  # (rows, cols, samples)
        if params.ts == RLE_LOSSLESS:
            # RLE codes whole bytes: give it the full words, so bits above BitsStored survive.
            options = params.options(frames=1)
            options.update(
                bits_stored=params.bits_allocated,
                pixel_representation=0,
                photometric_interpretation="MONOCHROME2" if params.samples == 1 else "RGB",
                planar_configuration=0,
            )
            src = interleaved.astype(interleaved.dtype.newbyteorder("<"), copy=False).tobytes()
            encoded.append(
                encoder.encode(src, validate=False, encoding_plugin=plugin, **options)
            )
            continue
        arr = _signed_view(interleaved, params)
        if params.samples == 1:
            arr = arr[:, :, 0]
        options = params.options(frames=1)
        options["planar_configuration"] = params.planar_configuration
        encoded.append(encoder.encode(arr, encoding_plugin=plugin, **options))
    return encoded


def _encapsulate(encoded: list[bytes], has_bot: bool) -> bytes:
    """The whole encapsulated PixelData value: BOT item, one fragment per frame, delimiter."""
    from pydicom.encaps import encapsulate

    return encapsulate(encoded, has_bot=has_bot) + _SEQUENCE_DELIMITER_ITEM


def _choose_reencode(
    words: np.ndarray, params: _CodingParams, header: Any
) -> tuple[str | None, str]:
    """(reencode mode or None for verbatim, reason)."""
    from pydicom.pixels import get_encoder

    original_reason = None
    if params.ts not in _ENCODING_PLUGINS:
        original_reason = "no encoder for this syntax"
    elif params.extended_offsets is not None:
        original_reason = "Extended Offset Table in the header would not match new fragments"
    else:
        try:
            encoder = get_encoder(params.ts)
            available = encoder.is_available and any(
                p in encoder.available_plugins for p in _ENCODING_PLUGINS[params.ts]
            )
        except BaseException as exc:
            if not _caused_by_input(exc):
                raise
            available = False
        if not available:
            original_reason = "encoder not installed"
    if original_reason is None:
        try:
            with _pydicom_logging_muted():  # a failed trial encode is an expected outcome
                encoded = _encode_frames(words, params)
            again, _ = _decode_encapsulated(_encapsulate(encoded, params.has_bot), params)
            if np.array_equal(again, words):
                return REENCODE_ORIGINAL_SYNTAX, "re-encoding verified to give the same words"
            original_reason = "re-encoding did not give the same words back"
        except BaseException as exc:
            if not _caused_by_input(exc):
                raise
            original_reason = f"re-encoding failed ({type(exc).__name__})"
    try:
        _write_explicit_vr_le(header, None, params)  # dry run: the header must be writable
    except BaseException as exc:
        if not _caused_by_input(exc):
            raise
        why = f"header not writable as Explicit VR LE ({type(exc).__name__})"
        return None, f"{original_reason}; {why}"
    return REENCODE_EXPLICIT_VR_LE, original_reason


@contextlib.contextmanager
def _pydicom_logging_muted() -> Iterator[None]:
    """pydicom logs a traceback for every plugin that fails to encode; a trial is allowed to."""
    logger = logging.getLogger("pydicom")
    was_disabled = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = was_disabled


def _params_from_parsed(parsed: ParsedDicom) -> tuple[Any, _CodingParams]:
    spec = parsed.spec
    assert spec is not None
    header = _header_dataset(parsed.prefix, parsed.suffix)
    return header, _coding_params(header, spec.transfer_syntax)


def _rebuild_original_syntax(parsed: ParsedDicom) -> bytes:
    _, params = _params_from_parsed(parsed)
    assert parsed.frames is not None
    encoded = _encode_frames(parsed.frames, params)
    return parsed.prefix + _encapsulate(encoded, params.has_bot) + parsed.suffix


def _rebuild_explicit_vr_le(parsed: ParsedDicom) -> bytes:
    header, params = _params_from_parsed(parsed)
    return _write_explicit_vr_le(header, parsed, params)


def _write_explicit_vr_le(header: Any, parsed: ParsedDicom | None, params: _CodingParams) -> bytes:
    """Write ``header`` as Explicit VR LE with native PixelData (empty for a dry run)."""
    from pydicom.filewriter import dcmwrite
    from pydicom.uid import ExplicitVRLittleEndian

    if parsed is not None:
        assert parsed.spec is not None and parsed.frames is not None
        spec = parsed.spec
        value = _native_bytes(parsed.frames, spec, big_endian=False)
        photometric = spec.photometric
    else:
        value = b""
        photometric = params.photometric
    for tag in (_EXTENDED_OFFSET_TABLE, _EXTENDED_OFFSET_TABLE_LENGTHS):
        if tag in header:
            del header[tag]
    header.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if photometric != params.photometric:
        header.PhotometricInterpretation = photometric  # e.g. YBR_RCT decodes to RGB
    header.PixelData = value
    header["PixelData"].VR = "OB" if params.bits_allocated == 8 else "OW"
    out = io.BytesIO()
    dcmwrite(out, header, enforce_file_format=True, implicit_vr=False, little_endian=True)
    return out.getvalue()
