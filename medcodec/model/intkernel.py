"""The integer transformer's full (teacher-forced) pass, compiled: the encoder's counts.

``IntegerTransformer.counts`` computes them as float64 torch operations over a batch of
patches: each step (a matrix product, a rounding, a clamp, a table lookup) reads and
writes the whole batch's activations, so most of its time went to memory, not
arithmetic (on the pipeline benchmark's files the matrix products were 0.8 s of the
transformer's 3.6 s). Here one patch (32 tokens) goes through every layer while its
activations stay in cache.

The arithmetic is the same, operation for operation, so the counts are the same integers
(tested against the torch model, ``tests/test_model.py``): every value is an integer held
in a float64 below 2**53, so products and sums are exact in any order; scalings by powers
of two are exact; ``np.rint`` rounds halves to even as ``torch.round`` does; the integer
divisions and square roots are done in int64 here, exactly, where the torch model
corrects float estimates to the same integers. The decoder's cached steps stay in torch:
they are the same model, so they give these counts too.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .intnet import (
    ACT_MAX,
    ACT_SHIFT,
    NORM_SHIFT,
    REQUANT_SHIFT,
    ROPE_SHIFT,
    SILU_RANGE,
    SILU_STEP_SHIFT,
    SOFTMAX_SHIFT,
    IntegerTransformer,
)

# jit.kernel's settings, and two of fastmath's licences: reassociating sums ("reassoc", so
# the dot products vectorize) and fusing a product into a sum ("contract"). Neither can
# change a value here: every product and every partial sum, in any order, is an integer
# below 2**53 (the bounds IntegerTransformer checks when it loads a model), so it is
# exact whichever way it is computed. No other fastmath licence: NaNs, infinities and
# signed zeros keep their rules. With them, 2,048 patches took 0.22 s instead of 0.30 s.
kernel = njit(cache=True, nogil=True, _nrt=False, fastmath={"contract", "reassoc"})

_ROPE_SCALE = 1.0 / (1 << ROPE_SHIFT)
_SILU_SCALE = 1.0 / (1 << SILU_STEP_SHIFT)
_ACT_SCALE = 1.0 / (1 << ACT_SHIFT)
_NORM_SCALE = 1.0 / (1 << NORM_SHIFT)
_SOFTMAX_SCALE = 1.0 / (1 << SOFTMAX_SHIFT)


@kernel
def _linear(x, n, w, mult, bias, use_bias, out):
    """out[:n] = clamp(rint((x[:n] @ w.T) * mult) (+ bias)): IntegerLinear, w as (out, in)."""
    n_out, n_in = w.shape
    t = 0
    while t + 1 < n:
        for o in range(n_out):
            a0 = 0.0
            a1 = 0.0
            for i in range(n_in):
                wv = w[o, i]
                a0 += x[t, i] * wv
                a1 += x[t + 1, i] * wv
            y0 = np.rint(a0 * mult[o])
            y1 = np.rint(a1 * mult[o])
            if use_bias:
                y0 += bias[o]
                y1 += bias[o]
            out[t, o] = min(max(y0, -ACT_MAX), ACT_MAX)
            out[t + 1, o] = min(max(y1, -ACT_MAX), ACT_MAX)
        t += 2
    while t < n:
        for o in range(n_out):
            acc = 0.0
            for i in range(n_in):
                acc += x[t, i] * w[o, i]
            y = np.rint(acc * mult[o])
            if use_bias:
                y += bias[o]
            out[t, o] = min(max(y, -ACT_MAX), ACT_MAX)
        t += 1


@kernel
def _norm(h, n, gain, eps, out):
    """RMSNorm as intnet._norm: floor(sum h^2 / hidden) + eps, its integer square root,
    floor(2**24 / root), and h * gain scaled by that / 2**24, rounded and clamped."""
    hidden = h.shape[1]
    for t in range(n):
        s = 0.0
        for i in range(hidden):
            s += h[t, i] * h[t, i]
        ms = np.int64(s) // hidden + eps
        r = np.int64(np.sqrt(np.float64(ms)))
        while r * r > ms:
            r -= 1
        while (r + 1) * (r + 1) <= ms:
            r += 1
        inv = np.float64((np.int64(1) << NORM_SHIFT) // r) * _NORM_SCALE
        for i in range(hidden):
            out[t, i] = min(max(np.rint((h[t, i] * gain[i]) * inv), -ACT_MAX), ACT_MAX)


@kernel
def _rope(x, n, heads, cos, sin):
    """In place: each head's rotary rotation (rotate_half, as transformers' Llama), the
    products summed, scaled by 2**-14, rounded and clamped."""
    hd = cos.shape[1]
    half = hd // 2
    for t in range(n):
        for hh in range(heads):
            b = hh * hd
            for d in range(half):
                a, c = x[t, b + d], x[t, b + d + half]
                lo = a * cos[t, d] + (-c) * sin[t, d]
                hi = c * cos[t, d + half] + a * sin[t, d + half]
                x[t, b + d] = min(max(np.rint(lo * _ROPE_SCALE), -ACT_MAX), ACT_MAX)
                x[t, b + d + half] = min(max(np.rint(hi * _ROPE_SCALE), -ACT_MAX), ACT_MAX)


@kernel
def _attend(q, k, v, n, heads, valid, att_scale, exp_att, scores, out):
    """Causal attention of tokens 0..n-1 (a key before the query counts where ``valid``;
    the query's own always), as intnet._attend: rounded logits, table exponentials of
    (max - logit), and the weighted values scaled by floor(2**33 / their sum)."""
    hd = q.shape[1] // heads
    last = exp_att.size - 1
    for hh in range(heads):
        b = hh * hd
        for tq in range(n):
            top = -1e300
            for tk in range(tq + 1):
                if tk < tq and not valid[tk]:
                    continue
                dot = 0.0
                for d in range(hd):
                    dot += q[tq, b + d] * k[tk, b + d]
                s = np.rint(dot * att_scale)
                scores[tk] = s
                top = max(top, s)
            total = 0.0
            for d in range(hd):
                out[tq, b + d] = 0.0
            for tk in range(tq + 1):
                if tk < tq and not valid[tk]:
                    continue
                idx = min(max(top - scores[tk], 0.0), np.float64(last))
                e = exp_att[np.int64(idx)]
                total += e
                for d in range(hd):
                    out[tq, b + d] += e * v[tk, b + d]
            inv = np.float64((np.int64(1) << SOFTMAX_SHIFT) // np.int64(total)) * _SOFTMAX_SCALE
            for d in range(hd):
                out[tq, b + d] = np.rint(out[tq, b + d] * inv)


@kernel
def _add_clamped(h, n, delta):
    for t in range(n):
        for i in range(h.shape[1]):
            h[t, i] = min(max(h[t, i] + delta[t, i], -ACT_MAX), ACT_MAX)


@kernel
def _full_counts(prompt, causal, valid, emb_k, emb_causal, prompt_w, prompt_m, prompt_b, norms, lin_w, lin_m,
                 mlp_in_w, mlp_in_m, mlp_down_w, mlp_down_m, final_norm, head_w, head_m, head_b, cos, sin, exp_att,
                 exp_out, silu, eps, heads, att_scale, h, x, q, kk, vv, att, o, gate, up, logits, scores, counts):
    """counts[p, t, :] for every token of every patch of ``prompt`` (P, T, N_PROMPT) and
    ``causal`` (P, T, N_CAUSAL) embedding indices; ``valid`` (P, T) says which tokens
    exist. The other arrays after ``exp_out``'s scalars are scratch space."""
    n_patches, n_tok = prompt.shape[0], prompt.shape[1]
    hidden = h.shape[1]
    zero = prompt_b  # the bias argument of the linears without one (unread)
    for p in range(n_patches):
        # embedding: prompt linear (with bias) + k's row + the causal neighbours' rows, clamped
        for t in range(n_tok):
            for j in range(prompt.shape[2]):
                x[t, j] = prompt[p, t, j]
        _linear(x, n_tok, prompt_w, prompt_m, prompt_b, True, h)
        for t in range(n_tok):
            for i in range(hidden):
                s = h[t, i] + emb_k[i]
                for j in range(causal.shape[2]):
                    s += emb_causal[j, causal[p, t, j], i]
                h[t, i] = min(max(s, -ACT_MAX), ACT_MAX)
        for layer in range(norms.shape[0]):
            _norm(h, n_tok, norms[layer, 0], eps, x)
            _linear(x, n_tok, lin_w[layer, 0], lin_m[layer, 0], zero, False, q)
            _linear(x, n_tok, lin_w[layer, 1], lin_m[layer, 1], zero, False, kk)
            _linear(x, n_tok, lin_w[layer, 2], lin_m[layer, 2], zero, False, vv)
            _rope(q, n_tok, heads, cos, sin)
            _rope(kk, n_tok, heads, cos, sin)
            _attend(q, kk, vv, n_tok, heads, valid[p], att_scale, exp_att, scores, att)
            _linear(att, n_tok, lin_w[layer, 3], lin_m[layer, 3], zero, False, o)
            _add_clamped(h, n_tok, o)
            _norm(h, n_tok, norms[layer, 1], eps, x)
            _linear(x, n_tok, mlp_in_w[layer, 0], mlp_in_m[layer, 0], zero, False, gate)
            _linear(x, n_tok, mlp_in_w[layer, 1], mlp_in_m[layer, 1], zero, False, up)
            for t in range(n_tok):
                for f in range(gate.shape[1]):
                    g = min(max(np.rint(gate[t, f] * _SILU_SCALE), -SILU_RANGE), SILU_RANGE) + SILU_RANGE
                    a = np.rint((silu[np.int64(g)] * up[t, f]) * _ACT_SCALE)
                    gate[t, f] = min(max(a, -ACT_MAX), ACT_MAX)
            _linear(gate, n_tok, mlp_down_w[layer], mlp_down_m[layer], zero, False, o)
            _add_clamped(h, n_tok, o)
        _norm(h, n_tok, final_norm, eps, x)
        _linear(x, n_tok, head_w, head_m, head_b, True, logits)
        last = exp_out.size - 1
        n_bins = logits.shape[1]
        shift = 0  # bins per symbol: 2**shift (adjacent bins summed, as coder._grouped)
        while (counts.shape[2] << shift) < n_bins:
            shift += 1
        for t in range(n_tok):
            top = -1e300
            for b in range(n_bins):
                top = max(top, logits[t, b])
            for s in range(counts.shape[2]):
                counts[p, t, s] = 0
            for b in range(n_bins):
                idx = min(max(top - logits[t, b], 0.0), np.float64(last))
                counts[p, t, b >> shift] += np.int64(exp_out[np.int64(idx)]) + 1


class CompiledCounts:
    """The full pass of an IntegerTransformer on the CPU, as numpy arrays for the kernel."""

    def __init__(self, net: IntegerTransformer) -> None:
        def arr(t):
            return np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float64)

        def lin(name_or_lin):
            return np.ascontiguousarray(arr(name_or_lin.weight_t).T), arr(name_or_lin.mult)

        self.heads = net.shape.heads
        self.hidden = net.shape.hidden
        self.ffn = net.shape.ffn
        self.eps = int(net.eps)
        self.att_scale = float(net.att_mult * (1.0 / (1 << REQUANT_SHIFT)))
        self.emb_k = arr(net.emb_k)
        self.emb_causal = arr(net.emb_causal)
        self.prompt_w, self.prompt_m = lin(net.prompt)
        self.prompt_b = arr(net.prompt.bias)
        layers = net.layers
        self.norms = np.stack([np.stack([arr(a), arr(b)]) for a, b, _ in layers])
        self.lin_w = np.stack([np.stack([lin(l[n])[0] for n in ("q", "k", "v", "o")]) for _, _, l in layers])
        self.lin_m = np.stack([np.stack([lin(l[n])[1] for n in ("q", "k", "v", "o")]) for _, _, l in layers])
        self.mlp_in_w = np.stack([np.stack([lin(l[n])[0] for n in ("gate", "up")]) for _, _, l in layers])
        self.mlp_in_m = np.stack([np.stack([lin(l[n])[1] for n in ("gate", "up")]) for _, _, l in layers])
        self.mlp_down_w = np.stack([lin(l["down"])[0] for _, _, l in layers])
        self.mlp_down_m = np.stack([lin(l["down"])[1] for _, _, l in layers])
        self.final_norm = arr(net.final_norm)
        self.head_w, self.head_m = lin(net.head)
        self.head_b = arr(net.head.bias)
        self.cos, self.sin = arr(net.cos), arr(net.sin)
        self.exp_att, self.exp_out, self.silu = arr(net.exp_att), arr(net.exp_out), arr(net.silu)

    def counts(self, prompt: np.ndarray, causal: np.ndarray, k: int, valid: np.ndarray,
               symbols: int | None = None) -> np.ndarray:
        """(P, T, symbols) int64: ``net.counts(net.embed(prompt, causal, k), valid)``, its
        N_BINS bins summed in adjacent groups down to ``symbols`` (a power of two; default
        every bin), as ``coder._grouped``."""
        n_patches, n_tok = prompt.shape[:2]
        hidden, ffn, n_bins = self.hidden, self.ffn, self.head_w.shape[0]
        symbols = n_bins if symbols is None else int(symbols)
        if symbols < 1 or symbols > n_bins or n_bins % symbols or symbols & (symbols - 1):
            raise ValueError(f"counts over {symbols} symbols: expected a power of two dividing {n_bins}")
        counts = np.empty((n_patches, n_tok, symbols), dtype=np.int64)
        width = max(hidden, prompt.shape[2])
        scratch = [np.empty((n_tok, n), dtype=np.float64) for n in (hidden, width, hidden, hidden, hidden, hidden,
                                                                    hidden, ffn, ffn, n_bins)]
        _full_counts(np.ascontiguousarray(prompt), np.ascontiguousarray(causal, dtype=np.int64),
                     np.ascontiguousarray(valid, dtype=np.bool_), np.ascontiguousarray(self.emb_k[k]), self.emb_causal,
                     self.prompt_w, self.prompt_m, self.prompt_b, self.norms, self.lin_w, self.lin_m, self.mlp_in_w,
                     self.mlp_in_m, self.mlp_down_w, self.mlp_down_m, self.final_norm, self.head_w, self.head_m,
                     self.head_b, self.cos, self.sin, self.exp_att, self.exp_out, self.silu, self.eps, self.heads,
                     self.att_scale, *scratch, np.empty(n_tok, dtype=np.float64), counts)
        return counts
