"""Training the base local-path model: samples, augmentation, loss, and evaluation.

Pure functions over numpy planes; the ``medarchive train-base`` job (jobs/train_base.py)
finds the images, calls :func:`train_base` and writes the exported weights.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..planes import MAX_LOCAL_PLANES, noise_level
from .floatnet import FloatLocalModel, export_integer, grouped_log_probs
from .geometry import (
    CAUSAL_SOURCE,
    N_CAUSAL,
    PATCH_COLS,
    PATCH_ROWS,
    PATCH_TOKENS,
    causal_inputs,
    prompt_features,
    scaled_symbols,
)
from .intnet import ModelShape, build


# Images never trained on, by file-name group (the same image ships in several transfer
# syntaxes, e.g. 693_J2KR / 693_UNCI / 693_UNCR, so the split is by group, never by file).
# Chosen for modality coverage before any result was seen: CT, MR (large and small), CR,
# colour US and speckle US.
HELD_OUT_GROUPS = ("693", "MR2", "RG3", "US1", "OBXXXX1A", "emri")


def image_group(name: str) -> str:
    """'693_J2KR.dcm' -> '693': files of one group hold the same picture."""
    return re.split(r"[_.]", name, maxsplit=1)[0]


def held_out(name: str) -> bool:
    """True for benchmark images that training must never see."""
    return image_group(name) in HELD_OUT_GROUPS


def training_ks(plane: np.ndarray, bits: int) -> list[int]:
    """The splits k the coder may pick for this plane, around its noise floor."""
    sigma = max(noise_level(plane), 1.0)
    centre = int(round(math.log2(sigma)))
    hi = min(MAX_LOCAL_PLANES, bits - 1)
    return [k for k in range(centre - 1, centre + 3) if 1 <= k <= hi]


@dataclass
class Samples:
    """Teacher-forcing batches: every token of every patch has all its causal neighbours."""

    prompt: list[np.ndarray] = field(default_factory=list)  # (n, T, N_PROMPT) int8
    causal: list[np.ndarray] = field(default_factory=list)  # (n, T, N_CAUSAL) int16
    target: list[np.ndarray] = field(default_factory=list)  # (n, T) int16
    k: list[np.ndarray] = field(default_factory=list)  # (n,) int8
    weight: list[np.ndarray] = field(default_factory=list)  # (n, T) float32 loss weights

    def add_plane(
        self, plane: np.ndarray, k: int, n: int, rng: np.random.Generator, weight_map: np.ndarray | None = None
    ) -> None:
        """``n`` random patches of ``plane`` split at ``k``; ``weight_map`` (per pixel) weights their loss."""
        rows, cols = plane.shape
        if rows < PATCH_ROWS or cols < PATCH_COLS or n <= 0:
            return
        values = plane.astype(np.int64)
        g, loc = values >> k, values & ((1 << k) - 1)
        r0 = rng.integers(0, rows - PATCH_ROWS + 1, n)
        c0 = rng.integers(0, cols - PATCH_COLS + 1, n)
        t = np.arange(PATCH_TOKENS)
        r = r0[:, None] + t[None, :] // PATCH_COLS
        c = c0[:, None] + t[None, :] % PATCH_COLS
        symbols = loc[r, c]
        known = np.broadcast_to(CAUSAL_SOURCE >= 0, (n, PATCH_TOKENS, N_CAUSAL))
        self.prompt.append(prompt_features(g, r, c))
        self.causal.append(causal_inputs(scaled_symbols(symbols, k), known).astype(np.int16))
        self.target.append(symbols.astype(np.int16))
        self.k.append(np.full(n, k, dtype=np.int8))
        w = np.ones((n, PATCH_TOKENS)) if weight_map is None else weight_map[r, c]
        self.weight.append(w.astype(np.float32))

    def __len__(self) -> int:
        return sum(len(k) for k in self.k)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return (
            np.concatenate(self.prompt),
            np.concatenate(self.causal),
            np.concatenate(self.target),
            np.concatenate(self.k),
        )

    def weights(self) -> np.ndarray:
        return np.concatenate(self.weight)


def augmentations(plane: np.ndarray) -> list[np.ndarray]:
    """The plane and its mirror images / transposes (anatomy has no preferred orientation)."""
    return [plane, plane[:, ::-1], plane[::-1, :], plane.T]


def collect(planes: list[tuple[np.ndarray, int]], per_plane: int, seed: int) -> Samples:
    """Patch samples from (plane, bits) pairs, spread over augmentations and candidate k."""
    rng = np.random.default_rng(seed)
    out = Samples()
    for plane, bits in planes:
        ks = training_ks(plane, bits)
        views = augmentations(plane)
        for k in ks:
            for view in views:
                out.add_plane(np.ascontiguousarray(view), k, per_plane // (len(ks) * len(views)), rng)
    return out


def _bits_per_symbol(logits_fn, arrays, batch: int, weights: np.ndarray | None = None) -> float:
    """Mean code length in bits per symbol; with ``weights`` (n, T), the weighted mean."""
    prompt, causal, target, ks = arrays
    total, count = 0.0, 0.0
    for k in np.unique(ks):
        idx = np.flatnonzero(ks == k)
        for lo in range(0, idx.size, batch):
            sel = idx[lo : lo + batch]
            logp = logits_fn(prompt[sel], causal[sel], int(k))
            tgt = torch.from_numpy(target[sel].astype(np.int64))
            bits = -logp.gather(-1, tgt[..., None])[..., 0] / math.log(2)
            w = torch.ones_like(bits) if weights is None else torch.from_numpy(weights[sel]).to(bits.dtype)
            total += float((bits * w).sum())
            count += float(w.sum())
    return total / max(count, 1e-12)


def float_bits(model: FloatLocalModel, arrays, batch: int = 512, weights: np.ndarray | None = None) -> float:
    """Cross-entropy of the float model in bits per local symbol."""

    def fn(p, c, k):
        with torch.no_grad():
            logits = model(torch.from_numpy(p.astype(np.int64)), torch.from_numpy(c.astype(np.int64)),
                           torch.full((p.shape[0],), k))
        return grouped_log_probs(logits, k)

    return _bits_per_symbol(fn, arrays, batch, weights)


def integer_bits(tensors, meta, arrays, batch: int = 512, weights: np.ndarray | None = None) -> float:
    """Cross-entropy of the exported integer model (what the coder pays, before adaptation)."""
    net = build(tensors, meta)

    def fn(p, c, k):
        h = net.embed(torch.from_numpy(p.astype(np.int64)), torch.from_numpy(c.astype(np.int64)), k)
        counts = net.counts(h, torch.ones(p.shape[0], PATCH_TOKENS, dtype=torch.bool))
        grouped = counts.unflatten(-1, (1 << k, -1)).sum(-1).double()
        return torch.log(grouped / grouped.sum(-1, keepdim=True))

    return _bits_per_symbol(fn, arrays, batch, weights)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    shape: ModelShape | None = None  # None when fine-tuning an existing model
    steps: int
    batch: int = 128
    lr: float = 3e-3
    seed: int = 0
    threads: int = 2
    weight_decay: float = 1e-4


def fit(
    model: FloatLocalModel,
    params: list[torch.nn.Parameter],
    samples: Samples,
    config: TrainConfig,
    *,
    weighted: bool = False,
    log=print,
) -> float:
    """AdamW with one-cycle LR over ``params``; batches drawn per k. Returns the seconds taken.

    ``weighted`` scales each token's loss by the samples' weights (normalized per batch).
    """
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    rng = np.random.default_rng(config.seed)
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=config.steps, pct_start=0.1)
    prompt, causal, target, ks = samples.arrays()
    weights = samples.weights() if weighted else None
    by_k = {int(k): np.flatnonzero(ks == k) for k in np.unique(ks)}
    share = np.array([idx.size for idx in by_k.values()], dtype=np.float64)
    order = list(by_k)
    started = time.perf_counter()
    model.train()
    for step in range(config.steps):
        k = order[rng.choice(len(order), p=share / share.sum())]
        sel = rng.choice(by_k[k], size=min(config.batch, by_k[k].size), replace=False)
        logits = model(torch.from_numpy(prompt[sel].astype(np.int64)), torch.from_numpy(causal[sel].astype(np.int64)),
                       torch.full((sel.size,), k))
        logp = grouped_log_probs(logits, k)
        tgt = torch.from_numpy(target[sel].astype(np.int64))
        bits = -logp.gather(-1, tgt[..., None])[..., 0] / math.log(2)
        if weights is None:
            loss = bits.mean()
        else:
            w = torch.from_numpy(weights[sel])
            loss = (bits * w).sum() / w.sum().clamp_min(1e-6)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == config.steps - 1:
            log(f"step {step:5d}  train {loss.item():.4f} bits/symbol  ({time.perf_counter() - started:.0f} s)")
    model.eval()
    return time.perf_counter() - started


def train_base(config: TrainConfig, train: Samples, valid: Samples, log=print) -> dict:
    """Train, export; returns {"model", "tensors", "meta", "metrics"}."""
    torch.manual_seed(config.seed)
    model = FloatLocalModel(config.shape)
    seconds = fit(model, list(model.parameters()), train, config, log=log)
    tensors, meta = export_integer(model)
    va = valid.arrays()
    metrics = {
        "valid_bits_float": round(float_bits(model, va), 5),
        "valid_bits_integer": round(integer_bits(tensors, meta, va), 5),
        "valid_bits_uniform": round(float(np.mean(va[3].astype(np.float64))), 5),
        "train_seconds": round(seconds, 1),
        "train_tokens": int(config.steps * config.batch * PATCH_TOKENS),
        "parameters": int(sum(p.numel() for p in model.parameters())),
    }
    return {"model": model, "tensors": tensors, "meta": meta, "metrics": metrics}


__all__ = ["HELD_OUT_GROUPS", "Samples", "TrainConfig", "collect", "fit", "held_out", "image_group", "train_base", "training_ks"]
