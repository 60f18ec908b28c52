"""Encapsulated (compressed) PixelData: frames decoded to words and encoded back with pydicom's
pinned plugins, fragments put back into an encapsulated value."""

from __future__ import annotations

import contextlib
import io
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..spec import PixelSpec
from .elements import padding_start
from .geometry import read_spec
from .limits import caused_by_input
from .pixel_words import word_dtype
from .quiet import native_stderr_captured
from .syntaxes import (
    EXTENDED_OFFSET_TABLE,
    EXTENDED_OFFSET_TABLE_LENGTHS,
    HTJ2K_LOSSLESS,
    HTJ2K_LOSSLESS_RPCL,
    JPEG_2000_LOSSLESS,
    JPEG_LOSSLESS,
    JPEG_LOSSLESS_SV1,
    JPEG_LS_LOSSLESS,
    RLE_LOSSLESS,
    syntax_name,
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

# Encoders that must not run in two threads at once: pylibjpeg-openjpeg 2.6.0's. Two threads
# encoding 693_J2KR's frame in a loop crashed the process (SIGSEGV) within 2 s in 5 of 6
# tries, one thread never (2026-12-08); the JPEG 2000 decoder and the JPEG-LS and RLE
# encoders ran 6 s in two threads without. A local run's worker threads re-encode JPEG
# 2000 frames (``writing``: whether a record gives back the original bytes, and restoring
# them), so those encodes take turns (``_ENCODE_TURNS``). Before, a two-worker `migrate`
# of JPEG 2000 files crashed in 3 of 10 runs with the garbage collector made to run every
# 10 ms (the crash corrupts the heap; a collection is what finds it), and an interrupted
# one in 2-4 of 10.
_SERIAL_ENCODERS = frozenset({JPEG_2000_LOSSLESS})
_ENCODE_TURNS = threading.Lock()

_SEQUENCE_DELIMITER_ITEM = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_MINIMAL_ENCAPSULATED = b"\xfe\xff\x00\xe0\x00\x00\x00\x00" + _SEQUENCE_DELIMITER_ITEM


class KeepVerbatim(Exception):
    """Internal: the pixel data cannot be taken apart safely; keep the file as-is."""


class FrameCountError(Exception):
    """Internal: the encapsulated data holds fewer frames than the header claims."""


@dataclass(frozen=True)
class Encapsulation:
    """How the frames of one encapsulated value are coded: the geometry the reusable header
    declares (``spec.transfer_syntax`` is the syntax) and its offset tables."""

    spec: PixelSpec
    has_bot: bool
    extended_offsets: tuple[bytes, bytes] | None

    def options(self, *, frames: int | None = None) -> dict[str, Any]:
        """pydicom's decoder / encoder options for ``frames`` frames (all of them by default)."""
        spec = self.spec
        return dict(
            rows=spec.rows,
            columns=spec.cols,
            number_of_frames=spec.frames if frames is None else frames,
            samples_per_pixel=spec.samples,
            bits_allocated=spec.bits_allocated,
            bits_stored=spec.bits_stored,
            pixel_representation=spec.pixel_representation,
            photometric_interpretation=spec.photometric,
            planar_configuration=spec.planar_configuration,
        )


def header_dataset(prefix: bytes, suffix: bytes) -> Any:
    """The dataset of ``prefix + <empty encapsulated value> + suffix`` (header only)."""
    import pydicom

    content = suffix[: padding_start(suffix)]
    if len(content) < len(suffix) - 1024:  # megabytes of trailing zeros: read without them if that works
        try:
            return pydicom.dcmread(io.BytesIO(prefix + _MINIMAL_ENCAPSULATED + content), force=True)
        except Exception:  # noqa: BLE001 - the cut fell inside an element: read everything
            pass
    return pydicom.dcmread(io.BytesIO(prefix + _MINIMAL_ENCAPSULATED + suffix), force=True)


def encapsulation_of(header: Any, ts: str) -> Encapsulation:
    """The geometry and offset tables ``header`` (a pydicom dataset) declares under ``ts``."""
    spec = read_spec(header, ts, big_endian=False)
    extended = None
    if EXTENDED_OFFSET_TABLE in header and EXTENDED_OFFSET_TABLE_LENGTHS in header:
        extended = (
            bytes(header[EXTENDED_OFFSET_TABLE].value),
            bytes(header[EXTENDED_OFFSET_TABLE_LENGTHS].value),
        )
    # A Basic Offset Table is only needed to find frames; single frames go without.
    return Encapsulation(spec=spec, has_bot=spec.frames > 1, extended_offsets=extended)


_JPEG_SYNTAXES = frozenset({JPEG_LOSSLESS, JPEG_LOSSLESS_SV1, JPEG_LS_LOSSLESS})
_J2K_SYNTAXES = frozenset({JPEG_2000_LOSSLESS, HTJ2K_LOSSLESS, HTJ2K_LOSSLESS_RPCL})
# Start of frame markers: SOF0-SOF15 but DHT (C4), JPG (C8) and DAC (CC); SOF55 (JPEG-LS).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}
# Markers without a length field: TEM, RSTn, SOI, EOI.
_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD9)})


def jpeg_frame_geometry(frame: bytes) -> tuple[int, int, int] | None:
    """(lines, samples per line, components) a JPEG or JPEG-LS codestream's frame header
    declares (ITU-T T.81 B.2.2, T.87 C.2.2: the same layout), None where ``frame`` does not
    start with SOI or no frame header is found before the first scan. Fill bytes (0xFF)
    before a marker are skipped, as decoders skip them."""
    if frame[:2] != b"\xff\xd8":
        return None
    at, n = 2, len(frame)
    while at + 1 < n:
        if frame[at] != 0xFF:
            return None
        marker = frame[at + 1]
        if marker == 0xFF:  # a fill byte
            at += 1
            continue
        if marker in _STANDALONE_MARKERS:
            at += 2
            continue
        if at + 4 > n or marker == 0xDA:  # the first scan (SOS) before any frame header
            return None
        length = int.from_bytes(frame[at + 2 : at + 4], "big")
        if marker in _SOF_MARKERS:
            if length < 8 or at + 10 > n:
                return None
            return (int.from_bytes(frame[at + 5 : at + 7], "big"), int.from_bytes(frame[at + 7 : at + 9], "big"),
                    frame[at + 9])
        if length < 2:
            return None
        at += 2 + length
    return None


def j2k_frame_geometry(frame: bytes) -> tuple[int, int, int] | None:
    """(rows, columns, components) a JPEG 2000 codestream's SIZ segment declares
    (ISO/IEC 15444-1 A.5.1: Ysiz - YOsiz, Xsiz - XOsiz, Csiz), in a raw codestream or in a
    JP2 file's contiguous codestream box; None where neither starts as the standard says."""
    at = 0
    if frame[:8] == b"\x00\x00\x00\x0cjP  ":  # a JP2 file: find its codestream box
        while at + 8 <= len(frame):
            length = int.from_bytes(frame[at : at + 4], "big")
            if frame[at + 4 : at + 8] == b"jp2c":
                at += 8
                break
            if length < 8:
                return None
            at += length
        else:
            return None
    siz = frame[at : at + 42]
    if len(siz) < 42 or siz[:4] != b"\xff\x4f\xff\x51":
        return None
    x, y, x0, y0 = (int.from_bytes(siz[k : k + 4], "big") for k in (8, 12, 16, 20))
    return y - y0, x - x0, int.from_bytes(siz[40:42], "big")


def _check_declared_geometry(encapsulated: bytes, enc: Encapsulation) -> None:
    """KeepVerbatim where a frame's codestream declares other dimensions than the header
    (rows, columns, samples), or none (a JPEG height of 0: lines defined after the scan),
    checked before a decoder sees it: decoders allocate by the codestream's own header,
    and pylibjpeg-libjpeg 2.3 read a 644-byte JPEG-LS frame declaring 0 lines (the fuzzer's)
    by allocating line after line, past 1.8 GB in 6 s, without end. The frames are the
    ones pydicom's decoder iterates (``generate_frames`` with the same arguments); a frame
    whose header cannot be read is left to the decoders, as before."""
    from pydicom.encaps import generate_frames

    ts, spec = enc.spec.transfer_syntax, enc.spec
    geometry = jpeg_frame_geometry if ts in _JPEG_SYNTAXES else j2k_frame_geometry if ts in _J2K_SYNTAXES else None
    if geometry is None:
        return
    expected = (spec.rows, spec.cols, spec.samples)
    try:
        for frame in generate_frames(encapsulated, number_of_frames=spec.frames, extended_offsets=enc.extended_offsets):
            declared = geometry(bytes(frame))
            if declared is not None and declared != expected:
                raise KeepVerbatim(f"a frame's codestream declares {declared[0]} x {declared[1]} x {declared[2]}"
                                   f" (rows x columns x samples), the header {expected[0]} x {expected[1]} x"
                                   f" {expected[2]}")
    except KeepVerbatim:
        raise
    except Exception as exc:  # noqa: BLE001 - frames pydicom cannot split: its decoder says so next
        if not caused_by_input(exc):
            raise


def decode_frames(encapsulated: bytes, enc: Encapsulation) -> tuple[np.ndarray, str]:
    """Every frame decoded to raw words (frames, samples, rows, cols), and the photometric
    interpretation of the decoded words. A frame whose codestream declares other
    dimensions than the header is not handed to a decoder (``_check_declared_geometry``)."""
    from pydicom.pixels import get_decoder

    ts = enc.spec.transfer_syntax
    decoder = get_decoder(ts)
    plugins = [p for p in _DECODING_PLUGINS[ts] if p in decoder.available_plugins]
    if not plugins:
        raise KeepVerbatim(f"no decoder installed for {syntax_name(ts)}")
    _check_declared_geometry(encapsulated, enc)
    failures = []
    for plugin in plugins:
        try:
            with native_stderr_captured():
                return _decode_with(decoder, plugin, encapsulated, enc)
        except (KeepVerbatim, FrameCountError):
            raise
        except BaseException as exc:
            if not caused_by_input(exc):
                raise
            failures.append(f"{plugin}: {type(exc).__name__}")
    raise KeepVerbatim(f"decoding failed ({', '.join(failures)})")


def _signed_dtype(spec: PixelSpec) -> np.dtype:
    return np.dtype(np.int8 if spec.bits_allocated == 8 else np.int16)


def _decode_with(
    decoder: Any, plugin: str, encapsulated: bytes, enc: Encapsulation
) -> tuple[np.ndarray, str]:
    spec = enc.spec
    target = word_dtype(spec)
    signed_target = _signed_dtype(spec)
    out = np.empty((spec.frames, spec.samples, spec.rows, spec.cols), dtype=target)
    options = enc.options()
    if enc.extended_offsets is not None:
        options["extended_offsets"] = enc.extended_offsets
    photometric = spec.photometric
    count = 0
    for arr, props in decoder.iter_array(
        encapsulated,
        raw=True,
        decoding_plugin=plugin,
        correct_unused_bits=False,  # keep bits above BitsStored exactly as coded
        allow_excess_frames=True,
        **options,
    ):
        if count >= spec.frames:
            raise KeepVerbatim(
                f"encapsulated data holds more frames than NumberOfFrames {spec.frames}"
            )
        if arr.dtype.kind not in "ui":
            raise KeepVerbatim(f"decoder returned {arr.dtype} samples")
        if arr.dtype.itemsize > target.itemsize:
            info = np.iinfo(signed_target if arr.dtype.kind == "i" else target)
            if arr.size and (arr.min() < info.min or arr.max() > info.max):
                raise KeepVerbatim(
                    f"decoded samples exceed BitsAllocated {spec.bits_allocated}"
                )
        # Value-preserving cast into the word container, then the unsigned view of it.
        if arr.dtype.kind == "i":
            arr = arr.astype(signed_target, copy=False).view(target)
        else:
            arr = arr.astype(target, copy=False)
        if spec.samples == 1:
            arr = arr.reshape(1, spec.rows, spec.cols)
        else:
            arr = arr.reshape(spec.rows, spec.cols, spec.samples).transpose(2, 0, 1)
        out[count] = arr
        photometric = str(props.get("photometric_interpretation", photometric))
        count += 1
    if count < spec.frames:
        raise FrameCountError(
            f"header claims {spec.frames} frames but the encapsulated PixelData holds {count}"
        )
    return out, photometric


def encoder_available(ts: str) -> bool:
    """Whether a pinned encoding plugin for ``ts`` is installed."""
    from pydicom.pixels import get_encoder

    encoder = get_encoder(ts)
    return encoder.is_available and any(p in encoder.available_plugins for p in _ENCODING_PLUGINS[ts])


def has_encoder(ts: str) -> bool:
    """Whether ``ts`` has a pinned encoder at all (installed or not)."""
    return ts in _ENCODING_PLUGINS


def encode_frames(words: np.ndarray, enc: Encapsulation) -> list[bytes]:
    """Encode every frame with pydicom's encoder for the syntax (pinned plugin)."""
    from pydicom.pixels import get_encoder

    spec = enc.spec
    encoder = get_encoder(spec.transfer_syntax)
    plugin = next(p for p in _ENCODING_PLUGINS[spec.transfer_syntax] if p in encoder.available_plugins)
    encoded = []
    for frame in words:
        interleaved = np.ascontiguousarray(frame.transpose(1, 2, 0))  # (rows, cols, samples)
        if spec.transfer_syntax == RLE_LOSSLESS:
            # RLE codes whole bytes: give it the full words, so bits above BitsStored survive.
            options = enc.options(frames=1)
            options.update(
                bits_stored=spec.bits_allocated,
                pixel_representation=0,
                photometric_interpretation="MONOCHROME2" if spec.samples == 1 else "RGB",
                planar_configuration=0,
            )
            src = interleaved.astype(interleaved.dtype.newbyteorder("<"), copy=False).tobytes()
            encoded.append(
                encoder.encode(src, validate=False, encoding_plugin=plugin, **options)
            )
            continue
        arr = interleaved.view(_signed_dtype(spec)) if spec.signed else interleaved
        if spec.samples == 1:
            arr = arr[:, :, 0]
        with _ENCODE_TURNS if spec.transfer_syntax in _SERIAL_ENCODERS else contextlib.nullcontext():
            encoded.append(encoder.encode(arr, encoding_plugin=plugin, **enc.options(frames=1)))
    return encoded


def encapsulate(encoded: list[bytes], has_bot: bool) -> bytes:
    """The whole encapsulated PixelData value: BOT item, one fragment per frame, delimiter."""
    from pydicom.encaps import encapsulate as pydicom_encapsulate

    return pydicom_encapsulate(encoded, has_bot=has_bot) + _SEQUENCE_DELIMITER_ITEM
