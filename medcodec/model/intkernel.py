"""The integer transformer on the CPU, compiled: the encoder's full (teacher-forced)
pass and the decoder's cached steps.

``IntegerTransformer.counts`` computes them as float64 torch operations over a batch of
patches: each step (a matrix product, a rounding, a clamp, a table lookup) reads and
writes the whole batch's activations, so most of its time went to memory, not
arithmetic (on the pipeline benchmark's files the matrix products were 0.8 s of the
transformer's 3.6 s). Here the full pass takes one patch (32 tokens) through every
layer while its activations stay in cache (``_full_counts``); a decoder step takes the
one token of every patch through each layer as a batch of rows, the earlier tokens'
keys and values kept per patch (``_step_counts``).

The arithmetic is the same, operation for operation, so the counts are the same integers
(tested against the torch model, ``tests/test_model.py``): every value is an integer held
in a float64 below 2**53, so products and sums are exact in any order; scalings by powers
of two are exact; ``np.rint`` rounds halves to even as ``torch.round`` does; the integer
divisions and square roots are done in int64 here, exactly, where the torch model
corrects float estimates to the same integers. On a GPU the coder runs the torch model:
the same integers again.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..errors import ModelMismatchError
from .geometry import MAX_K, N_BINS, N_CAUSAL, N_PROMPT, PATCH_TOKENS
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
def _rope(x, n, start, stride, heads, cos, sin):
    """In place: each head's rotary rotation (rotate_half, as transformers' Llama) of rows
    0..n-1, row r at position start + r * stride, the products summed, scaled by 2**-14,
    rounded and clamped."""
    hd = cos.shape[1]
    half = hd // 2
    for r in range(n):
        t = start + r * stride
        for hh in range(heads):
            b = hh * hd
            for d in range(half):
                a, c = x[r, b + d], x[r, b + d + half]
                lo = a * cos[t, d] + (-c) * sin[t, d]
                hi = c * cos[t, d + half] + a * sin[t, d + half]
                x[r, b + d] = min(max(np.rint(lo * _ROPE_SCALE), -ACT_MAX), ACT_MAX)
                x[r, b + d + half] = min(max(np.rint(hi * _ROPE_SCALE), -ACT_MAX), ACT_MAX)


@kernel
def _attend(q, k, v, n, start, heads, valid, att_scale, exp_att, scores, out):
    """Causal attention of the queries in rows 0..n-1 (positions start..) over the keys
    and values of positions 0.. (a key before the query's counts where ``valid``; the
    query's own always), as intnet._attend: rounded logits, table exponentials of
    (max - logit), and the weighted values scaled by floor(2**33 / their sum)."""
    hd = q.shape[1] // heads
    last = exp_att.size - 1
    for hh in range(heads):
        b = hh * hd
        for r in range(n):
            tq = start + r
            top = -1e300
            for tk in range(tq + 1):
                if tk < tq and not valid[tk]:
                    continue
                dot = 0.0
                for d in range(hd):
                    dot += q[r, b + d] * k[tk, b + d]
                s = np.rint(dot * att_scale)
                scores[tk] = s
                top = max(top, s)
            total = 0.0
            for d in range(hd):
                out[r, b + d] = 0.0
            for tk in range(tq + 1):
                if tk < tq and not valid[tk]:
                    continue
                idx = min(max(top - scores[tk], 0.0), np.float64(last))
                e = exp_att[np.int64(idx)]
                total += e
                for d in range(hd):
                    out[r, b + d] += e * v[tk, b + d]
            inv = np.float64((np.int64(1) << SOFTMAX_SHIFT) // np.int64(total)) * _SOFTMAX_SCALE
            for d in range(hd):
                out[r, b + d] = np.rint(out[r, b + d] * inv)


@kernel
def _add_clamped(h, n, delta):
    for t in range(n):
        for i in range(h.shape[1]):
            h[t, i] = min(max(h[t, i] + delta[t, i], -ACT_MAX), ACT_MAX)


@kernel
def _bins(logits, r, exp_out, out):
    """out[:] = the counts of logits row r (table exponentials of max - logit, plus one),
    adjacent bins summed down to out.size symbols (as coder._grouped)."""
    last = exp_out.size - 1
    n_bins = logits.shape[1]
    shift = 0  # bins per symbol: 2**shift
    while (out.size << shift) < n_bins:
        shift += 1
    top = -1e300
    for b in range(n_bins):
        top = max(top, logits[r, b])
    for s in range(out.size):
        out[s] = 0
    for b in range(n_bins):
        idx = min(max(top - logits[r, b], 0.0), np.float64(last))
        out[b >> shift] += np.int64(exp_out[np.int64(idx)]) + 1


@kernel
def _embed(prompt, causal, rows, emb_k, emb_causal, prompt_w, prompt_m, prompt_b, x, h):
    """h[:rows] = clamp(prompt linear (with bias) + k's row + the causal neighbours' rows)
    for ``prompt`` (rows, N_PROMPT) and ``causal`` (rows, N_CAUSAL)."""
    for t in range(rows):
        for j in range(prompt.shape[1]):
            x[t, j] = prompt[t, j]
    _linear(x, rows, prompt_w, prompt_m, prompt_b, True, h)
    for t in range(rows):
        for i in range(h.shape[1]):
            s = h[t, i] + emb_k[i]
            for j in range(causal.shape[1]):
                s += emb_causal[j, causal[t, j], i]
            h[t, i] = min(max(s, -ACT_MAX), ACT_MAX)


@kernel
def _mlp(h, rows, layer, norms, mlp_in_w, mlp_in_m, mlp_down_w, mlp_down_m, eps, zero, silu, x, gate, up, o):
    """h[:rows] += the SwiGLU MLP of its post-attention norm (intnet._mlp), clamped."""
    _norm(h, rows, norms[layer, 1], eps, x)
    _linear(x, rows, mlp_in_w[layer, 0], mlp_in_m[layer, 0], zero, False, gate)
    _linear(x, rows, mlp_in_w[layer, 1], mlp_in_m[layer, 1], zero, False, up)
    for t in range(rows):
        for f in range(gate.shape[1]):
            g = min(max(np.rint(gate[t, f] * _SILU_SCALE), -SILU_RANGE), SILU_RANGE) + SILU_RANGE
            a = np.rint((silu[np.int64(g)] * up[t, f]) * _ACT_SCALE)
            gate[t, f] = min(max(a, -ACT_MAX), ACT_MAX)
    _linear(gate, rows, mlp_down_w[layer], mlp_down_m[layer], zero, False, o)
    _add_clamped(h, rows, o)


@kernel
def _project(h, rows, start, stride, layer, norms, lin_w, lin_m, eps, zero, heads, cos, sin, x, q, kk, vv):
    """A layer's queries, keys and values of h[:rows] (row r at position start + r *
    stride), rotated: intnet._block's first half."""
    _norm(h, rows, norms[layer, 0], eps, x)
    _linear(x, rows, lin_w[layer, 0], lin_m[layer, 0], zero, False, q)
    _linear(x, rows, lin_w[layer, 1], lin_m[layer, 1], zero, False, kk)
    _linear(x, rows, lin_w[layer, 2], lin_m[layer, 2], zero, False, vv)
    _rope(q, rows, start, stride, heads, cos, sin)
    _rope(kk, rows, start, stride, heads, cos, sin)


@kernel
def _close(h, rows, att, layer, lin_w, lin_m, norms, mlp_in_w, mlp_in_m, mlp_down_w, mlp_down_m, eps, zero, silu,
           x, gate, up, o):
    """A layer's second half: h[:rows] += its attention's output projection, then its MLP."""
    _linear(att, rows, lin_w[layer, 3], lin_m[layer, 3], zero, False, o)
    _add_clamped(h, rows, o)
    _mlp(h, rows, layer, norms, mlp_in_w, mlp_in_m, mlp_down_w, mlp_down_m, eps, zero, silu, x, gate, up, o)


@kernel
def _full_counts(prompt, causal, valid, emb_k, emb_causal, prompt_w, prompt_m, prompt_b, norms, lin_w, lin_m,
                 mlp_in_w, mlp_in_m, mlp_down_w, mlp_down_m, final_norm, head_w, head_m, head_b, cos, sin, exp_att,
                 exp_out, silu, eps, heads, att_scale, h, x, q, kk, vv, att, o, gate, up, logits, scores, counts):
    """counts[p, t, :] for every token of every patch of ``prompt`` (P, T, N_PROMPT) and
    ``causal`` (P, T, N_CAUSAL) embedding indices; ``valid`` (P, T) says which tokens
    exist. One patch at a time, its tokens as rows. The arrays after ``att_scale`` are
    scratch space."""
    n_patches, n_tok = prompt.shape[0], prompt.shape[1]
    zero = prompt_b  # the bias argument of the linears without one (unread)
    for p in range(n_patches):
        _embed(prompt[p], causal[p], n_tok, emb_k, emb_causal, prompt_w, prompt_m, prompt_b, x, h)
        for layer in range(norms.shape[0]):
            _project(h, n_tok, 0, 1, layer, norms, lin_w, lin_m, eps, zero, heads, cos, sin, x, q, kk, vv)
            _attend(q, kk, vv, n_tok, 0, heads, valid[p], att_scale, exp_att, scores, att)
            _close(h, n_tok, att, layer, lin_w, lin_m, norms, mlp_in_w, mlp_in_m, mlp_down_w, mlp_down_m, eps, zero,
                   silu, x, gate, up, o)
        _norm(h, n_tok, final_norm, eps, x)
        _linear(x, n_tok, head_w, head_m, head_b, True, logits)
        for t in range(n_tok):
            _bins(logits, t, exp_out, counts[p, t])


@kernel
def _step_counts(prompt, causal, valid, pos, emb_k, emb_causal, prompt_w, prompt_m, prompt_b, norms, lin_w, lin_m,
                 mlp_in_w, mlp_in_m, mlp_down_w, mlp_down_m, final_norm, head_w, head_m, head_b, cos, sin, exp_att,
                 exp_out, silu, eps, heads, att_scale, k_cache, v_cache, h, x, q, kk, vv, att, o, gate, up, logits,
                 scores, counts):
    """counts[p, :] for the token at position ``pos`` of every patch, from ``prompt`` (P,
    N_PROMPT) and ``causal`` (P, N_CAUSAL): the decoder's cached step, the patches as
    rows. ``k_cache``/``v_cache`` (L, P, T, hidden) hold the keys and values of positions
    before ``pos`` (written by the earlier steps; this one writes its own), as int16:
    they are integers within +-ACT_MAX, and int16 is a quarter of the memory a step
    reads. The arrays after ``v_cache`` are scratch space."""
    n_patches = prompt.shape[0]
    hidden = h.shape[1]
    zero = prompt_b
    _embed(prompt, causal, n_patches, emb_k, emb_causal, prompt_w, prompt_m, prompt_b, x, h)
    for layer in range(norms.shape[0]):
        _project(h, n_patches, pos, 0, layer, norms, lin_w, lin_m, eps, zero, heads, cos, sin, x, q, kk, vv)
        for p in range(n_patches):
            for i in range(hidden):
                k_cache[layer, p, pos, i] = np.int16(kk[p, i])
                v_cache[layer, p, pos, i] = np.int16(vv[p, i])
            _attend(q[p:], k_cache[layer, p], v_cache[layer, p], 1, pos, heads, valid[p], att_scale, exp_att,
                    scores, att[p:])
        _close(h, n_patches, att, layer, lin_w, lin_m, norms, mlp_in_w, mlp_in_m, mlp_down_w, mlp_down_m, eps, zero,
               silu, x, gate, up, o)
    _norm(h, n_patches, final_norm, eps, x)
    _linear(x, n_patches, head_w, head_m, head_b, True, logits)
    for p in range(n_patches):
        _bins(logits, p, exp_out, counts[p])


class CompiledCounts:
    """An IntegerTransformer's full pass and cached steps on the CPU, its tensors as numpy
    arrays for the kernels."""

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
        self._check_shapes(len(layers))

    def _check_shapes(self, n_layers: int) -> None:
        """The kernels index without bounds checks: every table must have the shape the
        model's hyper-parameters give it (torch would raise at the first lookup outside one;
        compiled code would read past it)."""
        h, f, hd = self.hidden, self.ffn, self.hidden // max(1, self.heads)
        want = {
            "emb_k": (MAX_K + 1, h), "emb_causal": (N_CAUSAL, N_BINS + 1, h), "prompt_w": (h, N_PROMPT),
            "prompt_m": (h,), "prompt_b": (h,), "norms": (n_layers, 2, h), "lin_w": (n_layers, 4, h, h),
            "lin_m": (n_layers, 4, h), "mlp_in_w": (n_layers, 2, f, h), "mlp_in_m": (n_layers, 2, f),
            "mlp_down_w": (n_layers, h, f), "mlp_down_m": (n_layers, h), "final_norm": (h,),
            "head_w": (N_BINS, h), "head_m": (N_BINS,), "head_b": (N_BINS,), "cos": (PATCH_TOKENS, hd),
            "sin": (PATCH_TOKENS, hd), "silu": (2 * SILU_RANGE + 1,),
        }
        wrong = [name for name, shape in want.items() if getattr(self, name).shape != shape]
        if wrong or self.heads < 1 or hd * self.heads != h or hd % 2 or not (self.exp_att.size and self.exp_out.size):
            raise ModelMismatchError(f"integer model tensors of unexpected shape: {', '.join(wrong) or 'heads'}")

    @staticmethod
    def _check_inputs(prompt: np.ndarray, causal: np.ndarray, k: int, valid: np.ndarray) -> None:
        """The kernels' inputs index their tables: shapes and values in range, else ValueError."""
        tokens = valid.shape[-1] if valid.ndim == 2 else -1
        if (not 0 <= k <= MAX_K or not 1 <= tokens <= PATCH_TOKENS or prompt.shape[-1] != N_PROMPT
                or causal.shape[-1] != N_CAUSAL or prompt.shape[:-1] != causal.shape[:-1]
                or prompt.shape[0] != valid.shape[0]
                or (causal.size and not 0 <= int(causal.min()) <= int(causal.max()) <= N_BINS)):
            raise ValueError(f"transformer inputs out of range: k={k}, prompt {prompt.shape}, causal {causal.shape}, "
                             f"valid {valid.shape}")

    def _symbols(self, symbols: int | None) -> int:
        n_bins = self.head_w.shape[0]
        symbols = n_bins if symbols is None else int(symbols)
        if symbols < 1 or symbols > n_bins or n_bins % symbols or symbols & (symbols - 1):
            raise ValueError(f"counts over {symbols} symbols: expected a power of two dividing {n_bins}")
        return symbols

    def _weights(self):
        return (self.emb_causal, self.prompt_w, self.prompt_m, self.prompt_b, self.norms, self.lin_w, self.lin_m,
                self.mlp_in_w, self.mlp_in_m, self.mlp_down_w, self.mlp_down_m, self.final_norm, self.head_w,
                self.head_m, self.head_b, self.cos, self.sin, self.exp_att, self.exp_out, self.silu, self.eps,
                self.heads, self.att_scale)

    def _scratch(self, rows: int, width: int, tokens: int) -> list[np.ndarray]:
        hidden, ffn, n_bins = self.hidden, self.ffn, self.head_w.shape[0]
        return [np.empty((rows, n), dtype=np.float64) for n in (
            hidden, max(hidden, width), hidden, hidden, hidden, hidden, hidden, ffn, ffn, n_bins)] + [
            np.empty(tokens, dtype=np.float64)]

    def counts(self, prompt: np.ndarray, causal: np.ndarray, k: int, valid: np.ndarray,
               symbols: int | None = None) -> np.ndarray:
        """(P, T, symbols) int64: ``net.counts(net.embed(prompt, causal, k), valid)``, its
        N_BINS bins summed in adjacent groups down to ``symbols`` (a power of two; default
        every bin), as ``coder._grouped``."""
        self._check_inputs(prompt, causal, k, valid)
        n_patches, n_tok = prompt.shape[:2]
        if n_tok != valid.shape[1]:
            raise ValueError(f"{n_tok} tokens of prompt for patches of {valid.shape[1]}")
        counts = np.empty((n_patches, n_tok, self._symbols(symbols)), dtype=np.int64)
        _full_counts(np.ascontiguousarray(prompt), np.ascontiguousarray(causal, dtype=np.int64),
                     np.ascontiguousarray(valid, dtype=np.bool_), np.ascontiguousarray(self.emb_k[k]),
                     *self._weights(), *self._scratch(n_tok, prompt.shape[2], n_tok), counts)
        return counts

    def new_cache(self, n_patches: int, tokens: int = PATCH_TOKENS) -> tuple:
        """The state of ``step`` for ``n_patches`` patches of ``tokens`` tokens: every
        layer's keys and values, and the steps' scratch space (made once, not per step)."""
        if not 1 <= tokens <= PATCH_TOKENS:
            raise ValueError(f"patches of {tokens} tokens: expected 1..{PATCH_TOKENS}")
        shape = (self.norms.shape[0], n_patches, tokens, self.hidden)
        return (np.zeros(shape, dtype=np.int16), np.zeros(shape, dtype=np.int16),
                self._scratch(n_patches, N_PROMPT, tokens))

    def step(self, prompt: np.ndarray, causal: np.ndarray, k: int, valid: np.ndarray, t: int, cache,
             symbols: int | None = None) -> np.ndarray:
        """(P, symbols) int64: the counts of the token at position ``t`` of every patch, from
        its ``prompt`` (P, N_PROMPT) and ``causal`` (P, N_CAUSAL) inputs, after steps
        0..t-1 with the same ``cache`` (``new_cache``): the decoder's cached step, the
        full pass's counts at t."""
        self._check_inputs(prompt, causal, k, valid)
        k_cache, v_cache, scratch = cache
        n_patches = prompt.shape[0]
        if not 0 <= t < valid.shape[1] or valid.shape != k_cache.shape[1:3] or scratch[0].shape[0] != n_patches:
            raise ValueError(f"step {t} of patches {valid.shape} with a cache for {k_cache.shape[1:3]}")
        counts = np.empty((n_patches, self._symbols(symbols)), dtype=np.int64)
        _step_counts(np.ascontiguousarray(prompt), np.ascontiguousarray(causal, dtype=np.int64),
                     np.ascontiguousarray(valid, dtype=np.bool_), t, np.ascontiguousarray(self.emb_k[k]),
                     *self._weights(), k_cache, v_cache, *scratch, counts)
        return counts
