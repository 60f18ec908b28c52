"""medcodec: the lossless dual-path codec for medical images (pure library: no Beam, no fsspec).

Public API::

    compress_pixels(array, *, bits_stored, signed, preset="max") -> bytes
    decompress_pixels(blob) -> numpy.ndarray
    compress_dicom(data, *, preset="max", keep_codestream=False) -> bytes
    decompress_dicom(blob) -> bytes
    inspect_record(blob) -> dict
"""

from .codec import (
    CODEC_ID,
    PRESETS,
    compress_dicom,
    compress_pixels,
    decompress_dicom,
    decompress_pixels,
    inspect_record,
)
from . import allocator  # ``medcodec.allocator.tune()`` after ``import medcodec`` (importing it tunes nothing)
from .container import FORMAT_MAJOR, FORMAT_MINOR
from .dicom import DicomLimits
from .errors import (
    CorruptRecordError,
    InvalidDicomError,
    LimitExceededError,
    MedcodecError,
    ModelMismatchError,
    UnsupportedError,
    UnsupportedVersionError,
)

__all__ = [
    "CODEC_ID",
    "FORMAT_MAJOR",
    "FORMAT_MINOR",
    "PRESETS",
    "CorruptRecordError",
    "DicomLimits",
    "InvalidDicomError",
    "LimitExceededError",
    "MedcodecError",
    "ModelMismatchError",
    "UnsupportedError",
    "UnsupportedVersionError",
    "compress_dicom",
    "compress_pixels",
    "decompress_dicom",
    "decompress_pixels",
    "inspect_record",
]
