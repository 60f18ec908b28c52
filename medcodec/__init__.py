"""medcodec: the lossless dual-path codec for medical images (pure library: no Beam, no fsspec).

Public API (everything another package may import is in ``__all__``)::

    compress_pixels(array, *, bits_stored, signed, preset="max") -> bytes
    decompress_pixels(blob) -> numpy.ndarray
    compress_dicom(data, *, preset="max", keep_codestream=False) -> bytes
    decompress_dicom(blob) -> bytes
    inspect_record(blob) -> dict
    Codec(preset, models=ModelStore(adapters), adapters={group: sha256}, keyring, limits)
        .compress_dicom / .decompress_dicom / .compress_pixels / .decompress_pixels / .pixel_values
    Keyring, key_source(spec), rewrap_record(blob, keyring)      keyed records
    allocator.tune(), set_model_threads(n)                       process settings a host may choose
    fitting_image(data), fit_adapters(images, ...)               A-LoRA fitting (training code, loaded on call)
    images                                                       images as every codec sees them
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
from .api import Codec, check_model, dicom_identifiers, fit_adapters, fitting_image, set_model_threads
from .model import images  # numpy + pydicom only (no torch)
from .models import ModelStore, modality_group
from .crypto import Keyring, KeyringError, key_source
from .sealing import rewrap_record
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
    "Codec",
    "ModelStore",
    "Keyring",
    "KeyringError",
    "allocator",
    "check_model",
    "dicom_identifiers",
    "fit_adapters",
    "fitting_image",
    "images",
    "key_source",
    "modality_group",
    "rewrap_record",
    "set_model_threads",
]
