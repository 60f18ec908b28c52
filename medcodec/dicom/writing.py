"""A file back from its split (``rebuild_dicom``), and the choice, made while reading, of how a
pixel-exact file will be written back (``choose_reencode``)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from ..errors import CorruptRecordError, MedcodecError, shown
from .elements import pixel_header
from .encapsulation import (
    Encapsulation,
    decode_frames,
    encapsulate,
    encapsulation_of,
    encode_frames,
    encoder_available,
    has_encoder,
    header_dataset,
)
from .limits import caused_by_input
from .parsed import (
    REENCODE_EXPLICIT_VR_LE,
    REENCODE_ORIGINAL_SYNTAX,
    RESTORE_BYTE_EXACT,
    RESTORE_PIXEL_EXACT,
    RESTORE_VERBATIM,
    ParsedDicom,
)
from .pixel_words import check_frames, native_bytes, needs_ow_swap, swap_pairs
from .quiet import quiet_pydicom
from .syntaxes import EXTENDED_OFFSET_TABLE, EXTENDED_OFFSET_TABLE_LENGTHS


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
    check_frames(parsed.frames, parsed.spec)
    if mode == RESTORE_BYTE_EXACT:
        return _rebuild_native(parsed)
    if mode == RESTORE_PIXEL_EXACT:
        try:
            with quiet_pydicom():
                if parsed.reencode == REENCODE_ORIGINAL_SYNTAX:
                    return _rebuild_original_syntax(parsed)
                if parsed.reencode == REENCODE_EXPLICIT_VR_LE:
                    return _rebuild_explicit_vr_le(parsed)
        except MedcodecError:
            raise
        except BaseException as exc:
            if not caused_by_input(exc):
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


def _rebuild_native(parsed: ParsedDicom) -> bytes:
    spec = parsed.spec
    assert spec is not None and parsed.frames is not None
    value = native_bytes(parsed.frames, spec, big_endian=spec.big_endian) + parsed.extra
    vr, length = pixel_header(parsed.prefix, spec)
    if length != len(value):
        raise CorruptRecordError(
            f"PixelData header declares {length} bytes but frames+extra give {len(value)}"
        )
    if needs_ow_swap(spec, vr):
        value = swap_pairs(value)
    return parsed.prefix + value + parsed.suffix


def choose_reencode(words: np.ndarray, enc: Encapsulation, header: Any) -> tuple[str | None, str]:
    """(reencode mode or None for verbatim, reason)."""
    ts = enc.spec.transfer_syntax
    original_reason = None
    if not has_encoder(ts):
        original_reason = "no encoder for this syntax"
    elif enc.extended_offsets is not None:
        original_reason = "Extended Offset Table in the header would not match new fragments"
    else:
        try:
            available = encoder_available(ts)
        except BaseException as exc:
            if not caused_by_input(exc):
                raise
            available = False
        if not available:
            original_reason = "encoder not installed"
    if original_reason is None:
        try:
            encoded = encode_frames(words, enc)  # may fail: parse_dicom keeps pydicom quiet about it
            again, _ = decode_frames(encapsulate(encoded, enc.has_bot), enc)
            if np.array_equal(again, words):
                return REENCODE_ORIGINAL_SYNTAX, "re-encoding verified to give the same words"
            original_reason = "re-encoding did not give the same words back"
        except BaseException as exc:
            if not caused_by_input(exc):
                raise
            original_reason = f"re-encoding failed ({type(exc).__name__})"
    try:
        _write_explicit_vr_le(header, None, enc)  # dry run: the header must be writable
    except BaseException as exc:
        if not caused_by_input(exc):
            raise
        why = f"header not writable as Explicit VR LE ({type(exc).__name__})"
        return None, f"{original_reason}; {why}"
    return REENCODE_EXPLICIT_VR_LE, original_reason


def _encapsulation_from_parsed(parsed: ParsedDicom) -> tuple[Any, Encapsulation]:
    spec = parsed.spec
    assert spec is not None
    header = header_dataset(parsed.prefix, parsed.suffix)
    return header, encapsulation_of(header, spec.transfer_syntax)


def _rebuild_original_syntax(parsed: ParsedDicom) -> bytes:
    _, enc = _encapsulation_from_parsed(parsed)
    assert parsed.frames is not None
    encoded = encode_frames(parsed.frames, enc)
    return parsed.prefix + encapsulate(encoded, enc.has_bot) + parsed.suffix


def _rebuild_explicit_vr_le(parsed: ParsedDicom) -> bytes:
    header, enc = _encapsulation_from_parsed(parsed)
    return _write_explicit_vr_le(header, parsed, enc)


def _write_explicit_vr_le(header: Any, parsed: ParsedDicom | None, enc: Encapsulation) -> bytes:
    """Write ``header`` as Explicit VR LE with native PixelData (empty for a dry run)."""
    from pydicom.filewriter import dcmwrite
    from pydicom.uid import ExplicitVRLittleEndian

    if parsed is not None:
        assert parsed.spec is not None and parsed.frames is not None
        spec = parsed.spec
        value = native_bytes(parsed.frames, spec, big_endian=False)
        photometric = spec.photometric
    else:
        value = b""
        photometric = enc.spec.photometric
    for tag in (EXTENDED_OFFSET_TABLE, EXTENDED_OFFSET_TABLE_LENGTHS):
        if tag in header:
            del header[tag]
    header.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if photometric != enc.spec.photometric:
        header.PhotometricInterpretation = photometric  # e.g. YBR_RCT decodes to RGB
    header.PixelData = value
    header["PixelData"].VR = "OB" if enc.spec.bits_allocated == 8 else "OW"
    out = io.BytesIO()
    dcmwrite(out, header, enforce_file_format=True, implicit_vr=False, little_endian=True)
    return out.getvalue()



def write_part10_explicit_le(ds: Any) -> bytes | None:
    """``ds.save_as(buffer, enforce_file_format=True)`` for a dataset whose file meta names
    Explicit VR Little Endian and that was read in that encoding with its character set
    unchanged, the same bytes: pydicom's steps (the file meta completed and checked by
    pydicom, ``_file_meta_bytes``), with each element pydicom holds as read (a
    ``RawDataElement`` of a plain VR and defined length), a converted value of the
    simplest kinds (``_simple_value``), a bytes-valued native Pixel Data and the
    sequences whose items are such datasets written here directly, in pydicom's layout,
    rather than through ``write_data_element`` (10 us an element: most of the time
    sealing spent writing the de-identified file). Every other element is written by
    pydicom. None where the dataset is not such a dataset: write it with ``save_as``."""
    from pydicom.charset import default_encoding
    from pydicom.uid import ExplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    preamble = getattr(ds, "preamble", None) or b"\x00" * 128
    if (meta is None or meta.get("TransferSyntaxUID") != ExplicitVRLittleEndian or len(preamble) != 128
            or not _as_read(ds) or any(tag >> 16 in (0, 2) for tag in ds._dict)):
        return None
    if "PixelData" in ds:
        ds["PixelData"].is_undefined_length = False  # a native transfer syntax
    parts = [preamble, b"DICM", _file_meta_bytes(meta, ds)]
    _write_dataset_le(ds, default_encoding, parts)
    return b"".join(parts)


def _file_meta_bytes(meta: Any, ds: Any) -> bytes:
    """The file meta ``dcmwrite(..., enforce_file_format=True)`` writes for ``ds``: its
    ``meta`` completed with the media storage UIDs ``ds`` states and checked by pydicom's
    ``validate_file_meta``, then written as ``write_file_meta_info`` writes it, the group
    length first. dcmwrite completes a deep copy of ``meta``; a meta read in Explicit VR
    Little Endian (or made in memory) is completed on a copy of its element dict instead,
    every converted element copied (pydicom sets values in place), and its elements are
    written by ``_write_dataset_le``. Any other meta is pydicom's to write."""
    import struct
    from copy import copy, deepcopy

    from pydicom.charset import default_encoding
    from pydicom.dataelem import DataElement
    from pydicom.dataset import FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import validate_file_meta, write_file_meta_info

    encoding = tuple(meta.original_encoding)
    direct = encoding == (False, True) or (
        encoding == (None, None) and all(isinstance(e, DataElement) for e in meta._dict.values()))
    if direct:
        out = FileMetaDataset()
        for tag, elem in meta._dict.items():
            out._dict[tag] = copy(elem) if isinstance(elem, DataElement) else elem
    else:
        out = deepcopy(meta)
    for meta_key, ds_key in (("MediaStorageSOPClassUID", "SOPClassUID"),
                             ("MediaStorageSOPInstanceUID", "SOPInstanceUID")):
        current, stated = out.get(meta_key, None), ds.get(ds_key, None)
        if current is None or (stated and stated != current):
            setattr(out, meta_key, stated)
    validate_file_meta(out, enforce_standard=True)
    if not direct:
        buf = DicomBytesIO()
        buf.is_little_endian, buf.is_implicit_VR = True, False
        write_file_meta_info(buf, out, enforce_standard=True)
        return buf.getvalue()
    out._dict.pop(_GROUP_LENGTH, None)  # written first, with the length of the others
    parts: list = []
    _write_dataset_le(out, default_encoding, parts)
    body = b"".join(parts)
    return struct.pack("<HH2sHI", 2, 0, b"UL", 4, len(body)) + body


_GROUP_LENGTH = 0x00020000


def _as_read(ds: Any) -> bool:
    """Whether pydicom's ``write_dataset`` writes ``ds`` to an Explicit VR Little Endian
    file without converting it (its encoding and character set are as read)."""
    return tuple(ds.original_encoding) == (False, True) and ds.original_character_set == ds._character_set


def _made(ds: Any) -> bool:
    """Whether ``ds`` is a dataset made in memory (read from no file) of converted
    elements of plain VRs, such as de-identification's code sequence item: pydicom's
    ``write_dataset`` corrects the ambiguous VRs of such a dataset and converts its raw
    elements, and finds none."""
    from pydicom.dataelem import DataElement
    from pydicom.valuerep import AMBIGUOUS_VR

    return tuple(ds.original_encoding) == (None, None) and all(
        isinstance(e, DataElement) and e.VR not in AMBIGUOUS_VR for e in ds._dict.values())


_ITEM = b"\xfe\xff\x00\xe0"  # (FFFE,E000), little endian
_ITEM_DELIMITER = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


# Converted values written here as pydicom's writers write them: no value (None or an
# empty string: nothing); one int of a binary number VR, or one float of FD or FL
# (write_numbers); one ASCII str of a string VR padded to even length (write_string: UIDs
# with NUL, the others with a space; write_text, for the text VRs where the character set
# encodes ASCII as ASCII); one person name of one ASCII component group likewise
# (write_PN); bytes of OB padded with NUL (write_OBvalue).
_NUMBER_FORMATS = {"US": "<H", "UL": "<L", "SS": "<h", "SL": "<l"}
_FLOAT_FORMATS = {"FD": "<d", "FL": "<f"}
_STRING_PADS = {"UI": b"\x00", "CS": b" ", "DA": b" ", "TM": b" ", "DT": b" ", "AS": b" ", "AE": b" "}
_TEXT_VRS = frozenset({"SH", "LO", "ST", "LT"})
_ASCII_CHARSETS = frozenset({"iso8859", "ISO_IR 6", "ISO_IR 100", "ISO_IR 192"})
# pydicom's names for those character sets, as a sequence item's writer is passed them
# (pydicom.charset.convert_encodings): each encodes ASCII as ASCII
_ASCII_CODECS = frozenset({"iso8859", "latin_1", "UTF8"})


def _ascii_text(encodings: Any) -> bool:
    """Whether text in ``encodings`` (a dataset's SpecificCharacterSet, or the list of
    codecs pydicom passes a sequence item) writes ASCII as ASCII."""
    if isinstance(encodings, str):
        return encodings in _ASCII_CHARSETS
    return type(encodings) is list and len(encodings) == 1 and encodings[0] in _ASCII_CODECS


def _simple_value(vr: Any, value: Any, encodings: Any) -> bytes | None:
    """The bytes pydicom's writer writes for ``value``, where it is such a value; else None."""
    import struct

    from pydicom.valuerep import PersonName

    if value is None or (type(value) is str and not value):
        return b""  # pydicom writes no value for an empty one
    if type(value) is int and vr in _NUMBER_FORMATS:
        return struct.pack(_NUMBER_FORMATS[vr], value)
    if type(value) is float and vr in _FLOAT_FORMATS:
        return struct.pack(_FLOAT_FORMATS[vr], value)
    if type(value) is bytes and vr == "OB":
        return value + b"\x00" if len(value) % 2 else value
    if type(value) is PersonName and vr == "PN" and value.original_string is None:
        value = str(value)
        if "=" in value or not _ascii_text(encodings):
            return None  # component groups may each have their own character set
        pad = b" "
    elif not isinstance(value, str):
        return None
    elif vr in _STRING_PADS:
        pad = _STRING_PADS[vr]
    elif vr in _TEXT_VRS and _ascii_text(encodings):
        pad = b" "
    else:
        return None
    if "\\" in value or not value.isascii():
        return None
    raw = value.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


def _write_dataset_le(ds: Any, parent_encoding: Any, parts: list) -> None:
    """pydicom's ``write_dataset`` of ``ds`` (``_as_read``) into ``parts`` (bytes)."""
    import struct

    from pydicom.charset import convert_encodings, default_encoding
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_data_element
    from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

    encodings = ds.get("SpecificCharacterSet", parent_encoding)
    for tag, elem in sorted(ds._dict.items()):
        if tag.element == 0 and tag.group > 6:  # retired group lengths are not written
            continue
        if elem.is_raw and elem.value is None:  # a value pydicom deferred reading
            elem = ds.get_item(tag)
        value, vr = elem.value, elem.VR
        if elem.is_raw:
            plain = (value is not None and elem.length != 0xFFFFFFFF and vr != "SQ" and isinstance(vr, str)
                     and len(vr) == 2)
        elif vr == "SQ" and all(_as_read(item) or _made(item) for item in value or ()):
            item_encodings = convert_encodings(encodings or [default_encoding])  # as write_data_element passes them
            body: list = []
            for item in value or ():
                inner: list = []
                _write_dataset_le(item, item_encodings, inner)
                undefined = getattr(item, "is_undefined_length_sequence_item", False)
                body += (_ITEM, struct.pack("<I", 0xFFFFFFFF if undefined else sum(map(len, inner))), *inner)
                if undefined:
                    body.append(_ITEM_DELIMITER)
            undefined = elem.is_undefined_length
            parts += (struct.pack("<HH2sHI", tag.group, tag.element, b"SQ", 0,
                                  0xFFFFFFFF if undefined else sum(map(len, body))), *body)
            if undefined:
                parts.append(_SEQUENCE_DELIMITER)
            continue
        elif tag == 0x7FE00010:  # a native pixel data value set as bytes
            plain = vr in ("OB", "OW") and isinstance(value, bytes) and not elem.is_undefined_length
        else:
            value = None if elem.is_undefined_length else _simple_value(vr, value, encodings)
            plain = value is not None
        if plain and vr in EXPLICIT_VR_LENGTH_32:
            parts += (struct.pack("<HH2sHI", tag.group, tag.element, vr.encode("ascii"), 0, len(value)), value)
        elif plain and len(value) <= 0xFFFF:
            parts += (struct.pack("<HH2sH", tag.group, tag.element, vr.encode("ascii"), len(value)), value)
        else:
            out = DicomBytesIO()
            out.is_little_endian, out.is_implicit_VR = True, False
            write_data_element(out, elem, encodings)
            parts.append(out.getvalue())
