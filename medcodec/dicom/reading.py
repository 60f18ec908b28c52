"""A DICOM file split into the bytes around its pixel data and the pixel words
(``parse_dicom``), read by pydicom and cross-checked against our own element walk."""

from __future__ import annotations

import io
from dataclasses import replace
from typing import Any

from ..errors import CorruptRecordError, InvalidDicomError, MedcodecError
from .elements import (
    LONG_LENGTH_VRS,
    Element,
    guess_headerless_encoding,
    has_preamble,
    padding_start,
    pixel_header,
    read_meta_transfer_syntax,
    walk_file_meta,
    walk_top_level,
)
from .encapsulation import FrameCountError, KeepVerbatim, decode_frames, encapsulation_of, header_dataset
from .geometry import check_limits, check_ratio, lenient_spec, packed_length, read_spec, uncodable_reason
from .limits import DicomLimits, caused_by_input
from .parsed import RESTORE_BYTE_EXACT, RESTORE_PIXEL_EXACT, ParsedDicom, verbatim
from .pixel_words import needs_ow_swap, swap_pairs, words_from_native
from .quiet import quiet_pydicom
from .syntaxes import (
    DEFLATED_EXPLICIT_VR_LE,
    DOUBLE_FLOAT_PIXEL_DATA,
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    FLOAT_PIXEL_DATA,
    IMPLICIT_VR_LE,
    LOSSLESS_ENCAPSULATED_SYNTAXES,
    NATIVE_SYNTAXES,
    PIXEL_DATA,
    check_known_syntax,
    native_encoding,
    syntax_name,
)
from .writing import choose_reencode

_DEFER_SIZE = 1 << 16


def is_dicom(data: bytes) -> bool:
    """Cheap sniff: 'DICM' at byte 128, or the bytes walk as a headerless dataset."""
    try:
        data = bytes(data)
        if has_preamble(data):
            return True
        encoding = guess_headerless_encoding(data)
        if encoding is None:
            return False
        start = walk_file_meta(data, 0)
        ts = read_meta_transfer_syntax(data, 0, start) if start else None
        implicit, little = encoding if ts is None else native_encoding(ts)
        walk_top_level(data, start, implicit=implicit, little=little)
        return True
    except BaseException as exc:  # a sniff never raises
        if not caused_by_input(exc):
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
        with quiet_pydicom():
            return _parse(data, keep_codestream=keep_codestream, limits=limits)
    except MedcodecError:
        raise
    except BaseException as exc:  # pydicom / numpy / codec failures never escape raw
        if not caused_by_input(exc):
            raise
        raise InvalidDicomError(
            f"could not parse DICOM input ({type(exc).__name__}); expected a well-formed DICOM file"
        ) from exc


def parse_written(data: bytes, ds: Any, *, limits: DicomLimits = DicomLimits()) -> ParsedDicom:
    """``parse_dicom(data)`` for a file just written from ``ds`` (a pydicom dataset), such
    as sealing's de-identified file: a Part 10 file in Explicit VR Little Endian with
    native pixel data is split by the element walk and ``_parse_native``'s checks, with
    ``ds`` in place of pydicom's reading of ``data`` (which was a third of the time
    sealing spent on the header). Any other file, or one those checks refuse, is parsed
    in full (``parse_dicom``)."""
    data = bytes(data)
    try:
        if has_preamble(data):
            start = walk_file_meta(data, 132)
            if read_meta_transfer_syntax(data, 132, start) == EXPLICIT_VR_LE:
                elements = walk_top_level(data, start, implicit=False, little=True)
                pixel = next((e for e in elements if e.tag == PIXEL_DATA), None)
                if pixel is not None and not pixel.undefined_length:
                    with quiet_pydicom():  # frames: a view of the file, which the caller holds
                        parsed = _parse_native(data, ds, pixel, EXPLICIT_VR_LE, little=True, limits=limits,
                                               guessed=False, copy=False)
                    if parsed.frames is not None:
                        return parsed
    except BaseException as exc:  # parse_dicom says why, in its own words
        if not caused_by_input(exc):
            raise
    return parse_dicom(data, limits=limits)


def _parse(data: bytes, *, keep_codestream: bool, limits: DicomLimits) -> ParsedDicom:
    if not data:
        raise InvalidDicomError("not a DICOM file: the input is empty (0 bytes)")
    preamble = has_preamble(data)
    if not preamble and guess_headerless_encoding(data) is None:
        raise InvalidDicomError(
            "not a DICOM file: no 'DICM' marker at byte 128 and the first bytes"
            " are not a group 0002/0008 element of a headerless dataset"
        )
    meta_start = 132 if preamble else 0
    try:
        dataset_start = walk_file_meta(data, meta_start)
        declared_ts = read_meta_transfer_syntax(data, meta_start, dataset_start)
    except InvalidDicomError as exc:
        raise _headerless_error(exc) if not preamble else exc

    if declared_ts == DEFLATED_EXPLICIT_VR_LE:
        ds = _read_dataset(data, preamble=preamble)  # must at least be readable
        return replace(verbatim(data, None, "Deflated Explicit VR Little Endian kept verbatim"), identifiers=identifiers(ds))

    if declared_ts is not None and declared_ts not in NATIVE_SYNTAXES:
        check_known_syntax(declared_ts)

    # pydicom reads trailing zero padding element by element too: give it the content only,
    # cut at an element boundary found by our own walk (the restore keeps every byte).
    content = data
    if declared_ts is not None and padding_start(data) < len(data) - 1024:
        try:
            implicit, little = native_encoding(declared_ts)
            walked = walk_top_level(data, dataset_start, implicit=implicit, little=little)
            content = data[: walked[-1].value_end] if walked else data
        except InvalidDicomError:
            content = data
    ds = _read_dataset(
        content, preamble=preamble, fallback_ts=declared_ts, dataset_start=dataset_start
    )
    ids = identifiers(ds)

    def done(parsed: ParsedDicom) -> ParsedDicom:
        return replace(parsed, identifiers=ids, dataset=ds)

    implicit, little = ds.original_encoding
    if implicit is None:
        # Nothing after the file meta: pydicom never chose an encoding.
        implicit, little = native_encoding(declared_ts)
    try:
        elements = walk_top_level(data, dataset_start, implicit=implicit, little=little)
    except InvalidDicomError as exc:
        raise _headerless_error(exc) if not preamble else exc
    pixel = next((e for e in elements if e.tag == PIXEL_DATA), None)
    if pixel is not None:
        _cross_check_offset(ds, pixel)

    if declared_ts is None:
        ts = IMPLICIT_VR_LE if implicit else (EXPLICIT_VR_LE if little else EXPLICIT_VR_BE)
    else:
        ts = declared_ts

    if pixel is None:
        return done(verbatim(data, None, _no_pixel_note(elements)))

    if ts in NATIVE_SYNTAXES and not pixel.undefined_length:
        return done(_parse_native(
            data, ds, pixel, ts, little=little, limits=limits, guessed=declared_ts is None
        ))
    if ts in NATIVE_SYNTAXES:
        spec = lenient_spec(ds, ts, big_endian=not little)
        return done(verbatim(
            data, spec, "encapsulated PixelData under a native transfer syntax kept verbatim"
        ))
    return done(_parse_encapsulated(
        data, ds, pixel, ts, keep_codestream=keep_codestream, limits=limits
    ))


def identifiers(ds: Any) -> dict[str, str | None]:
    """Study / series / SOP / patient identifiers, modality and the file meta's transfer
    syntax of a read dataset ({} when its values do not read)."""
    try:
        meta = getattr(ds, "file_meta", None)
        sop = ds.get("SOPInstanceUID") or (meta.get("MediaStorageSOPInstanceUID") if meta is not None else None)
        return {
            "study": str(ds.get("StudyInstanceUID", "") or "") or None,
            "series": str(ds.get("SeriesInstanceUID", "") or "") or None,
            "sop": str(sop) if sop else None,
            "patient": str(ds.get("PatientID", "") or "") or None,
            "modality": str(ds.get("Modality", "") or "") or None,
            "transfer_syntax": (str(meta.get("TransferSyntaxUID", "") or "") or None) if meta is not None else None,
        }
    except Exception:  # noqa: BLE001 - identifiers are best effort; the codec has accepted the file
        return {}


def _headerless_error(exc: InvalidDicomError) -> InvalidDicomError:
    # Without a preamble a failed walk cannot tell a cut-off dataset from other data.
    return InvalidDicomError(
        f"not a DICOM file: no 'DICM' marker and not a headerless dataset ({exc})"
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
        if not caused_by_input(exc):
            raise
        # Prefer a precise "truncated" message when our walker can find the cut.
        if fallback_ts is not None and fallback_ts != DEFLATED_EXPLICIT_VR_LE:
            implicit, little = native_encoding(fallback_ts)
            walk_top_level(data, dataset_start, implicit=implicit, little=little)
        if not preamble:
            raise InvalidDicomError(
                f"not a DICOM file: no 'DICM' marker and pydicom cannot read it as a headerless"
                f" dataset ({type(exc).__name__})"
            ) from exc
        raise InvalidDicomError(
            f"unreadable DICOM file: pydicom failed with {type(exc).__name__}; expected a"
            " well-formed dataset"
        ) from exc


def _cross_check_offset(ds: Any, pixel: Element) -> None:
    try:
        raw = ds.get_item(PIXEL_DATA)
    except BaseException as exc:
        if not caused_by_input(exc):
            raise
        return
    value_tell = getattr(raw, "value_tell", None)
    if value_tell is not None and value_tell != pixel.value_start:
        raise InvalidDicomError(
            f"malformed DICOM: PixelData value found at byte {pixel.value_start} by the"
            f" element walk but at byte {value_tell} by pydicom"
        )


def _no_pixel_note(elements: list[Element]) -> str:
    tags = {e.tag for e in elements}
    if FLOAT_PIXEL_DATA in tags:
        return "Float Pixel Data kept verbatim"
    if DOUBLE_FLOAT_PIXEL_DATA in tags:
        return "Double Float Pixel Data kept verbatim"
    return "no top-level PixelData; kept verbatim"


def _parse_native(
    data: bytes, ds: Any, pixel: Element, ts: str, *, little: bool, limits: DicomLimits,
    guessed: bool, copy: bool = True,
) -> ParsedDicom:
    spec = read_spec(ds, ts, big_endian=not little)
    check_limits(spec, limits)
    value_length = pixel.value_end - pixel.value_start
    needed = packed_length(spec)
    if value_length < needed:
        raise InvalidDicomError(
            f"truncated PixelData: header claims {spec.frames} frame(s) of {spec.rows}x{spec.cols}"
            f"x{spec.samples} at {spec.bits_allocated} bits ({needed} bytes) but the value"
            f" holds {value_length} bytes"
        )
    reason = uncodable_reason(spec)
    if reason is None and pixel.vr is not None and pixel.vr not in LONG_LENGTH_VRS:
        reason = f"PixelData with VR {pixel.vr.decode('ascii', 'replace')!r} (expected OB/OW)"
    if reason is not None:
        return verbatim(data, spec, f"{reason}; kept verbatim")

    value = memoryview(data)[pixel.value_start : pixel.value_end]  # not a copy of the pixel data
    if needs_ow_swap(spec, pixel.vr):
        value = memoryview(swap_pairs(value))
    frames = words_from_native(value[:needed], spec, copy=copy)
    prefix = data[: pixel.value_start]
    try:  # rebuild reads the header back from the prefix: make sure it will
        readable = pixel_header(prefix, spec) == (pixel.vr, value_length)
    except CorruptRecordError:
        readable = False
    if not readable:
        return verbatim(data, spec, "PixelData header not recognisable on rebuild; kept verbatim")
    return ParsedDicom(
        restore_mode=RESTORE_BYTE_EXACT,
        spec=spec,
        prefix=prefix,
        suffix=data[pixel.value_end :],
        frames=frames,
        extra=bytes(value[needed:]),
        original=None,
        reencode=None,
        note=f"native {syntax_name(ts)}"
        + (" (no transfer syntax in file meta)" if guessed else ""),
    )


def _parse_encapsulated(
    data: bytes, ds: Any, pixel: Element, ts: str, *, keep_codestream: bool, limits: DicomLimits
) -> ParsedDicom:
    if not pixel.undefined_length:
        note = f"{syntax_name(ts)} with non-encapsulated PixelData kept verbatim"
    elif ts not in LOSSLESS_ENCAPSULATED_SYNTAXES:
        note = f"lossy or unsupported compression {syntax_name(ts)} kept verbatim"
    elif keep_codestream:
        note = f"{syntax_name(ts)} codestream kept verbatim (keep_codestream)"
    else:
        return _decode_encapsulated(data, ds, pixel, ts, limits=limits)
    return verbatim(data, lenient_spec(ds, ts, big_endian=False), note)


def _decode_encapsulated(data: bytes, ds: Any, pixel: Element, ts: str, *, limits: DicomLimits) -> ParsedDicom:
    spec = read_spec(ds, ts, big_endian=False)
    check_limits(spec, limits)
    reason = uncodable_reason(spec)
    if reason is not None:
        return verbatim(data, spec, f"{reason}; kept verbatim")
    check_ratio(spec, pixel.value_end - pixel.value_start, limits)

    prefix = data[: pixel.value_start]
    suffix = data[pixel.value_end :]
    try:
        header = header_dataset(prefix, suffix)
        enc = encapsulation_of(header, ts)
    except MedcodecError:
        raise
    except BaseException as exc:
        if not caused_by_input(exc):
            raise
        return verbatim(data, spec, f"header not reusable for restore ({type(exc).__name__}); kept verbatim")

    encapsulated = data[pixel.value_start : pixel.value_end - 8]  # without the delimiter item
    try:
        words, photometric = decode_frames(encapsulated, enc)
    except FrameCountError as exc:
        raise InvalidDicomError(str(exc)) from None
    except KeepVerbatim as exc:
        return verbatim(data, spec, f"{exc}; kept verbatim")

    spec = replace(spec, photometric=photometric or spec.photometric)
    reencode, why = choose_reencode(words, enc, header)
    if reencode is None:
        return verbatim(data, spec, f"{why}; kept verbatim")
    return ParsedDicom(
        restore_mode=RESTORE_PIXEL_EXACT,
        spec=spec,
        prefix=prefix,
        suffix=suffix,
        frames=words,
        extra=b"",
        original=None,
        reencode=reencode,
        note=f"{syntax_name(ts)} decoded; restore {reencode} ({why})",
    )
