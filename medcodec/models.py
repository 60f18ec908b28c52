"""Which models a codec encodes and decodes with, passed explicitly.

A record names its local-path model by id (and a transformer by the SHA-256 of its
weights, and an A-LoRA adapter by the SHA-256 of the adapter file). A ``ModelStore``
resolves those names: the classical coder is built in, base transformers ship with the
package (medcodec/model/weights/), and adapters are the files handed to the store (an
archive keeps them under models/; the store never looks anywhere by itself). Nothing is
registered process-wide: two stores in one process see only their own adapters.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Iterable

from .errors import CorruptRecordError, ModelMismatchError, shown
from .paths import ClassicalLocalPathCoder, LocalPathModel

TRANSFORMER_PREFIX = "llm-"
CLASSICAL = ClassicalLocalPathCoder.model_id
# The shipped transformer `max` tries; records name it, so it is part of the format.
BASE_TRANSFORMER = "llm-base-v1"

# Modalities that share an adapter (one adapter per group; DICOM Modality codes).
MODALITY_GROUPS = {"DX": "CR", "RG": "CR", "PX": "CR", "IVUS": "US"}


def modality_group(modality: str | None) -> str:
    """'DX' -> 'CR', 'ct' -> 'CT', None -> 'OT': the adapter group of a DICOM Modality."""
    m = (modality or "").strip().upper() or "OT"
    return MODALITY_GROUPS.get(m, m)


class ModelStore:
    """Base models by id (checked by SHA-256) and A-LoRA adapters by SHA-256 (their files).

    ``adapters``: adapter files (bytes) this store can decode and encode with. Loading a
    transformer imports torch; a store used only with classical records never does."""

    def __init__(self, adapters: Iterable[bytes] = ()) -> None:
        self._adapters: dict[str, bytes] = {}
        self._merged: dict[tuple[str, str], object] = {}
        self._lock = threading.RLock()
        for blob in adapters:
            self.add_adapter(blob)

    def add_adapter(self, blob: bytes) -> str:
        """Keep an adapter file (refused unless it is one); returns its SHA-256."""
        from .model.adapter import read_adapter

        read_adapter(blob)
        sha = hashlib.sha256(blob).hexdigest()
        with self._lock:
            self._adapters[sha] = bytes(blob)
        return sha

    @property
    def adapters(self) -> list[str]:
        """SHA-256 of every adapter file the store holds."""
        with self._lock:
            return sorted(self._adapters)

    def adapter_meta(self, sha256: str) -> dict:
        """The adapter's metadata (its base model id and SHA-256, its fit)."""
        from .model.adapter import read_adapter

        return read_adapter(self._adapter(sha256, "?"))[1]

    def _adapter(self, sha256: str, model_id: str) -> bytes:
        with self._lock:
            blob = self._adapters.get(sha256)
        if blob is None:
            raise ModelMismatchError(
                f"record was coded with {shown(model_id)} + A-LoRA adapter {sha256[:16]}..., which is not in"
                " this model store: it is stored in the archive's models/ folder (restore and audit load it"
                " from there)")
        return blob

    def local_model(self, model_id: str, sha256: str | None = None,
                    adapter_sha256: str | None = None) -> LocalPathModel:
        """The local-path model a record names; a transformer's weights must match ``sha256``,
        and an adapter must be one this store holds."""
        if model_id == CLASSICAL:
            if adapter_sha256:
                raise CorruptRecordError(f"record names an adapter for the classical local model {shown(model_id)}")
            return ClassicalLocalPathCoder()
        if model_id.startswith(TRANSFORMER_PREFIX):
            from .model.coder import TransformerLocalPathCoder  # torch is imported only when needed
            from .model.registry import load_model

            base = load_model(model_id, sha256=sha256)
            if not adapter_sha256:
                return TransformerLocalPathCoder(base)
            return TransformerLocalPathCoder(self._merged_model(base, adapter_sha256))
        raise ModelMismatchError(
            f"record was coded with local model {shown(model_id)}; this reader knows {CLASSICAL!r} "
            f"and the shipped {TRANSFORMER_PREFIX}* models")

    def adapted(self, adapter_sha256: str) -> LocalPathModel:
        """The transformer coder of an adapter this store holds (its base named in the file)."""
        meta = self.adapter_meta(adapter_sha256)
        return self.local_model(meta["base_model"], meta["base_sha256"], adapter_sha256)

    def _merged_model(self, base, adapter_sha256: str):
        """The base with the adapter merged, built once per store and device."""
        from .model.adapter import apply_adapter
        from .model.registry import default_device

        device = default_device()
        key = (base.model_id, adapter_sha256, device)
        with self._lock:
            model = self._merged.get(key)
            if model is None:
                model = apply_adapter(base, self._adapter(adapter_sha256, base.model_id), device=device)
                self._merged[key] = model
        return model
