"""The transformer local-path coder: integer model probabilities -> constriction.

Stream order (part of the format): patch groups in order; inside a group, token
position 0 of every patch, then position 1, ...; tokens outside the plane are skipped.
The encoder gets all probabilities from one teacher-forced pass; the decoder runs the
same integer model position by position with a key/value cache (on the CPU both
compiled, ``intkernel``; on a GPU torch's). The model is exact,
so both see identical integer counts whatever the batch size, thread count or device.
"""

from __future__ import annotations

import numpy as np
import torch

from ..entropy import Decoder, Encoder, counts_to_probabilities
from ..errors import CorruptRecordError
from .geometry import (
    MAX_K,
    PATCH_TOKENS,
    PatchGrid,
    causal_inputs,
    causal_inputs_at,
    causal_known,
    prompt_features,
    scaled_symbols,
)
from .intkernel import CompiledCounts
from .registry import LoadedModel

DEFAULT_BATCH_PATCHES = 2048


def _grouped(counts: torch.Tensor, k: int) -> np.ndarray:
    """Counts over N_BINS -> counts over the 2**k symbols (sums of adjacent bins)."""
    return counts.unflatten(-1, (1 << k, 1 << (MAX_K - k))).sum(-1).cpu().numpy()


def _compiled(net) -> CompiledCounts:
    """The compiled full pass of ``net`` (made once per model: nets are cached by the registry)."""
    compiled = getattr(net, "_compiled_counts", None)
    if compiled is None:
        compiled = net._compiled_counts = CompiledCounts(net)
    return compiled


class TransformerLocalPathCoder:
    """LocalPathModel backed by an exported integer transformer."""

    def __init__(self, model: LoadedModel, *, batch_patches: int = DEFAULT_BATCH_PATCHES) -> None:
        self.model = model
        self.model_id = model.model_id
        self.sha256 = model.sha256
        self.adapter_sha256 = model.adapter_sha256
        self.batch_patches = max(1, int(batch_patches))
        self.tokens_coded = 0

    @property
    def max_k(self) -> int:
        return MAX_K

    def _check(self, info) -> None:
        if info.k > MAX_K:
            raise CorruptRecordError(f"local path k={info.k} exceeds the transformer's maximum {MAX_K}")

    def encode(self, local, global_part, info, prev=None) -> bytes:
        self._check(info)
        if info.k == 0:
            return b""
        k, net = info.k, self.model.net
        grid = PatchGrid(info.rows, info.cols)
        enc = Encoder()
        local = np.asarray(local, dtype=np.int64)
        for lo, hi in grid.groups():
            r, c, valid = grid.coordinates(lo, hi)
            symbols = np.where(valid, local[np.minimum(r, info.rows - 1), np.minimum(c, info.cols - 1)], 0)
            prompt = prompt_features(global_part, r, c)
            causal = causal_inputs(scaled_symbols(symbols, k), causal_known(valid))
            if net.device.type == "cpu":
                counts = _compiled(net).counts(prompt, causal, k, valid, 1 << k)
            else:
                counts = np.empty((hi - lo, PATCH_TOKENS, 1 << k), dtype=np.int64)
                with torch.inference_mode():
                    for b in range(0, hi - lo, self.batch_patches):
                        s = slice(b, b + self.batch_patches)
                        h = net.embed(torch.from_numpy(prompt[s]), torch.from_numpy(causal[s]), k)
                        counts[s] = _grouped(net.counts(h, torch.from_numpy(valid[s])), k)
            order = valid.T  # position-major
            enc.categorical(symbols.T[order], counts_to_probabilities(counts.transpose(1, 0, 2)[order]))
            self.tokens_coded += int(valid.sum())
        return enc.finish()

    def decode(self, data, global_part, info, prev=None) -> np.ndarray:
        self._check(info)
        if info.k == 0:
            if data:
                raise CorruptRecordError("local stream present although k = 0")
            return np.zeros((info.rows, info.cols), dtype=np.int64)
        k, net = info.k, self.model.net
        grid = PatchGrid(info.rows, info.cols)
        dec = Decoder(data)
        out = np.zeros((info.rows, info.cols), dtype=np.int64)
        compiled = _compiled(net) if net.device.type == "cpu" else None
        for lo, hi in grid.groups():
            r, c, valid = grid.coordinates(lo, hi)
            prompt_np = prompt_features(global_part, r, c)
            prompt = torch.from_numpy(prompt_np)
            known = causal_known(valid)
            valid_t = torch.from_numpy(valid)
            scaled = np.zeros(valid.shape, dtype=np.int64)
            batches = [slice(b, b + self.batch_patches) for b in range(0, hi - lo, self.batch_patches)]
            caches: list[list] = [[] for _ in batches]
            kernel_cache = None if compiled is None else compiled.new_cache(hi - lo, PATCH_TOKENS)
            with torch.inference_mode():
                for t in range(PATCH_TOKENS):
                    causal_np = causal_inputs_at(scaled, known, t)
                    if compiled is not None:
                        counts = compiled.step(prompt_np[:, t], causal_np, k, valid, t, kernel_cache, 1 << k)
                    else:
                        causal = torch.from_numpy(causal_np)
                        parts = []
                        for s, cache in zip(batches, caches):
                            h = net.embed(prompt[s, t : t + 1], causal[s, None], k)
                            parts.append(_grouped(net.counts(h, valid_t[s], start=t, cache=cache), k)[:, 0])
                        counts = np.concatenate(parts)
                    rows = valid[:, t]
                    symbols = dec.categorical(counts_to_probabilities(counts[rows]))
                    scaled[rows, t] = symbols << (MAX_K - k)
                    out[r[rows, t], c[rows, t]] = symbols
            self.tokens_coded += int(valid.sum())
        return out
