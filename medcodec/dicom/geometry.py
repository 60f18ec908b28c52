"""The pixel geometry a header declares, as the one ``PixelSpec``, and the rules it is held to:
readable (``read_spec``), within the limits (``check_limits``, ``check_ratio``) and codable by
the integer pixel codec (``uncodable_reason``)."""

from __future__ import annotations

from typing import Any

from ..errors import InvalidDicomError, LimitExceededError, UnsupportedError
from ..spec import PixelSpec
from .limits import DicomLimits, caused_by_input

_SUBSAMPLED_PHOTOMETRICS = frozenset({"YBR_FULL_422", "YBR_PARTIAL_422", "YBR_PARTIAL_420"})


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


def read_spec(ds: Any, ts: str, *, big_endian: bool) -> PixelSpec:
    """Read and check the Image Pixel attributes of ``ds`` (a pydicom dataset), stored
    under ``ts``; InvalidDicomError when unusable."""
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
    return PixelSpec(
        rows=rows,
        cols=cols,
        frames=frames,
        samples=samples,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        high_bit=high_bit,
        pixel_representation=pixel_representation,
        photometric=photometric,
        planar_configuration=_int_attr(ds, "PlanarConfiguration", 0) if samples > 1 else 0,
        transfer_syntax=ts,
        big_endian=big_endian,
    )


def lenient_spec(ds: Any, ts: str, *, big_endian: bool) -> PixelSpec | None:
    """Best-effort description for verbatim records; None when the header cannot give one."""
    try:
        return read_spec(ds, ts, big_endian=big_endian)
    except BaseException as exc:
        if not caused_by_input(exc):
            raise
        return None


def _total_samples(spec: PixelSpec) -> int:
    return spec.rows * spec.cols * spec.frames * spec.samples


def check_limits(spec: PixelSpec, limits: DicomLimits) -> None:
    for name, value, field, limit in (
        ("Rows", spec.rows, "max_rows", limits.max_rows),
        ("Columns", spec.cols, "max_cols", limits.max_cols),
        ("NumberOfFrames", spec.frames, "max_frames", limits.max_frames),
    ):
        if value > limit:
            raise LimitExceededError(f"{name} {value} exceeds the limit {field}={limit}")
    total = _total_samples(spec)
    if total > limits.max_samples:
        raise LimitExceededError(
            f"rows*cols*frames*samples = {total} exceeds the limit max_samples={limits.max_samples}"
        )
    limits.check_memory(total, "an image")


def check_ratio(spec: PixelSpec, compressed_bytes: int, limits: DicomLimits) -> None:
    """Refuse compressed pixel data that claims far more pixels than its size can hold."""
    if limits.max_pixel_ratio is None:
        return
    decoded = _total_samples(spec) * max(1, spec.bits_allocated // 8)
    if decoded > limits.max_pixel_ratio * max(compressed_bytes, 1):
        raise LimitExceededError(
            f"{compressed_bytes} bytes of compressed pixel data claim {decoded} bytes of pixels, over the"
            f" limit of {limits.max_pixel_ratio}:1"
        )


def uncodable_reason(spec: PixelSpec) -> str | None:
    """Why the integer pixel codec cannot take this layout (None if it can). The word
    layout's rules are ``PixelSpec.validate_for_coding``'s; the first test only keeps the
    reason recorded for other word sizes as it always was (it is part of the record)."""
    if spec.bits_allocated not in (8, 16):
        return f"BitsAllocated {spec.bits_allocated} (pixel codec needs 8 or 16)"
    if spec.photometric in _SUBSAMPLED_PHOTOMETRICS:
        return f"subsampled photometric {spec.photometric}"
    if spec.pixel_representation not in (0, 1):
        return f"PixelRepresentation {spec.pixel_representation} (expected 0 or 1)"
    if spec.samples > 1 and spec.planar_configuration not in (0, 1):
        return f"PlanarConfiguration {spec.planar_configuration} (expected 0 or 1)"
    try:
        spec.validate_for_coding()
    except UnsupportedError as exc:
        return str(exc)
    return None


def packed_length(spec: PixelSpec) -> int:
    """Bytes a native PixelData value needs for all frames (before the pad byte)."""
    total_samples = _total_samples(spec)
    if spec.photometric == "YBR_FULL_422" and spec.samples == 3:
        total_samples = total_samples * 2 // 3
    return (total_samples * spec.bits_allocated + 7) // 8
