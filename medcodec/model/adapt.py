"""A-LoRA: per-archive LoRA adapters for the local-path transformer, with an anatomical prior.

Fine-tuning runs in float (``peft`` LoRA on the attention and MLP projections of the
``transformers`` Llama, over a float copy of the shipped *integer* base model); coding
only ever uses the exported integer result:

* each LoRA pair becomes integer factors in the base model's weight grid,
  ``A_int`` (rank x in, int8 range) and ``B_int`` (out x rank) with a power-of-two shift;
* the adapted weights are ``W + round((B_int @ A_int) / 2**shift)``: integer arithmetic,
  identical on every machine, so the adapted model is as exact as the base.

The adapter file format, merging and modality groups are model/adapter.py (what
decoding loads); this module is fitting only (float network, peft, training loop).

The anatomical prior weights the training loss from the global modality alone (the
decoder could compute it too): a body/foreground mask (Otsu threshold on 8x8 block
means, the largest connected components, holes filled) and edge density inside it.
Background (air, padding, collimator) counts BACKGROUND_WEIGHT of a foreground token.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

from .floatnet import FloatLocalModel
from .geometry import N_BINS, N_CAUSAL
from .intnet import ACT_SHIFT, OUT_SHIFT, PROMPT_SHIFT, REQUANT_SHIFT, ModelShape
from .adapter import ADAPTER_KIND, MAX_RANK, apply_adapter
from .registry import LoadedModel, pack
from .train import Samples, TrainConfig, fit, float_bits, integer_bits

# peft target module -> the integer model's projection name
LORA_TARGETS = {
    "q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o",
    "gate_proj": "gate", "up_proj": "up", "down_proj": "down",
}
A_LEVELS = 127  # LoRA A rows are quantized to +-127
B_BITS = 20  # LoRA B (in base weight-grid units) keeps about 20 significant bits
TRAIN_PATCHES = 24000  # patches an adapter is fitted on, per modality, spread over its planes
VALID_PATCHES = 6000  # patches it is validated (and benchmarked) on

BLOCK = 8  # the prior is computed on 8x8 blocks (a patch is 4x8)
# Calibrated on 7 *training* images (top half fits, bottom half validates, 2 seeds, rank 4,
# 400 steps; unweighted validation bits, which is what coding pays), relative to plain
# LoRA: background 0.1 / edge 1.0 -6.8% mean (-1.5% median), 0.3 / 1.0 -2.1%, 0.5 / 0.5
# -0.7% (-0.15% median), 1.0 / 1.0 -0.5% (0.0% median). Down-weighting background
# never paid on coded bits: the unweighted loss is already the coding objective. 0.5 / 0.5
# keeps the prior's intent (anatomy first) at the smallest measured cost.
BACKGROUND_WEIGHT = 0.5
EDGE_GAIN = 0.5  # foreground weight is 1 + EDGE_GAIN * edge density
MIN_COMPONENT_FRACTION = 0.1  # keep foreground components at least this fraction of the largest


# --- the anatomical prior ------------------------------------------------------------------


def _otsu(values: np.ndarray) -> float | None:
    """Otsu threshold of a 1-D sample; None when it is (nearly) constant."""
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-9:
        return None
    hist, edges = np.histogram(values, bins=256, range=(lo, hi))
    p = hist.astype(np.float64) / hist.sum()
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    m0 = np.cumsum(p * centres)
    total = m0[-1]
    w1 = 1.0 - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total * w0 - m0) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = -1.0
    return float(edges[int(np.argmax(between)) + 1])


def _components(mask: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """4-connected labels of a small boolean grid (0 = not in mask) and each label's size."""
    labels = np.zeros(mask.shape, dtype=np.int32)
    sizes = [0]
    rows, cols = mask.shape
    for r0, c0 in zip(*np.nonzero(mask)):
        if labels[r0, c0]:
            continue
        label = len(sizes)
        labels[r0, c0] = label
        queue, size = deque([(r0, c0)]), 0
        while queue:
            r, c = queue.popleft()
            size += 1
            for rr, cc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
                if 0 <= rr < rows and 0 <= cc < cols and mask[rr, cc] and not labels[rr, cc]:
                    labels[rr, cc] = label
                    queue.append((rr, cc))
        sizes.append(size)
    return labels, sizes


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Background cells not 4-connected to the grid border become foreground."""
    labels, _ = _components(~mask)
    border = set(np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))) - {0}
    outside = np.isin(labels, list(border))
    return ~outside


def foreground_mask(global_part: np.ndarray) -> np.ndarray:
    """Block-level body/foreground mask (ceil(rows/8), ceil(cols/8)) from the global modality."""
    g = np.asarray(global_part, dtype=np.float64)
    rows, cols = g.shape
    br, bc = -(-rows // BLOCK), -(-cols // BLOCK)
    padded = np.pad(g, ((0, br * BLOCK - rows), (0, bc * BLOCK - cols)), mode="edge")
    means = padded.reshape(br, BLOCK, bc, BLOCK).mean(axis=(1, 3))
    t = _otsu(means.ravel())
    if t is None:
        return np.ones((br, bc), dtype=bool)
    mask = means >= t
    labels, sizes = _components(mask)
    if len(sizes) > 1:
        largest = max(sizes[1:])
        keep = [i for i, s in enumerate(sizes) if i and s >= MIN_COMPONENT_FRACTION * largest]
        mask = np.isin(labels, keep)
    return _fill_holes(mask)


def anatomical_prior(
    global_part: np.ndarray, *, background: float = BACKGROUND_WEIGHT, edge_gain: float = EDGE_GAIN
) -> np.ndarray:
    """Per-pixel loss weights (float32, shape of the plane) from the global modality alone.

    Foreground weight is 1 + edge_gain * edge density (the block's mean gradient magnitude over the
    99th percentile inside the foreground, clipped to [0, 1]); background is ``background``.
    """
    g = np.asarray(global_part, dtype=np.float64)
    rows, cols = g.shape
    mask = foreground_mask(g)
    br, bc = mask.shape
    grad = np.zeros_like(g)
    grad[:, 1:] += np.abs(np.diff(g, axis=1))
    grad[1:, :] += np.abs(np.diff(g, axis=0))
    padded = np.pad(grad, ((0, br * BLOCK - rows), (0, bc * BLOCK - cols)), mode="edge")
    edges = padded.reshape(br, BLOCK, bc, BLOCK).mean(axis=(1, 3))
    scale = np.percentile(edges[mask], 99) if mask.any() else 0.0
    density = np.clip(edges / scale, 0.0, 1.0) if scale > 0 else np.zeros_like(edges)
    blocks = np.where(mask, 1.0 + edge_gain * density, background)
    return np.repeat(np.repeat(blocks, BLOCK, axis=0), BLOCK, axis=1)[:rows, :cols].astype(np.float32)


# --- float copy of an integer model ---------------------------------------------------------


def float_from_integer(tensors: dict[str, torch.Tensor], meta: dict) -> FloatLocalModel:
    """The float model whose weights are the integer model's, dequantized (for fine-tuning)."""
    shape = ModelShape(hidden=int(meta["hidden"]), layers=int(meta["layers"]), heads=int(meta["heads"]),
                       ffn=int(meta["ffn"]))
    model = FloatLocalModel(shape)
    a = 2.0**ACT_SHIFT
    t = {n: v.double() for n, v in tensors.items()}

    def linear(lin: torch.nn.Linear, prefix: str, in_shift: int, out_shift: int) -> None:
        scale = t[prefix + ".mult"] / 2.0 ** (REQUANT_SHIFT + out_shift - in_shift)
        lin.weight.copy_((t[prefix + ".weight"] * scale[:, None]).float())
        if lin.bias is not None:
            lin.bias.copy_((t[prefix + ".bias"] / 2.0**out_shift).float())

    with torch.no_grad():
        model.emb_k.weight.copy_((t["emb_k"] / a).float())
        model.emb_causal.weight.copy_((t["emb_causal"] / a).reshape(N_CAUSAL * (N_BINS + 1), shape.hidden).float())
        linear(model.prompt, "prompt", PROMPT_SHIFT, ACT_SHIFT)
        for i, layer in enumerate(model.llm.layers):
            p = f"layers.{i}."
            layer.input_layernorm.weight.copy_((t[p + "in_norm"] / a).float())
            layer.post_attention_layernorm.weight.copy_((t[p + "post_norm"] / a).float())
            for target, name in LORA_TARGETS.items():
                module = getattr(layer.self_attn if target[0] in "qkvo" else layer.mlp, target)
                linear(module, p + name, ACT_SHIFT, ACT_SHIFT)
        model.llm.norm.weight.copy_((t["final_norm"] / a).float())
        linear(model.head, "head", ACT_SHIFT, OUT_SHIFT)
    model.eval()
    return model


# --- adapter files --------------------------------------------------------------------------


def _lora_modules(model: FloatLocalModel):
    """(integer-model prefix, peft LoRA layer) for every adapted projection."""
    for i, layer in enumerate(model.llm.layers):
        for target, name in LORA_TARGETS.items():
            module = getattr(layer.self_attn if target[0] in "qkvo" else layer.mlp, target)
            if hasattr(module, "lora_A"):
                yield f"layers.{i}.{name}", module


def export_adapter(model: FloatLocalModel, base: LoadedModel, *, rank: int, extra_meta: dict | None = None) -> bytes:
    """Integer LoRA factors in the base weight grid -> adapter file bytes."""
    tensors: dict[str, torch.Tensor] = {}
    for prefix, module in _lora_modules(model):
        a = module.lora_A["default"].weight.detach().double()  # (r, in)
        b = module.lora_B["default"].weight.detach().double() * float(module.scaling["default"])  # (out, r)
        grid = base.tensors[prefix + ".mult"].double() / 2.0**REQUANT_SHIFT  # float weight per grid unit
        sa = a.abs().amax(dim=1).clamp_min(1e-12) / A_LEVELS
        a_int = torch.round(a / sa[:, None])
        b_grid = b / grid[:, None] * sa[None, :]
        peak = float(b_grid.abs().max())
        shift = 0 if peak == 0.0 else max(0, min(40, B_BITS - math.ceil(math.log2(peak))))
        tensors[prefix + ".lora_a"] = a_int.to(torch.int64)
        tensors[prefix + ".lora_b"] = torch.round(b_grid * 2.0**shift).to(torch.int64)
        tensors[prefix + ".lora_shift"] = torch.tensor([shift], dtype=torch.int64)
    meta = {
        "kind": ADAPTER_KIND,
        "base_model": base.model_id,
        "base_sha256": base.sha256,
        "rank": str(rank),
        **{k: str(v) for k, v in (extra_meta or {}).items()},
    }
    return pack(tensors, meta)


# --- fine-tuning ----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class AdaptConfig:
    rank: int = 4
    steps: int = 600
    batch: int = 128
    lr: float = 3e-3
    prior: bool = True  # weight the loss by the anatomical prior (A-LoRA); False: plain LoRA
    seed: int = 0
    threads: int = 2


@dataclass
class AdaptResult:
    blob: bytes
    model: LoadedModel
    metrics: dict = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.blob).hexdigest()


def lora_model(base: LoadedModel, rank: int) -> tuple[FloatLocalModel, list[torch.nn.Parameter]]:
    """Float copy of ``base`` with peft LoRA layers on every attention / MLP projection."""
    from peft import LoraConfig, inject_adapter_in_model

    if not 1 <= rank <= MAX_RANK:
        raise ValueError(f"rank must be 1..{MAX_RANK}, got {rank}")
    model = float_from_integer(base.tensors, base.meta)
    for p in model.parameters():
        p.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, bias="none", target_modules=list(LORA_TARGETS))
    inject_adapter_in_model(config, model.llm)
    params = [p for n, p in model.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    return model, params


def fine_tune(
    base: LoadedModel,
    train: Samples,
    valid: Samples,
    config: AdaptConfig,
    *,
    extra_meta: dict | None = None,
    log=print,
) -> AdaptResult:
    """Fit one adapter on ``train``; metrics on ``valid`` (and a train subset), integer models."""
    torch.manual_seed(config.seed)
    model, params = lora_model(base, config.rank)
    tc = TrainConfig(steps=config.steps, batch=config.batch, lr=config.lr, seed=config.seed,
                     threads=config.threads, weight_decay=0.0)
    started = time.perf_counter()
    fit(model, params, train, tc, weighted=config.prior, log=log)
    seconds = time.perf_counter() - started
    blob = export_adapter(model, base, rank=config.rank,
                          extra_meta={"prior": config.prior, "steps": config.steps, **(extra_meta or {})})
    adapted = apply_adapter(base, blob)
    metrics = {"fit_seconds": round(seconds, 1), "adapter_bytes": len(blob),
               "train_tokens": int(config.steps * config.batch * 32)}
    for split, samples in (("train", _subset(train, 2048, config.seed)), ("valid", valid)):
        if not len(samples):
            continue
        arrays, weights = samples.arrays(), samples.weights()
        for label, tensors in (("base", base.tensors), ("adapted", adapted.tensors)):
            metrics[f"{split}_bits_{label}"] = round(integer_bits(tensors, base.meta, arrays), 5)
            metrics[f"{split}_bits_{label}_prior_weighted"] = round(
                integer_bits(tensors, base.meta, arrays, weights=weights), 5)
        if split == "valid":
            metrics["valid_bits_adapted_float"] = round(float_bits(model, arrays), 5)
    return AdaptResult(blob, adapted, metrics)


def _subset(samples: Samples, n: int, seed: int) -> Samples:
    """At most ``n`` patches of ``samples`` (for cheap train-split metrics)."""
    total = len(samples)
    if total <= n:
        return samples
    idx = np.sort(np.random.default_rng(seed).choice(total, n, replace=False))
    prompt, causal, target, ks = samples.arrays()
    weights = samples.weights()
    out = Samples()
    out.prompt, out.causal, out.target = [prompt[idx]], [causal[idx]], [target[idx]]
    out.k, out.weight = [ks[idx]], [weights[idx]]
    return out


def plane_samples(
    planes: list[tuple[np.ndarray, int]], per_plane: int, seed: int, **prior_args
) -> Samples:
    """Patches of (values plane, k) pairs at the coder's own split, weighted by the prior."""
    rng = np.random.default_rng(seed)
    out = Samples()
    for plane, k in planes:
        if k <= 0:
            continue
        prior = anatomical_prior(np.asarray(plane, dtype=np.int64) >> k, **prior_args)
        out.add_plane(np.asarray(plane), k, per_plane, rng, weight_map=prior)
    return out


__all__ = [
    "AdaptConfig", "AdaptResult", "anatomical_prior", "export_adapter", "fine_tune", "fit_group_adapters",
    "fitting_image", "float_from_integer", "foreground_mask", "plane_samples",
]


# --- fitting an archive's adapters (what `medarchive adapt` runs) ------------------------------

VALID_FRACTION = 5  # every 5th image of a modality (at least one) validates
FRAME_CAP = 2  # planes per image: at most this many frames (all samples)


def fitting_image(data: bytes) -> dict | None:
    """One DICOM file -> {"planes": [(plane, k)], "k", "shape"} as the transformer codes it
    (None for a file without coded pixels, or one that does not read)."""
    from ..codec import coding_values
    from ..dicom import DicomLimits, parse_dicom
    from ..planes import SampleFormat, choose_k_transformer
    from .geometry import MAX_K

    try:
        parsed = parse_dicom(data, limits=DicomLimits())
    except Exception:  # noqa: BLE001 - migrate dead-letters what cannot be read; fitting skips it
        return None
    if parsed.spec is None or parsed.frames is None or parsed.restore_mode == "verbatim":
        return None
    values, _, bits, _ = coding_values(parsed.frames, SampleFormat.of(parsed.spec))
    n_frames = values.shape[0]
    k, _ = choose_k_transformer(values[n_frames // 2, 0], bits, max_k=MAX_K)
    frames = sorted({int(round(x)) for x in np.linspace(0, n_frames - 1, min(FRAME_CAP, n_frames))})
    return {"planes": [(values[f, s], k) for f in frames for s in range(values.shape[1])], "k": k,
            "shape": list(values.shape)}


def fit_group_adapters(images: list[dict], config: AdaptConfig, *, min_images: int, log,
                       base_model: str) -> tuple[dict, dict]:
    """One adapter per modality group ({"group", "planes", "k"} images) with at least
    ``min_images`` usable images -> ({group: AdaptResult}, {group: why it keeps the base})."""
    from .registry import load_model

    base = load_model(base_model, device="cpu")
    by_group: dict[str, list[dict]] = {}
    for image in images:
        by_group.setdefault(image["group"], []).append(image)
    results, fallback = {}, {}
    for group, members in sorted(by_group.items()):
        usable = [m for m in members if m["k"] > 0]
        if len(usable) < min_images:
            fallback[group] = f"{len(usable)} usable image(s) < --min-images {min_images}: base model"
            log(f"{group}: {fallback[group]}")
            continue
        n_valid = max(1, len(usable) // VALID_FRACTION)
        valid_imgs, train_imgs = usable[:n_valid], usable[n_valid:]
        train_planes = [p for m in train_imgs for p in m["planes"]]
        valid_planes = [p for m in valid_imgs for p in m["planes"]]
        train = plane_samples(train_planes, max(64, TRAIN_PATCHES // len(train_planes)), config.seed)
        valid = plane_samples(valid_planes, max(64, VALID_PATCHES // len(valid_planes)), config.seed + 1)
        log(f"{group}: fitting on {len(train_imgs)} image(s) ({len(train)} patches), "
            f"validating on {len(valid_imgs)} ({len(valid)} patches)")
        result = fine_tune(base, train, valid, config, extra_meta={"modality": group},
                           log=lambda m, g=group: log(f"{g}: {m}"))
        result.metrics.update({"train_images": len(train_imgs), "valid_images": len(valid_imgs)})
        results[group] = result
        m = result.metrics
        log(f"{group}: valid bits/symbol base {m['valid_bits_base']:.4f} -> adapted {m['valid_bits_adapted']:.4f} "
            f"({m['fit_seconds']:.0f} s)")
    return results, fallback
