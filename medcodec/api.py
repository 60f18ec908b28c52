"""The codec as one configured object: what the pipelines (and any host application) use.

``Codec`` holds everything a record depends on besides its bytes: the preset, the models
(a ``ModelStore``: shipped base models, and the adapter files an archive holds), which
adapter codes which modality, the keyring and the resource limits. It is passed, never
registered: decoding reads no process-global state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from . import codec
from . import container as ct
from .dicom import DicomLimits
from .errors import CorruptRecordError, UnsupportedError
from .models import CLASSICAL, ModelStore, modality_group


@dataclass
class Codec:
    """A configured codec.

    ``adapters``: {modality group: adapter SHA-256} (files in ``models``): with preset
    ``max`` an input of that group is coded with base + adapter and the classical path,
    the smaller record kept (or with the adapted transformer alone when ``local_model``
    names the base transformer). ``local_model``: None (the preset's models) or a model id.
    """

    preset: str = "max"
    models: ModelStore = field(default_factory=ModelStore)
    adapters: Mapping[str, str] = field(default_factory=dict)
    local_model: str | None = None
    keyring: Any = None
    limits: DicomLimits | None = None
    keep_codestream: bool = False

    def __post_init__(self) -> None:
        self._adapted: dict[str, Any] = {}

    def local_models(self, modality: str | None):
        """What ``local_model`` encode_words gets for an input of this modality."""
        sha = self.adapters.get(modality_group(modality))
        if sha is None or self.preset != "max":
            return self.local_model
        coder = self._adapted.get(sha)
        if coder is None:
            coder = self._adapted[sha] = self.models.adapted(sha)
        if self.local_model == coder.model_id:  # the adapted transformer only
            return coder
        if self.local_model is not None:
            return self.local_model
        return (coder, CLASSICAL)

    def compress_dicom(self, data: bytes, *, modality: str | None = None, verify: bool = True) -> bytes:
        """One DICOM file -> a verified record (keyed when the codec has a keyring)."""
        return codec.compress_dicom(data, preset=self.preset, keep_codestream=self.keep_codestream, limits=self.limits,
                                    verify=verify, keyring=self.keyring, local_model=self.local_models(modality),
                                    models=self.models)

    def archive_dicom(self, data: bytes, *, verify: bool = True, sha256: str | None = None) -> tuple[bytes, dict, dict]:
        """One DICOM file -> (its record, its identifiers as the header states them: study,
        series, sop, patient, modality, transfer_syntax, and the record's description as
        ``inspect`` gives it), from one parse of the file (the modality it states picks
        the adapter) and one read of the record (verification's). ``sha256``: the file's
        SHA-256 in hex when the caller has it already (a migrate hashes every input to
        skip those archived before): the record states it without hashing the file again."""
        from .dicom import parse_dicom

        limits = codec.parse_limits(self.limits or DicomLimits(), self.preset, verify=verify)
        parsed = parse_dicom(data, keep_codestream=self.keep_codestream, limits=limits)
        ids = dict(parsed.identifiers)
        blob, record = codec.compress_dicom_read_back(
            data, self.preset, self.keep_codestream, self.limits, verify, self.keyring,
            self.local_models(ids.get("modality")), self.models, parsed, sha256)
        info = codec.inspect_record(blob) if record is None else codec.describe_record(record, len(blob))
        return blob, ids, info

    def decompress_dicom(self, blob: bytes, *, keyring: Any = ...) -> bytes:
        """The record's file: the original with the keyring (the codec's unless given; None:
        the de-identified file of a keyed record)."""
        ring = self.keyring if keyring is ... else keyring
        return codec.decompress_dicom(blob, keyring=ring, limits=self.limits, models=self.models)

    def compress_pixels(self, array: np.ndarray, *, bits_stored: int, signed: bool,
                        high_bit: int | None = None) -> bytes:
        return codec.compress_pixels(array, bits_stored=bits_stored, signed=signed, preset=self.preset,
                                     high_bit=high_bit, local_model=self.local_model)

    def decompress_pixels(self, blob: bytes) -> np.ndarray:
        return codec.decompress_pixels(blob, limits=self.limits, models=self.models)

    def pixel_values(self, blob: bytes) -> tuple[np.ndarray, dict]:
        """A pixel-coded record's decoded words (frames, samples, rows, cols) and sample
        format ({bits_allocated, bits_stored, high_bit, signed}), checked against its digest."""
        record = ct.read_record(blob)
        pixels = record.config.get("pixels")
        if not isinstance(pixels, dict):
            raise UnsupportedError("record holds no coded pixels (kept verbatim, or no pixel data)")
        try:
            fmt = dict(pixels["format"])
        except (KeyError, TypeError, ValueError):
            raise CorruptRecordError("pixel config has no sample format") from None
        return codec.decode_words(pixels, record, limits=self.limits, models=self.models), fmt

    @staticmethod
    def inspect(blob: bytes) -> dict:
        return codec.inspect_record(blob)


def dicom_identifiers(data: bytes) -> dict[str, str | None]:
    """A DICOM file's study / series / SOP / patient identifiers, modality and transfer
    syntax, read from its header alone ({} when pydicom cannot read it). Codec.archive_dicom
    gives the same from the parse it codes with."""
    import io

    import pydicom

    from .dicom import quiet_pydicom
    from .dicom.reading import identifiers

    try:
        with quiet_pydicom():
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
    except Exception:  # noqa: BLE001 - best effort, as documented
        return {}
    return identifiers(ds)


def set_model_threads(n: int) -> None:
    """The codec's CPU threads (the bitstream does not depend on them): numpy's BLAS at
    once, and torch's for the transformer path when the path loads torch, so a process
    that never codes with a transformer never imports it (``medcodec.model.threads``)."""
    from .model.threads import set_threads

    set_threads(n)


def check_model(models: ModelStore, model_id: str, sha256: str | None, adapter_sha256: str | None = None) -> None:
    """Raise MedcodecError unless ``models`` can decode records naming this model: the
    shipped base with that SHA-256, and the adapter (held, and fitted to that base)."""
    models.local_model(model_id, sha256, adapter_sha256)


# --- fitting adapters (training: loads torch, peft and the fitting loop; decoding never does)


def fitting_image(data: bytes) -> dict | None:
    """One DICOM file -> the planes an adapter is fitted on ({"planes", "k", "shape"}), or None
    for a file without coded pixels (or one that does not read)."""
    from .model.adapt import fitting_image as prepare

    return prepare(data)


def fit_adapters(images: list[dict], *, rank: int = 4, steps: int = 600, prior: bool = True, seed: int = 0,
                 threads: int = 1, min_images: int = 4, log=None) -> dict:
    """One A-LoRA adapter of the shipped base transformer per modality group.

    ``images``: [{"group": modality group, **fitting_image(data)}]. A group needs
    ``min_images`` images with a local path (k > 0); about a fifth of them validate.
    Returns {"base_model", "base_sha256", "config", "adapters": {group: {"blob", "metrics"}},
    "fallback": {group: why it keeps the base model}}."""
    from dataclasses import asdict

    from .model.adapt import AdaptConfig, fit_group_adapters
    from .model.registry import load_model
    from .models import BASE_TRANSFORMER

    config = AdaptConfig(rank=rank, steps=steps, prior=prior, seed=seed, threads=threads)
    results, fallback = fit_group_adapters(images, config, min_images=min_images, log=log or (lambda m: None),
                                           base_model=BASE_TRANSFORMER)
    return {
        "base_model": BASE_TRANSFORMER,
        "base_sha256": load_model(BASE_TRANSFORMER, device="cpu").sha256,
        "config": asdict(config),
        "adapters": {g: {"blob": r.blob, "metrics": r.metrics} for g, r in results.items()},
        "fallback": fallback,
    }
