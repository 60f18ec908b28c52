"""A-LoRA adapters at run time: the adapter file format, exact merging into the integer
base model, and which modalities share an adapter. Decoding imports this module only;
fitting adapters (float network, peft, training loop) is model/adapt.py, loaded by
`medarchive adapt` alone.

The adapter file is safetensors (int32 tensors, metadata naming the base model id and
SHA-256); its SHA-256 is its identity. A record coded with an adapter names it, and
decoding needs the same bytes (the archive stores them once under ``models/``, and a
``medcodec.ModelStore`` hands them to the decoder).
"""

from __future__ import annotations

import hashlib

import torch

from ..errors import ModelMismatchError
from .intnet import build, rshift_round
from .registry import LoadedModel, unpack

ADAPTER_KIND = "medarchive-alora-v1"
MAX_RANK = 64


# Modalities that share an adapter (one adapter per group; DICOM Modality codes).
MODALITY_GROUPS = {"DX": "CR", "RG": "CR", "PX": "CR", "IVUS": "US"}


def modality_group(modality: str | None) -> str:
    """'DX' -> 'CR', 'ct' -> 'CT', None -> 'OT': the adapter group of a DICOM Modality."""
    m = (modality or "").strip().upper() or "OT"
    return MODALITY_GROUPS.get(m, m)



def read_adapter(blob: bytes) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors + metadata of an adapter file; refuses anything else."""
    try:
        tensors, meta = unpack(blob)
    except Exception as exc:
        raise ModelMismatchError(f"not an adapter file: {exc}") from None
    if meta.get("kind") != ADAPTER_KIND:
        raise ModelMismatchError(f"not an A-LoRA adapter (kind {meta.get('kind')!r}, expected {ADAPTER_KIND!r})")
    return tensors, meta


def merge_adapter(base_tensors: dict[str, torch.Tensor], adapter: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Base integer tensors with W + round(B_int @ A_int / 2**shift) for every adapted projection."""
    merged = dict(base_tensors)
    prefixes = sorted({n.rsplit(".", 1)[0] for n in adapter})
    for prefix in prefixes:
        name = prefix + ".weight"
        if name not in base_tensors:
            raise ModelMismatchError(f"adapter targets {prefix!r}, which the base model does not have")
        a, b = adapter[prefix + ".lora_a"], adapter[prefix + ".lora_b"]
        shift = int(adapter[prefix + ".lora_shift"][0])
        w = base_tensors[name]
        if a.shape[0] > MAX_RANK or b.shape != (w.shape[0], a.shape[0]) or a.shape[1] != w.shape[1]:
            raise ModelMismatchError(f"adapter tensors for {prefix!r} do not fit the base model")
        # Exact: |B| < 2**31, |A| <= 2**31, and rank * |B| * |A| stays below 2**53 for
        # the values export writes (checked, so a crafted file cannot break exactness).
        if int(b.abs().max()) * int(a.abs().max()) * a.shape[0] >= 1 << 53:
            raise ModelMismatchError(f"adapter tensors for {prefix!r} are too large for exact merging")
        delta = rshift_round(b.double() @ a.double(), shift)
        merged[name] = (w.to(torch.int64) + delta.to(torch.int64))
    return merged


def apply_adapter(base: LoadedModel, blob: bytes, *, device: str = "cpu") -> LoadedModel:
    """The base model with the adapter merged; the adapter must name this exact base."""
    adapter, meta = read_adapter(blob)
    if meta.get("base_model") != base.model_id or meta.get("base_sha256") != base.sha256:
        raise ModelMismatchError(
            f"adapter was fitted to {meta.get('base_model')!r} sha256 {str(meta.get('base_sha256'))[:16]}..., "
            f"not {base.model_id!r} sha256 {base.sha256[:16]}..."
        )
    tensors = merge_adapter(base.tensors, adapter)
    net = build(tensors, base.meta, device)
    return LoadedModel(base.model_id, base.sha256, net, base.meta, tensors, hashlib.sha256(blob).hexdigest())
