"""Native PixelData values and the words they hold: (frames, samples, rows, cols) arrays in
native byte order, the stored bits untouched (no masking, no sign extension)."""

from __future__ import annotations

import numpy as np

from ..errors import CorruptRecordError
from ..spec import PixelSpec


def word_dtype(spec: PixelSpec) -> np.dtype:
    """The container of one word in native byte order: uint8 or uint16."""
    return np.dtype(np.uint8 if spec.bits_allocated == 8 else np.uint16)


def _stored_dtype(spec: PixelSpec, *, big_endian: bool) -> np.dtype:
    if spec.bits_allocated == 8:
        return np.dtype(np.uint8)
    return np.dtype(">u2" if big_endian else "<u2")


def needs_ow_swap(spec: PixelSpec, vr: bytes | None) -> bool:
    # Explicit VR Big Endian stores 8-bit pixels as OW: each pair of bytes is swapped.
    return spec.big_endian and spec.bits_allocated == 8 and vr == b"OW"


def swap_pairs(value: bytes) -> bytes:
    even = len(value) - len(value) % 2
    swapped = np.frombuffer(value, dtype=np.uint8, count=even).reshape(-1, 2)[:, ::-1].tobytes()
    return swapped + value[even:]


def words_from_native(raw: bytes, spec: PixelSpec, *, copy: bool = True) -> np.ndarray:
    """(frames, samples, rows, cols) native-order words from the stored bytes: their own
    copy, or with ``copy=False`` a read-only view of ``raw`` where the bytes already are
    the words in that layout."""
    words = np.frombuffer(raw, dtype=_stored_dtype(spec, big_endian=spec.big_endian))
    words = words.astype(word_dtype(spec), copy=copy)
    if spec.samples > 1 and spec.planar_configuration == 0:
        words = words.reshape(spec.frames, spec.rows, spec.cols, spec.samples).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(words.reshape(spec.frames, spec.samples, spec.rows, spec.cols))


def native_bytes(frames: np.ndarray, spec: PixelSpec, *, big_endian: bool) -> bytes:
    """Inverse of ``words_from_native`` (stored layout, stored byte order)."""
    words = frames
    if spec.samples > 1 and spec.planar_configuration == 0:
        words = words.transpose(0, 2, 3, 1)
    dtype = _stored_dtype(spec, big_endian=big_endian)
    return np.ascontiguousarray(words).astype(dtype, copy=False).tobytes()


def check_frames(frames: np.ndarray, spec: PixelSpec) -> None:
    shape = (spec.frames, spec.samples, spec.rows, spec.cols)
    dtype = word_dtype(spec)
    if frames.shape != shape or frames.dtype != dtype:
        raise CorruptRecordError(
            f"frames have shape {frames.shape} dtype {frames.dtype};"
            f" the spec needs {shape} {np.dtype(dtype)}"
        )
