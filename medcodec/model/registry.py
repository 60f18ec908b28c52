"""Shipped local-path models: load by stable id, verify by SHA-256.

A model is two files under ``medcodec/model/weights/``: ``<id>.safetensors`` (the
exported integer tensors, stored as int32) and ``<id>.json`` (how it was trained: data,
command, seed, metrics). A record names the id and the SHA-256 of the safetensors file;
decoding with any other file under that id is refused.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from ..errors import ModelMismatchError, shown
from . import threads
from .intnet import IntegerTransformer, build

WEIGHTS_DIR = Path(__file__).with_name("weights")
threads.apply(torch)  # the count a host set before torch was loaded (medcodec.set_model_threads)
_INT32 = (-(1 << 31), (1 << 31) - 1)


@dataclass(frozen=True)
class LoadedModel:
    model_id: str
    sha256: str  # of the base weights file
    net: IntegerTransformer
    meta: dict
    tensors: dict = field(repr=False, default_factory=dict)  # the integer tensors net was built from
    adapter_sha256: str | None = None  # of the A-LoRA adapter merged into net, if any


def pack(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> bytes:
    """Integer tensors -> safetensors bytes (int32, checked), metadata as strings."""
    out = {}
    for name, t in sorted(tensors.items()):
        if int(t.min()) < _INT32[0] or int(t.max()) > _INT32[1]:
            raise ValueError(f"tensor {name} does not fit int32")
        out[name] = t.to(torch.int32).contiguous()
    return save_safetensors(out, metadata={k: str(v) for k, v in sorted(meta.items())})


def unpack(blob: bytes) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors = load_safetensors(blob)
    header_len = int.from_bytes(blob[:8], "little")
    meta = json.loads(blob[8 : 8 + header_len]).get("__metadata__", {})
    return tensors, meta


def model_from_bytes(model_id: str, blob: bytes, device: str = "cpu") -> LoadedModel:
    tensors, meta = unpack(blob)
    return LoadedModel(model_id, hashlib.sha256(blob).hexdigest(), build(tensors, meta, device), meta, tensors)


_CACHE: dict[tuple[str, str], LoadedModel] = {}  # shipped files, by id and device (a cache: no state)
_LOCK = threading.RLock()


def shipped_models() -> list[str]:
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.safetensors"))


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(model_id: str, *, sha256: str | None = None, device: str | None = None) -> LoadedModel:
    """The shipped model ``model_id`` (cached per process); ``sha256`` must match when given."""
    device = device or default_device()
    with _LOCK:
        model = _CACHE.get((model_id, device))
        if model is None:
            # Only a shipped id names a file: a record's id never becomes a path of its own.
            if model_id not in shipped_models():
                raise ModelMismatchError(
                    f"record was coded with local model {shown(model_id)}; shipped models: {shipped_models()}"
                )
            path = WEIGHTS_DIR / f"{model_id}.safetensors"
            model = model_from_bytes(model_id, path.read_bytes(), device)
            _CACHE[(model_id, device)] = model
    if sha256 is not None and sha256 != model.sha256:
        raise ModelMismatchError(
            f"record was coded with {model_id!r} sha256 {sha256[:16]}..., but this installation has "
            f"{model.sha256[:16]}...: decode with the medarchive version (or archive models/) that wrote it"
        )
    return model
