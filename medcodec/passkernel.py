"""Compiled per-pass rules of the interlaced coders (``paths``): each pixel's reference,
activity bucket and class key, and the fitted linear predictor's features and prediction.

The features of a pass are its pixels' inner neighbours, then (``max``) the outer ones,
then with a previous plane that plane's value at the pixel and at the 4 nearest
neighbours: ``paths._features`` builds them as a matrix (F, N). Here they are read where
they are needed, so a pass never holds that matrix: the encoder gathers only the columns
it fits on, and the prediction reads the neighbours as it sums. The integers are those of
``paths._Predictor._apply``: ``ref + ((x @ w - ref * sum(w) + half) >> WEIGHT_BITS)`` in
int64 (sums wrap as numpy's do, so the order of the terms does not matter).

Index arrays come from ``hierarchy`` (never from a stream), so they are in range.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .jit import kernel

# Fixed-point scale of the predictor weights: part of the bitstream (``paths.WEIGHT_BITS``).
WEIGHT_BITS = 12
_HALF = 1 << (WEIGHT_BITS - 1)
N_PREV = 5  # with a previous plane: its value at the pixel and at the 4 nearest neighbours


@kernel
def grid_neighbours(ys, xs, dys, dxs, h, rows, cols, out, bad_y, bad_x):
    """``hierarchy._neighbours``: the flat index (K, len(ys), len(xs)) of neighbour
    ``(dys[j] * h, dxs[j] * h)`` of each grid point, reflected at the border, -1 where the
    reflection is still outside; ``bad_y`` / ``bad_x`` mark the rows / columns with one."""
    for j in range(dys.size):
        dy, dx = dys[j] * h, dxs[j] * h
        for a in range(ys.size):
            y = ys[a] + dy
            if y < 0 or y >= rows:
                y = ys[a] - dy
            ok_y = 0 <= y < rows
            if not ok_y:
                bad_y[a] = True
            for b in range(xs.size):
                x = xs[b] + dx
                if x < 0 or x >= cols:
                    x = xs[b] - dx
                if 0 <= x < cols:
                    out[j, a, b] = y * cols + x if ok_y else -1
                else:
                    bad_x[b] = True
                    out[j, a, b] = -1


@kernel
def pass_base(flat, emap, prev, has_prev, inner, thresholds, ref, bucket, key):
    """Per pixel of a pass, from its 4 nearest neighbours (rows 0-3 of ``inner``): ``ref``
    their mean (floor), ``bucket`` the activity bucket of ``2 * spread + (sum of their
    residuals >> 2)`` (the count of ``thresholds`` at or below it), ``key`` the bucket, or
    with a previous plane the sum of their absolute differences to it."""
    for i in range(inner.shape[1]):
        a, b, c, d = inner[0, i], inner[1, i], inner[2, i], inner[3, i]
        v0, v1, v2, v3 = flat[a], flat[b], flat[c], flat[d]
        ref[i] = (v0 + v1 + v2 + v3) >> 2
        spread = max(max(v0, v1), max(v2, v3)) - min(min(v0, v1), min(v2, v3))
        activity = 2 * spread + ((emap[a] + emap[b] + emap[c] + emap[d]) >> 2)
        lo, hi = 0, thresholds.size
        while lo < hi:
            mid = (lo + hi) >> 1
            if thresholds[mid] <= activity:
                lo = mid + 1
            else:
                hi = mid
        bucket[i] = lo
        if has_prev:
            key[i] = abs(v0 - prev[a]) + abs(v1 - prev[b]) + abs(v2 - prev[c]) + abs(v3 - prev[d])
        else:
            key[i] = lo


@njit(cache=True, nogil=True)
def pass_blocks(flat, prev, has_prev, pos, inner, outer, ref, sample, order, starts, out):
    """The features minus ``ref`` of the pixels ``sample`` (increasing) as float64 blocks,
    one per class: class c's columns are ``sample[order[starts[c]:starts[c + 1]]]`` and its
    block, (F, count) in C order, fills ``out[F * starts[c]:F * starts[c + 1]]``.

    The sample is gathered in scan order first (the plane read front to back), then dealt
    into the blocks from that compact copy."""
    n_inner, n_outer = inner.shape[0], outer.shape[0]
    n_features = n_inner + n_outer + (N_PREV if has_prev else 0)
    m = sample.size
    x = np.empty((n_features, m), dtype=np.float64)
    for j in range(n_inner):
        for k in range(m):
            x[j, k] = np.float64(flat[inner[j, sample[k]]] - ref[sample[k]])
    for j in range(n_outer):
        for k in range(m):
            x[n_inner + j, k] = np.float64(flat[outer[j, sample[k]]] - ref[sample[k]])
    if has_prev:
        j0 = n_inner + n_outer
        for k in range(m):
            x[j0, k] = np.float64(prev[pos[sample[k]]] - ref[sample[k]])
        for j in range(N_PREV - 1):
            for k in range(m):
                x[j0 + 1 + j, k] = np.float64(prev[inner[j, sample[k]]] - ref[sample[k]])
    for c in range(starts.size - 1):
        s, e = starts[c], starts[c + 1]
        at = n_features * s
        for j in range(n_features):
            for k in range(s, e):
                out[at] = x[j, order[k]]
                at += 1


def pass_predict(flat, prev, has_prev, pos, inner, outer, ref, weights, cls, out):
    """``ref + ((x @ w[cls] - ref * sum(w[cls]) + half) >> WEIGHT_BITS)`` per pixel."""
    _pass_predict(flat, prev, has_prev, pos, inner, outer, ref, weights, cls, out,
                  np.zeros(weights.shape[0], dtype=np.int64))


@kernel
def _pass_predict(flat, prev, has_prev, pos, inner, outer, ref, weights, cls, out, wsum):
    n_inner, n_outer = inner.shape[0], outer.shape[0]
    n_cls, n_features = weights.shape
    if n_features != n_inner + n_outer + (N_PREV if has_prev else 0):
        raise ValueError("predictor weights do not match the pass's features")
    for c in range(n_cls):
        for j in range(n_features):
            wsum[c] += weights[c, j]
    for i in range(pos.size):
        c = cls[i]
        if c < 0 or c >= n_cls:  # no bounds checks in compiled code
            raise IndexError("predictor class out of range")
        acc = np.int64(0)
        for j in range(n_inner):
            acc += weights[c, j] * flat[inner[j, i]]
        for j in range(n_outer):
            acc += weights[c, n_inner + j] * flat[outer[j, i]]
        if has_prev:
            j0 = n_inner + n_outer
            acc += weights[c, j0] * prev[pos[i]]
            for j in range(N_PREV - 1):
                acc += weights[c, j0 + 1 + j] * prev[inner[j, i]]
        acc -= wsum[c] * ref[i]
        out[i] = ref[i] + ((acc + _HALF) >> WEIGHT_BITS)
